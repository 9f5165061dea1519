//! The work budgets of the decode searches, in rows read by exact evaluations (a row
//! takes 30-300 ns): fixed numbers, not times, so that a result is the same on every
//! machine. One place for them, since the greedy and the kicks share some.

use super::move_gains;
use super::reassign;
use super::swaps::Limits;

/// Kernighan-Lin swaps of the balanced one-replica start.
pub const START_SEARCH: Limits = Limits {
    candidates: 16,
    batches: 8,
    max_rows: 20_000_000,
    // The swaps by move gains after each level recover most of what a shorter start
    // leaves: on 16 layers of the V3 "weak-topics" benchmark family, 1M instead of 4M
    // saved 13% of the plan's time for 0.04% higher costs on average.
    patience: 1_000_000,
};
/// Swaps after each level's fill; the greedy shrinks it with the level's distance from
/// the first level with a replica.
pub const LEVEL_SEARCH: Limits = Limits {
    candidates: 16,
    batches: 32,
    max_rows: 10_000_000,
    // The swaps by move gains follow: 1M instead of 2.5M saved another 10% of the
    // plan's time on the same layers, for 0.06% on average.
    patience: 1_000_000,
};
/// Swaps after a kick: bounded by the kicks' own row budget.
pub const KICK_SEARCH: Limits = Limits {
    candidates: 16,
    batches: 4,
    max_rows: usize::MAX,
    patience: usize::MAX,
};
/// Swaps ranked by move gains after each level's search. 32 candidates per counting:
/// 8 or 16 stop earlier (0.1% higher costs on V3 layers), 64 cost 5% more time for
/// no gain.
pub const GAIN_SWAPS: move_gains::Limits = move_gains::Limits {
    candidates: 32,
    replica_candidates: 0,
    rounds: 256,
    max_rows: 40_000_000,
};
/// Swaps ranked by move gains that also move single replicas of replicated experts,
/// after `GAIN_SWAPS`: 8 of each kind per counting. Their rows (`max_rows` unused: the
/// greedy gives them `REPLICA_ROWS`) cost about 1.5 times a row of the singles' search.
pub const REPLICA_SWAPS: move_gains::Limits = move_gains::Limits {
    candidates: 8,
    replica_candidates: 8,
    rounds: 256,
    max_rows: 0,
};
/// Rows that the swaps by move gains of a level may read, the singles' first: what they
/// leave goes to the swaps of replicas (`REPLICA_SWAPS`), shrunk with the level's
/// distance from the first like the level search. On the three 58-layer V3 benchmark
/// families (32 GPUs x 9 slots) the singles read 2-5M rows per layer; with 5M the
/// layers where the singles converge early gain 0.38% on average, and the plan takes 3-6 s
/// more (docs/benchmarks.md).
pub const REPLICA_ROWS: usize = 5_000_000;
/// Handing replica slots to other experts.
pub const REASSIGN: reassign::Limits = reassign::Limits {
    candidates: 32,
    max_moves: 64,
};
/// Rounds of swaps then reassignment at most.
pub const ALTERNATIONS: usize = 3;
/// Iterated local search after the start's search and after each level's (the greedy
/// shrinks the level's rows like the level search).
pub const KICKS: Budget = Budget {
    rows: 400_000,
    kicks: 200,
    stall: 48,
};

/// The work limit of an iterated local search (`kicks::search`).
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Rows read by all the kicks' local searches together.
    pub rows: usize,
    /// Kicks at most.
    pub kicks: usize,
    /// Kicks in a row without a strict improvement before the search stops.
    pub stall: usize,
}
