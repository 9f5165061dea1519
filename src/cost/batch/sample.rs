//! The fixed sample of batches the batch-aware search scores placements on: batches of
//! `batch_size` tokens drawn from a one-layer trace with seeded streams, each kept as
//! sparse (expert, token count) lists, identical batches merged with their counts as
//! weights, and an index of the batches holding each expert.

use std::collections::BTreeMap;

use super::simulate::Trace;
use super::step_time::StepTimeSolver;
use crate::model::placement::Replicas;
use crate::util::rng::SplitMix64;

/// Sampled batches as sparse (expert, tokens) lists, identical batches merged.
pub struct Sample {
    pub experts: Vec<Vec<u32>>,
    pub counts: Vec<Vec<u32>>,
    pub weights: Vec<f64>,
    /// Batches holding each expert.
    pub by_expert: Vec<Vec<u32>>,
}

pub fn sample_batches(
    trace: &Trace,
    num_experts: usize,
    batch_size: usize,
    num_batches: usize,
    seed: u64,
) -> Sample {
    let mut merged: BTreeMap<Vec<(u32, u32)>, f64> = BTreeMap::new();
    let mut tokens = Vec::new();
    let mut count = vec![0u32; num_experts];
    for b in 0..num_batches {
        let mut rng = SplitMix64::stream(seed, u64::MAX, b as u64);
        trace.draw(&mut rng, batch_size, &mut tokens);
        let mut touched = Vec::new();
        for &t in &tokens {
            for &e in trace.experts(t, 0) {
                if count[e as usize] == 0 {
                    touched.push(e as u32);
                }
                count[e as usize] += 1;
            }
        }
        touched.sort_unstable();
        let key: Vec<(u32, u32)> = touched
            .iter()
            .map(|&e| (e, std::mem::take(&mut count[e as usize])))
            .collect();
        *merged.entry(key).or_insert(0.0) += 1.0;
    }
    let mut s = Sample {
        experts: Vec::new(),
        counts: Vec::new(),
        weights: Vec::new(),
        by_expert: vec![Vec::new(); num_experts],
    };
    for (b, (key, w)) in merged.into_iter().enumerate() {
        for &(e, _) in &key {
            s.by_expert[e as usize].push(b as u32);
        }
        s.experts.push(key.iter().map(|x| x.0).collect());
        s.counts.push(key.iter().map(|x| x.1).collect());
        s.weights.push(w);
    }
    s
}

pub fn time_batch(
    solver: &mut StepTimeSolver<'_, impl Replicas>,
    sample: &Sample,
    b: usize,
) -> f64 {
    let (experts, counts) = (&sample.experts[b], &sample.counts[b]);
    if counts.iter().all(|&c| c == 1) {
        if let Some(t) = solver.unit_time(experts) {
            return t;
        }
    }
    solver.set_counts(experts, counts);
    solver.solve()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_batches_merge_and_the_index_finds_them() {
        // Tokens pick {0, 1} or {2, 3}: single-token batches are one of two kinds.
        let ids: Vec<i64> = (0..40)
            .flat_map(|i| if i % 2 == 0 { [0, 1] } else { [2, 3] })
            .collect();
        let trace = Trace::new(&ids, 1, 2, &[5], None).unwrap();
        let s = sample_batches(&trace, 5, 1, 100, 7);
        assert_eq!(s.weights.len(), 2);
        assert_eq!(s.weights.iter().sum::<f64>(), 100.0);
        assert_eq!(s.experts, vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(s.counts, vec![vec![1, 1], vec![1, 1]]);
        assert_eq!(
            s.by_expert,
            vec![vec![0], vec![0], vec![1], vec![1], vec![]]
        );
        // Batches of 8 tokens: counts add up to the tokens drawn, k per token.
        let s = sample_batches(&trace, 5, 8, 50, 7);
        for (b, counts) in s.counts.iter().enumerate() {
            assert_eq!(counts.iter().sum::<u32>(), 16, "batch {b}");
        }
        assert_eq!(s.weights.iter().sum::<f64>(), 50.0);
    }
}
