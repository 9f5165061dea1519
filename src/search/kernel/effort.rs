//! How much more the greedy's local searches may do: an optional work budget, in rows
//! read by exact evaluations (deterministic: the same result on every machine and for
//! any thread count), and an optional deadline (anytime: the best placement found when
//! it passes, which depends on the machine's speed). The construction of a complete
//! placement (start, then every level's fill by exact gains) always runs; the budgets
//! bound the searches that improve it, the start's searches at half of each budget
//! (`limit_to`) so that the later levels keep a share.

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
    start: Instant,
    seconds: Option<f64>,
    /// Per mille of the budgets the current stage may use up to (`limit_to`).
    share: AtomicUsize,
}

/// The whole budget, in per mille.
const WHOLE: usize = 1000;

impl Effort {
    pub fn unlimited() -> Self {
        Effort::new(SearchBudget::default(), Instant::now())
    }

    /// The budget of an optimization that started at `start`.
    pub fn new(budget: SearchBudget, start: Instant) -> Self {
        Effort {
            spent: AtomicUsize::new(0),
            work: budget.work,
            start,
            seconds: budget.seconds.map(|s| s.clamp(0.0, 1e9)),
            share: AtomicUsize::new(WHOLE),
        }
    }

    /// Lets the stages that follow use only `per_mille` of each budget (all of it with
    /// 1000), so that an early stage leaves some for the later ones.
    pub fn limit_to(&self, per_mille: usize) {
        self.share.store(per_mille.min(WHOLE), Ordering::Relaxed);
    }

    /// Counts rows read by an exact evaluation.
    pub fn spend(&self, rows: usize) {
        self.spent.fetch_add(rows, Ordering::Relaxed);
    }

    /// Rows read so far.
    pub fn spent(&self) -> usize {
        self.spent.load(Ordering::Relaxed)
    }

    /// True once the work budget is spent, the deadline has passed or a stop was requested
    /// (Ctrl-C, `crate::util::cancel`): searches stop and keep the best layout they have.
    pub fn exhausted(&self) -> bool {
        let share = self.share.load(Ordering::Relaxed);
        self.work
            .is_some_and(|w| self.spent() as u128 * WHOLE as u128 >= w as u128 * share as u128)
            || self.seconds.is_some_and(|s| {
                self.start.elapsed() >= Duration::from_secs_f64(s * share as f64 / WHOLE as f64)
            })
            || crate::util::cancel::requested()
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
        e.spend(49);
        e.limit_to(500);
        assert!(!e.exhausted());
        e.spend(1);
        assert!(e.exhausted());
        e.limit_to(1000);
        assert!(!e.exhausted());
        e.spend(49);
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
