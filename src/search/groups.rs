//! Expert groups on nodes (docs/algorithms.md#topology): DeepSeek-V3's group-limited routing sends a token to
//! the experts of its top few groups of consecutive expert ids (8 groups of 32), assuming
//! each group lives on one node, so that a token reaches at most that many nodes.
//!
//! `Groups` checks that a grouping can be placed at all: the groups are spread as evenly
//! as possible over the nodes, and a node must hold its groups' experts (at least one
//! replica each) and fill each of its GPUs with distinct experts of those groups.
//! `regroup` turns any placement (the compute-only greedy's) into one that keeps every group
//! on one node: groups go to nodes so that a token's groups share few nodes (a local search
//! on the table), each replica keeps its GPU's index inside the node, and free slots get
//! replicas of the node's heaviest experts. `eplb_hierarchical` is DeepSeek EPLB's
//! hierarchical placement, the other start of a grouped search.

use std::collections::HashMap;

use crate::model::groups::Groups;
use crate::model::layout::Layout;
use crate::model::placement::Placement;
use crate::model::table::SubsetTable;
use crate::model::topology::Topology;
use crate::search::eplb::{count_load, f32_loads, rebalance_experts};
use crate::util::error::{MoeError, Result};

/// Most rows re-counted (or pairs of groups tried) by the group-to-node search.
const ASSIGN_WORK: usize = 20_000_000;

/// What the group-to-node search weighs, per token: `node_us[m]`, the communication of a
/// token reaching m nodes, and `pair_us`, the expected cost of two of its experts sharing a
/// node (they may share a GPU: a round of `round_us` with chance 1 / GPUs per node).
#[derive(Clone, Debug)]
pub struct AssignCost {
    pub node_us: Vec<f64>,
    pub pair_us: f64,
}

impl AssignCost {
    pub fn new(topology: &Topology, k: usize, num_gpus: usize, round_us: f64) -> Self {
        AssignCost {
            node_us: (0..=k)
                .map(|m| topology.token_comm_us(k, m.max(1), num_gpus))
                .collect(),
            pair_us: round_us / topology.gpus_per_node as f64,
        }
    }
}

/// A row of the table as (group, experts of the row in it), and its weight.
type GroupRow = (Vec<(u32, u32)>, f64);

/// A row's weighted cost: its distinct nodes' communication plus its pairs of experts of
/// different groups on one node (`groups` as in `GroupRow`, the groups on nodes `node`; a
/// row has at most MAX_K groups; nodes may be more than 64, so no bit mask).
fn row_cost(groups: &[(u32, u32)], weight: f64, node: &[usize], cost: &AssignCost) -> f64 {
    let (mut distinct, mut pairs) = (0, 0u32);
    for (i, &(x, c)) in groups.iter().enumerate() {
        let m = node[x as usize];
        let mut first = true;
        for &(y, d) in &groups[..i] {
            if node[y as usize] == m {
                first = false;
                pairs += c * d;
            }
        }
        distinct += usize::from(first);
    }
    weight * (cost.node_us[distinct.min(cost.node_us.len() - 1)] + cost.pair_us * f64::from(pairs))
}

impl Groups {
    /// A node per group, each node holding `num_groups / num_nodes` groups or one more,
    /// chosen for the table's tokens by `cost` (`AssignCost`: the communication of the
    /// nodes a token reaches against the rounds lost when its experts crowd one node),
    /// lowered by exchanges of groups between nodes (and moves from a fuller node to a less
    /// full one) from a round-robin start.
    pub fn assign(&self, table: &SubsetTable, cost: &AssignCost) -> Vec<usize> {
        let (n, nodes) = (self.num_groups, self.num_nodes);
        let rows = self.group_rows(table);
        let mut rows_of = vec![Vec::new(); n];
        for (r, (g, _)) in rows.iter().enumerate() {
            for &(x, _) in g {
                rows_of[x as usize].push(r);
            }
        }
        let mut node: Vec<usize> = (0..n).map(|g| g % nodes).collect();
        let mut count = vec![0usize; nodes];
        for &m in &node {
            count[m] += 1;
        }
        let reached = |node: &[usize], r: usize| row_cost(&rows[r].0, rows[r].1, node, cost);
        // The change of the weighted node count if groups `a` and `b` swapped nodes (b = None:
        // `a` moved to node `to`).
        let mut stamp = vec![0usize; rows.len()];
        let mut epoch = 0;
        let work = std::cell::Cell::new(0usize);
        let mut delta = |node: &mut Vec<usize>, a: usize, b: Option<usize>, to: usize| -> f64 {
            epoch += 1;
            let touched: Vec<usize> = rows_of[a]
                .iter()
                .chain(b.map_or(&[][..], |b| &rows_of[b][..]))
                .copied()
                .filter(|&r| std::mem::replace(&mut stamp[r], epoch) != epoch)
                .collect();
            work.set(work.get() + touched.len().max(1));
            let before: f64 = touched.iter().map(|&r| reached(node, r)).sum();
            let from = node[a];
            node[a] = to;
            if let Some(b) = b {
                node[b] = from;
            }
            let after: f64 = touched.iter().map(|&r| reached(node, r)).sum();
            node[a] = from;
            if let Some(b) = b {
                node[b] = to;
            }
            after - before
        };
        let total: f64 = rows.iter().map(|r| r.1).sum();
        let eps = 1e-12 * total.max(1.0);
        loop {
            let mut improved = false;
            for a in 0..n {
                if work.get() > ASSIGN_WORK {
                    return node;
                }
                for b in a + 1..n {
                    if node[a] == node[b] {
                        continue;
                    }
                    let to = node[b];
                    if delta(&mut node, a, Some(b), to) < -eps {
                        node[b] = node[a];
                        node[a] = to;
                        improved = true;
                    }
                }
                for to in 0..nodes {
                    // Counts are n / nodes or one more: a move from a fuller node keeps them so.
                    if count[node[a]] > count[to] && delta(&mut node, a, None, to) < -eps {
                        count[node[a]] -= 1;
                        count[to] += 1;
                        node[a] = to;
                        improved = true;
                    }
                }
            }
            if !improved || work.get() > ASSIGN_WORK {
                return node;
            }
        }
    }

    /// The table's rows over 2+ groups (only they depend on the assignment), equal ones
    /// merged, in a fixed order.
    fn group_rows(&self, table: &SubsetTable) -> Vec<GroupRow> {
        let mut merged: HashMap<Vec<(u32, u32)>, f64> = HashMap::new();
        for (row, &w) in table.subsets().chunks_exact(table.k()).zip(table.weights()) {
            let mut g: Vec<(u32, u32)> = Vec::with_capacity(row.len());
            for &e in row {
                let x = self.group_of(e as usize) as u32;
                match g.iter_mut().find(|(y, _)| *y == x) {
                    Some((_, c)) => *c += 1,
                    None => g.push((x, 1)),
                }
            }
            g.sort_unstable();
            if g.len() >= 2 {
                *merged.entry(g).or_insert(0.0) += w;
            }
        }
        let mut rows: Vec<GroupRow> = merged.into_iter().collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0)); // a fixed order: sums do not depend on hashing
        rows
    }
}

/// Fills every free slot of `layout` (up to `slots` per GPU) with the expert of highest
/// load per replica among those of the GPU's node (`nodes[group]`) that it lacks.
fn fill_within_nodes(
    layout: &mut Layout,
    groups: &Groups,
    nodes: &[usize],
    load: &[f64],
    slots: usize,
) {
    loop {
        let mut filled = false;
        for g in 0..layout.num_gpus() {
            if layout.used(g) >= slots {
                continue;
            }
            let node = groups.node_of_gpu(g);
            let best = (0..layout.num_experts())
                .filter(|&e| nodes[groups.group_of(e)] == node && !layout.holds(e, g))
                .max_by(|&a, &b| {
                    let per = |e: usize| load[e] / layout.replicas(e) as f64;
                    per(a).total_cmp(&per(b)).then(b.cmp(&a))
                });
            if let Some(e) = best {
                layout.add(e, g);
                filled = true;
            }
        }
        if !filled {
            return;
        }
    }
}

/// Checks that every GPU of `layout` is full: the constructions above fill every slot
/// whenever `Groups::new` accepted the shape; a bug must not pass silently.
fn full(layout: Layout, slots: usize, what: &str) -> Result<Placement> {
    if let Some(g) = (0..layout.num_gpus()).find(|&g| layout.used(g) != slots) {
        return Err(MoeError::internal(format!(
            "{what} left GPU {g} with {} experts instead of {slots}",
            layout.used(g)
        )));
    }
    layout.to_placement()
}

/// The checked grouping and its node per group (`Groups::assign` under the topology).
fn grouping(
    table: &SubsetTable,
    num_gpus: usize,
    slots_per_gpu: usize,
    topology: &Topology,
    round_us: f64,
    num_groups: usize,
) -> Result<(Groups, Vec<usize>)> {
    topology.check(num_gpus)?;
    if !(round_us.is_finite() && round_us >= 0.0) {
        return Err(MoeError::value(format!(
            "round_us = {round_us}: must be finite and non-negative"
        )));
    }
    let e = table.num_experts();
    let groups = Groups::new(
        e,
        num_gpus,
        topology.gpus_per_node,
        slots_per_gpu,
        num_groups,
    )?;
    let cost = AssignCost::new(topology, table.k(), num_gpus, round_us);
    let nodes = groups.assign(table, &cost);
    Ok((groups, nodes))
}

/// `source` made to keep each of `num_groups` expert groups on one node of
/// `gpus_per_node` GPUs (module docs), every GPU full with `slots_per_gpu` experts.
pub fn regroup(
    table: &SubsetTable,
    source: &Placement,
    slots_per_gpu: usize,
    topology: &Topology,
    round_us: f64,
    num_groups: usize,
) -> Result<Placement> {
    crate::cost::decode::check_compatible(table, source)?;
    let (e, g) = (source.num_experts(), source.num_gpus());
    crate::util::limits::check_memory(e, g, slots_per_gpu)?;
    let (groups, nodes) = grouping(table, g, slots_per_gpu, topology, round_us, num_groups)?;
    let gpus_per_node = groups.gpus_per_node;
    let load = count_load(table);
    // Heavy experts first, so that they keep the GPUs the source gave them.
    let mut order: Vec<usize> = (0..e).collect();
    order.sort_by(|&a, &b| load[b].total_cmp(&load[a]).then(a.cmp(&b)));
    let target = |x: usize, gpu: u16| {
        nodes[groups.group_of(x)] * gpus_per_node + gpu as usize % gpus_per_node
    };
    let mut layout = Layout::new(e, g);
    // One replica each first (a node has a slot for each of its experts), then the rest.
    for &x in &order {
        let kept = source
            .gpus_of(x)
            .iter()
            .map(|&s| target(x, s))
            .find(|&t| layout.used(t) < slots_per_gpu);
        let at = kept.unwrap_or_else(|| {
            let first = nodes[groups.group_of(x)] * gpus_per_node;
            (first..first + gpus_per_node)
                .min_by_key(|&t| (layout.used(t), t))
                .expect("a node has GPUs")
        });
        layout.add(x, at);
    }
    for &x in &order {
        for &s in source.gpus_of(x) {
            let t = target(x, s);
            if layout.used(t) < slots_per_gpu && !layout.holds(x, t) {
                layout.add(x, t);
            }
        }
    }
    fill_within_nodes(&mut layout, &groups, &nodes, &load, slots_per_gpu);
    full(layout, slots_per_gpu, "regroup")
}

/// A placement that keeps each group on one node, built from the table alone: groups on
/// nodes as in `regroup`, each node's experts (heaviest first) on the GPU of the node where
/// they are co-activated least with the experts already there (balanced: at most
/// ceil(experts / GPUs) each), then free slots filled with the node's heaviest experts.
pub fn spread_groups(
    table: &SubsetTable,
    num_gpus: usize,
    slots_per_gpu: usize,
    topology: &Topology,
    round_us: f64,
    num_groups: usize,
) -> Result<Placement> {
    let e = table.num_experts();
    crate::util::limits::check_memory(e, num_gpus, slots_per_gpu)?;
    let (groups, nodes) = grouping(
        table,
        num_gpus,
        slots_per_gpu,
        topology,
        round_us,
        num_groups,
    )?;
    let gpus_per_node = groups.gpus_per_node;
    let node_of = |x: usize| nodes[groups.group_of(x)];
    // co[a][b]: weight of the rows holding both a and b, for a and b on one node (sparse:
    // up to 65,535 experts).
    let mut co: Vec<HashMap<u16, f64>> = vec![HashMap::new(); e];
    for (row, &w) in table.subsets().chunks_exact(table.k()).zip(table.weights()) {
        for (i, &a) in row.iter().enumerate() {
            for &b in &row[i + 1..] {
                if node_of(a as usize) == node_of(b as usize) {
                    *co[a as usize].entry(b).or_insert(0.0) += w;
                    *co[b as usize].entry(a).or_insert(0.0) += w;
                }
            }
        }
    }
    let load = count_load(table);
    let mut order: Vec<usize> = (0..e).collect();
    order.sort_by(|&a, &b| load[b].total_cmp(&load[a]).then(a.cmp(&b)));
    let mut on_node = vec![0usize; groups.num_nodes];
    for x in 0..e {
        on_node[node_of(x)] += 1;
    }
    let mut layout = Layout::new(e, num_gpus);
    for &x in &order {
        let node = node_of(x);
        let cap = on_node[node].div_ceil(gpus_per_node).min(slots_per_gpu);
        let first = node * gpus_per_node;
        let score = |g: usize| -> (f64, usize) {
            let clash: f64 = layout
                .experts_on(g)
                .iter()
                .filter_map(|y| co[x].get(y))
                .sum();
            (clash, layout.used(g))
        };
        let at = (first..first + gpus_per_node)
            .filter(|&g| layout.used(g) < cap)
            .min_by(|&a, &b| {
                let (sa, sb) = (score(a), score(b));
                sa.0.total_cmp(&sb.0).then(sa.1.cmp(&sb.1)).then(a.cmp(&b))
            })
            .expect("a node has room for each of its experts");
        layout.add(x, at);
    }
    fill_within_nodes(&mut layout, &groups, &nodes, &load, slots_per_gpu);
    full(layout, slots_per_gpu, "spread_groups")
}

/// DeepSeek EPLB's hierarchical placement of the table's load (`crate::search::eplb`, groups
/// packed onto nodes, then replicas onto the node's GPUs), a GPU's repeated replicas of
/// one expert merged and the freed slots filled with the node's heaviest experts; None
/// when EPLB would take its global policy (`num_groups` not a multiple of the nodes).
pub fn eplb_hierarchical(
    table: &SubsetTable,
    num_gpus: usize,
    slots_per_gpu: usize,
    gpus_per_node: usize,
    num_groups: usize,
) -> Result<Option<Placement>> {
    let e = table.num_experts();
    crate::util::limits::check_memory(e, num_gpus, slots_per_gpu)?;
    let groups = Groups::new(e, num_gpus, gpus_per_node, slots_per_gpu, num_groups)?;
    if num_groups % groups.num_nodes != 0 {
        return Ok(None);
    }
    let load = count_load(table);
    let topology = crate::search::eplb::Topology {
        num_replicas: num_gpus * slots_per_gpu,
        num_groups,
        num_nodes: groups.num_nodes,
        num_gpus,
    };
    let plan = rebalance_experts(&f32_loads(&load), e, topology)?;
    let mut layout = Layout::new(e, num_gpus);
    for (p, &x) in plan.phy2log.iter().enumerate() {
        if !layout.holds(x, p / slots_per_gpu) {
            layout.add(x, p / slots_per_gpu);
        }
    }
    let mut nodes = vec![0; num_groups];
    for (x, node) in (0..e).map(|x| (x, groups.node_of_gpu(layout.gpus_of(x)[0] as usize))) {
        nodes[groups.group_of(x)] = node;
    }
    fill_within_nodes(&mut layout, &groups, &nodes, &load, slots_per_gpu);
    full(layout, slots_per_gpu, "EPLB hierarchical").map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::node::batch::group_nodes;

    #[test]
    fn infeasible_groupings_are_refused_with_the_reason() {
        let msg = |r: Result<Groups>| r.unwrap_err().to_string();
        assert!(msg(Groups::new(256, 32, 8, 9, 7)).contains("must divide the 256 experts"));
        assert!(msg(Groups::new(256, 12, 8, 9, 8)).contains("must divide the 12 GPUs"));
        // 8 groups of 32 on 2 nodes: 4 groups, 128 experts, in 16 x 7 = 112 slots.
        assert!(msg(Groups::new(256, 32, 16, 7, 8)).contains("more than its 16 GPUs x 7 slots"));
        assert!(msg(Groups::new(256, 32, 8, 40, 2)).contains("cannot cover the 4 nodes"));
        // 64 groups of 4 on 4 nodes: 16 groups, 64 experts, but 65 slots per GPU.
        assert!(msg(Groups::new(256, 32, 8, 65, 64)).contains("fewer than the slots_per_gpu"));
        let ok = Groups::new(256, 32, 8, 9, 8).unwrap();
        assert_eq!((ok.size, ok.num_nodes), (32, 4));
    }

    #[test]
    fn more_than_64_nodes_are_counted_right() {
        // 160 groups of 1 on 80 nodes of 1 GPU: tokens pick {2i, 2i+1}, pairs that fit a node
        // of 2 slots; every pair should share a node (one node per token).
        let ids: Vec<i64> = (0..800)
            .flat_map(|i| [2 * (i % 80), 2 * (i % 80) + 1])
            .collect();
        let t = SubsetTable::from_topk(&ids, 2, 160, None).unwrap();
        let groups = Groups::new(160, 80, 1, 2, 160).unwrap();
        let together = AssignCost {
            node_us: vec![0.0, 1.0, 2.0],
            pair_us: 0.0,
        };
        let node = groups.assign(&t, &together);
        assert!((0..80).all(|i| node[2 * i] == node[2 * i + 1]), "{node:?}");
    }

    #[test]
    fn assignment_weighs_nodes_reached_against_crowded_nodes() {
        // 4 groups of 2 on 2 nodes; tokens pick groups {0, 2} or {1, 3}.
        let ids: Vec<i64> = (0..100)
            .flat_map(|i| if i % 2 == 0 { [0, 4] } else { [2, 6] })
            .collect();
        let t = SubsetTable::from_topk(&ids, 2, 8, None).unwrap();
        let groups = Groups::new(8, 4, 2, 2, 4).unwrap();
        // Expensive nodes, free crowding: partners share a node.
        let together = AssignCost {
            node_us: vec![0.0, 10.0, 20.0],
            pair_us: 1.0,
        };
        let node = groups.assign(&t, &together);
        assert_eq!((node[0], node[1]), (node[2], node[3]));
        assert_ne!(node[0], node[1]);
        // Cheap nodes, costly crowding: partners on different nodes.
        let apart = AssignCost {
            node_us: vec![0.0, 10.0, 10.5],
            pair_us: 1.0,
        };
        let node = groups.assign(&t, &apart);
        assert!(node[0] != node[2] && node[1] != node[3], "{node:?}");
        // The V3 preset's costs: a node is ~0.3 us, a crowded pair 47 / 8 us.
        let v3 = AssignCost::new(&Topology::h800_normal(), 8, 32, 47.0);
        assert!(v3.node_us[2] - v3.node_us[1] < v3.pair_us);
    }

    #[test]
    fn regrouped_spread_and_eplb_placements_keep_groups_on_nodes_and_fill_every_slot() {
        for (seed, (e, g, gpn, slots, n)) in [
            (256, 32, 8, 9, 8),
            (64, 8, 4, 10, 4),
            (72, 12, 4, 7, 6),
            (60, 6, 2, 12, 5),
        ]
        .into_iter()
        .enumerate()
        {
            let t = crate::testing::skewed_table(seed as u64, 2000, e as u64, 6, 8, 58);
            let source = crate::search::decode::optimize(&t, g, slots, "round_robin", 0).unwrap();
            let topo = Topology {
                gpus_per_node: gpn,
                ..Topology::h800_normal()
            };
            for p in [
                regroup(&t, &source, slots, &topo, 47.0, n).unwrap(),
                spread_groups(&t, g, slots, &topo, 47.0, n).unwrap(),
            ] {
                assert!(group_nodes(&p, n, gpn).is_ok(), "{e} {g} {gpn} {slots} {n}");
                assert_eq!(p.slots_used(), vec![slots; g]);
            }
            if let Some(h) = eplb_hierarchical(&t, g, slots, gpn, n).unwrap() {
                assert!(group_nodes(&h, n, gpn).is_ok());
                assert_eq!(h.slots_used(), vec![slots; g]);
            } else {
                assert_ne!(n % (g / gpn), 0);
            }
        }
    }
}
