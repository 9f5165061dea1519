//! The greedy's placement improved for as long as the caller's budget lasts: rounds of
//! the iterated local search (`kicks`: random moves, then swaps and reassignments on
//! exact move deltas, the best layout kept), each from the best layout so far with a
//! seed of its own, until the work budget is spent, the deadline passes, the layout
//! reaches ceil(k / G) on every row, or `PATIENCE` rounds in a row improve nothing.
//!
//! Only a budgeted optimization runs it (`crate::search::decode::optimize_within`):
//! without a budget the greedy's placement is the result, as before. Under a work
//! budget the rounds read the same rows on any machine and thread count, so the result
//! is a function of the inputs, the seed and the budget.

use super::budgets::Budget;
use super::kicks;
use crate::model::layout::Layout;
use crate::search::kernel::problem::Problem;
use crate::search::kernel::state::State;

/// One round: kicks until `stall` kicks in a row bring no strict gain.
const ROUND: Budget = Budget {
    rows: usize::MAX / 2,
    kicks: usize::MAX / 2,
    stall: 48,
};
/// Rounds in a row without a strict gain before the search ends on its own.
pub const PATIENCE: usize = 8;

/// `layout` improved by rounds of kicks while `problem.effort` allows (module docs).
pub fn improve(problem: &Problem, layout: Layout, seed: u64) -> Layout {
    let floor = problem.lower_bound_total();
    let mut state = State::new(problem, layout);
    let mut idle = 0;
    for round in 0u64.. {
        if idle >= PATIENCE || state.total <= floor || problem.effort.exhausted() {
            break;
        }
        let before = state.total;
        let round_seed = crate::util::rng::SplitMix64::new(
            seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xA11_7135,
        )
        .next_u64();
        if kicks::search(&mut state, ROUND, round_seed) == 0 {
            // Too few GPUs or experts to kick: nothing else to try.
            break;
        }
        idle = if state.total < before { 0 } else { idle + 1 };
    }
    state.layout
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::table::SubsetTable;
    use crate::search::decode::greedy::greedy;
    use crate::search::kernel::effort::{Effort, SearchBudget};
    use crate::search::kernel::state::total_cost;
    use crate::testing::skewed_table;

    /// (greedy's cost, cost after `improve` under a work budget of `rows`, its layout).
    fn run(table: &SubsetTable, rows: usize, threads: usize) -> (i64, i64, Layout) {
        let budget = SearchBudget {
            work: Some(rows),
            seconds: None,
        };
        let mut problem = Problem::new(table, 4);
        problem.effort = Effort::new(budget, std::time::Instant::now());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let start = greedy(&problem, 9, 5);
            let before = total_cost(&problem, &start);
            let layout = improve(&problem, start, 5);
            (before, total_cost(&problem, &layout), layout)
        })
    }

    #[test]
    fn improves_deterministically_within_the_work_budget() {
        let table = skewed_table(3, 1500, 24, 4, 6, 59);
        let mut gained = false;
        for rows in [400_000, 3_000_000] {
            let (start, cost, layout) = run(&table, rows, 1);
            assert!(cost <= start);
            gained |= cost < start;
            assert_eq!(run(&table, rows, 2).2, layout, "{rows} rows");
            assert!((0..4).all(|g| layout.used(g) == 9));
        }
        assert!(gained, "no budget improved on the greedy");
    }
}
