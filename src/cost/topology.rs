//! Layer times with communication (docs/cost-model.md#dispatch): the compute of the busiest GPU plus the
//! dispatch and combine implied by the nodes that serve each token's experts
//! (`crate::model::topology`).
//!
//! One token (decode): the time of a subset is
//!
//! ```text
//! min over replica choices of round_us * (rounds of the busiest GPU) + comm(nodes used)
//! ```
//!
//! and it is solved exactly: the communication depends only on the number of nodes used
//! and grows with it, so the optimum is the minimum, over every set U of the nodes the
//! subset's replicas touch, of the fewest rounds with every expert served inside U (the
//! semi-matching (docs/algorithms.md#semi-matching) restricted to U) plus comm(|U|). A set U larger than the nodes
//! the best choice inside it really uses is never better than that smaller set, which is
//! enumerated too.
//!
//! A batch: the layer time is max over GPUs of sum f(tokens of each expert it runs) plus
//! comm(sum over tokens of nodes used). It is bounded, not solved: the upper bound is the
//! better of two feasible choices (the compute-optimal split of `crate::cost::batch`, its tokens
//! sent to replicas on nodes the token already uses where the split allows; and every
//! token inside its fewest nodes), the lower bound the compute bound plus the communication
//! of every token on its fewest nodes.

use rayon::prelude::*;

use crate::cost::batch::batch_time::check_batch;
use crate::cost::batch::cost_model::CostModel;
use crate::cost::batch::step_time::StepTimeSolver;
use crate::cost::decode::check_compatible;
use crate::cost::matching::cost_from_masks;
use crate::cost::matching::RowScratch;
use crate::model::placement::{Placement, Replicas};
use crate::model::table::SubsetTable;
use crate::model::topology::Topology;
use crate::util::error::{MoeError, Result};
use crate::util::limits::MAX_K;

const ROWS_PER_TASK: usize = 1024;

/// Most nodes a topology may have (node sets are 64-bit masks).
pub const MAX_NODES: usize = 64;

pub fn check_topology(topology: &Topology, placement: &Placement) -> Result<()> {
    topology.check(placement.num_gpus())?;
    let nodes = placement.num_gpus() / topology.gpus_per_node;
    if nodes > MAX_NODES {
        return Err(MoeError::value(format!(
            "{nodes} nodes: at most {MAX_NODES} are supported"
        )));
    }
    Ok(())
}

/// Reusable buffers of the per-token search.
pub struct TokenScratch {
    rows: RowScratch,
    lists: Vec<Vec<u16>>,
}

impl TokenScratch {
    pub fn new(num_gpus: usize) -> Self {
        TokenScratch {
            rows: RowScratch::new(num_gpus),
            lists: Vec::new(),
        }
    }
}

/// The best (time us, rounds, nodes) of one token: exact (module docs). `round_us` is the
/// time of one expert round.
pub fn token_time<P: Replicas>(
    subset: &[u16],
    placement: &P,
    topology: &Topology,
    round_us: f64,
    scratch: &mut TokenScratch,
) -> (f64, u32, usize) {
    let gpn = topology.gpus_per_node;
    let g = placement.num_gpus();
    let k = subset.len();
    let mut touched = 0u64;
    for &e in subset {
        for &gpu in placement.gpus_of(e as usize) {
            touched |= 1 << (gpu as usize / gpn);
        }
    }
    let mut best = (f64::INFINITY, 0, 0);
    // Every nonempty subset U of the touched nodes (sub-mask enumeration).
    let mut u = touched;
    while u != 0 {
        let m = u.count_ones() as usize;
        let comm = topology.token_comm_us(k, m, g);
        // Rounds are at least 1: skip sets that cannot beat the best.
        if comm + round_us < best.0 || best.0.is_infinite() {
            if let Some(masks) = placement.masks() {
                // GPU ids fit 64-bit masks: restrict each expert's mask to U's GPUs.
                let gpus_in_u = node_set_gpus(u, gpn);
                let mut restricted = [0u64; MAX_K];
                let mut covered = true;
                for (r, &e) in restricted.iter_mut().zip(subset) {
                    *r = masks[e as usize] & gpus_in_u;
                    covered &= *r != 0;
                }
                if covered {
                    let rounds = cost_from_masks(&restricted[..k]);
                    let time = round_us * rounds as f64 + comm;
                    if time < best.0 || (time == best.0 && (rounds, m) < (best.1, best.2)) {
                        best = (time, rounds, m);
                    }
                }
                u = (u - 1) & touched;
                continue;
            }
            scratch.lists.resize(k, Vec::new());
            let mut covered = true;
            for (list, &e) in scratch.lists.iter_mut().zip(subset) {
                list.clear();
                list.extend(
                    placement
                        .gpus_of(e as usize)
                        .iter()
                        .filter(|&&gpu| u >> (gpu as usize / gpn) & 1 == 1),
                );
                covered &= !list.is_empty();
            }
            if covered {
                let lists = &scratch.lists;
                let rounds = scratch.rows.general_cost(k, |i| &lists[i]);
                let time = round_us * rounds as f64 + comm;
                if time < best.0 || (time == best.0 && (rounds, m) < (best.1, best.2)) {
                    best = (time, rounds, m);
                }
            }
        }
        u = (u - 1) & touched;
    }
    best
}

/// The GPUs (as a mask, GPU ids < 64) of the nodes in `nodes`.
fn node_set_gpus(nodes: u64, gpus_per_node: usize) -> u64 {
    let one_node = if gpus_per_node >= 64 {
        u64::MAX
    } else {
        (1u64 << gpus_per_node) - 1
    };
    let mut mask = 0u64;
    let mut rest = nodes;
    while rest != 0 {
        let n = rest.trailing_zeros() as usize;
        mask |= one_node
            .checked_shl((n * gpus_per_node) as u32)
            .unwrap_or(0);
        rest &= rest - 1;
    }
    mask
}

/// Time (us) of every row of the table under the placement and topology, in parallel.
pub fn subset_times(
    table: &SubsetTable,
    placement: &Placement,
    topology: &Topology,
    round_us: f64,
) -> Result<Vec<f64>> {
    check_compatible(table, placement)?;
    check_topology(topology, placement)?;
    if !(round_us.is_finite() && round_us >= 0.0) {
        return Err(MoeError::value(format!(
            "round_us = {round_us}: must be finite and non-negative"
        )));
    }
    let k = table.k();
    let mut times = vec![0.0; table.len()];
    times
        .par_chunks_mut(ROWS_PER_TASK)
        .zip(table.subsets().par_chunks(ROWS_PER_TASK * k))
        .for_each_init(
            || TokenScratch::new(placement.num_gpus()),
            |scratch, (out, rows)| {
                for (t, subset) in out.iter_mut().zip(rows.chunks_exact(k)) {
                    *t = token_time(subset, placement, topology, round_us, scratch).0;
                }
            },
        );
    Ok(times)
}

/// Weighted mean time (us per token) of the table under the placement and topology.
pub fn expected_time(
    table: &SubsetTable,
    placement: &Placement,
    topology: &Topology,
    round_us: f64,
) -> Result<f64> {
    let times = subset_times(table, placement, topology, round_us)?;
    let total = table.total_weight();
    if total.is_nan() || total <= 0.0 {
        return Err(MoeError::value(
            "the table is empty (total weight 0): no expected time",
        ));
    }
    let sum: f64 = times.iter().zip(table.weights()).map(|(t, w)| t * w).sum();
    Ok(sum / total)
}

/// Compute time of the busiest GPU when token i's j-th expert is served by GPU
/// `choice[i * k + j]`.
fn compute_time(ids: &[i64], choice: &[u16], model: &CostModel, num_gpus: usize) -> f64 {
    let mut pairs: Vec<(u16, i64)> = choice.iter().copied().zip(ids.iter().copied()).collect();
    pairs.sort_unstable();
    let mut load = vec![0.0; num_gpus];
    let mut i = 0;
    while i < pairs.len() {
        let j = pairs[i..].iter().take_while(|&&p| p == pairs[i]).count();
        load[pairs[i].0 as usize] += model.expert_time(j as u32);
        i += j;
    }
    load.into_iter().fold(0.0, f64::max)
}

fn nodes_used(row: &[u16], gpn: usize) -> usize {
    let mut mask = 0u64;
    for &g in row {
        mask |= 1 << (g as usize / gpn);
    }
    mask.count_ones() as usize
}

/// Bounds (us) on the layer time of a [tokens, k] batch: (the better of two feasible
/// choices, a lower bound on the optimum). See the module docs.
pub fn batch_time_bounds(
    ids: &[i64],
    k: usize,
    placement: &Placement,
    model: CostModel,
    topology: &Topology,
) -> Result<(f64, f64)> {
    check_batch(ids, k, placement.num_experts())?;
    check_topology(topology, placement)?;
    let (g, gpn) = (placement.num_gpus(), topology.gpus_per_node);
    let tokens = ids.len() / k;
    let mut solver = StepTimeSolver::new(placement, model);
    solver.set_batch(ids.iter().map(|&e| e as u32));
    let compute = solver.solve();
    let compute_bound = solver.lower_bound().min(compute);

    // Choice 1: the compute-optimal split, each token's copy to a replica with tokens
    // left on a node it already uses, else the replica with most tokens left.
    let (offsets, parts) = solver.assignment();
    let mut left: Vec<u32> = parts.to_vec();
    let local_of = |e: u32| solver.experts().binary_search(&e).unwrap();
    let mut split_choice = vec![0u16; ids.len()];
    for (row, out) in ids.chunks_exact(k).zip(split_choice.chunks_exact_mut(k)) {
        let mut used = 0u64;
        for (j, &e) in row.iter().enumerate() {
            let i = local_of(e as u32);
            let gpus = placement.gpus_of(e as usize);
            let part = &mut left[offsets[i]..offsets[i] + gpus.len()];
            let pick = (0..gpus.len())
                .filter(|&r| part[r] > 0)
                .max_by_key(|&r| {
                    (
                        used >> (gpus[r] as usize / gpn) & 1,
                        part[r],
                        usize::MAX - r,
                    )
                })
                .unwrap_or(0);
            part[pick] = part[pick].saturating_sub(1);
            out[j] = gpus[pick];
            used |= 1 << (gpus[pick] as usize / gpn);
        }
    }
    let split_nodes: usize = split_choice
        .chunks_exact(k)
        .map(|r| nodes_used(r, gpn))
        .sum();
    let split_time = compute + topology.batch_comm_us(tokens, k, split_nodes, g);

    // Choice 2: each token on its fewest nodes (its best choice with free compute),
    // served inside them by the replica with fewest copies so far.
    let mut scratch = TokenScratch::new(g);
    let mut few_choice = vec![0u16; ids.len()];
    let mut copies = vec![0u32; g];
    let mut fewest_sum = 0;
    let mut row16 = vec![0u16; k];
    for (row, out) in ids.chunks_exact(k).zip(few_choice.chunks_exact_mut(k)) {
        for (r, &e) in row16.iter_mut().zip(row) {
            *r = e as u16;
        }
        let few = fewest_nodes(&row16, placement, gpn, &mut scratch);
        fewest_sum += few.count_ones() as usize;
        for (j, &e) in row.iter().enumerate() {
            let pick = placement
                .gpus_of(e as usize)
                .iter()
                .copied()
                .filter(|&gpu| few >> (gpu as usize / gpn) & 1 == 1)
                .min_by_key(|&gpu| (copies[gpu as usize], gpu))
                .unwrap();
            copies[pick as usize] += 1;
            out[j] = pick;
        }
    }
    let few_time = compute_time(ids, &few_choice, &model, g)
        + topology.batch_comm_us(tokens, k, fewest_sum, g);
    let lower = compute_bound + topology.batch_comm_us(tokens, k, fewest_sum, g);
    Ok((
        split_time.min(few_time),
        lower.min(split_time.min(few_time)),
    ))
}

/// The smallest set of nodes (as a mask) that holds a replica of every expert of the
/// subset (ties: the lowest mask).
pub fn fewest_nodes<P: Replicas>(
    subset: &[u16],
    placement: &P,
    gpus_per_node: usize,
    _scratch: &mut TokenScratch,
) -> u64 {
    let node_masks: Vec<u64> = subset
        .iter()
        .map(|&e| {
            placement
                .gpus_of(e as usize)
                .iter()
                .fold(0u64, |m, &g| m | 1 << (g as usize / gpus_per_node))
        })
        .collect();
    let touched = node_masks.iter().fold(0u64, |a, &m| a | m);
    let mut best = touched;
    let mut u = touched;
    while u != 0 {
        let fewer =
            u.count_ones() < best.count_ones() || (u.count_ones() == best.count_ones() && u < best);
        if fewer && node_masks.iter().all(|&m| m & u != 0) {
            best = u;
        }
        u = (u - 1) & touched;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::decode::subset_costs;
    use crate::util::rng::SplitMix64;

    /// A random placement of `e` experts on `g` GPUs: expert i on GPU i % g, plus `extra`
    /// random replicas.
    fn random_placement(rng: &mut SplitMix64, e: usize, g: usize, extra: usize) -> Placement {
        let mut lists: Vec<Vec<usize>> = (0..e).map(|i| vec![i % g]).collect();
        for _ in 0..extra {
            let i = rng.below(e);
            let gpu = rng.below(g);
            if !lists[i].contains(&gpu) {
                lists[i].push(gpu);
            }
        }
        Placement::from_lists(&lists, g).unwrap()
    }

    fn random_rows(rng: &mut SplitMix64, n: usize, e: usize, k: usize) -> Vec<i64> {
        let mut ids = Vec::new();
        for _ in 0..n {
            let mut row: Vec<i64> = Vec::new();
            while row.len() < k {
                let x = rng.below(e) as i64;
                if !row.contains(&x) {
                    row.push(x);
                }
            }
            ids.extend(row);
        }
        ids
    }

    /// Every choice of one replica per (token, expert): calls `visit` with the GPU of each.
    fn each_choice(ids: &[i64], p: &Placement, visit: &mut impl FnMut(&[u16])) {
        fn go(
            i: usize,
            ids: &[i64],
            p: &Placement,
            cur: &mut Vec<u16>,
            visit: &mut impl FnMut(&[u16]),
        ) {
            if i == ids.len() {
                visit(cur);
                return;
            }
            for &g in p.gpus_of(ids[i] as usize) {
                cur.push(g);
                go(i + 1, ids, p, cur, visit);
                cur.pop();
            }
        }
        go(0, ids, p, &mut Vec::new(), visit);
    }

    /// Brute force: the best layer time over every replica choice of every token.
    fn brute_batch(ids: &[i64], k: usize, p: &Placement, model: &CostModel, t: &Topology) -> f64 {
        let tokens = ids.len() / k;
        let mut best = f64::INFINITY;
        each_choice(ids, p, &mut |choice| {
            let nodes: usize = choice
                .chunks_exact(k)
                .map(|r| nodes_used(r, t.gpus_per_node))
                .sum();
            let time = compute_time(ids, choice, model, p.num_gpus())
                + t.batch_comm_us(tokens, k, nodes, p.num_gpus());
            best = best.min(time);
        });
        best
    }

    #[test]
    fn without_communication_times_are_todays_costs() {
        let mut rng = SplitMix64::new(7);
        for case in 0..30 {
            let (e, g, k) = (6 + case % 7, [2, 4, 6, 8][case % 4], 1 + case % 4);
            let p = random_placement(&mut rng, e, g, case % 9);
            let ids = random_rows(&mut rng, 40, e, k);
            let table = SubsetTable::from_topk(&ids, k, e, None).unwrap();
            let free = Topology::free([1, 2][case % 2]);
            let times = subset_times(&table, &p, &free, 1.0).unwrap();
            let costs = subset_costs(&table, &p).unwrap();
            assert_eq!(times, costs.iter().map(|&c| c as f64).collect::<Vec<_>>());
        }
    }

    #[test]
    fn one_token_is_exact_against_every_replica_choice() {
        let mut rng = SplitMix64::new(11);
        let topologies = [Topology::h800_normal(), Topology::h800_low_latency()];
        for case in 0..60 {
            // 72 GPUs take the general matching (no 64-bit GPU masks); nodes stay <= 64.
            let (e, g, k) = (8, [8, 72][case / 2 % 2], 1 + case % 5);
            let mut t = topologies[case % 2];
            t.gpus_per_node = if g == 8 {
                [1, 2, 4][case % 3]
            } else {
                [2, 4, 8][case % 3]
            };
            let p = random_placement(&mut rng, e, g, 4 + case % 12);
            // Round times from 0 (communication only) to far above the communication.
            let round_us = [0.0, 5.0, 47.0, 400.0][case % 4];
            let ids = random_rows(&mut rng, 1, e, k);
            let subset: Vec<u16> = ids.iter().map(|&x| x as u16).collect();
            let mut brute = f64::INFINITY;
            each_choice(&ids, &p, &mut |choice| {
                let mut load = [0u32; 72];
                for &c in choice {
                    load[c as usize] += 1;
                }
                let rounds = *load.iter().max().unwrap() as f64;
                let m = nodes_used(choice, t.gpus_per_node);
                brute = brute.min(round_us * rounds + t.token_comm_us(k, m, g));
            });
            let got = token_time(&subset, &p, &t, round_us, &mut TokenScratch::new(g)).0;
            assert!((got - brute).abs() < 1e-9, "case {case}: {got} vs {brute}");
        }
    }

    #[test]
    fn batch_bounds_hold_the_brute_force_optimum() {
        let mut rng = SplitMix64::new(5);
        let models = [
            CostModel::new(40.0, 0.5, 1.0).unwrap(),
            CostModel::new(47.0, 0.11, 1.5).unwrap(),
            CostModel::new(0.0, 1.0, 1.0).unwrap(),
        ];
        for case in 0..40 {
            let mut t = Topology::h800_normal();
            t.gpus_per_node = [2, 4][case % 2];
            let (e, g, k) = (6, 8, 2);
            let p = random_placement(&mut rng, e, g, 3 + case % 4);
            let ids = random_rows(&mut rng, 2 + case % 3, e, k);
            let model = models[case % 3];
            let (upper, lower) = batch_time_bounds(&ids, k, &p, model, &t).unwrap();
            let best = brute_batch(&ids, k, &p, &model, &t);
            assert!(
                lower <= best + 1e-9 && best <= upper + 1e-9,
                "case {case}: {lower} {best} {upper}"
            );
        }
    }

    #[test]
    fn fewer_nodes_win_when_communication_dominates() {
        // Experts 0 and 1 each on GPU 0 (node 0) and on GPUs 8, 9 (node 1); expert 2 only on
        // node 0's GPU 1. Free compute: node 0 alone. Costly rounds: still one node (GPU 0
        // and GPU 1 both on node 0 give one round).
        let lists = vec![vec![0, 8], vec![0, 9], vec![1]];
        let p = Placement::from_lists(&lists, 16).unwrap();
        let t = Topology::h800_normal();
        let mut s = TokenScratch::new(16);
        let (_, rounds, nodes) = token_time(&[0, 1, 2], &p, &t, 0.0, &mut s);
        assert_eq!((rounds, nodes), (2, 1));
        let (_, rounds, nodes) = token_time(&[0, 1, 2], &p, &t, 100.0, &mut s);
        assert_eq!((rounds, nodes), (1, 2));
        assert_eq!(fewest_nodes(&[0, 1, 2], &p, 8, &mut s), 1);
        let bad = Topology::h800_normal();
        let p12 = Placement::from_lists(&[vec![0]], 12).unwrap();
        let table = SubsetTable::from_subsets(&[0], 1, 1, &[1.0]).unwrap();
        assert!(subset_times(&table, &p12, &bad, 1.0)
            .unwrap_err()
            .to_string()
            .contains("divide"));
    }
}
