//! How much more the greedy's local searches may do: an optional work budget, in rows
//! read by exact evaluations (deterministic: the same result on every machine and for
//! any thread count), and an optional deadline (anytime: the best placement found when
//! it passes, which depends on the machine's speed). The construction of a complete
//! placement (start, then every level's fill by exact gains) always runs; the budgets
//! bound the searches that improve it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What a caller allows the greedy to spend; `Default` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SearchBudget {
    /// Rows read by the searches' exact evaluations, at most.
    pub work: Option<usize>,
    /// Seconds of wall-clock time from the start of the optimization.
    pub seconds: Option<f64>,
}

/// The budget being spent by one optimization; shared by its parallel tasks.
#[derive(Debug)]
pub struct Effort {
    spent: AtomicUsize,
    work: Option<usize>,
    deadline: Option<Instant>,
}

impl Effort {
    pub fn unlimited() -> Self {
        Effort::new(SearchBudget::default(), Instant::now())
    }

    /// The budget of an optimization that started at `start`.
    pub fn new(budget: SearchBudget, start: Instant) -> Self {
        Effort {
            spent: AtomicUsize::new(0),
            work: budget.work,
            deadline: budget
                .seconds
                .map(|s| start + Duration::from_secs_f64(s.clamp(0.0, 1e9))),
        }
    }

    /// Counts rows read by an exact evaluation.
    pub fn spend(&self, rows: usize) {
        self.spent.fetch_add(rows, Ordering::Relaxed);
    }

    /// Rows read so far.
    pub fn spent(&self) -> usize {
        self.spent.load(Ordering::Relaxed)
    }

    /// True once the work budget is spent or the deadline has passed: searches stop and
    /// keep the best layout they have.
    pub fn exhausted(&self) -> bool {
        self.work.is_some_and(|w| self.spent() >= w)
            || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_and_time_budgets_run_out() {
        let e = Effort::unlimited();
        e.spend(usize::MAX / 2);
        assert!(!e.exhausted());
        let e = Effort::new(
            SearchBudget {
                work: Some(100),
                seconds: None,
            },
            Instant::now(),
        );
        e.spend(99);
        assert!(!e.exhausted());
        e.spend(1);
        assert!(e.exhausted());
        let e = Effort::new(
            SearchBudget {
                work: None,
                seconds: Some(0.0),
            },
            Instant::now(),
        );
        assert!(e.exhausted());
    }
}
