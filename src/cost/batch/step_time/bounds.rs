//! Lower bounds on the step time of the loaded batch: they stop the search when a start
//! is proven optimal, and `batch_time(return_bound=True)` reports them.

use super::StepTimeSolver;
use crate::model::placement::Replicas;

impl<P: Replicas> StepTimeSolver<'_, P> {
    /// Two bounds that cost one pass: an expert held by one GPU runs there whatever the
    /// assignment (pinned load per GPU), and an expert's largest part is at least its
    /// tokens spread evenly over its replicas.
    pub(super) fn simple_bound(&mut self) -> f64 {
        for &g in &self.active_gpus {
            self.load[g as usize] = 0.0;
        }
        let mut spread: f64 = 0.0;
        for i in 0..self.experts.len() {
            let gpus = self.gpus_of(i);
            let c = self.counts[i];
            if gpus.len() == 1 {
                self.load[gpus[0] as usize] += self.f(c);
            }
            spread = spread.max(self.f(c.div_ceil(gpus.len() as u32)));
        }
        self.active_gpus
            .iter()
            .map(|&g| self.load[g as usize])
            .fold(spread, f64::max)
    }

    /// A time no assignment of the loaded batch beats: the largest of
    /// f(1) x (semi-matching rounds), beta x ceil(T*) (whole-token max-flow),
    /// max over expert sets A of sum f(count) / |N(A)| (splitting never saves work,
    /// f is subadditive), the load pinned to a GPU by experts it alone holds and, per
    /// expert, f(its tokens spread evenly over its replicas).
    pub fn lower_bound(&mut self) -> f64 {
        if self.experts.is_empty() {
            return 0.0;
        }
        let experts = std::mem::take(&mut self.experts);
        let placement = self.placement;
        let rounds = self
            .matching
            .solve(experts.len(), |i| placement.gpus_of(experts[i] as usize));
        self.weights.clear();
        self.weights.extend(self.counts.iter().map(|&c| c as f64));
        let tokens = self
            .flow
            .min_makespan(&experts, &self.weights, self.placement, true);
        self.weights.clear();
        self.weights
            .extend(self.counts.iter().map(|&c| self.times.get(c)));
        let work = self
            .flow
            .min_makespan(&experts, &self.weights, self.placement, false);
        self.experts = experts;
        let simple = self.simple_bound();
        let m = self.model();
        (self.f(1) * rounds as f64)
            .max(m.beta * tokens)
            .max(work * (1.0 - 1e-12))
            .max(simple)
    }
}
