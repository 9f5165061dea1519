//! Batch-aware placement: local search over replica moves, swaps and re-placements,
//! scored by the mean step time of a fixed sample of batches (common random numbers, so
//! two placements are compared on the same batches and small gains are not noise).
//!
//! A move changes the replicas of at most two experts, so only the sampled batches that
//! hold one of them are re-timed. Candidate moves are scored in parallel in chunks; the
//! best improving move of a chunk is applied, until a whole pass finds none.

use rayon::prelude::*;
use std::collections::BTreeMap;

use super::cost_model::CostModel;
use super::simulate::Trace;
use super::step_time::StepTimeSolver;
use crate::cancel;
use crate::error::{MoeError, Result};
use crate::placement::Placement;
use crate::rng::SplitMix64;

/// Candidate moves scored per parallel round (a few per thread keeps threads busy).
const CHUNK: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    /// Expert `e` on GPU `g` and expert `f` on GPU `h` trade places.
    Swap { e: u32, g: u16, f: u32, h: u16 },
    /// A replica of `e` (which keeps another) on GPU `g` becomes a replica of `f`.
    Replace { e: u32, g: u16, f: u32 },
    /// The replica of `e` on GPU `g` moves to GPU `h`, which has a free slot.
    Relocate { e: u32, g: u16, h: u16 },
    /// A new replica of `e` on GPU `h`, which has a free slot.
    Add { e: u32, h: u16 },
}

/// Sampled batches as sparse (expert, tokens) lists, identical batches merged.
struct Sample {
    experts: Vec<Vec<u32>>,
    counts: Vec<Vec<u32>>,
    weights: Vec<f64>,
    /// Batches holding each expert.
    by_expert: Vec<Vec<u32>>,
}

fn sample_batches(
    trace: &Trace,
    num_experts: usize,
    batch_size: usize,
    num_batches: usize,
    seed: u64,
) -> Sample {
    let mut merged: BTreeMap<Vec<(u32, u32)>, f64> = BTreeMap::new();
    let mut tokens = Vec::new();
    let mut count = vec![0u32; num_experts];
    for b in 0..num_batches {
        let mut rng = SplitMix64::stream(seed, u64::MAX, b as u64);
        trace.draw(&mut rng, batch_size, &mut tokens);
        let mut touched = Vec::new();
        for &t in &tokens {
            for &e in trace.experts(t, 0) {
                if count[e as usize] == 0 {
                    touched.push(e as u32);
                }
                count[e as usize] += 1;
            }
        }
        touched.sort_unstable();
        let key: Vec<(u32, u32)> = touched
            .iter()
            .map(|&e| (e, std::mem::take(&mut count[e as usize])))
            .collect();
        *merged.entry(key).or_insert(0.0) += 1.0;
    }
    let mut s = Sample {
        experts: Vec::new(),
        counts: Vec::new(),
        weights: Vec::new(),
        by_expert: vec![Vec::new(); num_experts],
    };
    for (b, (key, w)) in merged.into_iter().enumerate() {
        for &(e, _) in &key {
            s.by_expert[e as usize].push(b as u32);
        }
        s.experts.push(key.iter().map(|x| x.0).collect());
        s.counts.push(key.iter().map(|x| x.1).collect());
        s.weights.push(w);
    }
    s
}

fn time_batch(solver: &mut StepTimeSolver<'_>, sample: &Sample, b: usize) -> f64 {
    let (experts, counts) = (&sample.experts[b], &sample.counts[b]);
    if counts.iter().all(|&c| c == 1) {
        if let Some(t) = solver.unit_time(experts) {
            return t;
        }
    }
    solver.set_counts(experts, counts);
    solver.solve()
}

/// A scored move: the change of the weighted step-time sum, the placement after it and
/// the new times of the batches it touches.
struct Scored {
    delta: f64,
    lists: Vec<Vec<usize>>,
    batches: Vec<u32>,
    new_times: Vec<f64>,
}

struct Search<'a> {
    sample: &'a Sample,
    model: CostModel,
    slots: usize,
    lists: Vec<Vec<usize>>,
    num_gpus: usize,
    times: Vec<f64>,
}

impl Search<'_> {
    fn holds(&self, e: u32, g: u16) -> bool {
        self.lists[e as usize].contains(&(g as usize))
    }

    fn slots_used(&self) -> Vec<usize> {
        let mut used = vec![0; self.num_gpus];
        for l in &self.lists {
            for &g in l {
                used[g] += 1;
            }
        }
        used
    }

    /// The lists after `mv`, or None if it is not valid now (an earlier move of the same
    /// pass may have changed the placement).
    fn apply_to(&self, mv: Move, used: &[usize]) -> Option<(Vec<Vec<usize>>, [u32; 2])> {
        let mut lists = self.lists.clone();
        let replace = |l: &mut Vec<usize>, from: usize, to: usize| {
            let i = l.iter().position(|&x| x == from).unwrap();
            l[i] = to;
            l.sort_unstable();
        };
        match mv {
            Move::Swap { e, g, f, h } => {
                if e == f
                    || g == h
                    || !self.holds(e, g)
                    || !self.holds(f, h)
                    || self.holds(e, h)
                    || self.holds(f, g)
                {
                    return None;
                }
                replace(&mut lists[e as usize], g as usize, h as usize);
                replace(&mut lists[f as usize], h as usize, g as usize);
                Some((lists, [e, f]))
            }
            Move::Replace { e, g, f } => {
                if e == f
                    || !self.holds(e, g)
                    || self.lists[e as usize].len() < 2
                    || self.holds(f, g)
                {
                    return None;
                }
                lists[e as usize].retain(|&x| x != g as usize);
                lists[f as usize].push(g as usize);
                lists[f as usize].sort_unstable();
                Some((lists, [e, f]))
            }
            Move::Relocate { e, g, h } => {
                if !self.holds(e, g) || self.holds(e, h) || used[h as usize] >= self.slots {
                    return None;
                }
                replace(&mut lists[e as usize], g as usize, h as usize);
                Some((lists, [e, e]))
            }
            Move::Add { e, h } => {
                if self.holds(e, h) || used[h as usize] >= self.slots {
                    return None;
                }
                lists[e as usize].push(h as usize);
                lists[e as usize].sort_unstable();
                Some((lists, [e, e]))
            }
        }
    }

    fn affected(&self, experts: [u32; 2]) -> Vec<u32> {
        let mut b: Vec<u32> = self.sample.by_expert[experts[0] as usize].clone();
        if experts[1] != experts[0] {
            b.extend_from_slice(&self.sample.by_expert[experts[1] as usize]);
            b.sort_unstable();
            b.dedup();
        }
        b
    }

    /// Change of the weighted sum of step times if `mv` were applied (None: invalid),
    /// with the new times of the affected batches.
    fn score(&self, mv: Move, used: &[usize]) -> Option<Scored> {
        let (lists, experts) = self.apply_to(mv, used)?;
        let placement = Placement::from_lists(&lists, self.num_gpus).ok()?;
        let mut solver = StepTimeSolver::new(&placement, self.model);
        let batches = self.affected(experts);
        let mut delta = 0.0;
        let mut new_times = Vec::with_capacity(batches.len());
        for &b in &batches {
            let t = time_batch(&mut solver, self.sample, b as usize);
            delta += self.sample.weights[b as usize] * (t - self.times[b as usize]);
            new_times.push(t);
        }
        Some(Scored {
            delta,
            lists,
            batches,
            new_times,
        })
    }

    fn candidates(&self, rng: &mut SplitMix64) -> Vec<Move> {
        let used = self.slots_used();
        let mut replicas: Vec<(u32, u16)> = Vec::new();
        for (e, l) in self.lists.iter().enumerate() {
            for &g in l {
                replicas.push((e as u32, g as u16));
            }
        }
        let num_experts = self.lists.len() as u32;
        let mut out = Vec::new();
        for (a, &(e, g)) in replicas.iter().enumerate() {
            for &(f, h) in &replicas[a + 1..] {
                if e != f && g != h && !self.holds(e, h) && !self.holds(f, g) {
                    out.push(Move::Swap { e, g, f, h });
                }
            }
            if self.lists[e as usize].len() >= 2 {
                for f in 0..num_experts {
                    if f != e && !self.holds(f, g) {
                        out.push(Move::Replace { e, g, f });
                    }
                }
            }
            for h in 0..self.num_gpus as u16 {
                if used[h as usize] < self.slots && !self.holds(e, h) {
                    out.push(Move::Relocate { e, g, h });
                }
            }
        }
        for h in 0..self.num_gpus as u16 {
            if used[h as usize] < self.slots {
                for e in 0..num_experts {
                    if !self.holds(e, h) {
                        out.push(Move::Add { e, h });
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
    /// of them; larger batches get about 2,048 tokens in all, 16 to 512 batches: enough
    /// that the sample's mean step time is stable, few enough to score thousands of moves.
    pub fn default_num_batches(batch_size: usize) -> usize {
        if batch_size <= 1 {
            8192
        } else {
            (2048 / batch_size).clamp(16, 512)
        }
    }
}

/// Tokens drawn for the sample in all (the default sample of the largest batch is 2^28).
pub const MAX_SAMPLED_TOKENS: usize = 1 << 28;

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
    if options.batch_size > super::simulate::MAX_BATCH || options.num_batches > 1 << 20 {
        return Err(MoeError::value(format!(
            "batch_size must be at most {} and num_batches at most 2^20, got {} and {}",
            super::simulate::MAX_BATCH,
            options.batch_size,
            options.num_batches
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
    let mut search = Search {
        sample: &sample,
        model,
        slots: slots_per_gpu,
        lists: start.to_lists(),
        num_gpus: start.num_gpus(),
        times,
    };
    let mut evaluations = 0;
    for pass in 0u64.. {
        let mut rng = SplitMix64::stream(options.seed, pass, 0x5eed);
        let candidates = search.candidates(&mut rng);
        let mut improved = false;
        for chunk in candidates.chunks(CHUNK) {
            if evaluations >= options.max_evaluations || cancel::requested() {
                break;
            }
            evaluations += chunk.len();
            let used = search.slots_used();
            let scored: Vec<_> = chunk
                .par_iter()
                .map(|&mv| search.score(mv, &used))
                .collect();
            let objective: f64 = search
                .times
                .iter()
                .zip(&sample.weights)
                .map(|(t, w)| t * w)
                .sum();
            let tol = 1e-9 * objective.max(1e-300);
            let best = scored
                .into_iter()
                .flatten()
                .filter(|s| s.delta < -tol)
                .min_by(|a, b| a.delta.total_cmp(&b.delta));
            if let Some(Scored {
                lists,
                batches,
                new_times,
                ..
            }) = best
            {
                search.lists = lists;
                for (b, t) in batches.into_iter().zip(new_times) {
                    search.times[b as usize] = t;
                }
                improved = true;
            }
        }
        if !improved || evaluations >= options.max_evaluations || cancel::requested() {
            break;
        }
    }
    Placement::from_lists(&search.lists, search.num_gpus)
}

#[cfg(test)]
mod tests {
    use super::*;

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
