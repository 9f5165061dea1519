//! Local search by swapping two replicas between two GPUs. A swap keeps every GPU's
//! number of experts, so the same search refines the balanced one-replica placement
//! (Kernighan-Lin) and the full replicated one. Candidates are ranked by how much
//! pairwise co-activation on a GPU they remove (cheap), evaluated exactly on the rows
//! of their two experts in batches (in parallel) down the ranking until a batch holds
//! an improvement, and improvements are made best first. The work is bounded by rows
//! read, not by time, so the result does not depend on the machine or thread count.

use rayon::prelude::*;

use crate::cost::matching::RowScratch;
use crate::model::layout::Move;
use crate::search::kernel::state::State;

/// Share of the total cost a search must gain per `Limits::patience` rows to go on.
const MIN_PROGRESS: f64 = 0.001;

/// GPUs tried as a destination for each replica.
const TARGETS_PER_REPLICA: usize = 12;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Candidates evaluated exactly at once.
    pub candidates: usize,
    /// Batches of candidates tried before the search gives up.
    pub batches: usize,
    /// Rows read by exact evaluations before the search stops.
    pub max_rows: usize,
    /// Every `patience` rows read, the search stops unless the total fell by
    /// MIN_PROGRESS of itself meanwhile: where improvements are rare and small, the
    /// rest of the budget is not worth its time.
    pub patience: usize,
}

/// Makes improving swaps until no candidate improves or the budget is spent.
/// Returns the number of swaps made.
pub fn improve(state: &mut State, limits: Limits) -> usize {
    improve_counted(state, limits).0
}

/// `improve`, also returning the rows read.
pub fn improve_counted(state: &mut State, limits: Limits) -> (usize, usize) {
    let floor = state.problem.lower_bound_total();
    let mut spent = 0usize;
    let mut made = 0usize;
    let mut checkpoint = (0usize, state.total);
    let mut scratch = RowScratch::new(state.layout.num_gpus());
    let effort = &state.problem.effort;
    // Every `patience` rows the total must have fallen by MIN_PROGRESS of itself.
    let out_of_patience = |spent: usize, total: i64, checkpoint: (usize, i64)| {
        spent - checkpoint.0 >= limits.patience
            && ((checkpoint.1 - total) as f64) < MIN_PROGRESS * checkpoint.1 as f64
    };
    'search: while spent < limits.max_rows && state.total > floor && !effort.exhausted() {
        if spent - checkpoint.0 >= limits.patience {
            if out_of_patience(spent, state.total, checkpoint) {
                break;
            }
            checkpoint = (spent, state.total);
        }
        let candidates = candidates(state, limits.candidates * limits.batches);
        let mut improved = false;
        // The cheap score is a poor guide near a local optimum: when a batch holds no
        // improving swap, the next one is tried before giving up.
        for batch in candidates.chunks(limits.candidates) {
            let (improving, rows) = improving(state, batch);
            spent += rows;
            effort.spend(rows);
            if !improving.is_empty() {
                let before = spent;
                made += apply_best_first(state, batch, &improving, &mut scratch, &mut spent);
                state.problem.effort.spend(spent - before);
                improved = true;
                break;
            }
            // The patience is checked between batches too: one pass down a long list of
            // candidates may read several times the patience for a last small gain.
            if spent >= limits.max_rows
                || effort.exhausted()
                || out_of_patience(spent, state.total, checkpoint)
            {
                break 'search;
            }
        }
        if !improved {
            break;
        }
    }
    (made, spent)
}

/// The moves of `batch` that lower the total, as (exact delta, index in `batch`), best
/// first, and the rows read to evaluate them all (in parallel).
pub(super) fn improving(state: &State, batch: &[Move]) -> (Vec<(i64, usize)>, usize) {
    let evaluated: Vec<(i64, usize)> = batch
        .par_iter()
        .map_init(
            || RowScratch::new(state.layout.num_gpus()),
            |s, &c| state.move_delta(c, s),
        )
        .collect();
    let rows = evaluated.iter().map(|x| x.1).sum::<usize>();
    let mut improving: Vec<(i64, usize)> = evaluated
        .iter()
        .enumerate()
        .filter(|(_, d)| d.0 < 0)
        .map(|(i, d)| (d.0, i))
        .collect();
    improving.sort_unstable();
    (improving, rows)
}

/// The best swap is made as evaluated; the others moved no expert in common with a
/// swap made before them, but may share rows: they are evaluated again.
pub(super) fn apply_best_first(
    state: &mut State,
    batch: &[Move],
    improving: &[(i64, usize)],
    scratch: &mut RowScratch,
    spent: &mut usize,
) -> usize {
    let mut moved: Vec<u16> = Vec::new();
    let mut made = 0;
    for (rank, &(_, i)) in improving.iter().enumerate() {
        let swap = batch[i];
        if swap.experts().any(|e| moved.contains(&e)) {
            continue;
        }
        if rank > 0 {
            let (delta, rows) = state.move_delta(swap, scratch);
            *spent += rows;
            if delta >= 0 {
                continue;
            }
        }
        state.apply(swap);
        moved.extend(swap.experts());
        made += 1;
    }
    made
}

/// Up to `width` swaps, those that lower the co-activation on shared GPUs the most
/// first. Swaps the score calls neutral or worse are kept at the end of the list: near a
/// local optimum the score is a poor guide and the exact evaluation has the last word.
fn candidates(state: &State, width: usize) -> Vec<Move> {
    let layout = &state.layout;
    let num_gpus = layout.num_gpus();
    let coactivation = &state.problem.coactivation;
    let scored: Vec<(i64, Move)> = (0..layout.num_experts())
        .into_par_iter()
        .flat_map_iter(|i| {
            let mut found = Vec::new();
            let mut targets: Vec<(i64, u16)> = Vec::with_capacity(num_gpus);
            for &a in layout.gpus_of(i) {
                let here = state.conn(i, a as usize);
                let ri = layout.replicas(i) as i64;
                targets.clear();
                targets.extend(
                    (0..num_gpus)
                        .filter(|&b| !layout.holds(i, b))
                        .map(|b| (state.conn(i, b) - here, b as u16)),
                );
                let keep = TARGETS_PER_REPLICA.min(targets.len());
                if keep == 0 {
                    continue;
                }
                targets.select_nth_unstable(keep - 1);
                for &(leave, b) in &targets[..keep] {
                    for &j in layout.experts_on(b as usize) {
                        if j as usize == i || layout.holds(j as usize, a as usize) {
                            continue;
                        }
                        // The change of co-activation on shared GPUs, each side split over
                        // the replicas of the expert that moves.
                        let rj = layout.replicas(j as usize) as i64;
                        let pair = coactivation.weight(i, j as usize);
                        let first = (leave - pair / rj) / ri;
                        let second = (state.conn(j as usize, a as usize)
                            - pair / ri
                            - state.conn(j as usize, b as usize))
                            / rj;
                        let swap = Move::swap(i as u16, a, j, b);
                        found.push((first + second, swap));
                    }
                }
            }
            found
        })
        .collect();
    first_distinct(scored, width)
}

/// The first `width` distinct moves of `scored` in ascending order (score, then move).
/// A swap is found from each of its two experts at most, so the `2 * width` smallest
/// entries hold them: only those are sorted (the whole list where they hold fewer).
pub(super) fn first_distinct(mut scored: Vec<(i64, Move)>, width: usize) -> Vec<Move> {
    let prefix = 2 * width;
    if prefix < scored.len() {
        let (head, _, _) = scored.select_nth_unstable(prefix);
        head.sort_unstable();
        let found = distinct(head, width);
        if found.len() == width {
            return found;
        }
    }
    scored.sort_unstable();
    distinct(&scored, width)
}

/// The first `width` distinct moves of the sorted `scored` (all of them where fewer).
fn distinct(scored: &[(i64, Move)], width: usize) -> Vec<Move> {
    let mut seen = std::collections::HashSet::with_capacity(width);
    let mut found = Vec::with_capacity(width);
    for &(_, mv) in scored {
        if found.len() == width {
            break;
        }
        if seen.insert(mv) {
            found.push(mv);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layout::Layout;
    use crate::model::table::SubsetTable;
    use crate::search::kernel::problem::Problem;
    use crate::search::kernel::state::total_cost;

    /// The partial sort gives the plain one's first distinct moves: sort everything, keep
    /// each move's first entry, truncate (lists with moves found once, twice or more).
    #[test]
    fn first_distinct_equals_the_full_sort() {
        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(3);
        for case in 0..500 {
            let len = rng.random_range(0..200);
            let repeats = 1 + case % 4;
            let mut scored: Vec<(i64, Move)> = Vec::new();
            for _ in 0..len {
                let swap = Move::Swap {
                    first: rng.random_range(0..6),
                    from: rng.random_range(0..3),
                    second: rng.random_range(6..12),
                    to: rng.random_range(3..6),
                };
                let entry = (rng.random_range(-5..5) * repeats as i64, swap);
                for _ in 0..rng.random_range(1..=repeats) {
                    scored.push(entry);
                }
            }
            let width = rng.random_range(0..40);
            let mut plain = scored.clone();
            plain.sort_unstable();
            let mut seen = std::collections::HashSet::new();
            plain.retain(|x| seen.insert(x.1));
            plain.truncate(width);
            let plain: Vec<Move> = plain.into_iter().map(|x| x.1).collect();
            assert_eq!(first_distinct(scored, width), plain, "case {case}");
        }
    }

    #[test]
    fn separates_co_activated_pairs() {
        // Pairs {0,1} and {2,3} are always together; the start puts each pair on one GPU.
        let t = SubsetTable::from_subsets(&[0, 1, 2, 3], 2, 4, &[10.0, 10.0]).unwrap();
        let p = Problem::new(&t, 2);
        let mut l = Layout::new(4, 2);
        for e in 0..4 {
            l.add(e, e / 2);
        }
        let mut s = State::new(&p, l);
        assert_eq!(s.total, 2 * p.weights.iter().sum::<i64>());
        let made = improve(
            &mut s,
            Limits {
                candidates: 8,
                batches: 2,
                max_rows: 1000,
                patience: 1000,
            },
        );
        assert!(made >= 1);
        assert_eq!(s.total, p.lower_bound_total());
        assert_eq!(s.total, total_cost(&p, &s.layout));
        assert_eq!(s.layout.used(0), 2);
        assert_eq!(s.layout.used(1), 2);
    }
}
