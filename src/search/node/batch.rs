//! Batch-aware placement with communication (docs/algorithms.md#topology): a local search on the layer time
//! of sampled batches, the busiest GPU's compute plus dispatch and combine
//! (`topology_cost::batch_time_bounds`, its achievable choice: a time some replica choice
//! reaches, not a bound).
//!
//! The sample is fixed (common random numbers): `num_batches` batches of `batch_size` rows
//! of the table drawn by weight with a seeded stream, so two placements are compared on
//! the same batches. The search starts from the best of the given placements on the
//! sample and the validation sample below together and makes, chunk by chunk, the best improving of a few sampled steps:
//! - node level: two GPUs of different nodes trade all their experts (the compute of any
//!   batch is unchanged, only which experts share a node, so the traffic, changes);
//! - expert level: a replica on a busy GPU trades places with one on another GPU (`Swap`),
//!   or a spare replica of a light expert becomes one of a heavy expert (`Replace`).
//!
//! "Busy" and "heavy" come from the table's expert loads divided among replicas. A second
//! sample of as many batches (another seed, the same table) guards against fitting the
//! first one's noise: every few rounds the layout is scored on it, and the search returns
//! the layout of its path (start included) that is best there. With
//! `num_groups`, experts are in `num_groups` equal groups of consecutive ids (DeepSeek-V3:
//! 8 groups of 32) and every group must live on one node, as group-limited routing
//! assumes: the start placements must satisfy it and every step keeps it.
//!
//! Re-planning (`replan_batch`): the search walks from the served placement alone within
//! a move budget. A move is a copy, a replica of the result that the served placement
//! lacks on its GPU (`crate::search::replan::copies`; dropping is free): each candidate's change
//! of copies is counted (a trade of two GPUs counts every replica it brings to a GPU that
//! lacked it), candidates over `max_moves` are skipped, a step is made only if it lowers
//! the sample's mean time by more than `copy_price` per copy, and the improving step of
//! largest gain per copy is made (steps that copy nothing or give copies back first).
//! With a target (a fresh plan relabelled to the served one), half the candidates bring a
//! replica of the target to its GPU. Every layout of the path is within the budget, so
//! the one the validation sample keeps is too.

use rayon::prelude::*;

use crate::cost::batch::cost_model::CostModel;
use crate::cost::topology::{batch_time_bounds, check_topology};
use crate::model::layout::{Layout, Move};
use crate::model::placement::Placement;
use crate::model::table::SubsetTable;
use crate::model::topology::Topology;
use crate::search::replan::{copies, move_copies};
use crate::util::error::{MoeError, Result};
use crate::util::limits::{check_memory, check_sample, reserve};
use crate::util::rng::SplitMix64;

/// Steps scored per round (in parallel), rounds without progress before it stops, and
/// rounds between two checks on the validation sample.
const CHUNK: usize = 8;
const PATIENCE: usize = 25;
const CHECK_EVERY: usize = 12;
/// Steps scored per round when re-planning: ranked by gain per copy, more to choose from.
const REPLAN_CHUNK: usize = 2 * CHUNK;

/// Options of `improve_batch`.
#[derive(Clone, Copy, Debug)]
pub struct BatchOptions {
    pub batch_size: usize,
    pub num_batches: usize,
    pub seed: u64,
    /// Most steps scored.
    pub max_evaluations: usize,
    /// Expert groups that must each live on one node (None: no constraint).
    pub num_groups: Option<usize>,
}

/// A move budget relative to the served placement (`replan_batch`).
#[derive(Clone, Copy, Debug)]
pub struct MoveLimits<'a> {
    /// Most copies: replicas of the result that the served placement lacks on their GPU
    /// (None: any number).
    pub max_moves: Option<usize>,
    /// Mean time (us) a copy must buy: a step is made only if it lowers the sample's
    /// mean time by more than its copies' price (finite, >= 0).
    pub copy_price: f64,
    /// A fresh plan, already relabelled to share replicas with the served placement
    /// (`crate::search::replan::relabel`): half the candidates move toward it.
    pub target: Option<&'a Placement>,
}

/// What `replan_batch` returns: the placement, its mean time (us) on the sample, its
/// copies from the served placement, and the path as (copies, sample mean time) after
/// each step made, the served placement first: the gain against moves.
#[derive(Clone, Debug)]
pub struct BatchWalk {
    pub placement: Placement,
    pub mean: f64,
    pub moved: usize,
    pub path: Vec<(usize, f64)>,
}

/// Two GPUs trade every expert they hold.
pub fn swap_gpus(layout: &mut Layout, a: usize, b: usize) {
    let on_a = layout.experts_on(a).to_vec();
    let on_b = layout.experts_on(b).to_vec();
    for &e in &on_a {
        layout.remove(e as usize, a);
    }
    for &e in &on_b {
        layout.remove(e as usize, b);
    }
    for &e in &on_a {
        layout.add(e as usize, b);
    }
    for &e in &on_b {
        layout.add(e as usize, a);
    }
}

/// The node of each of `num_groups` groups of consecutive expert ids when every replica
/// of a group is on one node of `gpus_per_node` GPUs; otherwise an error naming the
/// first expert and GPU off its group's node.
pub fn group_nodes(
    placement: &Placement,
    num_groups: usize,
    gpus_per_node: usize,
) -> Result<Vec<usize>> {
    let e = placement.num_experts();
    if num_groups == 0 || e % num_groups != 0 {
        return Err(MoeError::value(format!(
            "num_groups = {num_groups} must divide the {e} experts"
        )));
    }
    if gpus_per_node == 0 || placement.num_gpus() % gpus_per_node != 0 {
        return Err(MoeError::value(format!(
            "gpus_per_node = {gpus_per_node} must divide the {} GPUs",
            placement.num_gpus()
        )));
    }
    let size = e / num_groups;
    let mut nodes = vec![usize::MAX; num_groups];
    for expert in 0..e {
        let group = expert / size;
        for &g in placement.gpus_of(expert) {
            let node = g as usize / gpus_per_node;
            if nodes[group] == usize::MAX {
                nodes[group] = node;
            } else if nodes[group] != node {
                return Err(MoeError::value(format!(
                    "expert {expert} (group {group}) has a replica on GPU {g}, node {node}, \
                     but its group is on node {}: a group must live on one node",
                    nodes[group]
                )));
            }
        }
    }
    Ok(nodes)
}

/// One step of the search.
#[derive(Clone, Copy, Debug)]
enum Step {
    Gpus(usize, usize),
    Expert(Move),
}

fn apply(layout: &mut Layout, step: Step) {
    match step {
        Step::Gpus(a, b) => swap_gpus(layout, a, b),
        Step::Expert(mv) => layout.apply(mv),
    }
}

/// Copies a step adds against `current` (negative: it puts back replicas `current`
/// holds); a trade of two GPUs moves every replica of both.
fn step_copies(current: &Placement, layout: &Layout, step: Step) -> isize {
    match step {
        Step::Expert(mv) => move_copies(current, mv),
        Step::Gpus(a, b) => {
            let lacks = |e: u16, g: usize| isize::from(!current.holds(e as usize, g));
            let moved = |from: usize, to: usize| -> isize {
                layout
                    .experts_on(from)
                    .iter()
                    .map(|&e| lacks(e, to) - lacks(e, from))
                    .sum()
            };
            moved(a, b) + moved(b, a)
        }
    }
}

/// Expert ids of `num_batches` batches of `batch_size` rows drawn by weight (`stream`
/// picks the sample: 0 the search's, 1 the validation one).
fn draw_batches(table: &SubsetTable, options: &BatchOptions, stream: u64) -> Result<Vec<Vec<i64>>> {
    let k = table.k();
    check_sample(options.batch_size, options.num_batches, k)?;
    let mut cumulative = reserve(table.len(), "the cumulative weights")?;
    let mut total = 0.0;
    for &w in table.weights() {
        total += w;
        cumulative.push(total);
    }
    let mut batches = reserve(options.num_batches, "the sampled batches")?;
    for b in 0..options.num_batches {
        let mut rng = SplitMix64::stream(options.seed, 0x70b0 + stream, b as u64);
        let mut ids = reserve(options.batch_size * k, "a sampled batch's expert ids")?;
        for _ in 0..options.batch_size {
            let x = rng.unit() * total;
            let r = cumulative
                .partition_point(|&c| c <= x)
                .min(cumulative.len() - 1);
            ids.extend(
                table.subsets()[r * k..(r + 1) * k]
                    .iter()
                    .map(|&e| e as i64),
            );
        }
        batches.push(ids);
    }
    Ok(batches)
}

struct Search<'a> {
    batches: Vec<Vec<i64>>,
    validation: Vec<Vec<i64>>,
    k: usize,
    model: CostModel,
    topology: &'a Topology,
    slots: usize,
    load: Vec<f64>,
    /// The node each group must stay on, and the group size.
    groups: Option<(Vec<usize>, usize)>,
}

impl Search<'_> {
    /// Sum of the batches' achievable times under `layout`.
    fn total(&self, layout: &Layout) -> Result<f64> {
        self.sum_over(&self.batches, layout)
    }

    fn sum_over(&self, batches: &[Vec<i64>], layout: &Layout) -> Result<f64> {
        let p = layout.to_placement()?;
        let mut sum = 0.0;
        for ids in batches {
            sum += batch_time_bounds(ids, self.k, &p, self.model, self.topology)?.0;
        }
        Ok(sum)
    }

    /// Sum over the validation sample, its batches in parallel.
    fn validate(&self, layout: &Layout) -> Result<f64> {
        let p = layout.to_placement()?;
        let times = self
            .validation
            .par_iter()
            .map(|ids| Ok(batch_time_bounds(ids, self.k, &p, self.model, self.topology)?.0))
            .collect::<Result<Vec<f64>>>()?;
        Ok(times.iter().sum())
    }

    fn node(&self, gpu: u16) -> usize {
        gpu as usize / self.topology.gpus_per_node
    }

    /// Whether expert e may have a replica on `gpu` under the group constraint.
    fn may_hold(&self, e: u16, gpu: u16) -> bool {
        match &self.groups {
            None => true,
            Some((nodes, size)) => nodes[e as usize / size] == self.node(gpu),
        }
    }

    /// Of three sampled GPUs, the busiest (or the least busy).
    fn gpu_by_load(&self, gpu_load: &[f64], busy: bool, rng: &mut SplitMix64) -> u16 {
        let mut best = rng.below(gpu_load.len());
        for _ in 0..2 {
            let g = rng.below(gpu_load.len());
            if (gpu_load[g] > gpu_load[best]) == busy {
                best = g;
            }
        }
        best as u16
    }

    /// A move that gives a sampled GPU a replica `target` has there and the layout
    /// lacks: added in a free slot, or in place of a replica the target does not want
    /// there: replaced (one copy) when such a replica's expert has another one, else
    /// swapped with one of the new expert's replicas, from a GPU where the target wants
    /// the expert sent back if there is one (both copies toward it), else from one where
    /// it does not want the new expert.
    fn toward(&self, layout: &Layout, target: &Placement, rng: &mut SplitMix64) -> Option<Move> {
        let g = rng.below(layout.num_gpus());
        let gpu = g as u16;
        let wanted: Vec<u16> = (0..target.num_experts())
            .filter(|&e| target.holds(e, g) && !layout.holds(e, g))
            .map(|e| e as u16)
            .filter(|&e| self.may_hold(e, gpu))
            .collect();
        if wanted.is_empty() {
            return None;
        }
        let new = wanted[rng.below(wanted.len())];
        if layout.used(g) < self.slots {
            let mv = Move::Add { expert: new, gpu };
            return layout.allows(mv, self.slots).then_some(mv);
        }
        let unwanted: Vec<u16> = layout
            .experts_on(g)
            .iter()
            .copied()
            .filter(|&e| !target.holds(e as usize, g))
            .collect();
        let spare: Vec<u16> = unwanted
            .iter()
            .copied()
            .filter(|&e| layout.replicas(e as usize) >= 2)
            .collect();
        let mv = if !spare.is_empty() {
            let old = spare[rng.below(spare.len())];
            Move::Replace { old, gpu, new }
        } else if !unwanted.is_empty() {
            let old = unwanted[rng.below(unwanted.len())];
            let from: Vec<u16> = layout
                .gpus_of(new as usize)
                .iter()
                .copied()
                .filter(|&f| self.may_hold(old, f) && !layout.holds(old as usize, f as usize))
                .collect();
            let back: Vec<u16> = from
                .iter()
                .copied()
                .filter(|&f| target.holds(old as usize, f as usize))
                .collect();
            let free: Vec<u16> = from
                .iter()
                .copied()
                .filter(|&f| !target.holds(new as usize, f as usize))
                .collect();
            let pool = [back, free, from].into_iter().find(|p| !p.is_empty())?;
            Move::Swap {
                first: new,
                from: pool[rng.below(pool.len())],
                second: old,
                to: gpu,
            }
        } else {
            return None;
        };
        layout.allows(mv, self.slots).then_some(mv)
    }

    fn candidate(&self, layout: &Layout, rng: &mut SplitMix64) -> Option<Step> {
        let g = layout.num_gpus();
        let gpn = self.topology.gpus_per_node;
        let per_replica = |e: usize| self.load[e] / layout.replicas(e) as f64;
        let kind = rng.below(10);
        if kind < 2 {
            if self.groups.is_some() || gpn >= g {
                return None;
            }
            let a = rng.below(g);
            let b = rng.below(g);
            return (a / gpn != b / gpn).then_some(Step::Gpus(a, b));
        }
        let gpu_load: Vec<f64> = (0..g)
            .map(|gpu| {
                layout
                    .experts_on(gpu)
                    .iter()
                    .map(|&e| per_replica(e as usize))
                    .sum()
            })
            .collect();
        let mv = if kind < 7 {
            let from = self.gpu_by_load(&gpu_load, true, rng);
            let to = if rng.below(2) == 0 {
                self.gpu_by_load(&gpu_load, false, rng)
            } else {
                rng.below(g) as u16
            };
            let (on_from, on_to) = (
                layout.experts_on(from as usize),
                layout.experts_on(to as usize),
            );
            if on_from.is_empty() || on_to.is_empty() {
                return None;
            }
            let first = on_from[rng.below(on_from.len())];
            let second = on_to[rng.below(on_to.len())];
            if !self.may_hold(first, to) || !self.may_hold(second, from) {
                return None;
            }
            Move::Swap {
                first,
                from,
                second,
                to,
            }
        } else {
            // A spare replica of the lightest of three sampled experts with several...
            let e = layout.num_experts();
            let mut old = None;
            for _ in 0..3 {
                let x = rng.below(e);
                if layout.replicas(x) >= 2 && old.is_none_or(|o| per_replica(x) < per_replica(o)) {
                    old = Some(x);
                }
            }
            let old = old?;
            let gpus = layout.gpus_of(old);
            let gpu = gpus[rng.below(gpus.len())];
            // ...becomes one of the heaviest of three sampled experts.
            let mut new = rng.below(e);
            for _ in 0..2 {
                let x = rng.below(e);
                if per_replica(x) > per_replica(new) {
                    new = x;
                }
            }
            if !self.may_hold(new as u16, gpu) {
                return None;
            }
            Move::Replace {
                old: old as u16,
                gpu,
                new: new as u16,
            }
        };
        layout.allows(mv, self.slots).then_some(Step::Expert(mv))
    }
}

/// The best of `starts` on a fixed sample of batches of the table and a validation sample
/// together, improved for the mean layer time with communication (module docs): never
/// worse than that start on either sample. Returns the placement and its mean time
/// (us) on the sample.
pub fn improve_batch(
    table: &SubsetTable,
    starts: &[Placement],
    slots_per_gpu: usize,
    model: CostModel,
    topology: &Topology,
    options: BatchOptions,
) -> Result<(Placement, f64)> {
    let walk = run(table, starts, slots_per_gpu, model, topology, options, None)?;
    Ok((walk.placement, walk.mean))
}

/// `current` (the served placement) re-planned by the batch search within `limits`
/// (module docs): the result has at most `max_moves` replicas `current` lacks on their
/// GPU and is never worse than `current` on the sample (nor, its copies priced, on the
/// validation sample); with `max_moves` = 0 it is `current`.
pub fn replan_batch(
    table: &SubsetTable,
    current: &Placement,
    slots_per_gpu: usize,
    model: CostModel,
    topology: &Topology,
    options: BatchOptions,
    limits: MoveLimits<'_>,
) -> Result<BatchWalk> {
    if !(limits.copy_price.is_finite() && limits.copy_price >= 0.0) {
        return Err(MoeError::value(format!(
            "copy_price = {}: must be finite and non-negative",
            limits.copy_price
        )));
    }
    if let Some(t) = limits.target {
        if (t.num_experts(), t.num_gpus()) != (current.num_experts(), current.num_gpus()) {
            return Err(MoeError::value(format!(
                "the target placement has {} experts on {} GPUs, the current one {} on {}",
                t.num_experts(),
                t.num_gpus(),
                current.num_experts(),
                current.num_gpus()
            )));
        }
    }
    let starts = std::slice::from_ref(current);
    let walk = run(
        table,
        starts,
        slots_per_gpu,
        model,
        topology,
        options,
        Some(limits),
    )?;
    debug_assert!(limits.max_moves.is_none_or(|m| walk.moved <= m));
    Ok(walk)
}

/// The search of `improve_batch` (no limits) and `replan_batch` (`starts` is the served
/// placement alone).
fn run(
    table: &SubsetTable,
    starts: &[Placement],
    slots_per_gpu: usize,
    model: CostModel,
    topology: &Topology,
    options: BatchOptions,
    limits: Option<MoveLimits<'_>>,
) -> Result<BatchWalk> {
    let first = check_inputs(table, starts, slots_per_gpu, topology, &options, limits)?;
    let groups = match options.num_groups {
        None => None,
        Some(n) => {
            let nodes = starts
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    group_nodes(s, n, topology.gpus_per_node)
                        .map_err(|e| MoeError::value(format!("{}: {e}", start_name(limits, i))))
                })
                .collect::<Result<Vec<_>>>()?;
            Some((nodes, table.num_experts() / n))
        }
    };
    let mut search = Search {
        batches: draw_batches(table, &options, 0)?,
        validation: draw_batches(table, &options, 1)?,
        k: table.k(),
        model,
        topology,
        slots: slots_per_gpu,
        load: table.expert_load(),
        groups: None,
    };
    // The start: the best on both samples together (a start fitted to one sample by an
    // earlier search is not favoured by that sample's noise alone).
    let scores = starts
        .iter()
        .map(|s| {
            let l = Layout::from_placement(s);
            Ok((search.total(&l)?, search.validate(&l)?))
        })
        .collect::<Result<Vec<(f64, f64)>>>()?;
    let best = (0..starts.len())
        .min_by(|&a, &b| (scores[a].0 + scores[a].1).total_cmp(&(scores[b].0 + scores[b].1)))
        .unwrap_or(0);
    let totals: Vec<f64> = scores.iter().map(|s| s.0).collect();
    if let Some((nodes, size)) = groups {
        search.groups = Some((nodes[best].clone(), size));
    }
    let batches = options.num_batches as f64;
    let mut layout = Layout::from_placement(&starts[best]);
    let mut total = totals[best];
    let mut rng = SplitMix64::new(options.seed);
    let (mut evaluations, mut idle, mut rounds) = (0, 0, 0);
    // The layout of the path best on the validation sample (plus the price of its
    // copies, when re-planning), that score and its sample total.
    let mut kept = (layout.clone(), scores[best].1, total);
    let mut changed = false;
    // Re-planning: copies so far, the price of one in sums over the sample, the path.
    let mut moved = 0isize;
    let price = limits.map_or(0.0, |l| l.copy_price * batches);
    let mut path = vec![(0usize, total / batches)];
    while evaluations < options.max_evaluations
        && idle < PATIENCE
        && !crate::util::cancel::requested()
    {
        rounds += 1;
        if let Some(limits) = limits {
            let left = options.max_evaluations - evaluations;
            let (best, evaluated) = best_copy_step(
                &search, &layout, first, limits, &mut rng, moved, total, price, left,
            )?;
            evaluations += evaluated;
            match best {
                Some((t, step, c)) => {
                    apply(&mut layout, step);
                    total = t;
                    moved += c;
                    path.push((moved as usize, total / batches));
                    idle = 0;
                    let v = search.validate(&layout)? + price * moved as f64;
                    if v < kept.1 {
                        kept = (layout.clone(), v, total);
                    }
                }
                None => idle += 1,
            }
            continue;
        }
        if changed && rounds % CHECK_EVERY == 0 {
            let v = search.validate(&layout)?;
            if v < kept.1 {
                kept = (layout.clone(), v, total);
            }
            changed = false;
        }
        let (best, evaluated) = best_step(
            &search,
            &layout,
            &mut rng,
            total,
            options.max_evaluations - evaluations,
        )?;
        evaluations += evaluated;
        match best {
            Some((t, step)) => {
                apply(&mut layout, step);
                total = t;
                idle = 0;
                changed = true;
            }
            None => idle += 1,
        }
    }
    if changed && search.validate(&layout)? < kept.1 {
        kept = (layout, 0.0, total);
    }
    let placement = kept.0.to_placement()?;
    let moved = copies(first, &placement);
    if limits.is_none() {
        path.push((moved, kept.2 / batches));
    }
    Ok(BatchWalk {
        placement,
        mean: kept.2 / batches,
        moved,
        path,
    })
}

/// Errors name the start, or the served placement when re-planning.
fn start_name(limits: Option<MoveLimits<'_>>, i: usize) -> String {
    match limits {
        Some(_) => "current".to_string(),
        None => format!("starts[{i}]"),
    }
}

/// The inputs of `run` checked; the first start.
fn check_inputs<'p>(
    table: &SubsetTable,
    starts: &'p [Placement],
    slots_per_gpu: usize,
    topology: &Topology,
    options: &BatchOptions,
    limits: Option<MoveLimits<'_>>,
) -> Result<&'p Placement> {
    let Some(first) = starts.first() else {
        return Err(MoeError::value("starts: give at least one placement"));
    };
    check_sample(options.batch_size, options.num_batches, table.k())?;
    if table.is_empty() || table.total_weight().is_nan() || table.total_weight() <= 0.0 {
        return Err(MoeError::value("the table is empty (total weight 0)"));
    }
    check_memory(table.num_experts(), first.num_gpus(), slots_per_gpu)?;
    for (i, s) in starts.iter().enumerate() {
        crate::cost::decode::check_compatible(table, s)?;
        check_topology(topology, s)?;
        if s.num_gpus() != first.num_gpus() {
            return Err(MoeError::value(format!(
                "starts[{i}] has {} GPUs, starts[0] {}",
                s.num_gpus(),
                first.num_gpus()
            )));
        }
        if let Some((g, &n)) = s
            .slots_used()
            .iter()
            .enumerate()
            .find(|(_, &n)| n > slots_per_gpu)
        {
            return Err(MoeError::value(format!(
                "{} puts {n} experts on GPU {g}, more than slots_per_gpu = {slots_per_gpu}",
                start_name(limits, i)
            )));
        }
    }
    Ok(first)
}

/// A scored step of the re-planning walk: its sample total, the step, its copies.
type CopyStep = (f64, Step, isize);

/// One round of the re-planning walk: up to `REPLAN_CHUNK` steps drawn (toward the target
/// half of the time) within the copy limit, scored in parallel; the best that gains more
/// than the price of its copies (steps that copy nothing, or give copies back, first, then
/// by gain per copy) with its sample total and copies, and the steps scored.
#[allow(clippy::too_many_arguments)]
fn best_copy_step(
    search: &Search<'_>,
    layout: &Layout,
    first: &Placement,
    limits: MoveLimits<'_>,
    rng: &mut SplitMix64,
    moved: isize,
    total: f64,
    price: f64,
    left: usize,
) -> Result<(Option<CopyStep>, usize)> {
    let mut steps: Vec<(Step, isize)> = Vec::with_capacity(REPLAN_CHUNK);
    for _ in 0..REPLAN_CHUNK {
        if steps.len() >= left {
            break;
        }
        let step = match limits.target {
            Some(t) if rng.below(2) == 0 => search.toward(layout, t, rng).map(Step::Expert),
            _ => search.candidate(layout, rng),
        };
        let Some(step) = step else { continue };
        let c = step_copies(first, layout, step);
        if limits.max_moves.is_some_and(|m| moved + c > m as isize) {
            continue;
        }
        steps.push((step, c));
    }
    let scored = steps
        .par_iter()
        .map(|&(step, c)| {
            let mut l = layout.clone();
            apply(&mut l, step);
            Ok((search.total(&l)?, step, c))
        })
        .collect::<Result<Vec<_>>>()?;
    let tol = 1e-9 * total.max(1e-300);
    let key = |t: f64, c: isize| {
        if c > 0 {
            (1u8, (t - total) / c as f64)
        } else {
            (0u8, t - total)
        }
    };
    let best = scored
        .into_iter()
        .filter(|&(t, _, c)| t < total - tol && total - t > price * c.max(0) as f64)
        .min_by(|a, b| {
            let (x, y) = (key(a.0, a.2), key(b.0, b.2));
            x.0.cmp(&y.0).then(x.1.total_cmp(&y.1))
        });
    Ok((best, steps.len()))
}

/// One round of the unlimited search: `CHUNK` steps drawn (at most `left`), scored in
/// parallel; the best that lowers `total`, with its sample total, and the steps scored.
fn best_step(
    search: &Search<'_>,
    layout: &Layout,
    rng: &mut SplitMix64,
    total: f64,
    left: usize,
) -> Result<(Option<(f64, Step)>, usize)> {
    let steps: Vec<Step> = (0..CHUNK)
        .filter_map(|_| search.candidate(layout, rng))
        .take(left)
        .collect();
    let scored = steps
        .par_iter()
        .map(|&step| {
            let mut l = layout.clone();
            apply(&mut l, step);
            Ok((search.total(&l)?, step))
        })
        .collect::<Result<Vec<_>>>()?;
    let tol = 1e-9 * total.max(1e-300);
    let best = scored
        .into_iter()
        .filter(|(t, _)| *t < total - tol)
        .min_by(|a, b| a.0.total_cmp(&b.0));
    Ok((best, steps.len()))
}

/// Mean achievable layer time (us) of `placement` on the fixed sample `improve_batch`
/// draws with these options (`validation`: on its validation sample), to compare
/// placements on the same batches.
pub fn sample_mean_time(
    table: &SubsetTable,
    placement: &Placement,
    model: CostModel,
    topology: &Topology,
    options: BatchOptions,
    validation: bool,
) -> Result<f64> {
    crate::cost::decode::check_compatible(table, placement)?;
    if table.is_empty() || table.total_weight().is_nan() || table.total_weight() <= 0.0 {
        return Err(MoeError::value("the table is empty (total weight 0)"));
    }
    let search = Search {
        batches: draw_batches(table, &options, u64::from(validation))?,
        validation: Vec::new(),
        k: table.k(),
        model,
        topology,
        slots: 0,
        load: Vec::new(),
        groups: None,
    };
    Ok(search.total(&Layout::from_placement(placement))? / options.num_batches as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::topology::batch_time_bounds;

    fn options(batch_size: usize, num_groups: Option<usize>) -> BatchOptions {
        BatchOptions {
            batch_size,
            num_batches: 12,
            seed: 5,
            max_evaluations: 600,
            num_groups,
        }
    }

    /// 16 experts in 4 groups of 4 on 2 nodes of 2 GPUs with 5 slots: group g on node g / 2,
    /// its experts spread over the node's GPUs, the node's two spare slots holding second
    /// replicas of its first experts.
    fn grouped_placement() -> Placement {
        let mut lists = vec![Vec::new(); 16];
        for node in 0..2 {
            let experts: Vec<usize> = (node * 8..node * 8 + 8).collect();
            for (i, &e) in experts.iter().enumerate() {
                lists[e].push(node * 2 + i % 2);
            }
            lists[experts[0]].push(node * 2 + 1);
            lists[experts[1]].push(node * 2);
        }
        Placement::from_lists(&lists, 4).unwrap()
    }

    fn small_topology() -> Topology {
        Topology {
            gpus_per_node: 2,
            ..Topology::h800_normal()
        }
    }

    #[test]
    fn swapping_gpus_keeps_compute_and_moves_traffic() {
        let t = crate::testing::skewed_table(3, 2000, 16, 4, 5, 58);
        let p = grouped_placement();
        let mut layout = Layout::from_placement(&p);
        swap_gpus(&mut layout, 1, 2);
        let q = layout.to_placement().unwrap();
        assert_eq!(q.slots_used(), p.slots_used());
        let model = CostModel::new(47.0, 0.11, 1.5).unwrap();
        let ids: Vec<i64> = t.subsets()[..64 * 4].iter().map(|&e| e as i64).collect();
        let free = Topology::free(2);
        let before = batch_time_bounds(&ids, 4, &p, model, &free).unwrap();
        let after = batch_time_bounds(&ids, 4, &q, model, &free).unwrap();
        assert!((before.0 - after.0).abs() < 1e-9 && (before.1 - after.1).abs() < 1e-9);
        // Swapping back restores the placement.
        swap_gpus(&mut layout, 2, 1);
        assert_eq!(layout.to_placement().unwrap(), p);
    }

    #[test]
    fn group_nodes_finds_each_groups_node_or_the_first_stray_replica() {
        let p = grouped_placement();
        assert_eq!(group_nodes(&p, 4, 2).unwrap(), vec![0, 0, 1, 1]);
        // One node of 4 GPUs holds everything.
        assert_eq!(group_nodes(&p, 4, 4).unwrap(), vec![0; 4]);
        let mut lists = p.to_lists();
        lists[5].retain(|&g| g != 1);
        lists[5].push(3);
        let stray = Placement::from_lists(&lists, 4).unwrap();
        let msg = group_nodes(&stray, 4, 2).unwrap_err().to_string();
        assert!(
            msg.contains("expert 5 (group 1)") && msg.contains("GPU 3"),
            "{msg}"
        );
        assert!(group_nodes(&p, 3, 2)
            .unwrap_err()
            .to_string()
            .contains("divide"));
    }

    #[test]
    fn never_worse_than_the_best_start_and_keeps_the_slots() {
        let t = crate::testing::skewed_table(7, 3000, 16, 4, 5, 58);
        let topo = small_topology();
        let model = CostModel::new(47.0, 0.11, 1.5).unwrap();
        let a = crate::search::decode::optimize(&t, 4, 5, "contiguous", 0).unwrap();
        let b = crate::search::decode::optimize(&t, 4, 5, "round_robin", 0).unwrap();
        for batch in [1, 16, 64] {
            // Single tokens need more batches for the validation sample to see the gain.
            let o = BatchOptions {
                num_batches: if batch == 1 { 400 } else { 48 },
                max_evaluations: 250,
                ..options(batch, None)
            };
            let (p, mean) = improve_batch(&t, &[a.clone(), b.clone()], 5, model, &topo, o).unwrap();
            let start = |s: &Placement| sample_mean_time(&t, s, model, &topo, o, false).unwrap();
            let both =
                |s: &Placement| start(s) + sample_mean_time(&t, s, model, &topo, o, true).unwrap();
            assert!((start(&p) - mean).abs() < 1e-6 * mean);
            // Never worse than the start, the best of the two on both samples together.
            assert!(
                both(&p) <= both(&a).min(both(&b)) * (1.0 + 1e-12),
                "B={batch}"
            );
            // From the contiguous start alone (the hot experts share GPU 0) it gains.
            let (_, alone) =
                improve_batch(&t, std::slice::from_ref(&a), 5, model, &topo, o).unwrap();
            assert!(alone < start(&a), "B={batch}: {alone}");
            assert!(p.slots_used().iter().all(|&n| n <= 5));
        }
    }

    #[test]
    fn the_group_constraint_holds_through_the_search() {
        let t = crate::testing::skewed_table(11, 3000, 16, 4, 5, 58);
        let topo = small_topology();
        let model = CostModel::new(47.0, 0.11, 1.5).unwrap();
        let start = grouped_placement();
        let o = options(16, Some(4));
        let (p, mean) =
            improve_batch(&t, std::slice::from_ref(&start), 5, model, &topo, o).unwrap();
        assert_eq!(group_nodes(&p, 4, 2).unwrap(), vec![0, 0, 1, 1]);
        assert!(mean <= sample_mean_time(&t, &start, model, &topo, o, false).unwrap());
        // A start off the constraint is refused, naming it.
        let spread = crate::search::decode::optimize(&t, 4, 5, "round_robin", 0).unwrap();
        let msg = improve_batch(&t, &[spread], 5, model, &topo, o)
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("starts[0]: expert"), "{msg}");
    }

    #[test]
    fn rejects_bad_options() {
        let t = crate::testing::skewed_table(3, 100, 8, 2, 3, 60);
        let p = crate::search::decode::optimize(&t, 4, 2, "contiguous", 0).unwrap();
        let model = CostModel::new(1.0, 0.0, 1.0).unwrap();
        let topo = Topology::free(2);
        let err = |o: BatchOptions, s: &[Placement]| {
            improve_batch(&t, s, 2, model, &topo, o)
                .unwrap_err()
                .to_string()
        };
        assert!(err(options(0, None), std::slice::from_ref(&p)).contains("at least 1"));
        assert!(err(options(4, None), &[]).contains("at least one"));
        assert!(err(options(4, Some(3)), std::slice::from_ref(&p)).contains("divide"));
    }

    #[test]
    fn without_limits_the_search_is_what_it_was() {
        // Results of `improve_batch` before re-planning existed (placement lists, mean bits).
        let model = CostModel::new(47.0, 0.11, 1.5).unwrap();
        let topo = small_topology();
        let t = crate::testing::skewed_table(7, 3000, 16, 4, 5, 58);
        let a = crate::search::decode::optimize(&t, 4, 5, "contiguous", 0).unwrap();
        let b = crate::search::decode::optimize(&t, 4, 5, "round_robin", 0).unwrap();
        let want: [(usize, &str, u64); 3] = [
        (
            1,
            "[[0, 1], [1, 2], [0, 2], [3], [0, 3], [1], [2], [3], [0], [1], [2], [3], [0], [1], [2], [3]]",
            0x405e6d1d322353fc,
        ),
        (
            16,
            "[[0], [0], [0, 1], [2], [2], [1], [2], [0], [3], [3], [1, 2], [0, 1], [3], [2, 3], [1], [3]]",
            0x406cd937b059d675,
        ),
        (
            64,
            "[[1], [2, 3], [0, 3], [3], [0], [2], [0], [3], [3], [2], [1, 2], [0], [0, 1], [1], [1], [2]]",
            0x406d9466caa1bee0,
        ),
    ];
        for (batch, lists, bits) in want {
            let o = BatchOptions {
                num_batches: 24,
                max_evaluations: 300,
                ..options(batch, None)
            };
            let (p, mean) = improve_batch(&t, &[a.clone(), b.clone()], 5, model, &topo, o).unwrap();
            assert_eq!(format!("{:?}", p.to_lists()), lists, "B={batch}");
            assert_eq!(mean.to_bits(), bits, "B={batch}");
        }
        let t = crate::testing::skewed_table(11, 3000, 16, 4, 5, 58);
        let o = options(16, Some(4));
        let (p, mean) = improve_batch(&t, &[grouped_placement()], 5, model, &topo, o).unwrap();
        assert_eq!(
        format!("{:?}", p.to_lists()),
        "[[0], [0, 1], [0], [1], [0, 1], [0], [1], [1], [3], [2, 3], [2], [3], [2], [3], [2], [2, 3]]"
    );
        assert_eq!(mean.to_bits(), 0x406cda7ca1706934);
    }

    /// A served placement for one table (round-robin: hot experts not spread for batches),
    /// re-planned for another (a skewed table of another seed).
    fn shifted() -> (SubsetTable, Placement, Topology, CostModel) {
        let t = crate::testing::skewed_table(13, 3000, 16, 4, 5, 58);
        let served = crate::search::decode::optimize(&t, 4, 5, "contiguous", 0).unwrap();
        let model = CostModel::new(47.0, 0.11, 1.5).unwrap();
        (t, served, small_topology(), model)
    }

    fn limits(max_moves: Option<usize>, copy_price: f64) -> MoveLimits<'static> {
        MoveLimits {
            max_moves,
            copy_price,
            target: None,
        }
    }

    #[test]
    fn gpu_trades_count_the_copies_they_make() {
        let t = crate::testing::skewed_table(3, 500, 16, 4, 5, 58);
        let current = crate::search::decode::optimize(&t, 4, 5, "round_robin", 0).unwrap();
        let mut layout = Layout::from_placement(&current);
        let mut rng = SplitMix64::new(9);
        // Random moves away from `current`, then every GPU trade counted against brute force.
        for _ in 0..200 {
            let (a, b) = (rng.below(4), rng.below(4));
            if a == b {
                continue;
            }
            if rng.below(3) == 0 {
                let step = Step::Gpus(a, b);
                let before = copies(&current, &layout.to_placement().unwrap()) as isize;
                let c = step_copies(&current, &layout, step);
                apply(&mut layout, step);
                let after = copies(&current, &layout.to_placement().unwrap()) as isize;
                assert_eq!(after - before, c);
            } else {
                let first = layout.experts_on(a)[rng.below(5)];
                let second = layout.experts_on(b)[rng.below(5)];
                let mv = Move::Swap {
                    first,
                    from: a as u16,
                    second,
                    to: b as u16,
                };
                if layout.allows(mv, 5) {
                    let before = copies(&current, &layout.to_placement().unwrap()) as isize;
                    let c = step_copies(&current, &layout, Step::Expert(mv));
                    layout.apply(mv);
                    let after = copies(&current, &layout.to_placement().unwrap()) as isize;
                    assert_eq!(after - before, c);
                }
            }
        }
    }

    #[test]
    fn replanning_stays_within_the_budget_and_never_loses() {
        let (t, served, topo, model) = shifted();
        let o = options(16, None);
        let mean = |p: &Placement| sample_mean_time(&t, p, model, &topo, o, false).unwrap();
        let stale = mean(&served);
        let mut gained = false;
        for m in [0, 1, 3, 8] {
            let w = replan_batch(&t, &served, 5, model, &topo, o, limits(Some(m), 0.0)).unwrap();
            assert!(w.moved <= m, "{m}: {}", w.moved);
            assert_eq!(w.moved, copies(&served, &w.placement));
            assert!((mean(&w.placement) - w.mean).abs() < 1e-9 * w.mean);
            assert!(w.mean <= stale, "{m}: {} vs {stale}", w.mean);
            assert_eq!(w.path[0], (0, stale));
            for pair in w.path.windows(2) {
                assert!(pair[1].1 < pair[0].1 && pair[1].0 <= m, "{pair:?}");
            }
            // The kept layout is a point of the path.
            assert!(w.path.contains(&(w.moved, w.mean)), "{m}: {:?}", w.path);
            if m == 0 {
                assert_eq!(w.placement, served);
                assert_eq!(w.path.len(), 1);
            }
            gained |= w.mean < stale;
            assert!(w.placement.slots_used().iter().all(|&n| n <= 5));
        }
        assert!(gained);
    }

    #[test]
    fn a_copy_price_stops_steps_that_do_not_pay_for_their_copies() {
        let (t, served, topo, model) = shifted();
        let o = options(16, None);
        let free = replan_batch(&t, &served, 5, model, &topo, o, limits(None, 0.0)).unwrap();
        assert!(free.moved > 0);
        let price = 0.2;
        let priced = replan_batch(&t, &served, 5, model, &topo, o, limits(None, price)).unwrap();
        for pair in priced.path.windows(2) {
            let (c0, x0) = pair[0];
            let (c1, x1) = pair[1];
            assert!(x0 - x1 > price * (c1 as f64 - c0 as f64) - 1e-9, "{pair:?}");
        }
        let stopped = replan_batch(&t, &served, 5, model, &topo, o, limits(None, 1e9)).unwrap();
        assert_eq!(stopped.placement, served);
        assert_eq!(stopped.moved, 0);
    }

    #[test]
    fn moves_toward_a_relabelled_target_within_the_budget() {
        let (t, served, topo, model) = shifted();
        let o = options(16, None);
        let (fresh, _) = improve_batch(
            &t,
            std::slice::from_ref(&served),
            5,
            model,
            &topo,
            BatchOptions { seed: 8, ..o },
        )
        .unwrap();
        let target = crate::search::replan::relabel(&served, &fresh, 2).unwrap();
        let l = MoveLimits {
            target: Some(&target),
            ..limits(Some(6), 0.0)
        };
        let w = replan_batch(&t, &served, 5, model, &topo, o, l).unwrap();
        assert!(w.moved <= 6 && w.moved == copies(&served, &w.placement));
        assert!(w.mean < sample_mean_time(&t, &served, model, &topo, o, false).unwrap());
    }

    #[test]
    fn replanning_keeps_every_group_on_its_node() {
        let t = crate::testing::skewed_table(11, 3000, 16, 4, 5, 58);
        let topo = small_topology();
        let model = CostModel::new(47.0, 0.11, 1.5).unwrap();
        let served = grouped_placement();
        // A target with the groups on the other nodes: only moves that keep them are made.
        let mut lists = served.to_lists();
        for gpus in &mut lists {
            for g in gpus.iter_mut() {
                *g ^= 2;
            }
        }
        lists.swap(0, 5);
        let target = Placement::from_lists(&lists, 4).unwrap();
        for target in [None, Some(&target)] {
            let l = MoveLimits {
                target,
                ..limits(Some(5), 0.0)
            };
            let o = options(16, Some(4));
            let w = replan_batch(&t, &served, 5, model, &topo, o, l).unwrap();
            assert_eq!(group_nodes(&w.placement, 4, 2).unwrap(), vec![0, 0, 1, 1]);
            assert!(w.moved <= 5);
            assert!(w.mean <= sample_mean_time(&t, &served, model, &topo, o, false).unwrap());
        }
        let spread = crate::search::decode::optimize(&t, 4, 5, "round_robin", 0).unwrap();
        let msg = replan_batch(
            &t,
            &spread,
            5,
            model,
            &topo,
            options(16, Some(4)),
            limits(None, 0.0),
        )
        .unwrap_err()
        .to_string();
        assert!(msg.starts_with("current: expert"), "{msg}");
    }

    #[test]
    fn replanning_rejects_bad_limits() {
        let (t, served, topo, model) = shifted();
        let o = options(16, None);
        let err = |l: MoveLimits<'_>| {
            replan_batch(&t, &served, 5, model, &topo, o, l)
                .unwrap_err()
                .to_string()
        };
        assert!(err(limits(None, -1.0)).contains("copy_price"));
        assert!(err(limits(None, f64::NAN)).contains("copy_price"));
        let small = crate::search::decode::optimize(&t, 2, 8, "contiguous", 0).unwrap();
        let l = MoveLimits {
            target: Some(&small),
            ..limits(Some(3), 0.0)
        };
        assert!(err(l).contains("the target placement has 16 experts on 2 GPUs"));
        let msg = replan_batch(&t, &served, 4, model, &topo, o, limits(None, 0.0))
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("current puts 5 experts on GPU 0"), "{msg}");
    }
}
