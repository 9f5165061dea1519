//! The local search of the step-time solver: descents that shift tokens of one expert
//! between its replicas or exchange tokens of two experts between two GPUs, and seeded
//! random kicks from the best assignment.

use super::StepTimeSolver;
use crate::model::placement::Replicas;
use crate::util::rng::SplitMix64;

/// Relative slack under which a move does not count as an improvement.
const REL_TOL: f64 = 1e-12;
/// Random restarts of the local search when the bounds do not prove the best optimal.
const KICKS: usize = 8;

/// A move of the local search: tokens change replicas (the placement never changes).
#[derive(Clone, Copy)]
pub(super) enum Rebalance {
    /// Shift `y` tokens of local expert i from its replica `from` to its replica `to`.
    Shift {
        i: usize,
        from: usize,
        to: usize,
        y: u32,
    },
    /// Shift `yi` tokens of i from `from` to `to`, and `yj` tokens of j from `to`'s GPU
    /// (its replica `j_from`) back to `from`'s GPU (its replica `j_to`).
    Exchange {
        i: usize,
        from: usize,
        to: usize,
        yi: u32,
        j: usize,
        j_from: usize,
        j_to: usize,
        yj: u32,
    },
}

impl<P: Replicas> StepTimeSolver<'_, P> {
    /// Iterated local search: descents stop where only a move of two experts at once
    /// (through a GPU that is not the busiest) helps. A few seeded random kicks of the
    /// best assignment, each followed by a descent, get past most of those.
    pub(super) fn perturb_from_best(&mut self, best: &mut f64, bound: f64) {
        let mut seed = self.experts.len() as u64;
        for (&e, &c) in self.experts.iter().zip(&self.counts) {
            seed = seed.wrapping_mul(0x100_0000_01b3) ^ ((e as u64) << 32 | c as u64);
        }
        let mut rng = SplitMix64::new(seed);
        let movable: Vec<usize> = (0..self.experts.len())
            .filter(|&i| self.gpus_of(i).len() > 1)
            .collect();
        if movable.is_empty() {
            return;
        }
        for _ in 0..KICKS {
            self.parts.clone_from(&self.best_parts);
            self.recompute_loads();
            for _ in 0..2 {
                let i = movable[rng.below(movable.len())];
                let reps = self.gpus_of(i).len();
                let off = self.part_off[i];
                let from = (0..reps).find(|&r| self.parts[off + r] > 0).unwrap();
                let to = (from + 1 + rng.below(reps - 1)) % reps;
                let x = self.parts[off + from];
                let y = if rng.below(2) == 0 { x } else { x.div_ceil(2) };
                self.shift(i, from, to, y);
            }
            self.local_search();
            self.keep_if_better(best);
            if *best <= bound * (1.0 + 1e-9) {
                return;
            }
        }
    }

    /// Descent on the busiest GPU: shift tokens of one of its experts to another replica
    /// (all of them, or the amount that best balances the two GPUs), else exchange tokens
    /// with an expert on that replica's GPU, while that lowers the pair's maximum.
    pub(super) fn local_search(&mut self) {
        self.recompute_loads();
        let max_moves = 4 * (self.experts.len() + self.active_gpus.len()) + 64;
        for _ in 0..max_moves {
            let (gstar, top) = self
                .active_gpus
                .iter()
                .map(|&g| (g, self.load[g as usize]))
                .fold(
                    (0u16, f64::NEG_INFINITY),
                    |a, b| if b.1 > a.1 { b } else { a },
                );
            let limit = top - REL_TOL * top.abs().max(1e-300);
            let found = self
                .best_shift(gstar, top, limit)
                .or_else(|| self.best_exchange(gstar, top, limit));
            match found {
                Some(mv) => self.apply(mv),
                None => break,
            }
        }
    }

    pub(super) fn best_shift(&self, gstar: u16, top: f64, limit: f64) -> Option<Rebalance> {
        let mut best_val = limit;
        let mut best = None;
        for &(i, r) in &self.gpu_parts[gstar as usize] {
            let (i, r) = (i as usize, r as usize);
            let off = self.part_off[i];
            let x = self.parts[off + r];
            if x == 0 {
                continue;
            }
            let base_g = top - self.f(x);
            for (r2, &h) in self.gpus_of(i).iter().enumerate() {
                if r2 == r {
                    continue;
                }
                let xh = self.parts[off + r2];
                let base_h = self.load[h as usize] - self.f(xh);
                let here = |y: u32| base_g + self.f(x - y);
                let there = |y: u32| base_h + self.f(xh + y);
                // here() falls and there() rises with y: the best y is at their crossing.
                let (mut lo, mut hi) = (1u32, x);
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    if there(mid) >= here(mid) {
                        hi = mid;
                    } else {
                        lo = mid + 1;
                    }
                }
                for y in [lo.saturating_sub(1).max(1), lo] {
                    let val = here(y).max(there(y));
                    if val < best_val {
                        best_val = val;
                        best = Some(Rebalance::Shift {
                            i,
                            from: r,
                            to: r2,
                            y,
                        });
                    }
                }
            }
        }
        best
    }

    /// Exchanges between the busiest GPU and another: some tokens of expert i go from
    /// it to i's replica on GPU h while some tokens of an expert j on h come back (j must
    /// have a replica on the busiest GPU). Whole swaps are the case y_i = x_i, y_j = x_j.
    pub(super) fn best_exchange(&self, gstar: u16, top: f64, limit: f64) -> Option<Rebalance> {
        let mut best_val = limit;
        let mut best = None;
        for &(i, r) in &self.gpu_parts[gstar as usize] {
            let (i, r) = (i as usize, r as usize);
            let off = self.part_off[i];
            let x = self.parts[off + r];
            if x == 0 {
                continue;
            }
            // A few amounts for i (all of it, and eighths): the search over j's amount is exact.
            let mut amounts = [0u32; 8];
            for (q, a) in amounts.iter_mut().enumerate() {
                *a = if q == 0 {
                    x
                } else {
                    (x as u64 * q as u64).div_ceil(8) as u32
                };
            }
            for (r2, &h) in self.gpus_of(i).iter().enumerate() {
                if r2 == r {
                    continue;
                }
                let xh = self.parts[off + r2];
                for &(j, rj) in &self.gpu_parts[h as usize] {
                    let (j, rj) = (j as usize, rj as usize);
                    let xj = self.parts[self.part_off[j] + rj];
                    if j == i || xj == 0 {
                        continue;
                    }
                    let Ok(jg) = self.gpus_of(j).binary_search(&gstar) else {
                        continue;
                    };
                    let xjg = self.parts[self.part_off[j] + jg];
                    let base_g = top - self.f(x) - self.f(xjg);
                    let base_h = self.load[h as usize] - self.f(xh) - self.f(xj);
                    for (q, &yi) in amounts.iter().enumerate() {
                        if yi == 0 || (q > 0 && yi == amounts[q - 1]) {
                            continue;
                        }
                        let g_at = |yj: u32| base_g + self.f(x - yi) + self.f(xjg + yj);
                        let h_at = |yj: u32| base_h + self.f(xh + yi) + self.f(xj - yj);
                        let (mut lo, mut hi) = (1u32, xj);
                        while lo < hi {
                            let mid = lo + (hi - lo) / 2;
                            if g_at(mid) >= h_at(mid) {
                                hi = mid;
                            } else {
                                lo = mid + 1;
                            }
                        }
                        for yj in [lo - 1, lo] {
                            let val = g_at(yj).max(h_at(yj));
                            if yj > 0 && val < best_val {
                                best_val = val;
                                best = Some(Rebalance::Exchange {
                                    i,
                                    from: r,
                                    to: r2,
                                    yi,
                                    j,
                                    j_from: rj,
                                    j_to: jg,
                                    yj,
                                });
                            }
                        }
                    }
                }
            }
        }
        best
    }

    pub(super) fn shift(&mut self, i: usize, from: usize, to: usize, y: u32) {
        let off = self.part_off[i];
        let gpus = self.gpus_of(i);
        let (a, b) = (self.parts[off + from], self.parts[off + to]);
        self.load[gpus[from] as usize] += self.f(a - y) - self.f(a);
        self.load[gpus[to] as usize] += self.f(b + y) - self.f(b);
        self.parts[off + from] = a - y;
        self.parts[off + to] = b + y;
    }

    pub(super) fn apply(&mut self, mv: Rebalance) {
        match mv {
            Rebalance::Shift { i, from, to, y } => self.shift(i, from, to, y),
            Rebalance::Exchange {
                i,
                from,
                to,
                yi,
                j,
                j_from,
                j_to,
                yj,
            } => {
                self.shift(i, from, to, yi);
                self.shift(j, j_from, j_to, yj);
            }
        }
    }
}
