//! Layer times with communication (issue 14): the compute of the busiest GPU plus the
//! dispatch and combine implied by the nodes that serve each token's experts
//! (`crate::topology`).
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
//! semi-matching of DESIGN 3 restricted to U) plus comm(|U|). A set U larger than the nodes
//! the best choice inside it really uses is never better than that smaller set, which is
//! enumerated too.
//!
//! A batch: the layer time is max over GPUs of sum f(tokens of each expert it runs) plus
//! comm(sum over tokens of nodes used). It is bounded, not solved: the upper bound is the
//! better of two feasible choices (the compute-optimal split of `crate::batch`, its tokens
//! sent to replicas on nodes the token already uses where the split allows; and every
//! token inside its fewest nodes), the lower bound the compute bound plus the communication
//! of every token on its fewest nodes.

use rayon::prelude::*;

use crate::batch::batch_time::check_batch;
use crate::batch::cost_model::CostModel;
use crate::batch::step_time::StepTimeSolver;
use crate::cost::check_compatible;
use crate::error::{MoeError, Result};
use crate::limits::MAX_K;
use crate::matching::cost_from_masks;
use crate::matching::RowScratch;
use crate::placement::{Placement, Replicas};
use crate::table::SubsetTable;
use crate::topology::Topology;

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
mod tests;
