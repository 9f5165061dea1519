//! The default optimizer. From a balanced one-replica placement refined by
//! Kernighan-Lin swaps, slots are opened one level at a time (every GPU gets one more
//! slot); each level is filled with the replicas of largest exact gain, then refined by
//! swaps (ranked by co-activation, then by move gains: `move_gains`) and by handing
//! replica slots to other experts (`reassign`), and replaced by a baseline if one is
//! better at that level. After the start's search and each level's,
//! an iterated local search (`kicks`) escapes local optima where the table is small
//! enough for its row budget.
//!
//! Building level by level makes the result for s slots the start of the result for
//! s + 1, and a level only adds replicas or makes improving moves: more slots never
//! give a worse placement, and no baseline is ever better. Once a level reaches the
//! lower bound (every row at ceil(k / G) rounds) the remaining slots are filled
//! without search. The searches stop early when the caller's budget runs out
//! (`effort`), the start's searches at half of the budget so that the fill by exact
//! gains keeps its share: the result is then the best placement built so far. After a
//! stop request (Ctrl-C) slots still empty are filled as the baselines fill them.

use super::baselines;
use super::budgets::{
    Budget, ALTERNATIONS, GAIN_SWAPS, KICKS, LEVEL_SEARCH, REASSIGN, REPLICA_ROWS, REPLICA_SWAPS,
    START_SEARCH,
};
use super::initial;
use super::kicks;
use super::move_gains;
use super::reassign;
use super::swaps::{self, Limits};
use crate::model::layout::Layout;
use crate::search::kernel::gains::GainTable;
use crate::search::kernel::problem::Problem;
use crate::search::kernel::state::{total_cost, State};

/// Per mille of a budget the start's searches may use.
const START_SHARE: usize = 500;

/// Kicks shrink with the level's distance from the first like the level search.
fn level_kicks(level: usize, first: usize) -> Budget {
    Budget {
        rows: level_rows(KICKS.rows, level, first),
        ..KICKS
    }
}

/// A seed per stage of the search, from the caller's seed.
fn stage_seed(seed: u64, stage: usize) -> u64 {
    crate::util::rng::SplitMix64::new(
        seed ^ (stage as u64).wrapping_mul(0xD1B5_4A32_D192_ED03) ^ initial::SEED_MIX,
    )
    .next_u64()
}

/// The search budget of a level shrinks with the square of its distance from the first
/// level with a replica, so that many slots (up to E) cost about 2.6 full budgets. It
/// depends on the level alone, never on the final slot count, so that a run for s
/// slots is the start of the run for s + 1.
fn level_search(level: usize, first: usize) -> Limits {
    let max_rows = level_rows(LEVEL_SEARCH.max_rows, level, first);
    Limits {
        max_rows,
        patience: LEVEL_SEARCH.patience.min(max_rows),
        ..LEVEL_SEARCH
    }
}

pub fn greedy(problem: &Problem, slots: usize, seed: u64) -> Layout {
    greedy_with(problem, slots, seed, true)
}

/// `greedy`, with or without the swaps that move replicas (`move_replicas`).
pub fn greedy_with(problem: &Problem, slots: usize, seed: u64, replica_moves: bool) -> Layout {
    // On a worker thread of the pool, the many small parallel loops of a small table run
    // inline instead of waking other threads for every one of them.
    rayon::scope(|_| build(problem, slots, seed, replica_moves))
}

fn build(problem: &Problem, slots: usize, seed: u64, replica_moves: bool) -> Layout {
    let num_experts = problem.num_experts();
    let num_gpus = problem.num_gpus;
    let mut state = State::new(problem, initial::assign(problem, seed));
    // The start's searches may use half of a budget: the fill by exact gains that follows
    // is worth more than their last swaps.
    problem.effort.limit_to(START_SHARE);
    swaps::improve(&mut state, START_SEARCH);
    kicks::search(&mut state, KICKS, stage_seed(seed, 0));
    problem.effort.limit_to(1000);
    // The same loads as the public baselines, so that they are the same placements.
    let load = problem.table.expert_load();
    let mut layout = state.layout;
    let first = num_experts.div_ceil(num_gpus);
    let floor = problem.lower_bound_total();
    for level in first..=slots {
        let mut state = State::new(problem, layout);
        // Where no slot opens, the layout is the one the previous search left.
        if fill(&mut state, level) {
            // Swaps change which slots are worth reassigning and back: alternate while
            // both find something, a few rounds at most; first the swaps ranked by
            // co-activation (any replica), then those of single-replica experts ranked
            // by move gains, which find what the co-activation misses once replicas
            // are in place.
            let search = level_search(level, first);
            alternate(&mut state, |s| swaps::improve(s, search));
            let before = problem.effort.spent();
            alternate(&mut state, |s| move_gains::improve(s, GAIN_SWAPS));
            // The replicas' moves get what the singles' left of the level's rows.
            let read = problem.effort.spent() - before;
            if replica_moves {
                move_replicas(
                    &mut state,
                    level_rows(REPLICA_ROWS, level, first).saturating_sub(read),
                );
            }
            kicks::search(
                &mut state,
                level_kicks(level, first),
                stage_seed(seed, level),
            );
        }
        let mut best = (state.total, state.layout);
        for candidate in [
            baselines::eplb(&load, num_gpus, level),
            baselines::round_robin(&load, num_gpus, level),
            baselines::contiguous(&load, num_gpus, level),
        ] {
            let total = total_cost(problem, &candidate);
            if total < best.0 {
                best = (total, candidate);
            }
        }
        layout = best.1;
        // At the lower bound more slots cannot lower the cost: they are filled as the
        // baselines fill them, without searching.
        if best.0 <= floor && level < slots {
            baselines::fill_with_loaded(&mut layout, &load, slots);
            break;
        }
    }
    layout
}

/// Rows of a level's search: `rows` shrunk with the square of the level's distance
/// from the first level with a replica, as `level_search`.
fn level_rows(rows: usize, level: usize, first: usize) -> usize {
    let distance = (level - first).max(1);
    rows / (distance * distance)
}

/// Swaps by move gains that move replicas too (`REPLICA_SWAPS`), alternated with
/// `reassign` (`alternate`) while the swaps' `rows` last for a counting and a round.
fn move_replicas(state: &mut State, mut rows: usize) {
    // A counting reads every row: rows for less than a counting and a round of exact
    // evaluations would buy only the counting.
    let count = state.problem.weights.len();
    alternate(state, |s| {
        if rows < 2 * count {
            return 0;
        }
        let limits = move_gains::Limits {
            max_rows: rows,
            ..REPLICA_SWAPS
        };
        let (made, read) = move_gains::improve_counted(s, limits);
        rows = rows.saturating_sub(read);
        made
    });
}

/// Rounds of `search` then `reassign`, while both make moves (`ALTERNATIONS` at most).
fn alternate(state: &mut State, mut search: impl FnMut(&mut State) -> usize) {
    for _ in 0..ALTERNATIONS {
        if search(state) == 0 {
            break;
        }
        let mut gains = GainTable::new(state);
        if reassign::improve(state, &mut gains, REASSIGN) == 0 {
            break;
        }
    }
}

/// Fills every GPU up to `capacity` experts: the replica of largest exact gain first;
/// when no replica gains (a row may need two), the expert of highest load per replica
/// goes where it is least co-activated, which keeps gains of later replicas possible.
/// Then slots are handed to other experts while that lowers the cost.
fn fill(state: &mut State, capacity: usize) -> bool {
    let num_gpus = state.layout.num_gpus();
    if (0..num_gpus).all(|g| state.layout.used(g) >= capacity) {
        return false;
    }
    // After a stop request (Ctrl-C) the slots are filled as the baselines fill them: the
    // placement is complete at once, without the gain table's pass over the rows. A spent
    // budget does not skip the fill: its exact gains are most of the greedy's lead.
    let fill_as_baselines = |state: &mut State| {
        let mut layout = state.layout.clone();
        baselines::fill_with_loaded(&mut layout, &state.problem.table.expert_load(), capacity);
        *state = State::new(state.problem, layout);
    };
    if crate::util::cancel::requested() {
        fill_as_baselines(state);
        return true;
    }
    let mut gains = GainTable::new(state);
    loop {
        let open: Vec<usize> = (0..num_gpus)
            .filter(|&g| state.layout.used(g) < capacity)
            .collect();
        if open.is_empty() {
            reassign::improve(state, &mut gains, REASSIGN);
            return true;
        }
        if crate::util::cancel::requested() {
            fill_as_baselines(state);
            return true;
        }
        let choice = best_gain(state, &gains, &open).or_else(|| most_loaded(state, &open));
        let Some((e, g)) = choice else { return true };
        gains.add_replica(state, e, g);
    }
}

/// Largest gain; ties to the GPU least co-activated with the expert, then the emptier
/// GPU, then the lowest ids.
fn best_gain(state: &State, gains: &GainTable, open: &[usize]) -> Option<(usize, usize)> {
    let layout = &state.layout;
    // Key: (-gain, co-activation, slots used, expert, GPU); the smallest wins.
    type Key = (i64, i64, usize, usize, usize);
    let mut best: Option<(Key, (usize, usize))> = None;
    for e in 0..layout.num_experts() {
        if !gains.may_gain(e) {
            continue;
        }
        for &g in open {
            let gain = gains.gain(e, g);
            if gain <= 0 || layout.holds(e, g) {
                continue;
            }
            let key = (-gain, state.conn(e, g), layout.used(g), e, g);
            if best.as_ref().is_none_or(|b| key < b.0) {
                best = Some((key, (e, g)));
            }
        }
    }
    best.map(|b| b.1)
}

fn most_loaded(state: &State, open: &[usize]) -> Option<(usize, usize)> {
    let layout = &state.layout;
    let load = &state.problem.load;
    let mut expert: Option<usize> = None;
    for e in 0..layout.num_experts() {
        if open.iter().all(|&g| layout.holds(e, g)) {
            continue;
        }
        let heavier = |b: usize| {
            (load[e] as i128) * (layout.replicas(b) as i128)
                > (load[b] as i128) * (layout.replicas(e) as i128)
        };
        if expert.is_none_or(heavier) {
            expert = Some(e);
        }
    }
    let e = expert?;
    let g = open
        .iter()
        .copied()
        .filter(|&g| !layout.holds(e, g))
        .min_by_key(|&g| (state.conn(e, g), layout.used(g), g))?;
    Some((e, g))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::skewed_table;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    fn check_full(l: &Layout, slots: usize) {
        for g in 0..l.num_gpus() {
            assert_eq!(l.used(g), slots);
        }
        assert!((0..l.num_experts()).all(|e| l.replicas(e) >= 1));
    }

    #[test]
    fn never_worse_than_baselines_and_monotone_in_slots() {
        let mut rng = SmallRng::seed_from_u64(1);
        for case in 0..30 {
            let num_experts = rng.random_range(4..=12);
            let k = rng.random_range(2..=4.min(num_experts));
            let num_gpus = rng.random_range(2..=4);
            let table = skewed_table(case, 200, num_experts as u64, k, 3, 61);
            let problem = Problem::new(&table, num_gpus);
            let load = table.expert_load();
            let mut previous = i64::MAX;
            for slots in
                num_experts.div_ceil(num_gpus)..=num_experts.min(num_experts.div_ceil(num_gpus) + 3)
            {
                let layout = greedy(&problem, slots, case);
                check_full(&layout, slots);
                let cost = total_cost(&problem, &layout);
                for base in [
                    baselines::eplb(&load, num_gpus, slots),
                    baselines::round_robin(&load, num_gpus, slots),
                    baselines::contiguous(&load, num_gpus, slots),
                ] {
                    assert!(
                        cost <= total_cost(&problem, &base),
                        "case {case} slots {slots}"
                    );
                }
                assert!(
                    cost <= previous,
                    "case {case}: {slots} slots cost more than {}",
                    slots - 1
                );
                previous = cost;
            }
        }
    }

    #[test]
    fn stops_searching_only_at_the_lower_bound() {
        // k = 2 on 4 GPUs: the bound is one round, reached once co-activated pairs split.
        let mut rng = SmallRng::seed_from_u64(4);
        let mut reached = 0;
        for case in 0..20 {
            let num_experts: usize = rng.random_range(4..=10);
            let table = skewed_table(case, 150, num_experts as u64, 2, 3, 61);
            let problem = Problem::new(&table, 4);
            let floor = problem.lower_bound_total();
            let first = num_experts.div_ceil(4);
            let costs: Vec<i64> = (first..=num_experts)
                .map(|s| total_cost(&problem, &greedy(&problem, s, case)))
                .collect();
            let Some(at) = costs.iter().position(|&c| c == floor) else {
                continue;
            };
            reached += 1;
            assert!(costs[..at].iter().all(|&c| c > floor), "case {case}");
            // Past the level that reached the bound, the slots are filled as the baselines
            // fill them, without search: every cost stays at the bound.
            let at_bound = greedy(&problem, first + at, case);
            for slots in first + at + 1..=num_experts {
                let mut padded = at_bound.clone();
                baselines::fill_with_loaded(&mut padded, &table.expert_load(), slots);
                assert_eq!(
                    greedy(&problem, slots, case),
                    padded,
                    "case {case} slots {slots}"
                );
                assert_eq!(costs[slots - first], floor);
            }
        }
        assert!(reached >= 5, "only {reached} cases reach the bound");
    }

    #[test]
    fn budgets_keep_placements_complete_and_deterministic() {
        use crate::search::kernel::effort::{Effort, SearchBudget};
        let table = skewed_table(21, 20_000, 24, 4, 4, 60);
        let with = |budget: SearchBudget, threads: usize| {
            let mut problem = Problem::new(&table, 4);
            problem.effort = Effort::new(budget, std::time::Instant::now());
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let layout = pool.install(|| greedy(&problem, 8, 3));
            (
                total_cost(&problem, &layout),
                layout,
                problem.effort.spent(),
            )
        };
        let work = |rows| SearchBudget {
            work: Some(rows),
            seconds: None,
        };
        let (_, free, spent) = with(SearchBudget::default(), 2);
        assert!(spent > 0);
        // A budget the search does not reach changes nothing.
        assert_eq!(with(work(spent), 1).1, free);
        let load = table.expert_load();
        let eplb = total_cost(&Problem::new(&table, 4), &baselines::eplb(&load, 4, 8));
        for rows in [0, spent / 10, spent / 3] {
            let (cost, layout, used) = with(work(rows), 1);
            check_full(&layout, 8);
            assert!(cost <= eplb, "{rows} rows");
            // The last batch of evaluations may go past the budget, never a whole search.
            assert!(
                used <= rows + spent / 2,
                "{used} rows read for a budget of {rows}"
            );
            assert_eq!(with(work(rows), 2).1, layout, "{rows} rows, 2 threads");
        }
        let (_, layout, _) = with(
            SearchBudget {
                work: None,
                seconds: Some(0.0),
            },
            2,
        );
        check_full(&layout, 8);
    }

    #[test]
    fn wide_placements_are_full() {
        let table = skewed_table(2, 3000, 150, 6, 8, 58);
        let problem = Problem::new(&table, 100);
        let layout = greedy(&problem, 3, 0);
        check_full(&layout, 3);
        assert!(
            total_cost(&problem, &layout)
                <= total_cost(&problem, &baselines::eplb(&table.expert_load(), 100, 3))
        );
    }
}
