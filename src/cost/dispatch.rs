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
use super::batch::simulate::{check_placements, check_steps, run_steps, Trace};
use super::rank_maps::{RankMaps, RowScratch};
use crate::model::placement::Placement;
use crate::model::table::SubsetTable;
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
    /// TensorRT-LLM's load balancer (`moeComputeRouteKernel`): a source rank's pairs,
    /// flattened in token then column order, are taken in blocks of `ROUND_ROBIN_BLOCK`;
    /// the j-th pair of an expert in block b goes to the expert's replica
    /// (j + b + rank) mod count, replicas in GPU (slot) order. A lone token on rank r
    /// uses replica r mod count.
    RoundRobin { ranks: usize },
}

/// Pairs per CUDA block of TensorRT-LLM's routing kernel (256 threads x 4 pairs).
pub const ROUND_ROBIN_BLOCK: usize = 1024;

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
    let k = table.k();
    let maps = match dispatch {
        Dispatch::Static { map, ranks } => {
            Some(RankMaps::new(map, *ranks, placement.num_experts()))
        }
        Dispatch::RoundRobin { ranks } => Some(RankMaps::first_pair(placement, *ranks)),
        Dispatch::Uniform => None,
    };
    let mut costs = vec![0.0; table.len()];
    costs
        .par_chunks_mut(ROWS_PER_TASK)
        .zip(table.subsets().par_chunks(ROWS_PER_TASK * k))
        .enumerate()
        .for_each(|(chunk, (out, rows))| {
            let mut scratch = RowScratch::default();
            for (i, (c, subset)) in out.iter_mut().zip(rows.chunks_exact(k)).enumerate() {
                *c = match &maps {
                    Some(maps) => maps.row_sum(subset, &mut scratch) as f64 / maps.ranks() as f64,
                    None => uniform_row_cost(subset, placement, seed, chunk * ROWS_PER_TASK + i),
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

/// TensorRT-LLM's pair counters within one layer of one step (`Dispatch::RoundRobin`): per
/// (rank, expert) the block last seen (plus one; 0: none) and the expert's pairs in it so
/// far, and per rank the pairs routed so far.
struct RoundRobinPairs {
    num_experts: usize,
    seen: Vec<(u32, u32)>,
    touched: Vec<usize>,
    position: Vec<u32>,
}

impl RoundRobinPairs {
    /// Counters large enough for every round-robin layer of `rules` (none without one).
    fn for_rules(rules: &[Dispatch], placements: &[Placement]) -> Self {
        let (mut ranks, mut experts) = (0, 0);
        for (rule, p) in rules.iter().zip(placements) {
            if let Dispatch::RoundRobin { ranks: r } = rule {
                ranks = ranks.max(*r);
                experts = experts.max(p.num_experts());
            }
        }
        RoundRobinPairs {
            num_experts: experts,
            seen: vec![(0, 0); ranks * experts],
            touched: Vec::new(),
            position: vec![0; ranks],
        }
    }

    /// The replica index of the next pair of `rank`, for `expert` of `count` replicas.
    fn next(&mut self, rank: usize, expert: usize, count: usize) -> usize {
        let block = self.position[rank] as usize / ROUND_ROBIN_BLOCK;
        self.position[rank] += 1;
        let i = rank * self.num_experts + expert;
        if self.seen[i].0 != block as u32 + 1 {
            if self.seen[i].0 == 0 {
                self.touched.push(i);
            }
            self.seen[i] = (block as u32 + 1, 0);
        }
        let j = self.seen[i].1 as usize;
        self.seen[i].1 += 1;
        (j + block + rank) % count
    }

    fn clear(&mut self) {
        for &i in &self.touched {
            self.seen[i] = (0, 0);
        }
        self.touched.clear();
        self.position.iter_mut().for_each(|p| *p = 0);
    }
}

/// One layer of one simulated step: token j of `tokens` sits on source rank
/// (offset + j) mod ranks.
struct Step<'a> {
    trace: &'a Trace,
    layer: usize,
    tokens: &'a [usize],
    offset: u64,
}

impl Step<'_> {
    /// Counts the pairs each (expert, GPU) serves under `rule`.
    fn route(
        &self,
        placement: &Placement,
        rule: &Dispatch,
        rng: &mut SplitMix64,
        pairs: &mut RoundRobinPairs,
        counts: &mut RoutedCounts,
    ) {
        let e = placement.num_experts();
        for (j, &t) in self.tokens.iter().enumerate() {
            for &expert in self.trace.experts(t, self.layer) {
                let expert = expert as usize;
                let gpus = placement.gpus_of(expert);
                let gpu = match rule {
                    Dispatch::Static { map, ranks } => map[self.rank(j, *ranks) * e + expert],
                    Dispatch::Uniform => gpus[rng.below(gpus.len())],
                    Dispatch::RoundRobin { ranks } => {
                        gpus[pairs.next(self.rank(j, *ranks), expert, gpus.len())]
                    }
                };
                counts.add(expert, gpu as usize);
            }
        }
        pairs.clear();
    }

    fn rank(&self, j: usize, ranks: usize) -> usize {
        ((self.offset % ranks as u64) as usize + j) % ranks
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
    let state = || {
        let routed: Vec<RoutedCounts> = placements
            .iter()
            .map(|p| RoutedCounts::new(p, model))
            .collect();
        (routed, RoundRobinPairs::for_rules(rules, placements))
    };
    Ok(run_steps(
        trace,
        batch_sizes,
        seed,
        steps,
        state,
        |(routed, pairs), tokens, rng| {
            let offset = rng.next_u64();
            let mut time = 0.0;
            for (layer, counts) in routed.iter_mut().enumerate() {
                let step = Step {
                    trace,
                    layer,
                    tokens,
                    offset,
                };
                step.route(&placements[layer], &rules[layer], rng, pairs, counts);
                time += counts.take_time();
            }
            time
        },
    ))
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

    #[test]
    fn round_robin_alone_uses_replica_rank_mod_count() {
        let p = two_replicas();
        let t = SubsetTable::from_subsets(&[0, 2], 2, 4, &[1.0]).unwrap();
        // Rank 0: expert 2's replica 0 (GPU 0, beside expert 0), rank 1: replica 1.
        let rr = Dispatch::RoundRobin { ranks: 2 };
        assert_eq!(dispatch_costs(&t, &p, &rr, 0).unwrap(), vec![1.5]);
    }

    /// The GPU of each pair under TensorRT-LLM's kernel, written out: per rank, its
    /// pairs in order, blocks of `ROUND_ROBIN_BLOCK`, the j-th pair of an expert in
    /// block b on replica (j + b + rank) mod count.
    fn round_robin_reference(
        rows: &[Vec<usize>],
        placement: &Placement,
        ranks: usize,
        offset: usize,
    ) -> Vec<u32> {
        let g = placement.num_gpus();
        let mut counts = vec![0u32; placement.num_experts() * g];
        for rank in 0..ranks {
            let mine: Vec<usize> = (0..rows.len())
                .filter(|j| (offset + j) % ranks == rank)
                .collect();
            let flat: Vec<usize> = mine.iter().flat_map(|&j| rows[j].iter().cloned()).collect();
            for (pos, &e) in flat.iter().enumerate() {
                let block = pos / ROUND_ROBIN_BLOCK;
                let start = block * ROUND_ROBIN_BLOCK;
                let j = flat[start..pos].iter().filter(|&&x| x == e).count();
                let replicas = placement.gpus_of(e);
                let gpu = replicas[(j + block + rank) % replicas.len()] as usize;
                counts[e * g + gpu] += 1;
            }
        }
        counts
    }

    #[test]
    fn round_robin_steps_follow_the_kernel() {
        // Expert 0 on 5 GPUs, experts 1-4 on one each; 1,024 ≡ 4 mod 5, so a second
        // block's offset differs from a count carried over.
        let lists = vec![vec![0, 1, 2, 3, 4], vec![0], vec![1], vec![2], vec![3]];
        let p = Placement::from_lists(&lists, 5).unwrap();
        let m = CostModel::new(1.0, 1.0, 1.0).unwrap();
        let mut rng = SplitMix64::new(3);
        for (tokens, ranks, k) in [(1025, 1, 1), (2100, 2, 1), (700, 3, 2), (9, 4, 2)] {
            let mut rows = Vec::new();
            for t in 0..tokens {
                let first = if rng.below(3) == 0 {
                    1 + rng.below(4)
                } else {
                    0
                };
                let mut row = vec![first];
                if k == 2 {
                    row.push(if first == 0 { 1 + t % 4 } else { 0 });
                }
                rows.push(row);
            }
            let ids: Vec<i64> = rows.iter().flatten().map(|&e| e as i64).collect();
            let trace = Trace::new(&ids, 1, k, &[5], None).unwrap();
            let order: Vec<usize> = (0..tokens).collect();
            let rules = [Dispatch::RoundRobin { ranks }];
            let mut pairs = RoundRobinPairs::for_rules(&rules, std::slice::from_ref(&p));
            let mut counts = RoutedCounts::new(&p, m);
            for offset in [0u64, 5] {
                let step = Step {
                    trace: &trace,
                    layer: 0,
                    tokens: &order,
                    offset,
                };
                step.route(&p, &rules[0], &mut rng, &mut pairs, &mut counts);
                let want = round_robin_reference(&rows, &p, ranks, offset as usize % ranks);
                assert_eq!(
                    counts.counts, want,
                    "{tokens} tokens, {ranks} ranks, offset {offset}"
                );
                counts.take_time();
            }
        }
    }
}
