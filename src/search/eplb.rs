//! DeepSeek's expert-parallelism load balancer (deepseek-ai/EPLB `eplb.py`), rule for rule,
//! so that moefast can stand in for it and compare against it exactly.
//!
//! The reference works on float32 loads: extra replicas go one at a time to the expert of
//! highest load per replica (float32 quotient, first index on ties); replicas are packed
//! heaviest first onto the lightest pack that still has room (first such pack on ties), with
//! float32 running sums. The hierarchical policy first packs expert groups onto nodes, then
//! replicates within each node and packs each node's replicas onto its GPUs; the global policy
//! is the hierarchical one with one group and one node. Two points the reference leaves to its
//! torch build are fixed here: equal loads are sorted by index (its sort is unstable), and a
//! group's load is the float32 rounding of its exact sum (its order of summation depends on the
//! vector width). Layers are independent and run in parallel.

use rayon::prelude::*;

use crate::model::table::SubsetTable;
use crate::util::error::{MoeError, Result};

/// The balancer's answer for every layer, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebalance {
    pub num_layers: usize,
    pub num_replicas: usize,
    pub num_experts: usize,
    /// [layers, num_replicas]: the logical expert of each physical slot.
    pub phy2log: Vec<usize>,
    /// [layers, num_replicas]: which replica (0, 1, ...) of its expert each slot holds.
    pub phyrank: Vec<usize>,
    /// [layers, num_experts]: how many slots each expert has.
    pub logcnt: Vec<usize>,
}

/// The shape of the balancing problem (the reference's arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub num_replicas: usize,
    pub num_groups: usize,
    pub num_nodes: usize,
    pub num_gpus: usize,
}

impl Topology {
    /// True when the reference takes its hierarchical policy (groups packed onto nodes).
    pub fn hierarchical(&self) -> bool {
        self.num_nodes > 0 && self.num_groups % self.num_nodes == 0
    }

    fn check(&self, num_experts: usize) -> Result<()> {
        let Topology {
            num_replicas,
            num_groups,
            num_nodes,
            num_gpus,
        } = *self;
        let fail = |m: String| Err(MoeError::value(m));
        if num_experts == 0 {
            return fail("weight has 0 experts per layer".into());
        }
        if num_groups == 0 || num_nodes == 0 || num_gpus == 0 {
            return fail(format!(
                "num_groups, num_nodes and num_gpus must be at least 1, got {num_groups}, {num_nodes}, {num_gpus}"
            ));
        }
        if num_experts > crate::util::limits::MAX_EXPERTS
            || num_gpus > crate::util::limits::MAX_GPUS
        {
            return fail(format!(
                "at most {} experts and {} GPUs, got {num_experts} and {num_gpus}",
                crate::util::limits::MAX_EXPERTS,
                crate::util::limits::MAX_GPUS
            ));
        }
        if num_replicas / num_gpus > num_experts {
            return fail(format!(
                "num_replicas = {num_replicas} gives each of the {num_gpus} GPUs more slots than the {num_experts} experts"
            ));
        }
        if num_replicas < num_experts {
            return fail(format!(
                "num_replicas = {num_replicas} is less than the {num_experts} experts: every expert needs a slot"
            ));
        }
        if num_replicas % num_gpus != 0 {
            return fail(format!(
                "num_replicas = {num_replicas} is not a multiple of num_gpus = {num_gpus}"
            ));
        }
        if self.hierarchical() {
            if num_experts % num_groups != 0 {
                return fail(format!(
                    "{num_experts} experts cannot be split into num_groups = {num_groups} equal groups"
                ));
            }
            if num_gpus % num_nodes != 0 {
                return fail(format!(
                    "num_gpus = {num_gpus} is not a multiple of num_nodes = {num_nodes}"
                ));
            }
        }
        Ok(())
    }
}

/// The reference's `rebalance_experts` on float32 loads `weight` [layers, num_experts]
/// (row-major): the hierarchical policy when `num_groups % num_nodes == 0`, else the global
/// one. Loads must be finite and non-negative.
pub fn rebalance_experts(weight: &[f32], num_experts: usize, topo: Topology) -> Result<Rebalance> {
    topo.check(num_experts)?;
    if weight.len() % num_experts != 0 {
        return Err(MoeError::value(format!(
            "weight has {} entries, not a whole number of layers of {num_experts} experts",
            weight.len()
        )));
    }
    if let Some(i) = weight.iter().position(|w| !w.is_finite() || *w < 0.0) {
        return Err(MoeError::value(format!(
            "weight[{}, {}] = {} is not a finite non-negative load",
            i / num_experts,
            i % num_experts,
            weight[i]
        )));
    }
    let (groups, nodes) = if topo.hierarchical() {
        (topo.num_groups, topo.num_nodes)
    } else {
        (1, 1)
    };
    let layers: Vec<LayerPlan> = weight
        .par_chunks(num_experts)
        .map(|w| balance_layer(w, topo.num_replicas, groups, nodes, topo.num_gpus))
        .collect();
    let mut out = Rebalance {
        num_layers: layers.len(),
        num_replicas: topo.num_replicas,
        num_experts,
        phy2log: Vec::with_capacity(layers.len() * topo.num_replicas),
        phyrank: Vec::with_capacity(layers.len() * topo.num_replicas),
        logcnt: Vec::with_capacity(layers.len() * num_experts),
    };
    for layer in layers {
        out.phy2log.extend(layer.phy2log);
        out.phyrank.extend(layer.phyrank);
        out.logcnt.extend(layer.logcnt);
    }
    Ok(out)
}

/// `load` as the float32 the reference computes with (`weight.float()`), first scaled by a
/// power of two (exact) when it would not fit float32's normal range.
pub fn f32_loads(load: &[f64]) -> Vec<f32> {
    let most = load.iter().cloned().fold(0.0f64, f64::max);
    let scale = if most > 0.0 && !(2f64.powi(-100)..=2f64.powi(100)).contains(&most) {
        2f64.powi(-(most.log2().floor() as i32))
    } else {
        1.0
    };
    load.iter().map(|&w| (w * scale) as f32).collect()
}

/// Per-expert load of a table for EPLB, the same whatever constant its weights were scaled
/// by: weights that are whole multiples of the smallest one are counted as integers (so
/// equal counts compare equal exactly); others are summed as they are.
pub fn count_load(table: &SubsetTable) -> Vec<f64> {
    let weights = table.weights();
    let unit = weights
        .iter()
        .cloned()
        .filter(|&w| w > 0.0)
        .fold(f64::INFINITY, f64::min);
    let whole = |w: f64| {
        let r = w / unit;
        let n = r.round();
        ((r - n).abs() <= 1e-9 * n.max(1.0) && n < 2f64.powi(53)).then_some(n as u64)
    };
    let counts: Option<Vec<u64>> = if unit.is_finite() {
        weights.iter().map(|&w| whole(w)).collect()
    } else {
        None
    };
    let Some(counts) = counts else {
        return table.expert_load();
    };
    let mut load = vec![0u128; table.num_experts()];
    for (subset, &n) in table.subsets().chunks_exact(table.k()).zip(&counts) {
        for &e in subset {
            load[e as usize] += n as u128;
        }
    }
    load.into_iter().map(|x| x as f64).collect()
}

struct LayerPlan {
    phy2log: Vec<usize>,
    phyrank: Vec<usize>,
    logcnt: Vec<usize>,
}

/// One layer of the hierarchical policy (groups = nodes = 1 is the global policy).
fn balance_layer(
    weight: &[f32],
    num_replicas: usize,
    groups: usize,
    nodes: usize,
    gpus: usize,
) -> LayerPlan {
    let experts = weight.len();
    let group_size = experts / groups;
    let groups_per_node = groups / nodes;
    let experts_per_node = experts / nodes;
    let replicas_per_node = num_replicas / nodes;
    let per_gpu = num_replicas / gpus;

    // Step 1: groups onto nodes; experts renumbered node by node ("mlog").
    let group_load: Vec<f32> = weight
        .chunks(group_size)
        .map(|g| g.iter().map(|&w| w as f64).sum::<f64>() as f32)
        .collect();
    let (group_pack, group_rank) = balanced_packing(&group_load, nodes);
    let mut mlog2log = vec![0usize; experts];
    let mut log2mlog = vec![0usize; experts];
    for (e, mlog_of) in log2mlog.iter_mut().enumerate() {
        let g = e / group_size;
        let mlog = (group_pack[g] * groups_per_node + group_rank[g]) * group_size + e % group_size;
        *mlog_of = mlog;
        mlog2log[mlog] = e;
    }

    let mut plan = LayerPlan {
        phy2log: vec![0; num_replicas],
        phyrank: vec![0; num_replicas],
        logcnt: vec![0; experts],
    };
    let mut mlogcnt = vec![0usize; experts];
    for node in 0..nodes {
        // Step 2: replicas within the node.
        let local = &mlog2log[node * experts_per_node..(node + 1) * experts_per_node];
        let load: Vec<f32> = local.iter().map(|&e| weight[e]).collect();
        let (phy2mlog, phyrank, counts) = replicate_experts(&load, replicas_per_node);
        // Step 3: the node's replicas onto its GPUs.
        let per_replica: Vec<f32> = phy2mlog
            .iter()
            .map(|&m| load[m] / counts[m] as f32)
            .collect();
        let (pack, rank) = balanced_packing(&per_replica, gpus / nodes);
        for (phy, &m) in phy2mlog.iter().enumerate() {
            let slot = node * replicas_per_node + pack[phy] * per_gpu + rank[phy];
            plan.phy2log[slot] = local[m];
            plan.phyrank[slot] = phyrank[phy];
        }
        mlogcnt[node * experts_per_node..(node + 1) * experts_per_node].copy_from_slice(&counts);
    }
    for (count, &mlog) in plan.logcnt.iter_mut().zip(&log2mlog) {
        *count = mlogcnt[mlog];
    }
    plan
}

/// Extra replicas one at a time to the first expert of highest float32 load per replica:
/// (expert of each replica, its rank among the expert's replicas, replicas per expert).
fn replicate_experts(load: &[f32], num_phy: usize) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let mut phy2log: Vec<usize> = (0..load.len()).collect();
    let mut rank = vec![0usize; load.len()];
    let mut count = vec![1usize; load.len()];
    // Quotients change only for the expert that got the last replica.
    let mut per_replica: Vec<f32> = load.to_vec();
    for _ in load.len()..num_phy {
        let mut best = 0;
        for e in 1..load.len() {
            if per_replica[e] > per_replica[best] {
                best = e;
            }
        }
        phy2log.push(best);
        rank.push(count[best]);
        count[best] += 1;
        per_replica[best] = load[best] / count[best] as f32;
    }
    (phy2log, rank, count)
}

/// Items heaviest first (ties by index) onto the first lightest pack with room, each pack
/// taking `items / packs`: (pack of each item, its rank in the pack).
fn balanced_packing(weight: &[f32], packs: usize) -> (Vec<usize>, Vec<usize>) {
    let n = weight.len();
    let per_pack = n / packs;
    if per_pack == 1 {
        return ((0..n).collect(), vec![0; n]);
    }
    let mut order: Vec<usize> = (0..n).collect();
    // Loads are finite, so partial_cmp never fails; stable sort keeps ties by index.
    order.sort_by(|&a, &b| weight[b].partial_cmp(&weight[a]).unwrap());
    let mut pack_load = vec![0f32; packs];
    let mut pack_items = vec![0usize; packs];
    let mut pack_of = vec![0usize; n];
    let mut rank_of = vec![0usize; n];
    for item in order {
        let mut best = usize::MAX;
        for p in 0..packs {
            if pack_items[p] < per_pack && (best == usize::MAX || pack_load[p] < pack_load[best]) {
                best = p;
            }
        }
        pack_of[item] = best;
        rank_of[item] = pack_items[best];
        pack_load[best] += weight[item];
        pack_items[best] += 1;
    }
    (pack_of, rank_of)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(num_replicas: usize, num_groups: usize, num_nodes: usize, num_gpus: usize) -> Topology {
        Topology {
            num_replicas,
            num_groups,
            num_nodes,
            num_gpus,
        }
    }

    #[test]
    fn reference_readme_example() {
        // The two-layer example of the reference's README and the output it prints.
        let weight: Vec<f32> = [
            90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86, 20, 107, 104, 64, 19, 197, 187, 157,
            172, 86, 16, 27,
        ]
        .iter()
        .map(|&x| x as f32)
        .collect();
        let r = rebalance_experts(&weight, 12, topo(16, 4, 2, 8)).unwrap();
        assert_eq!(
            r.phy2log,
            [
                5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1, 7, 10, 6, 8, 6, 11, 8, 9, 2, 4,
                5, 1, 5, 0, 3, 1
            ]
        );
        for layer in 0..2 {
            let cnt = &r.logcnt[layer * 12..(layer + 1) * 12];
            assert_eq!(cnt.iter().sum::<usize>(), 16);
            for (e, &count) in cnt.iter().enumerate() {
                let slots = r.phy2log[layer * 16..(layer + 1) * 16]
                    .iter()
                    .filter(|&&x| x == e)
                    .count();
                assert_eq!(slots, count);
            }
        }
    }

    #[test]
    fn replicas_go_to_highest_load_per_replica_first_index_on_ties() {
        // 20 -> 10 each, then the tie of experts 0, 1 and 2 goes to expert 0.
        let (phy2log, rank, count) = replicate_experts(&[10.0, 20.0, 10.0, 5.0], 6);
        assert_eq!(phy2log, [0, 1, 2, 3, 1, 0]);
        assert_eq!(rank, [0, 0, 0, 0, 1, 1]);
        assert_eq!(count, [2, 2, 1, 1]);
    }

    #[test]
    fn packing_ties_go_to_the_first_pack_and_lower_index_first() {
        let (pack, rank) = balanced_packing(&[1.0, 1.0, 1.0, 1.0], 2);
        assert_eq!(pack, [0, 1, 0, 1]);
        assert_eq!(rank, [0, 0, 1, 1]);
        let (pack, _) = balanced_packing(&[5.0, 1.0, 4.0, 2.0, 3.0, 3.0], 2);
        // 5 -> 0, 4 -> 1, 3 (item 4) -> 1, 3 (item 5) -> 0, 2 -> 1 (7 < 8), 1 -> 0 (1 full).
        assert_eq!(pack, [0, 0, 1, 1, 1, 0]);
    }

    #[test]
    fn global_policy_when_groups_do_not_split_over_nodes() {
        let weight = [4.0f32, 3.0, 2.0, 1.0, 1.0];
        let t = topo(6, 2, 4, 3);
        assert!(!t.hierarchical());
        let r = rebalance_experts(&weight, 5, t).unwrap();
        assert_eq!(r.logcnt, [2, 1, 1, 1, 1]);
        assert_eq!(r.phy2log.len(), 6);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let w = [1.0f32; 8];
        let msg = |r: Result<Rebalance>| r.unwrap_err().to_string();
        assert!(msg(rebalance_experts(&w, 8, topo(7, 1, 1, 2))).contains("less than"));
        assert!(msg(rebalance_experts(&w, 8, topo(9, 1, 1, 2))).contains("multiple of num_gpus"));
        assert!(msg(rebalance_experts(&w, 8, topo(8, 3, 3, 2))).contains("equal groups"));
        assert!(msg(rebalance_experts(&w, 8, topo(8, 2, 2, 3))).contains("multiple"));
        assert!(msg(rebalance_experts(&w, 3, topo(6, 1, 1, 2))).contains("whole number"));
        assert!(msg(rebalance_experts(&w, 4, topo(1 << 40, 1, 1, 2))).contains("more slots"));
        assert!(msg(rebalance_experts(&w, 4, topo(4096, 1, 1, 2048))).contains("at most"));
        let bad = [1.0, f32::NAN, 1.0, 1.0];
        assert!(msg(rebalance_experts(&bad, 4, topo(4, 1, 1, 2))).contains("weight[0, 1]"));
    }
}
