//! A decode token's cost under a map per source rank (`Dispatch::Static`, and
//! TensorRT-LLM's rule for a lone token, `Dispatch::RoundRobin`): the most of its experts
//! mapped to one GPU, averaged over the ranks (docs/cost-model.md#dispatch).
//!
//! Most experts go to the same GPU from every rank (they have one replica, or every
//! rank's map picks the same one). A row counts those once (`on` GPU g: the most is at
//! least `base`, their largest count), and treats the others with rank masks, 64 ranks to
//! a word: for each GPU the row's varying experts can go to, the ranks that send it at
//! least 1, 2, ... of them. The sum over ranks of a row's most is `base` x ranks plus,
//! for every t above `base`, the ranks where some GPU g gets at least t - on(g) of them.
//! Sums over ranks are integers, so the result is the plain per-rank count exactly.

use crate::model::placement::Placement;

/// `fixed` entry of an expert that some ranks send to different GPUs.
const VARYING: u16 = u16::MAX;

/// A map per source rank, arranged for costing rows.
pub struct RankMaps {
    ranks: usize,
    /// 64-bit words of a rank mask.
    words: usize,
    /// Per expert: the GPU every rank sends it to, or `VARYING`.
    fixed: Vec<u16>,
    /// Per expert e, entries `starts[e]..starts[e + 1]` of `spread_gpus`: each distinct GPU
    /// the ranks send it to, and in `spread_masks` (`words` per entry) the ranks that do.
    starts: Vec<u32>,
    spread_gpus: Vec<u16>,
    spread_masks: Vec<u64>,
}

/// A thread's scratch space for `RankMaps::row_sum`.
#[derive(Default)]
pub struct RowScratch {
    gpus: Vec<u16>,
    /// Per entry of `gpus`, `levels` masks: ranks sending it at least 1, 2, ... experts.
    at_least: Vec<u64>,
}

impl RankMaps {
    /// `map` [ranks x E] (`map[r * E + e]`: the GPU serving expert e for tokens of source
    /// rank r), every entry a GPU id below `u16::MAX` (`Dispatch::checked_static`).
    pub fn new(map: &[u16], ranks: usize, num_experts: usize) -> Self {
        debug_assert_eq!(map.len(), ranks * num_experts);
        let words = ranks.div_ceil(64).max(1);
        let mut fixed = vec![VARYING; num_experts];
        let mut starts = Vec::with_capacity(num_experts + 1);
        let (mut spread_gpus, mut spread_masks) = (Vec::new(), Vec::new());
        for (e, entry) in fixed.iter_mut().enumerate() {
            starts.push(spread_gpus.len() as u32);
            let first = spread_gpus.len();
            for r in 0..ranks {
                let g = map[r * num_experts + e];
                let at = match spread_gpus[first..].iter().position(|&h| h == g) {
                    Some(i) => first + i,
                    None => {
                        spread_gpus.push(g);
                        spread_masks.extend(std::iter::repeat_n(0, words));
                        spread_gpus.len() - 1
                    }
                };
                spread_masks[at * words + r / 64] |= 1 << (r % 64);
            }
            if spread_gpus.len() - first == 1 {
                *entry = spread_gpus[first];
            }
        }
        starts.push(spread_gpus.len() as u32);
        RankMaps {
            ranks,
            words,
            fixed,
            starts,
            spread_gpus,
            spread_masks,
        }
    }

    /// TensorRT-LLM's map for a lone token on rank r: the expert's replica r mod count,
    /// replicas in GPU order (`Dispatch::RoundRobin`).
    pub fn first_pair(placement: &Placement, ranks: usize) -> Self {
        let e = placement.num_experts();
        let mut map = vec![0u16; ranks * e];
        for r in 0..ranks {
            for (expert, slot) in map[r * e..(r + 1) * e].iter_mut().enumerate() {
                let replicas = placement.gpus_of(expert);
                *slot = replicas[r % replicas.len()];
            }
        }
        RankMaps::new(&map, ranks, e)
    }

    pub fn ranks(&self) -> usize {
        self.ranks
    }

    /// The sum over the ranks of the most of the row's experts mapped to one GPU.
    pub fn row_sum(&self, subset: &[u16], scratch: &mut RowScratch) -> u64 {
        let mut gpus = [0u16; crate::util::limits::MAX_K];
        let mut counts = [0u32; crate::util::limits::MAX_K];
        let mut distinct = 0;
        let mut varying = [0usize; crate::util::limits::MAX_K];
        let mut levels = 0;
        for &e in subset {
            let g = self.fixed[e as usize];
            if g == VARYING {
                varying[levels] = e as usize;
                levels += 1;
                continue;
            }
            match gpus[..distinct].iter().position(|&h| h == g) {
                Some(i) => counts[i] += 1,
                None => {
                    gpus[distinct] = g;
                    counts[distinct] = 1;
                    distinct += 1;
                }
            }
        }
        let base = counts[..distinct].iter().copied().max().unwrap_or(0);
        let mut sum = base as u64 * self.ranks as u64;
        if levels == 0 {
            return sum;
        }
        let on = |g: u16| {
            gpus[..distinct]
                .iter()
                .position(|&h| h == g)
                .map_or(0, |i| counts[i])
        };
        for w in 0..self.words {
            scratch.gpus.clear();
            scratch.at_least.clear();
            for &e in &varying[..levels] {
                for s in self.starts[e] as usize..self.starts[e + 1] as usize {
                    let mask = self.spread_masks[s * self.words + w];
                    if mask == 0 {
                        continue;
                    }
                    let g = self.spread_gpus[s];
                    let u = match scratch.gpus.iter().position(|&h| h == g) {
                        Some(u) => u,
                        None => {
                            scratch.gpus.push(g);
                            scratch.at_least.extend(std::iter::repeat_n(0, levels));
                            scratch.gpus.len() - 1
                        }
                    };
                    let a = &mut scratch.at_least[u * levels..(u + 1) * levels];
                    for j in (1..levels).rev() {
                        a[j] |= a[j - 1] & mask;
                    }
                    a[0] |= mask;
                }
            }
            // Ranks whose most reaches t: some GPU gets t - on(g) >= 1 varying experts.
            for t in base + 1..=base + levels as u32 {
                let mut reach = 0u64;
                for (u, &g) in scratch.gpus.iter().enumerate() {
                    let need = (t - on(g)) as usize;
                    if need <= levels {
                        reach |= scratch.at_least[u * levels + need - 1];
                    }
                }
                if reach == 0 {
                    break;
                }
                sum += reach.count_ones() as u64;
            }
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rng::SplitMix64;

    /// The plain count: per rank, the most of the row's experts on one GPU.
    fn plain(subset: &[u16], map: &[u16], ranks: usize, e: usize) -> u64 {
        (0..ranks)
            .map(|r| {
                let gpus: Vec<u16> = subset.iter().map(|&x| map[r * e + x as usize]).collect();
                gpus.iter()
                    .map(|g| gpus.iter().filter(|&h| h == g).count() as u64)
                    .max()
                    .unwrap_or(0)
            })
            .sum()
    }

    #[test]
    fn equals_the_plain_count_on_random_maps() {
        let mut rng = SplitMix64::new(11);
        for case in 0..300 {
            let (e, g) = (4 + rng.below(20), 2 + rng.below(6));
            // Up to three 64-rank words.
            let ranks = if case % 3 == 0 {
                60 + rng.below(100)
            } else {
                1 + rng.below(9)
            };
            let k = 1 + rng.below(e.min(8));
            // Each expert holds 1-3 GPUs; each rank picks one of them (often the same).
            let mut map = vec![0u16; ranks * e];
            for x in 0..e {
                let held: Vec<u16> = (0..1 + rng.below(3)).map(|_| rng.below(g) as u16).collect();
                let usual = held[0];
                for r in 0..ranks {
                    map[r * e + x] = if rng.below(3) == 0 {
                        held[rng.below(held.len())]
                    } else {
                        usual
                    };
                }
            }
            let maps = RankMaps::new(&map, ranks, e);
            let mut scratch = RowScratch::default();
            for _ in 0..20 {
                let mut subset: Vec<u16> = Vec::new();
                while subset.len() < k {
                    let x = rng.below(e) as u16;
                    if !subset.contains(&x) {
                        subset.push(x);
                    }
                }
                assert_eq!(
                    maps.row_sum(&subset, &mut scratch),
                    plain(&subset, &map, ranks, e),
                    "case {case}: {subset:?}"
                );
            }
        }
    }

    #[test]
    fn first_pair_takes_replica_rank_mod_count() {
        let p = Placement::from_lists(&[vec![0, 2], vec![1], vec![0, 1, 2]], 3).unwrap();
        let maps = RankMaps::first_pair(&p, 4);
        let mut scratch = RowScratch::default();
        // Expert 0 (GPUs 0, 2) and expert 2 (GPUs 0, 1, 2) on ranks 0..4: GPUs (0, 0),
        // (2, 1), (0, 2), (2, 0): both on one GPU on rank 0 only.
        assert_eq!(maps.row_sum(&[0, 2], &mut scratch), 2 + 1 + 1 + 1);
        assert_eq!(maps.row_sum(&[1], &mut scratch), 4);
    }
}
