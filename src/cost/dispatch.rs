//! Costs when the engine, not the cost model, picks each token's replicas
//! (docs/cost-model.md#dispatch). `decode` and `batch` let every token (or batch) use the
//! replicas that make the busiest GPU least busy; engines route by fixed rules instead:
//!
//! - `Dispatch::Static`: a map per source rank, expert -> serving GPU; a token on source
//!   rank r sends expert e to `map[r][e]` (SGLang's `static`, TensorRT-LLM at one token
//!   per rank). A token's cost is the most of its experts mapped to one GPU, averaged over
//!   the source ranks (a decode token sits on each rank alike); in a batch, token j of a
//!   step sits on rank (offset + j) mod R with the offset drawn per step, so tokens are
//!   spread evenly over the ranks.
//! - `Dispatch::Uniform`: every (token, expert) pair draws one of the expert's replicas
//!   uniformly (SGLang's `dynamic`). A token's expected cost is exact (every combination
//!   of replica choices enumerated) when the product of its experts' replica counts is at
//!   most `ENUMERATION_LIMIT`, else the mean over `UNIFORM_SAMPLES` seeded draws.
//!
//! A batch's step time under a rule is the batch cost model (docs/cost-model.md#a-batch)
//! with the token counts the rule sends to each (expert, GPU): per GPU, the sum over its
//! experts of f(tokens), and the busiest GPU's sum.

use rayon::prelude::*;

use super::batch::cost_model::{CostModel, ExpertTimes};
use super::batch::simulate::{check_placements, check_steps, Trace};
use crate::model::placement::Placement;
use crate::model::table::SubsetTable;
use crate::util::cancel;
use crate::util::error::{MoeError, Result};
use crate::util::rng::SplitMix64;

/// Largest product of replica counts whose combinations are enumerated exactly.
pub const ENUMERATION_LIMIT: usize = 4096;
/// Draws per token when the combinations are too many to enumerate.
pub const UNIFORM_SAMPLES: usize = 4096;

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 1024;

/// Which replica serves each (token, expert) pair.
#[derive(Debug, Clone)]
pub enum Dispatch {
    /// `map[r * E + e]`: the GPU serving expert e for tokens of source rank r.
    Static { map: Vec<u16>, ranks: usize },
    /// A uniform draw among the expert's replicas for every pair.
    Uniform,
}

impl Dispatch {
    /// A static map [ranks, E] checked against the placement: every entry is a GPU that
    /// holds the expert.
    pub fn checked_static(map: &[i64], ranks: usize, placement: &Placement) -> Result<Self> {
        let e = placement.num_experts();
        if ranks == 0 || map.len() != ranks * e {
            return Err(MoeError::value(format!(
                "the dispatch map has {} entries, expected ranks x experts with at least one rank and {e} experts",
                map.len()
            )));
        }
        let mut out = Vec::with_capacity(map.len());
        for (i, &g) in map.iter().enumerate() {
            let (r, expert) = (i / e, i % e);
            if g < 0
                || g as u64 >= placement.num_gpus() as u64
                || !placement.holds(expert, g as usize)
            {
                return Err(MoeError::value(format!(
                    "the dispatch map sends expert {expert} of rank {r} to GPU {g}, which holds no replica of it"
                )));
            }
            out.push(g as u16);
        }
        Ok(Dispatch::Static { map: out, ranks })
    }
}

/// The most experts of one token on one GPU, for the GPUs `gpus` its experts go to.
fn max_load(gpus: &[u16]) -> u32 {
    let mut best = 0;
    for (i, g) in gpus.iter().enumerate() {
        if gpus[..i].contains(g) {
            continue;
        }
        best = best.max(gpus[i..].iter().filter(|&h| h == g).count() as u32);
    }
    best
}

fn static_row_cost(subset: &[u16], map: &[u16], ranks: usize, num_experts: usize) -> f64 {
    let mut gpus = [0u16; crate::util::limits::MAX_K];
    let k = subset.len();
    let mut sum = 0u64;
    for r in 0..ranks {
        let row = &map[r * num_experts..(r + 1) * num_experts];
        for (g, &e) in gpus.iter_mut().zip(subset) {
            *g = row[e as usize];
        }
        sum += max_load(&gpus[..k]) as u64;
    }
    sum as f64 / ranks as f64
}

fn uniform_row_cost(subset: &[u16], placement: &Placement, seed: u64, row: usize) -> f64 {
    let k = subset.len();
    let lists: Vec<&[u16]> = subset
        .iter()
        .map(|&e| placement.gpus_of(e as usize))
        .collect();
    let mut gpus = [0u16; crate::util::limits::MAX_K];
    let combinations = lists
        .iter()
        .try_fold(1usize, |acc, l| acc.checked_mul(l.len()))
        .filter(|&c| c <= ENUMERATION_LIMIT);
    if let Some(total) = combinations {
        let mut sum = 0u64;
        let mut digits = [0usize; crate::util::limits::MAX_K];
        for _ in 0..total {
            for i in 0..k {
                gpus[i] = lists[i][digits[i]];
            }
            sum += max_load(&gpus[..k]) as u64;
            // Next combination in mixed radix.
            for i in 0..k {
                digits[i] += 1;
                if digits[i] < lists[i].len() {
                    break;
                }
                digits[i] = 0;
            }
        }
        return sum as f64 / total as f64;
    }
    let mut rng = SplitMix64::stream(seed, row as u64, 0);
    let mut sum = 0u64;
    for _ in 0..UNIFORM_SAMPLES {
        for i in 0..k {
            gpus[i] = lists[i][rng.below(lists[i].len())];
        }
        sum += max_load(&gpus[..k]) as u64;
    }
    sum as f64 / UNIFORM_SAMPLES as f64
}

/// The expected cost (expert rounds of the busiest GPU) of every row of the table when
/// the rule picks the replicas; `seed` only matters for rows sampled under `Uniform`.
pub fn dispatch_costs(
    table: &SubsetTable,
    placement: &Placement,
    dispatch: &Dispatch,
    seed: u64,
) -> Result<Vec<f64>> {
    super::decode::check_compatible(table, placement)?;
    let (k, e) = (table.k(), placement.num_experts());
    let mut costs = vec![0.0; table.len()];
    costs
        .par_chunks_mut(ROWS_PER_TASK)
        .zip(table.subsets().par_chunks(ROWS_PER_TASK * k))
        .enumerate()
        .for_each(|(chunk, (out, rows))| {
            for (i, (c, subset)) in out.iter_mut().zip(rows.chunks_exact(k)).enumerate() {
                *c = match dispatch {
                    Dispatch::Static { map, ranks } => static_row_cost(subset, map, *ranks, e),
                    Dispatch::Uniform => {
                        uniform_row_cost(subset, placement, seed, chunk * ROWS_PER_TASK + i)
                    }
                };
            }
        });
    Ok(costs)
}

/// Weighted mean of `dispatch_costs` (expert rounds per token).
pub fn expected_dispatch_cost(
    table: &SubsetTable,
    placement: &Placement,
    dispatch: &Dispatch,
    seed: u64,
) -> Result<f64> {
    let costs = dispatch_costs(table, placement, dispatch, seed)?;
    let total = table.total_weight();
    if total.is_nan() || total <= 0.0 {
        return Err(MoeError::value(
            "the table is empty (total weight 0): no expected cost",
        ));
    }
    let sum: f64 = costs.iter().zip(table.weights()).map(|(c, w)| c * w).sum();
    Ok(sum / total)
}

/// Token counts per (expert, GPU) of one layer of one step, and the step time they give.
struct RoutedCounts {
    num_gpus: usize,
    counts: Vec<u32>,
    touched: Vec<usize>,
    gpu_time: Vec<f64>,
    times: ExpertTimes,
}

impl RoutedCounts {
    fn new(placement: &Placement, model: CostModel) -> Self {
        RoutedCounts {
            num_gpus: placement.num_gpus(),
            counts: vec![0; placement.num_experts() * placement.num_gpus()],
            touched: Vec::new(),
            gpu_time: vec![0.0; placement.num_gpus()],
            times: ExpertTimes::new(model),
        }
    }

    fn add(&mut self, expert: usize, gpu: usize) {
        let i = expert * self.num_gpus + gpu;
        if self.counts[i] == 0 {
            self.touched.push(i);
        }
        self.counts[i] += 1;
    }

    /// The busiest GPU's time; clears the counts.
    fn take_time(&mut self) -> f64 {
        let most = self
            .touched
            .iter()
            .map(|&i| self.counts[i])
            .max()
            .unwrap_or(0);
        self.times.reserve(most);
        self.gpu_time.iter_mut().for_each(|t| *t = 0.0);
        for &i in &self.touched {
            self.gpu_time[i % self.num_gpus] += self.times.get(self.counts[i]);
            self.counts[i] = 0;
        }
        self.touched.clear();
        self.gpu_time.iter().cloned().fold(0.0, f64::max)
    }
}

/// Step times [batch size][step] under the rules (one per layer), with the batches that
/// `batch::simulate::simulate` draws for the same seed: every step draws `batch_size`
/// tokens and sums the layer times.
pub fn simulate_dispatch(
    trace: &Trace,
    placements: &[Placement],
    rules: &[Dispatch],
    batch_sizes: &[usize],
    model: CostModel,
    seed: u64,
    steps: usize,
) -> Result<Vec<Vec<f64>>> {
    check_placements(placements)?;
    if placements.len() != trace.num_layers() || rules.len() != placements.len() {
        return Err(MoeError::value(format!(
            "the trace has {} layers but {} placements and {} dispatch rules were given",
            trace.num_layers(),
            placements.len(),
            rules.len()
        )));
    }
    check_steps(batch_sizes, steps)?;
    let result = batch_sizes
        .iter()
        .enumerate()
        .map(|(bi, &batch)| {
            (0..steps)
                .into_par_iter()
                .map_init(
                    || {
                        let routed: Vec<RoutedCounts> = placements
                            .iter()
                            .map(|p| RoutedCounts::new(p, model))
                            .collect();
                        (routed, Vec::new())
                    },
                    |(routed, tokens), s| {
                        if cancel::requested() {
                            return 0.0;
                        }
                        let mut rng = SplitMix64::stream(seed, bi as u64, s as u64);
                        trace.draw(&mut rng, batch, tokens);
                        let offset = rng.next_u64();
                        let mut time = 0.0;
                        for (layer, counts) in routed.iter_mut().enumerate() {
                            let placement = &placements[layer];
                            let e = placement.num_experts();
                            for (j, &t) in tokens.iter().enumerate() {
                                for &expert in trace.experts(t, layer) {
                                    let expert = expert as usize;
                                    let gpu = match &rules[layer] {
                                        Dispatch::Static { map, ranks } => {
                                            let r = ((offset % *ranks as u64) as usize + j) % ranks;
                                            map[r * e + expert] as usize
                                        }
                                        Dispatch::Uniform => {
                                            let gpus = placement.gpus_of(expert);
                                            gpus[rng.below(gpus.len())] as usize
                                        }
                                    };
                                    counts.add(expert, gpu);
                                }
                            }
                            time += counts.take_time();
                        }
                        time
                    },
                )
                .collect()
        })
        .collect();
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::decode::subset_costs;
    use crate::testing::skewed_table;

    fn two_replicas() -> Placement {
        // Experts 0, 1 on GPU 0; expert 2 on GPUs 0 and 1; expert 3 on GPU 1.
        Placement::from_lists(&[vec![0], vec![0], vec![0, 1], vec![1]], 2).unwrap()
    }

    #[test]
    fn static_cost_averages_the_ranks() {
        let p = two_replicas();
        let t = SubsetTable::from_subsets(&[0, 2], 2, 4, &[1.0]).unwrap();
        // Rank 0 keeps expert 2 local (GPU 0: 2 rounds), rank 1 sends it to GPU 1 (1 round).
        let local = Dispatch::checked_static(&[0, 0, 0, 1, 0, 0, 1, 1], 2, &p).unwrap();
        assert_eq!(dispatch_costs(&t, &p, &local, 0).unwrap(), vec![1.5]);
        // The best choice never costs more than a rule.
        assert_eq!(subset_costs(&t, &p).unwrap(), vec![1]);
        let err = Dispatch::checked_static(&[0, 0, 0, 1, 0, 0, 1, 0], 2, &p).unwrap_err();
        assert!(err.to_string().contains("holds no replica"), "{err}");
    }

    #[test]
    fn uniform_cost_is_the_mean_over_combinations() {
        let p = two_replicas();
        let t = SubsetTable::from_subsets(&[0, 2, 2, 3], 2, 4, &[1.0, 1.0]).unwrap();
        let c = dispatch_costs(&t, &p, &Dispatch::Uniform, 0).unwrap();
        // {0, 2}: expert 2 on GPU 0 (2 rounds) or GPU 1 (1 round); {2, 3} likewise.
        assert_eq!(c, vec![1.5, 1.5]);
    }

    #[test]
    fn sampled_uniform_cost_is_close_to_the_enumeration() {
        // 8 experts with 4 replicas each: 65,536 combinations, so the cost is sampled.
        let lists: Vec<Vec<usize>> = (0..8)
            .map(|e| (0..4).map(|r| (e + r) % 4).collect())
            .collect();
        let p = Placement::from_lists(&lists, 4).unwrap();
        let subset: Vec<u16> = (0..8).collect();
        let sampled = uniform_row_cost(&subset, &p, 3, 0);
        // The exact mean by enumeration.
        let mut sum = 0u64;
        for code in 0..(1usize << 16) {
            let gpus: Vec<u16> = (0..8).map(|i| ((code >> (2 * i)) & 3) as u16).collect();
            sum += max_load(&gpus) as u64;
        }
        let exact = sum as f64 / 65536.0;
        assert!((sampled - exact).abs() < 0.05, "{sampled} vs {exact}");
    }

    #[test]
    fn rules_never_beat_the_best_choice() {
        let t = skewed_table(5, 300, 16, 4, 6, 60);
        let lists: Vec<Vec<usize>> = (0..16)
            .map(|e| {
                if e < 6 {
                    vec![e % 4, (e + 1) % 4]
                } else {
                    vec![e % 4]
                }
            })
            .collect();
        let p = Placement::from_lists(&lists, 4).unwrap();
        let best = subset_costs(&t, &p).unwrap();
        let map: Vec<i64> = (0..4)
            .flat_map(|r| lists.iter().map(move |l| l[r % l.len()] as i64))
            .collect();
        let rule = Dispatch::checked_static(&map, 4, &p).unwrap();
        for d in [rule, Dispatch::Uniform] {
            let c = dispatch_costs(&t, &p, &d, 1).unwrap();
            assert!(c.iter().zip(&best).all(|(&c, &b)| c >= b as f64 - 1e-12));
        }
    }

    #[test]
    fn one_token_batches_match_the_decode_cost() {
        let p = two_replicas();
        let ids = [0i64, 2];
        let trace = Trace::new(&ids, 1, 2, &[4], None).unwrap();
        let m = CostModel::new(10.0, 0.0, 1.0).unwrap();
        let map = Dispatch::checked_static(&[0, 0, 0, 1, 0, 0, 1, 1], 2, &p).unwrap();
        let rules = [map];
        let times =
            simulate_dispatch(&trace, std::slice::from_ref(&p), &rules, &[1], m, 0, 400).unwrap();
        // Rank 0: two rounds (20), rank 1: one (10); both ranks turn up.
        assert!(times[0].iter().all(|&t| t == 10.0 || t == 20.0));
        let mean = times[0].iter().sum::<f64>() / 400.0;
        assert!((mean - 15.0).abs() < 1.5, "{mean}");
        // Two tokens sit on both ranks: GPU 0 runs experts 0 and 2 (rank 0's token).
        let times =
            simulate_dispatch(&trace, std::slice::from_ref(&p), &rules, &[2], m, 0, 10).unwrap();
        assert!(times[0].iter().all(|&t| t == 20.0));
    }
}
