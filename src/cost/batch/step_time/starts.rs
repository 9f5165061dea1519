//! The starts of the step-time solver besides the semi-matching: largest-first list
//! scheduling of whole experts and the max-flow split of tokens.

use super::StepTimeSolver;
use crate::model::placement::Replicas;

impl<P: Replicas> StepTimeSolver<'_, P> {
    /// Largest-first list scheduling of whole experts, each on its least-loaded replica.
    pub(super) fn largest_first(&mut self) {
        let mut order: Vec<usize> = (0..self.experts.len()).collect();
        order.sort_by(|&a, &b| self.counts[b].cmp(&self.counts[a]).then(a.cmp(&b)));
        for &g in &self.active_gpus {
            self.load[g as usize] = 0.0;
        }
        self.parts.iter_mut().for_each(|x| *x = 0);
        for i in order {
            let gpus = self.gpus_of(i);
            let r = (0..gpus.len())
                .min_by(|&a, &b| {
                    self.load[gpus[a] as usize].total_cmp(&self.load[gpus[b] as usize])
                })
                .unwrap();
            self.parts[self.part_off[i] + r] = self.counts[i];
            self.load[gpus[r] as usize] += self.f(self.counts[i]);
        }
    }

    /// The max-flow split of whole tokens with the least token load on any GPU
    /// (optimal when alpha = 0); returns that load.
    pub(super) fn token_flow(&mut self) -> f64 {
        self.weights.clear();
        self.weights.extend(self.counts.iter().map(|&c| c as f64));
        let experts = std::mem::take(&mut self.experts);
        let level = self
            .flow
            .min_makespan(&experts, &self.weights, self.placement, true);
        self.experts = experts;
        for i in 0..self.experts.len() {
            let reps = self.gpus_of(i).len();
            let mut left = self.counts[i];
            for r in 0..reps {
                let x = (self.flow.split(i, r).round() as u32).min(left);
                self.parts[self.part_off[i] + r] = x;
                left -= x;
            }
            // Flows are integral; rounding can only leave nothing behind, but keep the
            // count exact whatever happens.
            self.parts[self.part_off[i]] += left;
        }
        level
    }
}
