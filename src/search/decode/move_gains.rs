//! Swaps of single-replica experts ranked by move gains. For every expert with one
//! replica and every GPU, the gain table holds the change of the total if that replica
//! alone moved there, counted on each row from the GPUs of the row's single-replica
//! experts: a row costs at least its busiest GPU's count of them, so moving one to a
//! GPU at that count adds a round, and moving the only one at the top to a GPU two
//! below it saves one. Where a row costs more than that count (its replicated experts
//! crowd in), moving a single to a GPU none of the row's other experts can use leaves
//! the rest of the row. The table is exact for rows without replicated experts and
//! optimistic for the others (their replicated experts are taken to fit where the
//! singles leave room). A swap's score is the sum of its two moves' gains; the
//! best-scored swaps are evaluated exactly and made best first, and the table is then
//! updated on the rows of the experts that moved.
//!
//! `swaps` ranks by pairwise co-activation, which sees neither a row's busiest GPU nor
//! which collisions already cost nothing more. Once the greedy's replicas are in place
//! this ranking finds what it misses: on a DeepSeek-V3-size layer (256 experts, top-8,
//! 32 GPUs x 9 slots, SGLang's V3 loads), 53 of the 60 swaps that the singles' counts
//! alone rank first at the end of the co-activation search still improve. The work is
//! bounded by rows read, as in `swaps`, so the result does not depend on the machine or
//! thread count.
//!
//! With `Limits::replica_candidates`, the table also holds the move gains of each
//! replica of the replicated experts (`replica_moves`), and each round's batch adds the
//! best-scored swaps of such a replica with a single-replica expert. Their counting
//! costs about as much as the singles': after a round in which none of them improves,
//! the search goes on with the singles alone.

use rayon::prelude::*;

use super::replica_moves::Slots;
use super::row_singles::{RowSingles, NO_GPU};
use super::swaps::{apply_best_first, first_distinct, improving};
use crate::cost::matching::RowScratch;
use crate::model::layout::Move;
use crate::search::kernel::state::State;

/// Gain tables larger than this (experts x GPUs) are not built: the search is skipped.
const MAX_TABLE: usize = 1 << 22;

/// GPUs tried as a destination for each single-replica expert.
const TARGETS: usize = 16;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Swaps of single-replica experts evaluated exactly per counting of the gains.
    pub candidates: usize,
    /// Swaps of a replica of a replicated expert with a single-replica expert
    /// evaluated exactly per counting (0: singles only).
    pub replica_candidates: usize,
    /// Countings of the gains at most.
    pub rounds: usize,
    /// Rows read (exact evaluations and countings) before the search stops.
    pub max_rows: usize,
}

/// Makes improving swaps of single-replica experts until a round of the best-scored
/// candidates holds none or the budget is spent. Returns the number of swaps made.
pub fn improve(state: &mut State, limits: Limits) -> usize {
    improve_counted(state, limits).0
}

/// `improve`, also returning the rows read.
pub fn improve_counted(state: &mut State, limits: Limits) -> (usize, usize) {
    let num_experts = state.layout.num_experts();
    let num_gpus = state.layout.num_gpus();
    if num_gpus < 2 || num_experts.saturating_mul(num_gpus) > MAX_TABLE {
        return (0, 0);
    }
    let floor = state.problem.lower_bound_total();
    let effort = &state.problem.effort;
    let mut scratch = RowScratch::new(num_gpus);
    let (mut made, mut spent) = (0usize, 0usize);
    let all_rows: Vec<u32> = (0..state.problem.weights.len() as u32).collect();
    let mut counts = Counts::new(state, limits.replica_candidates > 0);
    let mut raw = counts.rows(state, &all_rows);
    spent += all_rows.len();
    effort.spend(all_rows.len());
    for _ in 0..limits.rounds {
        if spent >= limits.max_rows || state.total <= floor || effort.exhausted() {
            break;
        }
        let gains = counts.gains(&raw);
        let mut batch = candidates(state, &counts.single, &gains, limits.candidates);
        let singles = batch.len();
        if let (Some(slots), Some(masks)) = (&counts.slots, &counts.masks) {
            let slot_gains = slots.gains(&raw[counts.singles_width()..], masks);
            batch.extend(slots.candidates(
                state,
                &counts.single,
                &gains,
                &slot_gains,
                limits.replica_candidates,
            ));
        }
        if batch.is_empty() {
            break;
        }
        let (improving, rows) = improving(state, &batch);
        spent += rows;
        effort.spend(rows);
        // No swap of a replica improves: the singles go on alone (module docs).
        if counts.slots.is_some() && improving.iter().all(|&(_, i)| i < singles) {
            counts.slots = None;
            raw.truncate(counts.singles_width());
        }
        if improving.is_empty() {
            break;
        }
        let before = spent;
        let old_costs = state.costs.clone();
        let n = apply_best_first(state, &batch, &improving, &mut scratch, &mut spent);
        made += n;
        effort.spend(spent - before);
        let (next, read) = update(&mut raw, counts, state, &old_costs);
        counts = next;
        spent += read;
        effort.spend(read);
    }
    (made, spent)
}

/// The raw table `raw`, counted from `counts` and the row costs `old_costs`, updated to
/// the state's layout and costs: only the rows of the experts that moved count
/// differently, so their old parts come off and their new parts go on. A swap keeps
/// every expert's number of replicas, so the experts that moved are those whose GPUs
/// changed, and the replica slots stay where they are in the table. Returns what the
/// table is now counted from and the rows read.
fn update(raw: &mut Vec<i64>, counts: Counts, state: &State, old_costs: &[u8]) -> (Counts, usize) {
    let next = Counts::new(state, counts.slots.is_some());
    let moved = (0..next.single.len()).filter(|&e| {
        next.single[e] != counts.single[e]
            || matches!((&next.masks, &counts.masks), (Some(a), Some(b)) if a[e] != b[e])
    });
    let mut touched: Vec<u32> = moved
        .flat_map(|e| state.problem.index.rows_of(e).iter().copied())
        .collect();
    touched.sort_unstable();
    touched.dedup();
    let all = state.problem.weights.len();
    // Counting every row once reads fewer rows than taking half of them off and on.
    if 2 * touched.len() >= all {
        let all: Vec<u32> = (0..all as u32).collect();
        *raw = next.rows(state, &all);
        return (next, all.len());
    }
    let old = counts.rows_with_costs(state, &touched, old_costs);
    let counts = next;
    let new = counts.rows(state, &touched);
    raw.iter_mut()
        .zip(old.iter().zip(&new))
        .for_each(|(x, (o, n))| *x += n - o);
    (counts, 2 * touched.len())
}

/// What the gain table is counted from: each expert's GPU where it has one replica
/// (`NO_GPU` where it has several), the GPU masks (up to 64 GPUs) and, where replica
/// moves are counted, their slots.
struct Counts {
    single: Vec<u16>,
    masks: Option<Vec<u64>>,
    num_gpus: usize,
    slots: Option<Slots>,
}

impl Counts {
    fn new(state: &State, replica_moves: bool) -> Self {
        let layout = &state.layout;
        let num_gpus = layout.num_gpus();
        let masks = crate::model::placement::Replicas::masks(layout).map(<[u64]>::to_vec);
        let slots = match &masks {
            Some(masks) if replica_moves => Slots::new(masks, num_gpus),
            _ => None,
        };
        Counts {
            single: (0..layout.num_experts())
                .map(|e| match layout.gpus_of(e) {
                    [g] => *g,
                    _ => NO_GPU,
                })
                .collect(),
            masks,
            num_gpus,
            slots,
        }
    }

    /// Entries of the singles' part of the raw table: gains by GPU, then a change every
    /// GPU of an expert gets. The replica slots' part follows.
    fn singles_width(&self) -> usize {
        self.single.len() * (self.num_gpus + 1)
    }

    /// The raw table (gains by GPU, then a change every GPU of an expert gets) of
    /// `rows`, with the state's row costs.
    fn rows(&self, state: &State, rows: &[u32]) -> Vec<i64> {
        self.rows_with_costs(state, rows, &state.costs)
    }

    fn rows_with_costs(&self, state: &State, rows: &[u32], costs: &[u8]) -> Vec<i64> {
        let problem = state.problem;
        let k = problem.k();
        let width = self.singles_width() + self.slots.as_ref().map_or(0, Slots::width);
        // A few tasks per thread, each with a table of its own, summed at the end: integer
        // sums, so the result does not depend on the split.
        let per_task = rows
            .len()
            .div_ceil(4 * rayon::current_num_threads())
            .max(1024);
        let subsets = problem.table.subsets();
        rows.par_chunks(per_task)
            .map(|chunk| {
                let mut acc = vec![0i64; width];
                for &r in chunk {
                    let r = r as usize;
                    let row = &subsets[r * k..(r + 1) * k];
                    self.add_row(row, problem.weights[r], costs[r], &mut acc);
                }
                acc
            })
            .reduce_with(|mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            })
            .unwrap_or_else(|| vec![0i64; width])
    }

    /// [E * G]: the change of the weighted total if expert e's only replica moved to
    /// GPU g (0 where e has several replicas or already sits on g), from the raw table.
    fn gains(&self, raw: &[i64]) -> Vec<i64> {
        let num_gpus = self.num_gpus;
        let width = self.single.len() * num_gpus;
        let (by_gpu, base) = raw[..self.singles_width()].split_at(width);
        let mut gains = by_gpu.to_vec();
        for (e, &b) in base.iter().enumerate() {
            for (g, x) in gains[e * num_gpus..(e + 1) * num_gpus]
                .iter_mut()
                .enumerate()
            {
                *x = if self.single[e] == NO_GPU || self.single[e] as usize == g {
                    0
                } else {
                    *x + b
                };
            }
        }
        gains
    }

    /// One row's part of the raw table: the single-replica experts' busiest GPU
    /// (`add_singles`), and where the row costs more than that count (its replicated
    /// experts crowd in) and the GPU masks are at hand, `add_fresh`; then the replica
    /// slots' part (`Slots::add_row`).
    fn add_row(&self, row: &[u16], w: i64, cost: u8, acc: &mut [i64]) {
        let (acc, replicas) = acc.split_at_mut(self.singles_width());
        let top = self.add_singles(row, w, acc);
        if let Some(masks) = &self.masks {
            if u32::from(cost) > top {
                self.add_fresh(row, w, cost, masks, acc);
            }
            if let Some(slots) = &self.slots {
                slots.add_row(row, w, top, &self.single, masks, replicas);
            }
        }
    }

    /// The rounds of the row's single-replica experts (module docs); returns the
    /// busiest GPU's count of them. Exact for a row without replicated experts, and
    /// optimistic for the others: their replicated experts are taken to fit wherever
    /// the singles leave room, which is what lets the search find the swaps that make
    /// them fit.
    fn add_singles(&self, row: &[u16], w: i64, acc: &mut [i64]) -> u32 {
        let (single, num_gpus) = (&self.single, self.num_gpus);
        let singles = RowSingles::of(row, single);
        let gpus = singles.gpus();
        let Some(top) = gpus.iter().map(|x| x.1).max() else {
            return 0;
        };
        let at_top = gpus.iter().filter(|x| x.1 == top).count();
        let base = acc.len() - single.len();
        for &e in row {
            let a = single[e as usize];
            if a == NO_GPU {
                continue;
            }
            let out = e as usize * num_gpus;
            let count_a = gpus.iter().find(|x| x.0 == a).map_or(0, |x| x.1);
            if top >= 2 && count_a == top && at_top == 1 {
                // The only GPU at the top loses one: every GPU two or more below it saves
                // a round, a GPU one below it takes the top instead.
                acc[base + e as usize] -= w;
                for &(g, c) in gpus {
                    if g != a && c + 1 >= top {
                        acc[out + g as usize] += w;
                    }
                }
            } else {
                for &(g, c) in gpus {
                    if g != a && c == top {
                        acc[out + g as usize] += w;
                    }
                }
            }
        }
        u32::from(top)
    }

    /// A row its replicated experts push above its singles' count: each single moved to
    /// a GPU none of the row's other experts can use leaves the rest of the row (at least
    /// one round), which is exact; its moves to the other GPUs count as no change.
    fn add_fresh(&self, row: &[u16], w: i64, cost: u8, masks: &[u64], acc: &mut [i64]) {
        let base = acc.len() - self.single.len();
        let mut others = [0u64; crate::util::limits::MAX_K];
        for (q, &e) in row.iter().enumerate() {
            if self.single[e as usize] == NO_GPU {
                continue;
            }
            let mut n = 0;
            let mut used = 0u64;
            for (p, &x) in row.iter().enumerate() {
                if p != q {
                    others[n] = masks[x as usize];
                    used |= others[n];
                    n += 1;
                }
            }
            let rest = crate::cost::matching::cost_from_masks(&others[..n]).max(1);
            let delta = (i64::from(rest) - i64::from(cost)) * w;
            if delta == 0 {
                continue;
            }
            acc[base + e as usize] += delta;
            let out = e as usize * self.num_gpus;
            let mut u = used;
            while u != 0 {
                acc[out + u.trailing_zeros() as usize] -= delta;
                u &= u - 1;
            }
        }
    }
}

/// Up to `width` swaps of single-replica experts on different GPUs with a negative
/// score, best score first (ties by the move). From each expert the `TARGETS` GPUs it
/// gains most by moving to are tried with each single-replica expert there.
fn candidates(state: &State, single: &[u16], gains: &[i64], width: usize) -> Vec<Move> {
    let layout = &state.layout;
    let num_gpus = layout.num_gpus();
    let gain = |e: usize, g: u16| gains[e * num_gpus + g as usize];
    let scored: Vec<(i64, Move)> = (0..single.len())
        .into_par_iter()
        .filter(|&i| single[i] != NO_GPU)
        .flat_map_iter(|i| {
            let a = single[i];
            let mut targets: Vec<(i64, u16)> = (0..num_gpus as u16)
                .filter(|&b| b != a)
                .map(|b| (gain(i, b), b))
                .collect();
            let keep = TARGETS.min(targets.len());
            if keep < targets.len() {
                targets.select_nth_unstable(keep);
                targets.truncate(keep);
            }
            let mut found = Vec::new();
            for (to_b, b) in targets {
                for &j in layout.experts_on(b as usize) {
                    if single[j as usize] != b {
                        continue;
                    }
                    let score = to_b + gain(j as usize, a);
                    if score >= 0 {
                        continue;
                    }
                    let swap = Move::swap(i as u16, a, j, b);
                    found.push((score, swap));
                }
            }
            found
        })
        .collect();
    first_distinct(scored, width)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layout::Layout;
    use crate::search::kernel::problem::Problem;
    use crate::search::kernel::state::total_cost;
    use crate::testing::{random_layout, skewed_table};
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    /// Where no row holds a replicated expert, each entry of the gain table is the
    /// exact change of the total when that expert alone moves there.
    #[test]
    fn gains_are_exact_moves_without_replicas() {
        let mut rng = SmallRng::seed_from_u64(5);
        for case in 0..60 {
            let num_gpus = rng.random_range(2..=6);
            let e = rng.random_range(num_gpus..=14);
            let k = rng.random_range(1..=e.min(8));
            let table = skewed_table(case, 80, e as u64, k, 3, 61);
            let problem = Problem::new(&table, num_gpus);
            let mut layout = Layout::new(e, num_gpus);
            for x in 0..e {
                layout.add(x, rng.random_range(0..num_gpus));
            }
            let state = State::new(&problem, layout.clone());
            let counts = Counts::new(&state, false);
            let all: Vec<u32> = (0..problem.weights.len() as u32).collect();
            let gains = counts.gains(&counts.rows(&state, &all));
            for x in 0..e {
                let a = layout.gpus_of(x)[0] as usize;
                for g in 0..num_gpus {
                    let mut moved = layout.clone();
                    if g != a {
                        moved.remove(x, a);
                        moved.add(x, g);
                    }
                    let exact = total_cost(&problem, &moved) - state.total;
                    assert_eq!(
                        gains[x * num_gpus + g],
                        exact,
                        "case {case} expert {x} GPU {g}"
                    );
                }
            }
        }
    }

    /// Where one expert has several replicas, each row holds at most one replicated
    /// expert: each entry of a replica's slot gains is the exact change of the total
    /// when that replica alone moves there.
    #[test]
    fn replica_gains_are_exact_with_one_replicated_expert() {
        let mut rng = SmallRng::seed_from_u64(6);
        let mut checked = 0;
        for case in 0..60 {
            let num_gpus = rng.random_range(3..=7);
            let e = rng.random_range(num_gpus..=14);
            let k = rng.random_range(1..=e.min(6));
            let table = skewed_table(case, 80, e as u64, k, 3, 61);
            let problem = Problem::new(&table, num_gpus);
            let mut layout = Layout::new(e, num_gpus);
            for x in 0..e {
                layout.add(x, rng.random_range(0..num_gpus));
            }
            let x = rng.random_range(0..e);
            for _ in 0..rng.random_range(1..num_gpus) {
                let g = rng.random_range(0..num_gpus);
                if !layout.holds(x, g) {
                    layout.add(x, g);
                }
            }
            let state = State::new(&problem, layout.clone());
            let counts = Counts::new(&state, true);
            let Some(slots) = &counts.slots else {
                continue;
            };
            let all: Vec<u32> = (0..problem.weights.len() as u32).collect();
            let raw = counts.rows(&state, &all);
            let gains = slots.gains(
                &raw[counts.singles_width()..],
                counts.masks.as_ref().unwrap(),
            );
            for (j, &a) in layout.gpus_of(x).iter().enumerate() {
                for g in 0..num_gpus {
                    let mut moved = layout.clone();
                    if !layout.holds(x, g) {
                        moved.remove(x, a as usize);
                        moved.add(x, g);
                    }
                    let exact = total_cost(&problem, &moved) - state.total;
                    assert_eq!(
                        gains[j * num_gpus + g],
                        exact,
                        "case {case} expert {x} replica on {a} to GPU {g}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 300, "only {checked} moves checked");
    }

    /// The table updated after swaps (of singles, and of replicas with singles where
    /// replica moves are counted) equals the table counted again.
    #[test]
    fn updates_equal_recounts() {
        let mut rng = SmallRng::seed_from_u64(8);
        let mut incremental = 0;
        for case in 0..120 {
            let num_gpus = rng.random_range(3..=8);
            let e = rng.random_range(num_gpus + 1..=24);
            let k = rng.random_range(2..=e.min(4));
            let table = skewed_table(case, 120, e as u64, k, 3, 61);
            let problem = Problem::new(&table, num_gpus);
            let layout = random_layout(&mut rng, e, num_gpus, num_gpus.min(3));
            let mut state = State::new(&problem, layout.clone());
            let all: Vec<u32> = (0..problem.weights.len() as u32).collect();
            let counts = Counts::new(&state, case % 2 == 0);
            let mut raw = counts.rows(&state, &all);
            let old_costs = state.costs.clone();
            // A random expert's replica swapped with a single-replica expert elsewhere.
            let singles: Vec<usize> = (0..e).filter(|&x| layout.replicas(x) == 1).collect();
            for _ in 0..rng.random_range(1..=2) {
                if singles.is_empty() {
                    break;
                }
                let i = rng.random_range(0..e);
                let j = singles[rng.random_range(0..singles.len())];
                let gpus = state.layout.gpus_of(i);
                let a = gpus[rng.random_range(0..gpus.len())];
                let b = state.layout.gpus_of(j)[0];
                let swap = Move::swap(i as u16, a, j as u16, b);
                if i != j
                    && !state.layout.holds(i, b as usize)
                    && state.layout.allows(swap, usize::MAX)
                {
                    state.apply(swap);
                }
            }
            let (counts, read) = update(&mut raw, counts, &state, &old_costs);
            assert_eq!(raw, counts.rows(&state, &all), "case {case}");
            incremental += usize::from(read < all.len());
        }
        assert!(
            incremental >= 30,
            "only {incremental} updates took rows off and on"
        );
    }

    /// The search only makes improving swaps, keeps every GPU's count and the state's
    /// costs exact, and finds gains on a start of random placements.
    #[test]
    fn improves_and_keeps_the_state_exact() {
        let mut rng = SmallRng::seed_from_u64(9);
        let mut gained = 0;
        for case in 0..40 {
            let num_gpus = rng.random_range(2..=8);
            let e = rng.random_range(num_gpus + 2..=24);
            let k = rng.random_range(2..=e.min(6));
            let table = skewed_table(case, 300, e as u64, k, 3, 61);
            let problem = Problem::new(&table, num_gpus);
            let layout = random_layout(&mut rng, e, num_gpus, num_gpus.min(3));
            let used: Vec<usize> = (0..num_gpus).map(|g| layout.used(g)).collect();
            let mut state = State::new(&problem, layout);
            let before = state.total;
            let limits = Limits {
                candidates: 16,
                replica_candidates: 4 * (case as usize % 2),
                rounds: 50,
                max_rows: usize::MAX,
            };
            let (made, _) = improve_counted(&mut state, limits);
            assert!(state.total <= before, "case {case}");
            assert_eq!(
                state.total,
                total_cost(&problem, &state.layout),
                "case {case}"
            );
            assert!((0..num_gpus).all(|g| state.layout.used(g) == used[g]));
            gained += usize::from(made > 0 && state.total < before);
        }
        assert!(gained >= 10, "only {gained} cases improved");
    }
}
