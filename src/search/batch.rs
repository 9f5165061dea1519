//! Batch-aware placement: local search over replica moves, swaps and re-placements,
//! scored by the mean step time of a fixed sample of batches (common random numbers, so
//! two placements are compared on the same batches and small gains are not noise).
//!
//! The placement under search is a `Layout` and the moves are `crate::model::layout::Move`s
//! (swap, replace, relocate, add), as in the decode search. A move changes the replicas of
//! at most two experts, so only the sampled batches that hold one of them can change.
//! Candidate moves are screened in parallel in chunks by a lower bound on their change of
//! the objective: a batch takes at least f(1) times its expert rounds, which `rounds`
//! keeps per batch and updates in a few lookups for most moves. Only the moves whose bound
//! promises at least half an expert run (`MIN_GAIN`) and could beat the best move found so
//! far in the chunk are re-timed exactly (best bound first, on a per-thread copy of the
//! layout with the move made and then taken back); the best improving move of a chunk is
//! made, until a whole pass finds none. The bound never exceeds the exact change, so among
//! the moves that pass `MIN_GAIN` the one chosen is the one exact scoring of all of them
//! would choose (up to ties).

use rayon::prelude::*;

use crate::cost::batch::cost_model::CostModel;
use crate::cost::batch::rounds::{BatchRounds, RoundsSolver};
use crate::cost::batch::sample::{sample_batches, time_batch, Sample};
use crate::cost::batch::simulate::Trace;
use crate::cost::batch::step_time::StepTimeSolver;
use crate::cost::matching::SemiMatching;
use crate::model::layout::{Layout, Move};
use crate::model::placement::Placement;
use crate::search::replan::move_copies;
use crate::util::cancel;
use crate::util::error::{MoeError, Result};
use crate::util::limits::{MAX_BATCH, MAX_SAMPLED_TOKENS, MAX_SAMPLE_BATCHES};
use crate::util::rng::SplitMix64;

/// Candidate moves scored per parallel round (a few per thread keeps threads busy).
const CHUNK: usize = 32;
/// Moves re-timed exactly at once, best bound first.
const EXACT_GROUP: usize = 4;
/// Moves whose bound promises less than this many expert runs (f(1)) over the sample are
/// not re-timed. The bound counts whole runs; what it cannot see is the per-token part of
/// the time, so these are the moves that only shift a few tokens' compute between GPUs. On
/// a DeepSeek-V3-size layer of `benches/bench_v3_batch.py` (B = 64) there are thousands
/// of them; re-timing them took three quarters of the search, and making the ones that
/// gained (about 1e-4 of the step time each, on the sample) left the step time of held
/// batches 0.5% higher than without them. At B = 1 every gain is a multiple of f(1).
const MIN_GAIN: f64 = 0.5;
/// Re-planning (`Search::walk`): moves kept from a screen of all moves for the steps
/// after it, and moves re-timed exactly at most per step.
const SHORTLIST: usize = 2048;
const EXACT_PER_STEP: usize = 512;
/// Relative slack of the bound: a sum of r times f(n >= 1) is at least r f(1) up to rounding.
const BOUND_SLACK: f64 = 1e-12;

/// A scored move: the change of the weighted step-time sum and the new times of the
/// batches it touches.
struct Scored {
    delta: f64,
    mv: Move,
    batches: Vec<u32>,
    new_times: Vec<f64>,
}

struct Search<'a> {
    sample: &'a Sample,
    model: CostModel,
    slots: usize,
    layout: Layout,
    times: Vec<f64>,
    rounds: Vec<BatchRounds>,
    /// f(1): the least time of one expert run.
    unit: f64,
    /// [batch x GPU]: the time each GPU spends at least on each batch, on the experts it
    /// alone holds (all their tokens go to it); empty where the search does not keep it.
    forced: Vec<f64>,
}

impl Search<'_> {
    fn affected(&self, mv: Move) -> Vec<u32> {
        let mut experts = mv.experts();
        let first = experts.next().unwrap_or_default() as usize;
        let mut b: Vec<u32> = self.sample.by_expert[first].clone();
        if let Some(second) = experts.next() {
            b.extend_from_slice(&self.sample.by_expert[second as usize]);
            b.sort_unstable();
            b.dedup();
        }
        b
    }

    /// Change of the weighted sum of step times if `mv` were made (None: not allowed now,
    /// since an earlier move of the pass may have changed the layout), with the new times
    /// of the affected batches. `scratch` is a copy of the search's layout: the move is
    /// made on it and taken back.
    fn score(&self, scratch: &mut Layout, mv: Move) -> Option<Scored> {
        if !self.layout.allows(mv, self.slots) {
            return None;
        }
        scratch.apply(mv);
        let mut solver = StepTimeSolver::new(&*scratch, self.model);
        let batches = self.affected(mv);
        let mut delta = 0.0;
        let mut new_times = Vec::with_capacity(batches.len());
        for &b in &batches {
            let t = time_batch(&mut solver, self.sample, b as usize);
            delta += self.sample.weights[b as usize] * (t - self.times[b as usize]);
            new_times.push(t);
        }
        scratch.undo(mv);
        Some(Scored {
            delta,
            mv,
            batches,
            new_times,
        })
    }

    /// A lower bound on the change of the weighted sum of step times if `mv` were made
    /// (None: not allowed now). `scratch` is a copy of the search's layout.
    fn bound(&self, scratch: &mut Layout, matching: &mut SemiMatching, mv: Move) -> Option<f64> {
        if !self.layout.allows(mv, self.slots) {
            return None;
        }
        scratch.apply(mv);
        let changes = mv.changes();
        let mut bound = 0.0;
        for b in self.affected(mv) {
            let b = b as usize;
            let experts = &self.sample.experts[b];
            let cached = &self.rounds[b];
            let rounds = if cached.unchanged_by(experts, &changes, &*scratch) {
                cached.rounds
            } else {
                matching.solve(experts.len(), |i| scratch.gpus_of(experts[i] as usize))
            };
            let least = (self.unit * rounds as f64).max(self.forced_time(b, scratch, mv));
            bound += self.sample.weights[b] * (least * (1.0 - BOUND_SLACK) - self.times[b]);
        }
        scratch.undo(mv);
        Some(bound)
    }

    /// The forced times of every batch under the search's layout (`forced`).
    fn count_forced(&mut self) {
        let num_gpus = self.layout.num_gpus();
        self.forced = vec![0.0; self.sample.weights.len() * num_gpus];
        for b in 0..self.sample.weights.len() {
            self.count_forced_batch(b);
        }
    }

    /// Batch `b`'s row of `forced`, counted again under the search's layout.
    fn count_forced_batch(&mut self, b: usize) {
        let num_gpus = self.layout.num_gpus();
        let out = &mut self.forced[b * num_gpus..(b + 1) * num_gpus];
        out.fill(0.0);
        let (experts, counts) = (&self.sample.experts[b], &self.sample.counts[b]);
        for (&e, &n) in experts.iter().zip(counts) {
            if let [g] = self.layout.gpus_of(e as usize) {
                out[*g as usize] += self.model.expert_time(n);
            }
        }
    }

    /// A lower bound on batch `b`'s time once `mv` is made (`after`: the layout with it
    /// made): the largest forced time of a GPU, from `forced` changed by the experts the
    /// move changes. 0 where the search keeps no forced times.
    fn forced_time(&self, b: usize, after: &Layout, mv: Move) -> f64 {
        if self.forced.is_empty() {
            return 0.0;
        }
        let num_gpus = self.layout.num_gpus();
        let (experts, counts) = (&self.sample.experts[b], &self.sample.counts[b]);
        // At most two experts change: (GPU, change of its forced time), without allocating.
        let mut change = [(usize::MAX, 0.0f64); 4];
        let mut n = 0;
        for x in mv.experts() {
            let Ok(i) = experts.binary_search(&(x as u32)) else {
                continue;
            };
            let f = self.model.expert_time(counts[i]);
            if let [g] = self.layout.gpus_of(x as usize) {
                change[n] = (*g as usize, -f);
                n += 1;
            }
            if let [g] = after.gpus_of(x as usize) {
                change[n] = (*g as usize, f);
                n += 1;
            }
        }
        let row = &self.forced[b * num_gpus..(b + 1) * num_gpus];
        let mut most = 0.0f64;
        for (g, &t) in row.iter().enumerate() {
            let shift: f64 = change[..n].iter().filter(|c| c.0 == g).map(|c| c.1).sum();
            most = most.max(t + shift);
        }
        most
    }

    /// (tolerance, screen): changes of the weighted sum within the tolerance are no
    /// change; moves whose bound does not promise the screen are not re-timed.
    fn tolerances(&self) -> (f64, f64) {
        let objective: f64 = self
            .times
            .iter()
            .zip(&self.sample.weights)
            .map(|(t, w)| t * w)
            .sum();
        let tol = 1e-9 * objective.max(1e-300);
        (tol, tol.max(MIN_GAIN * self.unit))
    }

    /// `bound` of every move, in parallel.
    fn bounds(&self, moves: impl Iterator<Item = Move>) -> Vec<Option<f64>> {
        let moves: Vec<Move> = moves.collect();
        moves
            .par_iter()
            .map_init(
                || {
                    (
                        self.layout.clone(),
                        SemiMatching::new(self.layout.num_gpus()),
                    )
                },
                |(scratch, matching), &mv| self.bound(scratch, matching, mv),
            )
            .collect()
    }

    /// The search without a budget: passes over all moves in a seeded order, in chunks;
    /// each chunk's best improving move is made, until a pass finds none.
    fn passes(&mut self, rounds_solver: &mut RoundsSolver, options: BatchSearchOptions) {
        let mut evaluations = 0;
        for pass in 0u64.. {
            let mut rng = SplitMix64::stream(options.seed, pass, 0x5eed);
            let candidates = self.candidates(&mut rng);
            let mut improved = false;
            for chunk in candidates.chunks(CHUNK) {
                if evaluations >= options.max_evaluations || cancel::requested() {
                    break;
                }
                evaluations += chunk.len();
                let (tol, screen) = self.tolerances();
                let bounds = self.bounds(chunk.iter().copied());
                // Moves that might improve, best bound first (ties: chunk order).
                let mut order: Vec<(f64, usize)> = bounds
                    .iter()
                    .enumerate()
                    .filter_map(|(i, b)| b.filter(|&b| b < -screen).map(|b| (b, i)))
                    .collect();
                order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                let mut best: Option<(usize, Scored)> = None;
                for group in order.chunks(EXACT_GROUP) {
                    let limit = best.as_ref().map_or(-tol, |(_, s)| s.delta);
                    if group[0].0 >= limit {
                        break;
                    }
                    let scored: Vec<(usize, Option<Scored>)> = group
                        .par_iter()
                        .filter(|&&(b, _)| b < limit)
                        .map_init(
                            || self.layout.clone(),
                            |scratch, &(_, i)| (i, self.score(scratch, chunk[i])),
                        )
                        .collect();
                    for (i, s) in scored {
                        let Some(s) = s else { continue };
                        let better = match &best {
                            None => s.delta < -tol,
                            Some((j, b)) => s.delta < b.delta || s.delta == b.delta && i < *j,
                        };
                        if better {
                            best = Some((i, s));
                        }
                    }
                }
                if let Some((_, scored)) = best {
                    self.make(rounds_solver, scored);
                    improved = true;
                }
            }
            if !improved || evaluations >= options.max_evaluations || cancel::requested() {
                break;
            }
        }
    }

    /// Makes a scored move: the layout, the new times of the batches it touched, their
    /// rounds and (where the search keeps them) forced times.
    fn make(&mut self, rounds_solver: &mut RoundsSolver, scored: Scored) {
        self.layout.apply(scored.mv);
        let keeps_forced = !self.forced.is_empty();
        for (b, t) in scored.batches.into_iter().zip(scored.new_times) {
            if keeps_forced {
                self.count_forced_batch(b as usize);
            }
            self.times[b as usize] = t;
            self.rounds[b as usize] =
                rounds_solver.solve(&self.layout, &self.sample.experts[b as usize]);
        }
    }

    /// The improving move of `moves` (with their copies) of best exact net change per
    /// copy (the change of the weighted step-time sum plus `price` per copy, in its units):
    /// every move is bounded, and the moves whose bound could beat the best found so far
    /// are re-timed, best bound per copy first. The bound never exceeds the exact change,
    /// so this is the best of the moves the screen passes (moves that copy nothing first;
    /// ties: the order of `moves`), unless `cap` re-timings stop it first. Returns it
    /// (index, scored), the screened moves best bound first, and the moves re-timed.
    fn best_per_copy(
        &self,
        moves: &[(Move, isize)],
        cap: usize,
        price: f64,
    ) -> (Option<(usize, Scored)>, Vec<usize>, usize) {
        // (copies something, net change per copy): the smaller the better. A move that
        // gives copies back gains their price.
        let key = |delta: f64, copies: isize| {
            let net = delta + price * copies as f64;
            if copies > 0 {
                (1u8, net / copies as f64)
            } else {
                (0u8, net)
            }
        };
        let before = |a: (u8, f64), b: (u8, f64)| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).is_lt();
        let (tol, screen) = self.tolerances();
        let bounds = self.bounds(moves.iter().map(|m| m.0));
        let mut order: Vec<((u8, f64), usize)> = bounds
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let c = moves[i].1;
                b.filter(|&b| b + price * (c as f64) < -screen)
                    .map(|b| (key(b, c), i))
            })
            .collect();
        order.sort_by(|a, b| {
            (a.0 .0.cmp(&b.0 .0))
                .then(a.0 .1.total_cmp(&b.0 .1))
                .then(a.1.cmp(&b.1))
        });
        let mut best: Option<((u8, f64), usize, Scored)> = None;
        let mut timed = 0;
        for group in order.chunks(EXACT_GROUP) {
            let limit = best.as_ref().map(|b| b.0);
            if limit.is_some_and(|l| !before(group[0].0, l)) || timed >= cap {
                break;
            }
            let scored: Vec<(usize, Option<Scored>)> = group
                .par_iter()
                .filter(|&&(k, _)| limit.is_none_or(|l| before(k, l)))
                .map_init(
                    || self.layout.clone(),
                    |scratch, &(_, i)| (i, self.score(scratch, moves[i].0)),
                )
                .collect();
            timed += scored.len();
            for (i, s) in scored {
                let Some(s) = s else { continue };
                if s.delta + price * moves[i].1 as f64 >= -tol {
                    continue;
                }
                let k = key(s.delta, moves[i].1);
                let better = best
                    .as_ref()
                    .is_none_or(|b| before(k, b.0) || !before(b.0, k) && i < b.1);
                if better {
                    best = Some((k, i, s));
                }
            }
        }
        let screened = order.into_iter().map(|x| x.1).collect();
        (best.map(|b| (b.1, b.2)), screened, timed)
    }

    /// Re-planning within `limits.max_copies` copies from `home`, the layout the search
    /// started from: each step makes the improving move of best exact change per copy that
    /// the budget still allows (`best_per_copy`); with `limits.copy_price`, only moves
    /// that lower the mean step time by more than their copies' price improve. The bounds also use each GPU's forced time
    /// (`forced_time`), which the rounds alone leave loose where tokens outweigh rounds:
    /// at B = 256 on a DeepSeek-V3-size layer the rounds passed 44k of 55k moves to exact
    /// timing, and the walk took 2.5x the CPU. A step screens the `SHORTLIST` moves that
    /// screened best at the last screen of all moves; all moves are screened again when
    /// none of those improves. Stops when no move improves, or when
    /// `options.max_evaluations` moves were re-timed.
    fn walk(
        &mut self,
        rounds_solver: &mut RoundsSolver,
        home: &Placement,
        limits: CopyLimits,
        options: BatchSearchOptions,
    ) {
        let max_copies = limits
            .max_copies
            .map_or(isize::MAX, |m| isize::try_from(m).unwrap_or(isize::MAX));
        // The price in units of the weighted sum of step times.
        let price = limits.copy_price * self.sample.weights.iter().sum::<f64>();
        let mut used = 0isize;
        let mut evaluations = 0;
        let mut shortlist: Vec<(Move, isize)> = Vec::new();
        self.count_forced();
        let mut everything = true;
        for step in 0u64.. {
            if evaluations >= options.max_evaluations || cancel::requested() {
                break;
            }
            let left = max_copies - used;
            let moves: Vec<(Move, isize)> = if everything {
                let mut rng = SplitMix64::stream(options.seed, step, 0x3e9a);
                self.candidates(&mut rng)
                    .into_iter()
                    .map(|mv| (mv, move_copies(home, mv)))
                    .filter(|&(_, c)| c <= left)
                    .collect()
            } else {
                let fits =
                    |&&(mv, c): &&(Move, isize)| c <= left && self.layout.allows(mv, self.slots);
                shortlist.iter().filter(fits).copied().collect()
            };
            let cap = EXACT_PER_STEP.min(options.max_evaluations - evaluations);
            let (best, screened, timed) = self.best_per_copy(&moves, cap, price);
            evaluations += timed;
            if everything {
                shortlist = screened.iter().take(SHORTLIST).map(|&i| moves[i]).collect();
            }
            match best {
                Some((i, scored)) => {
                    used += moves[i].1;
                    self.make(rounds_solver, scored);
                    everything = false;
                }
                None if everything => break,
                None => everything = true,
            }
        }
    }

    fn candidates(&self, rng: &mut SplitMix64) -> Vec<Move> {
        let layout = &self.layout;
        let holds = |e: u16, g: u16| layout.holds(e as usize, g as usize);
        let mut replicas: Vec<(u16, u16)> = Vec::new();
        for e in 0..layout.num_experts() {
            for &g in layout.gpus_of(e) {
                replicas.push((e as u16, g));
            }
        }
        let num_experts = layout.num_experts() as u16;
        let num_gpus = layout.num_gpus() as u16;
        let free = |g: u16| layout.used(g as usize) < self.slots;
        let mut out = Vec::new();
        for (a, &(e, g)) in replicas.iter().enumerate() {
            for &(f, h) in &replicas[a + 1..] {
                if e != f && g != h && !holds(e, h) && !holds(f, g) {
                    out.push(Move::Swap {
                        first: e,
                        from: g,
                        second: f,
                        to: h,
                    });
                }
            }
            if layout.replicas(e as usize) >= 2 {
                for f in 0..num_experts {
                    if f != e && !holds(f, g) {
                        out.push(Move::Replace {
                            old: e,
                            gpu: g,
                            new: f,
                        });
                    }
                }
            }
            for h in 0..num_gpus {
                if free(h) && !holds(e, h) {
                    out.push(Move::Relocate {
                        expert: e,
                        from: g,
                        to: h,
                    });
                }
            }
        }
        for h in 0..num_gpus {
            if free(h) {
                for e in 0..num_experts {
                    if !holds(e, h) {
                        out.push(Move::Add { expert: e, gpu: h });
                    }
                }
            }
        }
        // Fisher-Yates with the seeded stream: the order decides which of equal moves wins.
        for i in (1..out.len()).rev() {
            out.swap(i, rng.below(i + 1));
        }
        out
    }
}

/// Options of `optimize_batch`.
#[derive(Debug, Clone, Copy)]
pub struct BatchSearchOptions {
    pub batch_size: usize,
    /// Batches in the fixed sample (identical ones are merged).
    pub num_batches: usize,
    pub seed: u64,
    /// Candidate moves scored at most.
    pub max_evaluations: usize,
}

impl BatchSearchOptions {
    /// Single tokens are timed by the 64-bit matching (~0.1 us), so B = 1 affords 8,192
    /// of them; larger batches get about 8,192 tokens in all, 16 to 512 batches: enough
    /// that what the search gains on the sample carries to other batches, few enough to
    /// score thousands of moves. On the DeepSeek-V3-size layers of
    /// `benches/bench_v3_batch.py` at B = 64, plans on 2,048 tokens (32 batches) fitted
    /// their sample (6 of 16 layers up to 1.2% slower on held batches than the search
    /// before the rounds screen); on 4,096 one of 16 layers was still 0.18% slower; on
    /// 8,192 every one is faster (worst -0.08%), for 1.5x the CPU of 4,096.
    pub fn default_num_batches(batch_size: usize) -> usize {
        if batch_size <= 1 {
            8192
        } else {
            (8192 / batch_size).clamp(16, 512)
        }
    }
}

/// A placement within `slots_per_gpu` that lowers the mean step time of sampled batches
/// of `batch_size` tokens of the (one-layer) trace, starting from `start`. Never worse
/// than `start` on the sample.
pub fn optimize_batch(
    trace: &Trace,
    start: &Placement,
    slots_per_gpu: usize,
    model: CostModel,
    options: BatchSearchOptions,
) -> Result<Placement> {
    search_batch(trace, start, slots_per_gpu, model, options, None)
}

/// What a batch re-plan may copy: at most `max_copies` copies (None: any), each priced
/// `copy_price` in the cost model's time unit of mean step time (us for the presets): a
/// move is made only if it lowers the mean step time of the sample by more than its
/// copies' price. A copy of `c` us amortized over the `T` tokens served until the next
/// re-plan costs `c x B / T` per step of B tokens.
#[derive(Debug, Clone, Copy, Default)]
pub struct CopyLimits {
    pub max_copies: Option<usize>,
    pub copy_price: f64,
}

/// Re-planning for batches: from `current` (the placement served), the walk by gain per
/// copy (`Search::walk`) within `limits`, copies being replicas of the result that
/// `current` lacks on their GPU (`crate::search::replan::copies`). Never worse than `current` on
/// the sample (time plus the copies' price). `options.max_evaluations` bounds the moves
/// re-timed exactly.
pub fn replan_batch(
    trace: &Trace,
    current: &Placement,
    slots_per_gpu: usize,
    model: CostModel,
    options: BatchSearchOptions,
    limits: CopyLimits,
) -> Result<Placement> {
    if !(limits.copy_price.is_finite() && limits.copy_price >= 0.0) {
        return Err(MoeError::value(format!(
            "copy_price = {}: must be finite and non-negative",
            limits.copy_price
        )));
    }
    let budget = Some((current, limits));
    search_batch(trace, current, slots_per_gpu, model, options, budget)
}

fn search_batch(
    trace: &Trace,
    start: &Placement,
    slots_per_gpu: usize,
    model: CostModel,
    options: BatchSearchOptions,
    budget: Option<(&Placement, CopyLimits)>,
) -> Result<Placement> {
    if trace.num_layers() != 1 {
        return Err(MoeError::value(format!(
            "optimize_batch takes one layer, the trace has {}",
            trace.num_layers()
        )));
    }
    if options.batch_size == 0 || options.num_batches == 0 {
        return Err(MoeError::value(
            "batch_size and num_batches must be at least 1",
        ));
    }
    if options.batch_size > MAX_BATCH || options.num_batches > MAX_SAMPLE_BATCHES {
        return Err(MoeError::value(format!(
            "batch_size must be at most {MAX_BATCH} and num_batches at most {MAX_SAMPLE_BATCHES}, \
             got {} and {}",
            options.batch_size, options.num_batches
        )));
    }
    // Each limit alone still allows 2^44 sampled tokens: hours of drawing before the search.
    if options.batch_size.saturating_mul(options.num_batches) > MAX_SAMPLED_TOKENS {
        return Err(MoeError::value(format!(
            "batch_size x num_batches = {} x {} is more than {MAX_SAMPLED_TOKENS} sampled tokens",
            options.batch_size, options.num_batches
        )));
    }
    let used = start.slots_used();
    if let Some((g, &n)) = used.iter().enumerate().find(|(_, &n)| n > slots_per_gpu) {
        return Err(MoeError::value(format!(
            "the start placement puts {n} experts on GPU {g}, more than slots_per_gpu = {slots_per_gpu}"
        )));
    }
    let sample = sample_batches(
        trace,
        start.num_experts(),
        options.batch_size,
        options.num_batches,
        options.seed,
    );
    let mut solver = StepTimeSolver::new(start, model);
    let times: Vec<f64> = (0..sample.weights.len())
        .map(|b| time_batch(&mut solver, &sample, b))
        .collect();
    let layout = Layout::from_placement(start);
    let mut rounds_solver = RoundsSolver::new(layout.num_gpus());
    let rounds = (0..sample.weights.len())
        .map(|b| rounds_solver.solve(&layout, &sample.experts[b]))
        .collect();
    let mut search = Search {
        sample: &sample,
        model,
        slots: slots_per_gpu,
        layout,
        times,
        rounds,
        unit: model.expert_time(1),
        forced: Vec::new(),
    };
    match budget {
        None => search.passes(&mut rounds_solver, options),
        Some((home, limits)) => search.walk(&mut rounds_solver, home, limits, options),
    }
    search.layout.to_placement()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 600 tokens of two experts each, the first among the lower half of the ids.
    fn pair_trace(rng: &mut SplitMix64, experts: usize) -> Trace {
        let ids: Vec<i64> = (0..600)
            .flat_map(|_| {
                let a = rng.below(experts / 2) as i64;
                let b = (a + 1 + rng.below(experts - 1) as i64) % experts as i64;
                [a, b]
            })
            .collect();
        Trace::new(&ids, 1, 2, &[experts], None).unwrap()
    }

    fn mean_time(trace: &Trace, p: &Placement, m: CostModel, batch: usize) -> f64 {
        let s = sample_batches(trace, p.num_experts(), batch, 2000, 99);
        let mut solver = StepTimeSolver::new(p, m);
        let sum: f64 = (0..s.weights.len())
            .map(|b| s.weights[b] * time_batch(&mut solver, &s, b))
            .sum();
        sum / s.weights.iter().sum::<f64>()
    }

    #[test]
    fn separates_co_activated_experts() {
        // Tokens pick {0, 1} or {2, 3}; the start puts each pair on one GPU.
        let ids: Vec<i64> = (0..100)
            .flat_map(|i| if i % 2 == 0 { [0, 1] } else { [2, 3] })
            .collect();
        let trace = Trace::new(&ids, 1, 2, &[4], None).unwrap();
        let start = Placement::from_lists(&[vec![0], vec![0], vec![1], vec![1]], 2).unwrap();
        let m = CostModel::new(10.0, 0.1, 1.0).unwrap();
        let opts = BatchSearchOptions {
            batch_size: 1,
            num_batches: 64,
            seed: 0,
            max_evaluations: 10_000,
        };
        let p = optimize_batch(&trace, &start, 2, m, opts).unwrap();
        assert!(!p.holds(0, p.gpus_of(1)[0] as usize) || p.gpus_of(0).len() > 1);
        assert!((mean_time(&trace, &p, m, 1) - m.expert_time(1)).abs() < 1e-9);
        assert!(p.slots_used().iter().all(|&n| n <= 2));
    }

    #[test]
    fn never_worse_on_its_sample_and_keeps_slots() {
        let ids: Vec<i64> = (0..3000)
            .flat_map(|i: i64| [(i * i) % 7, (i * i) % 7 + 1 + (i % 3)])
            .collect();
        let trace = Trace::new(&ids, 1, 2, &[10], None).unwrap();
        let lists: Vec<Vec<usize>> = (0..10).map(|e| vec![e % 4]).collect();
        let start = Placement::from_lists(&lists, 4).unwrap();
        let m = CostModel::new(5.0, 0.2, 2.0).unwrap();
        for batch in [1, 16, 256] {
            let opts = BatchSearchOptions {
                batch_size: batch,
                num_batches: 64,
                seed: 1,
                max_evaluations: 3000,
            };
            let p = optimize_batch(&trace, &start, 3, m, opts).unwrap();
            assert!(p.slots_used().iter().all(|&n| n <= 3));
            let s = sample_batches(&trace, 10, batch, 64, 1);
            let eval = |pl: &Placement| {
                let mut solver = StepTimeSolver::new(pl, m);
                (0..s.weights.len())
                    .map(|b| s.weights[b] * time_batch(&mut solver, &s, b))
                    .sum::<f64>()
            };
            assert!(eval(&p) <= eval(&start) + 1e-9);
        }
    }

    /// The screen's bound never exceeds the exact change (re-timing every touched batch
    /// from scratch), for every candidate move of random layouts, batch sizes and models.
    #[test]
    fn bound_is_below_the_exact_change() {
        let mut rng = SplitMix64::new(3);
        let mut checked = 0;
        let mut tight = 0;
        for case in 0..12 {
            let (experts, gpus, slots) = [(12, 4, 4), (20, 6, 4), (9, 3, 5)][case % 3];
            let ids: Vec<i64> = (0..400)
                .flat_map(|_| {
                    let a = rng.below(experts) as i64;
                    let b = (a + 1 + rng.below(experts - 1) as i64) % experts as i64;
                    [a, b]
                })
                .collect();
            let trace = Trace::new(&ids, 1, 2, &[experts], None).unwrap();
            let mut layout = Layout::new(experts, gpus);
            for e in 0..experts {
                layout.add(e, e % gpus);
            }
            for _ in 0..gpus * slots {
                let (e, g) = (rng.below(experts), rng.below(gpus));
                if !layout.holds(e, g) && layout.used(g) < slots {
                    layout.add(e, g);
                }
            }
            let model = [
                CostModel::new(47.0, 0.11, 1.5).unwrap(),
                CostModel::new(5.0, 1.0, 1.0).unwrap(),
            ][case % 2];
            let batch = [1, 3, 16][case % 3];
            let sample = sample_batches(&trace, experts, batch, 40, case as u64);
            let start = layout.to_placement().unwrap();
            let mut solver = StepTimeSolver::new(&start, model);
            let times = (0..sample.weights.len())
                .map(|b| time_batch(&mut solver, &sample, b))
                .collect();
            let mut rounds_solver = RoundsSolver::new(gpus);
            let rounds = (0..sample.weights.len())
                .map(|b| rounds_solver.solve(&layout, &sample.experts[b]))
                .collect();
            let mut search = Search {
                sample: &sample,
                model,
                slots: slots + 1,
                layout: layout.clone(),
                times,
                rounds,
                unit: model.expert_time(1),
                forced: Vec::new(),
            };
            let mut scratch = layout.clone();
            let mut matching = SemiMatching::new(gpus);
            // Rounds alone (the unbudgeted search), then with forced times (re-planning).
            for with_forced in [false, true] {
                if with_forced {
                    search.count_forced();
                }
                for mv in search.candidates(&mut rng) {
                    let Some(bound) = search.bound(&mut scratch, &mut matching, mv) else {
                        continue;
                    };
                    let exact = search.score(&mut scratch, mv).unwrap().delta;
                    assert!(
                        bound <= exact + 1e-9 * exact.abs().max(1.0),
                        "{mv:?}: {bound} > {exact}"
                    );
                    checked += 1;
                    if with_forced {
                        // Never looser than the rounds alone; tighter where tokens weigh.
                        let forced = std::mem::take(&mut search.forced);
                        let plain = search.bound(&mut scratch, &mut matching, mv).unwrap();
                        search.forced = forced;
                        assert!(bound >= plain - 1e-9 * plain.abs().max(1.0));
                        tight += usize::from(bound > plain + 1e-9 * plain.abs().max(1.0));
                    }
                }
            }
            assert_eq!(scratch, layout);
        }
        assert!(checked > 2000, "{checked}");
        assert!(tight > 100, "the forced times tightened {tight} bounds");
    }

    /// Re-planning keeps its budget, is never worse than the served placement on its
    /// sample, and with one copy at B = 1 (every gain a whole expert run, so the screen
    /// passes every improving move) is at least as good as the best single move of one
    /// copy found by timing every move of every case exactly.
    #[test]
    fn replanning_keeps_its_budget_and_beats_every_single_copy() {
        let mut rng = SplitMix64::new(17);
        let m = CostModel::new(47.0, 0.11, 1.5).unwrap();
        let mut improved = 0;
        for case in 0..10 {
            let (experts, gpus, slots) = [(10, 3, 4), (13, 4, 4), (9, 4, 3)][case % 3];
            let trace = pair_trace(&mut rng, experts);
            let mut layout = Layout::new(experts, gpus);
            for e in 0..experts {
                layout.add(e, (e + case) % gpus);
            }
            while (0..gpus).any(|g| layout.used(g) < slots) {
                let (e, g) = (rng.below(experts), rng.below(gpus));
                if !layout.holds(e, g) && layout.used(g) < slots {
                    layout.add(e, g);
                }
            }
            let current = layout.to_placement().unwrap();
            let batch = [1, 4][case % 2];
            let opts = BatchSearchOptions {
                batch_size: batch,
                num_batches: 48,
                seed: case as u64,
                max_evaluations: 100_000,
            };
            let sample = sample_batches(&trace, experts, batch, 48, case as u64);
            let objective = |p: &Placement| {
                let mut solver = StepTimeSolver::new(p, m);
                (0..sample.weights.len())
                    .map(|b| sample.weights[b] * time_batch(&mut solver, &sample, b))
                    .sum::<f64>()
            };
            let stale = objective(&current);
            for budget in [0, 1, 2, 4] {
                let l = CopyLimits {
                    max_copies: Some(budget),
                    copy_price: 0.0,
                };
                let p = replan_batch(&trace, &current, slots, m, opts, l).unwrap();
                assert!(
                    crate::search::replan::copies(&current, &p) <= budget,
                    "case {case}"
                );
                assert!(p.slots_used().iter().all(|&n| n <= slots));
                assert!(objective(&p) <= stale + 1e-9 * stale, "case {case}");
                if budget == 0 {
                    assert_eq!(objective(&p), stale);
                }
                if budget == 4 && objective(&p) < stale * (1.0 - 1e-6) {
                    improved += 1;
                }
                if budget == 1 && batch == 1 {
                    let search_layout = Layout::from_placement(&current);
                    let mut best = stale;
                    let mut tried = 0;
                    for mv in all_moves(&search_layout, slots) {
                        if move_copies(&current, mv) > 1 {
                            continue;
                        }
                        let mut l = search_layout.clone();
                        l.apply(mv);
                        best = best.min(objective(&l.to_placement().unwrap()));
                        tried += 1;
                    }
                    assert!(tried > 10);
                    assert!(objective(&p) <= best + 1e-9 * best, "case {case}");
                }
            }
        }
        assert!(improved >= 5, "only {improved} of 10 re-plans gained");
    }

    /// A copy's price: a huge one keeps the served placement; a moderate one copies no
    /// more than the free walk, lowers the mean step time on the sample by more than the
    /// copies' price, and keeps the budget given with it; a negative or NaN one is refused.
    #[test]
    fn a_copy_price_holds_back_the_batch_walk() {
        let mut rng = SplitMix64::new(5);
        let (experts, gpus, slots) = (13, 4, 4);
        let trace = pair_trace(&mut rng, experts);
        let lists: Vec<Vec<usize>> = (0..experts).map(|e| vec![e % gpus]).collect();
        let mut layout = Layout::from_placement(&Placement::from_lists(&lists, gpus).unwrap());
        while (0..gpus).any(|g| layout.used(g) < slots) {
            let (e, g) = (rng.below(experts), rng.below(gpus));
            if !layout.holds(e, g) && layout.used(g) < slots {
                layout.add(e, g);
            }
        }
        let current = layout.to_placement().unwrap();
        let m = CostModel::new(47.0, 0.11, 1.5).unwrap();
        let opts = BatchSearchOptions {
            batch_size: 4,
            num_batches: 48,
            seed: 2,
            max_evaluations: 100_000,
        };
        let sample = sample_batches(&trace, experts, 4, 48, 2);
        let mean = |p: &Placement| {
            let mut solver = StepTimeSolver::new(p, m);
            (0..sample.weights.len())
                .map(|b| sample.weights[b] * time_batch(&mut solver, &sample, b))
                .sum::<f64>()
                / sample.weights.iter().sum::<f64>()
        };
        let run = |max_copies: Option<usize>, copy_price: f64| {
            let l = CopyLimits {
                max_copies,
                copy_price,
            };
            replan_batch(&trace, &current, slots, m, opts, l)
        };
        let copies = |p: &Placement| crate::search::replan::copies(&current, p);
        let free = run(None, 0.0).unwrap();
        let stale = mean(&current);
        let gain = stale - mean(&free);
        assert!(gain > 0.0 && copies(&free) > 1, "{gain} {}", copies(&free));
        assert_eq!(run(None, 1e9).unwrap(), current);
        let price = gain / copies(&free) as f64;
        for budget in [None, Some(2)] {
            let p = run(budget, price).unwrap();
            let c = copies(&p);
            assert!(
                c <= copies(&free) && c <= budget.unwrap_or(usize::MAX),
                "{c}"
            );
            assert!(mean(&p) + price * c as f64 <= stale, "{} {c}", mean(&p));
        }
        for bad in [-1.0, f64::NAN] {
            let msg = run(Some(1), bad).unwrap_err().to_string();
            assert!(msg.contains("copy_price"), "{msg}");
        }
    }

    /// Every swap and replacement of `layout` (the moves of a full layout), plainly.
    fn all_moves(layout: &Layout, slots: usize) -> Vec<Move> {
        let (experts, gpus) = (layout.num_experts() as u16, layout.num_gpus() as u16);
        let mut out = Vec::new();
        for e in 0..experts {
            for &g in layout.gpus_of(e as usize) {
                for f in 0..experts {
                    for &h in layout.gpus_of(f as usize) {
                        out.push(Move::Swap {
                            first: e,
                            from: g,
                            second: f,
                            to: h,
                        });
                    }
                    out.push(Move::Replace {
                        old: e,
                        gpu: g,
                        new: f,
                    });
                }
            }
        }
        assert!(gpus > 0);
        out.retain(|&mv| layout.allows(mv, slots));
        out
    }

    #[test]
    fn rejects_overfull_start() {
        let trace = Trace::new(&[0, 1], 1, 2, &[2], None).unwrap();
        let start = Placement::from_lists(&[vec![0], vec![0]], 1).unwrap();
        let m = CostModel::new(1.0, 1.0, 1.0).unwrap();
        let opts = BatchSearchOptions {
            batch_size: 1,
            num_batches: 4,
            seed: 0,
            max_evaluations: 10,
        };
        assert!(optimize_batch(&trace, &start, 1, m, opts)
            .unwrap_err()
            .to_string()
            .contains("slots_per_gpu"));
        let huge = BatchSearchOptions {
            batch_size: 1 << 24,
            num_batches: 1 << 20,
            seed: 0,
            max_evaluations: 1,
        };
        let err = optimize_batch(&trace, &start, 2, m, huge).unwrap_err();
        assert!(err.to_string().contains("sampled tokens"), "{err}");
    }
}
