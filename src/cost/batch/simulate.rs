//! Step-time simulation: draw batches of tokens from a routing trace and time every
//! MoE layer of each decode step with the batch cost model. Steps run in parallel and
//! each draws from its own seeded stream, so results do not depend on the thread count.

use rayon::prelude::*;

use super::cost_model::CostModel;
use super::step_time::StepTimeSolver;
use crate::model::placement::Placement;
use crate::util::cancel;
use crate::util::error::{MoeError, Result};
use crate::util::limits::{MAX_BATCH, MAX_STEP_TIMES};
use crate::util::rng::SplitMix64;

/// Routing of a set of tokens through every MoE layer: ids [tokens, layers, k].
/// With `weights`, token t is drawn with probability weights[t] / sum (a subset table),
/// otherwise uniformly.
#[derive(Debug, Clone)]
pub struct Trace {
    ids: Vec<u16>,
    num_tokens: usize,
    num_layers: usize,
    k: usize,
    cumulative: Option<Vec<f64>>,
}

impl Trace {
    /// Checks every id against `num_experts[layer]` and that no token picks an expert
    /// twice in a layer.
    pub fn new(
        ids: &[i64],
        num_layers: usize,
        k: usize,
        num_experts: &[usize],
        weights: Option<&[f64]>,
    ) -> Result<Self> {
        if num_layers == 0 || k == 0 {
            return Err(MoeError::value(format!(
                "a trace needs at least one layer and one expert per token, got {num_layers} layers and k = {k}"
            )));
        }
        if num_experts.len() != num_layers {
            return Err(MoeError::value(format!(
                "the trace has {num_layers} layers but {} placements were given",
                num_experts.len()
            )));
        }
        let row = num_layers * k;
        if ids.len() % row != 0 {
            return Err(MoeError::value(format!(
                "the trace has {} ids, not a multiple of layers x k = {row}",
                ids.len()
            )));
        }
        let num_tokens = ids.len() / row;
        if num_tokens == 0 {
            return Err(MoeError::value("the trace has no tokens to draw from"));
        }
        let mut out = Vec::with_capacity(ids.len());
        for (t, token) in ids.chunks_exact(row).enumerate() {
            for (l, experts) in token.chunks_exact(k).enumerate() {
                for (c, &e) in experts.iter().enumerate() {
                    if e < 0 || e as u64 >= num_experts[l] as u64 {
                        return Err(MoeError::value(format!(
                            "token {t} picks expert {e} in layer {l}, out of range [0, {}) of that layer's placement",
                            num_experts[l]
                        )));
                    }
                    if experts[..c].contains(&e) {
                        return Err(MoeError::value(format!(
                            "token {t} picks expert {e} twice in layer {l}"
                        )));
                    }
                    out.push(e as u16);
                }
            }
        }
        let cumulative = match weights {
            None => None,
            Some(w) => {
                if w.len() != num_tokens {
                    return Err(MoeError::value(format!(
                        "{} weights for {num_tokens} rows",
                        w.len()
                    )));
                }
                let mut acc = 0.0;
                let mut cum = Vec::with_capacity(w.len());
                for (i, &x) in w.iter().enumerate() {
                    if !(x.is_finite() && x >= 0.0) {
                        return Err(MoeError::value(format!(
                            "weights[{i}] = {x}: weights must be finite and non-negative"
                        )));
                    }
                    acc += x;
                    cum.push(acc);
                }
                if acc.is_nan() || acc <= 0.0 {
                    return Err(MoeError::value("the weights sum to 0: nothing to draw"));
                }
                // An infinite sum would make every draw land on the last row.
                if !acc.is_finite() {
                    return Err(MoeError::value(format!(
                        "the weights sum to {acc}: scale them down"
                    )));
                }
                Some(cum)
            }
        };
        Ok(Trace {
            ids: out,
            num_tokens,
            num_layers,
            k,
            cumulative,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.num_layers
    }
    pub fn k(&self) -> usize {
        self.k
    }
    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }

    /// The experts token `t` picks in `layer`.
    pub fn experts(&self, t: usize, layer: usize) -> &[u16] {
        let start = (t * self.num_layers + layer) * self.k;
        &self.ids[start..start + self.k]
    }

    /// Draws `n` token indices (with replacement) into `out`.
    pub fn draw(&self, rng: &mut SplitMix64, n: usize, out: &mut Vec<usize>) {
        out.clear();
        match &self.cumulative {
            None => out.extend((0..n).map(|_| rng.below(self.num_tokens))),
            Some(cum) => {
                let total = *cum.last().unwrap();
                for _ in 0..n {
                    let x = rng.unit() * total;
                    out.push(cum.partition_point(|&c| c <= x).min(self.num_tokens - 1));
                }
            }
        }
    }
}

pub fn check_placements(placements: &[Placement]) -> Result<()> {
    if placements.is_empty() {
        return Err(MoeError::value(
            "at least one placement (one per layer) is needed",
        ));
    }
    Ok(())
}

/// Step times [batch size][step]: each step draws `batch_size` tokens and sums the
/// layer times of all layers (the same tokens in every layer).
pub fn simulate(
    trace: &Trace,
    placements: &[Placement],
    batch_sizes: &[usize],
    model: CostModel,
    seed: u64,
    steps: usize,
) -> Result<Vec<Vec<f64>>> {
    check_placements(placements)?;
    if placements.len() != trace.num_layers() {
        return Err(MoeError::value(format!(
            "the trace has {} layers but {} placements were given",
            trace.num_layers(),
            placements.len()
        )));
    }
    check_steps(batch_sizes, steps)?;
    let solvers = || {
        placements
            .iter()
            .map(|p| StepTimeSolver::new(p, model))
            .collect::<Vec<_>>()
    };
    Ok(run_steps(
        trace,
        batch_sizes,
        seed,
        steps,
        solvers,
        |solvers, tokens, _| {
            let mut time = 0.0;
            for (layer, solver) in solvers.iter_mut().enumerate() {
                solver.set_batch(
                    tokens
                        .iter()
                        .flat_map(|&t| trace.experts(t, layer))
                        .map(|&e| e as u32),
                );
                time += solver.solve();
            }
            time
        },
    ))
}

/// Step times [batch size][step], the steps in parallel: step s of batch size b draws its
/// `batch_sizes[b]` tokens from the stream (seed, b, s), and `step` times them (with what
/// remains of that stream) on the per-worker state `init` makes. A stopped run's times
/// are discarded, so its steps are skipped.
pub(crate) fn run_steps<S, I, F>(
    trace: &Trace,
    batch_sizes: &[usize],
    seed: u64,
    steps: usize,
    init: I,
    step: F,
) -> Vec<Vec<f64>>
where
    S: Send,
    I: Fn() -> S + Sync + Send,
    F: Fn(&mut S, &[usize], &mut SplitMix64) -> f64 + Sync + Send,
{
    batch_sizes
        .iter()
        .enumerate()
        .map(|(bi, &batch)| {
            (0..steps)
                .into_par_iter()
                .map_init(
                    || (init(), Vec::new()),
                    |(state, tokens), s| {
                        if cancel::requested() {
                            return 0.0;
                        }
                        let mut rng = SplitMix64::stream(seed, bi as u64, s as u64);
                        trace.draw(&mut rng, batch, tokens);
                        step(state, tokens, &mut rng)
                    },
                )
                .collect()
        })
        .collect()
}

/// The batch sizes and the number of steps a simulation may take: at least one step, sizes
/// in [1, MAX_BATCH], at most MAX_STEP_TIMES step times kept.
pub(crate) fn check_steps(batch_sizes: &[usize], steps: usize) -> Result<()> {
    if steps == 0 {
        return Err(MoeError::value("steps must be at least 1"));
    }
    if let Some(&b) = batch_sizes.iter().find(|&&b| b == 0 || b > MAX_BATCH) {
        return Err(MoeError::value(format!(
            "batch sizes must be in [1, {MAX_BATCH}], got {b}"
        )));
    }
    if steps.saturating_mul(batch_sizes.len()) > MAX_STEP_TIMES {
        return Err(MoeError::value(format!(
            "{steps} steps x {} batch sizes is more than {MAX_STEP_TIMES} step times to keep",
            batch_sizes.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_of_one_is_the_subset_cost() {
        // Experts 0 and 1 share GPU 0; expert 2 is alone on GPU 1.
        let p = Placement::from_lists(&[vec![0], vec![0], vec![1]], 2).unwrap();
        let trace = Trace::new(&[0, 1, 0, 1], 1, 2, &[3], Some(&[1.0, 0.0])).unwrap();
        let m = CostModel::new(10.0, 1.0, 1.0).unwrap();
        let times = simulate(&trace, std::slice::from_ref(&p), &[1, 3], m, 0, 50).unwrap();
        // Only row 0 ({0, 1}) can be drawn: two rounds of (alpha + beta).
        assert!(times[0].iter().all(|&t| (t - 22.0).abs() < 1e-12));
        // Three tokens of {0, 1}: GPU 0 runs both experts with 3 tokens each.
        assert!(times[1].iter().all(|&t| (t - 26.0).abs() < 1e-12));
    }

    #[test]
    fn deterministic_and_summed_over_layers() {
        let p = Placement::from_lists(&[vec![0], vec![1], vec![0, 1]], 2).unwrap();
        let ids: Vec<i64> = (0..200).map(|i| [0, 1, 2][(i * 7 + i / 3) % 3]).collect();
        // 100 tokens, 2 layers, k = 1.
        let two = Trace::new(&ids, 2, 1, &[3, 3], None).unwrap();
        let m = CostModel::new(5.0, 0.5, 2.0).unwrap();
        let a = simulate(&two, &[p.clone(), p.clone()], &[4, 16], m, 7, 64).unwrap();
        let b = simulate(&two, &[p.clone(), p.clone()], &[4, 16], m, 7, 64).unwrap();
        assert_eq!(a, b);
        let c = simulate(&two, &[p.clone(), p.clone()], &[4, 16], m, 8, 64).unwrap();
        assert_ne!(a, c);
        // Two layers cost at least one layer's minimum each.
        assert!(a[0].iter().all(|&t| t >= 2.0 * m.expert_time(1) - 1e-12));
    }

    #[test]
    fn rejects_mismatched_inputs() {
        let p = Placement::from_lists(&[vec![0], vec![1]], 2).unwrap();
        assert!(Trace::new(&[0, 2], 1, 2, &[2], None)
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        assert!(Trace::new(&[1, 1], 1, 2, &[2], None)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        let err = Trace::new(&[0, 1, 0, 1], 1, 2, &[2], Some(&[1e308, 1e308])).unwrap_err();
        assert!(err.to_string().contains("sum to inf"), "{err}");
        let t = Trace::new(&[0, 1], 1, 2, &[2], None).unwrap();
        let m = CostModel::new(1.0, 1.0, 1.0).unwrap();
        assert!(simulate(&t, &[p.clone(), p.clone()], &[1], m, 0, 1).is_err());
        assert!(simulate(&t, &[p], &[0], m, 0, 1)
            .unwrap_err()
            .to_string()
            .contains("batch sizes"));
    }
}
