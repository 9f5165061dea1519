//! The batch cost model (docs/cost-model.md#a-batch): one expert serving n tokens on one GPU takes
//! f(n) = (alpha^p + (beta*n)^p)^(1/p) (0 when n = 0), and a GPU's time in a layer is
//! the sum of f over the experts it runs. p = 1 is the additive model alpha + beta*n,
//! p = infinity the hard maximum; measured H100 expert FFNs sit at p ~ 1.5-2.

use crate::util::error::{MoeError, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostModel {
    /// Time of one expert's weight read (the cost of running it at all).
    pub alpha: f64,
    /// Time per token served by one expert.
    pub beta: f64,
    /// Shape of the smooth maximum, in [1, inf].
    pub p: f64,
}

impl CostModel {
    pub fn new(alpha: f64, beta: f64, p: f64) -> Result<Self> {
        for (name, v) in [("alpha", alpha), ("beta", beta)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(MoeError::value(format!(
                    "{name} must be finite and non-negative, got {v}"
                )));
            }
        }
        // NaN fails both comparisons: reject it with the values below 1.
        if p.is_nan() || p < 1.0 {
            return Err(MoeError::value(format!(
                "p must be at least 1 (or infinity), got {p}"
            )));
        }
        Ok(CostModel { alpha, beta, p })
    }

    /// Time of one expert serving `n` tokens on one GPU.
    #[inline]
    pub fn expert_time(&self, n: u32) -> f64 {
        if n == 0 {
            return 0.0;
        }
        let work = self.beta * n as f64;
        if self.p == 1.0 {
            self.alpha + work
        } else if self.p.is_infinite() {
            self.alpha.max(work)
        } else if self.alpha == 0.0 || work == 0.0 {
            // Exactly the surviving term, so the alpha = 0 / beta = 0 special cases stay exact.
            self.alpha + work
        } else {
            // Scaled by the larger term: alpha^p alone overflows to inf for p of a few
            // hundred, while the result is close to max(alpha, work).
            let big = self.alpha.max(work);
            let small = self.alpha.min(work) / big;
            big * (1.0 + small.powf(self.p)).powf(1.0 / self.p)
        }
    }
}

/// `expert_time` tabulated for 0..=n: powf is ~20 ns and the step-time search calls it
/// thousands of times per batch, always for counts no larger than the batch.
#[derive(Debug, Clone)]
pub struct ExpertTimes {
    model: CostModel,
    table: Vec<f64>,
}

impl ExpertTimes {
    pub fn new(model: CostModel) -> Self {
        ExpertTimes {
            model,
            table: vec![0.0],
        }
    }

    pub fn model(&self) -> &CostModel {
        &self.model
    }

    /// Makes `get(n)` valid for every n <= max_count.
    pub fn reserve(&mut self, max_count: u32) {
        let have = self.table.len() as u32;
        for n in have..=max_count {
            self.table.push(self.model.expert_time(n));
        }
    }

    #[inline]
    pub fn get(&self, n: u32) -> f64 {
        self.table[n as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_agree_at_their_limits() {
        let add = CostModel::new(130.0, 0.5, 1.0).unwrap();
        assert_eq!(add.expert_time(0), 0.0);
        assert!((add.expert_time(100) - 180.0).abs() < 1e-12);
        let hard = CostModel::new(130.0, 0.5, f64::INFINITY).unwrap();
        assert_eq!(hard.expert_time(100), 130.0);
        assert_eq!(hard.expert_time(1000), 500.0);
        let two = CostModel::new(3.0, 1.0, 2.0).unwrap();
        assert!((two.expert_time(4) - 5.0).abs() < 1e-12);
        let memory_bound = CostModel::new(7.0, 0.0, 1.7).unwrap();
        assert_eq!(memory_bound.expert_time(1000), 7.0);
        let compute_bound = CostModel::new(0.0, 0.25, 1.7).unwrap();
        assert_eq!(compute_bound.expert_time(8), 2.0);
        // Large p: the hard maximum, not inf.
        let sharp = CostModel::new(130.0, 0.5, 400.0).unwrap();
        assert!(
            (sharp.expert_time(1000) - 500.0).abs() < 1e-9,
            "{}",
            sharp.expert_time(1000)
        );
        assert!((sharp.expert_time(1) - 130.0).abs() < 1e-9);
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(CostModel::new(-1.0, 0.5, 1.0)
            .unwrap_err()
            .to_string()
            .contains("alpha"));
        assert!(CostModel::new(1.0, f64::NAN, 1.0)
            .unwrap_err()
            .to_string()
            .contains("beta"));
        assert!(CostModel::new(1.0, 0.5, 0.5)
            .unwrap_err()
            .to_string()
            .contains("p must"));
    }

    #[test]
    fn table_matches_direct_evaluation() {
        let m = CostModel::new(21.0, 0.03, 1.5).unwrap();
        let mut t = ExpertTimes::new(m);
        t.reserve(5000);
        for n in [0, 1, 17, 4096, 5000] {
            assert_eq!(t.get(n), m.expert_time(n));
        }
    }
}
