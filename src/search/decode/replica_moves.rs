//! Move gains of single replicas of replicated experts, for the swaps of `move_gains`.
//!
//! Each replica of an expert with several replicas has a slot of its own in the gain
//! table: for every GPU, the change of the total if that replica alone moved there. On a
//! row it is counted as if the expert were the row's only replicated one: the expert
//! runs on whichever of its GPUs holds the fewest of the row's single-replica experts,
//! so the row costs `max(top, fewest + 1)`, `top` being the singles' busiest GPU. Moving
//! replica a to GPU g leaves `max(top, min(rest, c_g) + 1)`, `rest` the fewest of the
//! expert's other GPUs and `c_g` the singles on g. The count is exact for rows with one
//! replicated expert and an estimate for the others; the swaps it ranks first (a replica
//! with a single-replica expert on the target GPU) are evaluated exactly before any is
//! made.
//!
//! On the 58-layer DeepSeek-V3 benchmark families (256 experts, top-8, 32 GPUs x 9
//! slots) the singles' swaps converge early on layers whose replicas sit on GPUs where
//! the rows that need them find the rows' other experts. There these moves lower the
//! costs by 0.38% on average (layers 14-28, 1, 38 and 41 of the SGLang-loads family),
//! and the whole models by 0.03-0.24% (docs/benchmarks.md).

use rayon::prelude::*;

use super::row_singles::RowSingles;
use super::swaps::first_distinct;
use crate::model::layout::Move;
use crate::search::kernel::state::State;

/// An expert with one replica: no slots.
const NO_SLOT: u32 = u32::MAX;

/// GPUs tried as a destination for each replica.
const TARGETS: usize = 16;

/// The replica slots of a layout: one per replica of each expert with several.
pub(super) struct Slots {
    /// Per expert, its first slot (its replicas' slots follow in GPU order), or
    /// `NO_SLOT`.
    first: Vec<u32>,
    count: usize,
    num_gpus: usize,
}

impl Slots {
    /// The slots of `masks` (each expert's GPUs), or None where no expert has several
    /// replicas.
    pub(super) fn new(masks: &[u64], num_gpus: usize) -> Option<Self> {
        let mut count = 0usize;
        let first = masks
            .iter()
            .map(|&m| {
                let n = m.count_ones() as usize;
                if n < 2 {
                    return NO_SLOT;
                }
                count += n;
                (count - n) as u32
            })
            .collect();
        (count > 0).then_some(Slots {
            first,
            count,
            num_gpus,
        })
    }

    /// Entries of the raw table: a change per slot and GPU, then one per slot that every
    /// GPU of the slot's move gets (the replica leaving its GPU).
    pub(super) fn width(&self) -> usize {
        self.count * (self.num_gpus + 1)
    }

    /// One row's part of the raw table (`acc`: the slots' part), given the GPU of each
    /// single-replica expert (`single`, `NO_GPU` for the others) and `top`, the singles'
    /// busiest GPU's count.
    pub(super) fn add_row(
        &self,
        row: &[u16],
        w: i64,
        top: u32,
        single: &[u16],
        masks: &[u64],
        acc: &mut [i64],
    ) {
        // Without singles every replica's move leaves the row at one round.
        if top == 0 || row.iter().all(|&e| self.first[e as usize] == NO_SLOT) {
            return;
        }
        // The row's singles per GPU: the GPUs holding any, and those holding `top`.
        let singles = RowSingles::of(row, single);
        let gpus = singles.gpus();
        let any = gpus.iter().fold(0u64, |m, x| m | 1 << x.0);
        let at_top = gpus
            .iter()
            .filter(|x| u32::from(x.1) == top)
            .fold(0u64, |m, x| m | 1 << x.0);
        let count = |g: u32| {
            gpus.iter()
                .find(|x| u32::from(x.0) == g)
                .map_or(0, |x| u32::from(x.1))
        };
        // The fewest singles on the GPUs of `m`.
        let fewest = |mut m: u64| {
            if m & !any != 0 {
                return 0;
            }
            let mut least = u32::MAX;
            while m != 0 {
                least = least.min(count(m.trailing_zeros()));
                m &= m - 1;
            }
            least
        };
        let num_gpus = self.num_gpus;
        let (by_gpu, leave) = acc.split_at_mut(self.count * num_gpus);
        for &e in row {
            let first = self.first[e as usize];
            if first == NO_SLOT {
                continue;
            }
            let mask = masks[e as usize];
            // The row costs `now`; with the replica gone to a GPU without singles, `top`.
            let now = top.max(fewest(mask) + 1);
            let mut m = mask;
            let mut slot = first as usize;
            while m != 0 {
                let a = m.trailing_zeros();
                m &= m - 1;
                leave[slot] += (i64::from(top) - i64::from(now)) * w;
                // Moved to a GPU at the top, the expert adds a round where each of its
                // other GPUs holds `top` singles too; elsewhere it fits below the top.
                if fewest(mask & !(1 << a)) >= top {
                    let mut t = at_top & !mask;
                    while t != 0 {
                        by_gpu[slot * num_gpus + t.trailing_zeros() as usize] += w;
                        t &= t - 1;
                    }
                }
                slot += 1;
            }
        }
    }

    /// [slots * G]: the change of the weighted total if that replica alone moved to GPU
    /// g (0 where the expert holds g already), from the slots' part of the raw table.
    pub(super) fn gains(&self, raw: &[i64], masks: &[u64]) -> Vec<i64> {
        let num_gpus = self.num_gpus;
        let (by_gpu, leave) = raw.split_at(self.count * num_gpus);
        let mut gains = by_gpu.to_vec();
        for (e, &first) in self.first.iter().enumerate() {
            if first == NO_SLOT {
                continue;
            }
            for j in 0..masks[e].count_ones() as usize {
                let s = first as usize + j;
                for (g, x) in gains[s * num_gpus..(s + 1) * num_gpus]
                    .iter_mut()
                    .enumerate()
                {
                    *x = if masks[e] >> g & 1 == 1 {
                        0
                    } else {
                        *x + leave[s]
                    };
                }
            }
        }
        gains
    }

    /// Up to `width` swaps of a replica with a single-replica expert on another GPU with
    /// a negative score (the replica's gain plus the single's, from `gains`: the
    /// singles' table), best first: from each replica, the `TARGETS` GPUs it gains most
    /// by moving to.
    pub(super) fn candidates(
        &self,
        state: &State,
        single: &[u16],
        gains: &[i64],
        slot_gains: &[i64],
        width: usize,
    ) -> Vec<Move> {
        let layout = &state.layout;
        let num_gpus = self.num_gpus;
        let scored: Vec<(i64, Move)> = (0..self.first.len())
            .into_par_iter()
            .filter(|&x| self.first[x] != NO_SLOT)
            .flat_map_iter(|x| {
                let mut found = Vec::new();
                for (j, &a) in layout.gpus_of(x).iter().enumerate() {
                    let s = self.first[x] as usize + j;
                    let row = &slot_gains[s * num_gpus..(s + 1) * num_gpus];
                    let mut targets: Vec<(i64, u16)> = (0..num_gpus as u16)
                        .filter(|&c| !layout.holds(x, c as usize))
                        .map(|c| (row[c as usize], c))
                        .collect();
                    let keep = TARGETS.min(targets.len());
                    if keep < targets.len() {
                        targets.select_nth_unstable(keep);
                        targets.truncate(keep);
                    }
                    for (to_c, c) in targets {
                        for &y in layout.experts_on(c as usize) {
                            if single[y as usize] != c {
                                continue;
                            }
                            let score = to_c + gains[y as usize * num_gpus + a as usize];
                            if score < 0 {
                                found.push((score, Move::swap(x as u16, a, y, c)));
                            }
                        }
                    }
                }
                found
            })
            .collect();
        first_distinct(scored, width)
    }
}
