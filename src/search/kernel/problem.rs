//! What the greedy optimizer reads from a table, computed once: integer row weights,
//! the expert -> rows index, per-expert load and pairwise co-activation weights.
//!
//! Weights are fixed-point integers so that every sum (a cost, a gain, a swap's
//! delta) is exact and independent of the order of addition: parallel results are
//! then the same for any number of threads.

use rayon::prelude::*;

use super::effort::Effort;
use crate::model::table::{ExpertIndex, SubsetTable};

/// The table's total weight maps to 2^40: sums of weight times a cost (<= 16) stay far
/// below i64::MAX, and a row lighter than 2^-40 of the total is negligible.
const WEIGHT_SCALE: f64 = (1u64 << 40) as f64;

/// Index entries copied per parallel task.
const ROWS_PER_COPY: usize = 8192;

/// Pairwise co-activation weights (weight of the rows holding both experts), sparse.
pub struct CoActivation {
    offsets: Vec<usize>,
    partners: Vec<u16>,
    weights: Vec<i64>,
}

impl CoActivation {
    /// The experts co-activated with `expert` (ascending) and the weights of the pairs.
    pub fn partners_of(&self, expert: usize) -> (&[u16], &[i64]) {
        let range = self.offsets[expert]..self.offsets[expert + 1];
        (&self.partners[range.clone()], &self.weights[range])
    }

    pub fn weight(&self, a: usize, b: usize) -> i64 {
        let (partners, weights) = self.partners_of(a);
        partners
            .binary_search(&(b as u16))
            .map_or(0, |i| weights[i])
    }
}

pub struct Problem<'a> {
    pub table: &'a SubsetTable,
    pub num_gpus: usize,
    pub index: ExpertIndex,
    pub weights: Vec<i64>,
    /// The subsets and weights of the index's rows in its order (expert by expert): an
    /// exact evaluation reads an expert's rows from one contiguous block instead of
    /// from all over the table (the searches' time is mostly waiting on those reads).
    by_expert: Vec<u16>,
    weights_by_expert: Vec<i64>,
    /// Weight of the rows holding each expert (token load).
    pub load: Vec<i64>,
    pub coactivation: CoActivation,
    /// What the searches may still spend (no limit unless the caller sets one).
    pub effort: Effort,
}

impl<'a> Problem<'a> {
    pub fn new(table: &'a SubsetTable, num_gpus: usize) -> Self {
        let total = table.total_weight();
        // Each weight's share of the total first, then the fixed-point scale: 2^40 / total
        // is inf for totals below ~1e-296 (and w * scale saturates), while w / total is in
        // [0, 1] for any total, so scaling every weight by a constant changes nothing.
        let weights: Vec<i64> = table
            .weights()
            .iter()
            .map(|&w| {
                if total > 0.0 {
                    ((w / total).min(1.0) * WEIGHT_SCALE).round() as i64
                } else {
                    0
                }
            })
            .collect();
        let index = table.expert_index();
        let num_experts = table.num_experts();
        let k = table.k();
        let mut by_expert = vec![0u16; index.rows.len() * k];
        by_expert
            .par_chunks_mut(ROWS_PER_COPY * k)
            .zip(index.rows.par_chunks(ROWS_PER_COPY))
            .for_each(|(out, rows)| {
                for (o, &r) in out.chunks_exact_mut(k).zip(rows) {
                    o.copy_from_slice(table.subset(r as usize));
                }
            });
        let weights_by_expert: Vec<i64> = index.rows.iter().map(|&r| weights[r as usize]).collect();
        let load = (0..num_experts)
            .map(|e| {
                weights_by_expert[index.offsets[e]..index.offsets[e + 1]]
                    .iter()
                    .sum()
            })
            .collect();
        let coactivation = coactivation(k, &index, &by_expert, &weights_by_expert);
        Problem {
            table,
            num_gpus,
            index,
            weights,
            by_expert,
            weights_by_expert,
            load,
            coactivation,
            effort: Effort::unlimited(),
        }
    }

    pub fn num_experts(&self) -> usize {
        self.table.num_experts()
    }

    pub fn k(&self) -> usize {
        self.table.k()
    }

    pub fn row(&self, r: usize) -> &[u16] {
        self.table.subset(r)
    }

    /// The rows holding `expert`: their ids, their subsets (k ids each, in the same
    /// order) and their weights.
    pub fn rows_with(&self, expert: usize) -> (&[u32], &[u16], &[i64]) {
        let range = self.index.offsets[expert]..self.index.offsets[expert + 1];
        let k = self.k();
        (
            &self.index.rows[range.clone()],
            &self.by_expert[range.start * k..range.end * k],
            &self.weights_by_expert[range],
        )
    }

    /// Weighted cost every placement reaches at least: each row costs >= ceil(k / G).
    pub fn lower_bound_total(&self) -> i64 {
        let per_row = self.k().div_ceil(self.num_gpus) as i64;
        self.weights.iter().sum::<i64>() * per_row
    }
}

/// Built per expert from its rows (`by_expert`, `weights_by_expert`: the index's rows'
/// subsets and weights in its order, so each expert's rows are read from one block), so
/// memory is the number of co-activated pairs.
fn coactivation(
    k: usize,
    index: &ExpertIndex,
    by_expert: &[u16],
    weights_by_expert: &[i64],
) -> CoActivation {
    let num_experts = index.offsets.len() - 1;
    let lists: Vec<Vec<(u16, i64)>> = (0..num_experts)
        .into_par_iter()
        .map_init(
            || vec![0i64; num_experts],
            |acc, e| {
                let range = index.offsets[e]..index.offsets[e + 1];
                let ids = &by_expert[range.start * k..range.end * k];
                // Where the expert's rows hold at least E ids, reading every expert's sum
                // costs less than tracking which ones the rows touch.
                let dense = ids.len() >= num_experts;
                let mut touched = Vec::new();
                for (row, &w) in ids.chunks_exact(k).zip(&weights_by_expert[range]) {
                    for &other in row {
                        if !dense && acc[other as usize] == 0 {
                            touched.push(other);
                        }
                        acc[other as usize] += w;
                    }
                }
                acc[e] = 0;
                if dense {
                    touched.extend((0..num_experts as u16).filter(|&o| acc[o as usize] != 0));
                } else {
                    touched.sort_unstable();
                    touched.dedup();
                }
                let list = touched
                    .iter()
                    .map(|&o| (o, acc[o as usize]))
                    .filter(|x| x.1 != 0)
                    .collect();
                for &o in &touched {
                    acc[o as usize] = 0;
                }
                list
            },
        )
        .collect();
    let mut offsets = Vec::with_capacity(num_experts + 1);
    offsets.push(0);
    let mut partners = Vec::new();
    let mut pair_weights = Vec::new();
    for list in lists {
        for (o, w) in list {
            partners.push(o);
            pair_weights.push(w);
        }
        offsets.push(partners.len());
    }
    CoActivation {
        offsets,
        partners,
        weights: pair_weights,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_weights_count_shared_rows() {
        let t = SubsetTable::from_subsets(&[0, 1, 2, 0, 1, 3], 3, 5, &[3.0, 1.0]).unwrap();
        let p = Problem::new(&t, 2);
        let unit = p.weights[1];
        assert_eq!(p.weights[0], 3 * unit);
        assert_eq!(p.coactivation.weight(0, 1), 4 * unit);
        assert_eq!(p.coactivation.weight(1, 0), 4 * unit);
        assert_eq!(p.coactivation.weight(2, 3), 0);
        assert_eq!(p.coactivation.weight(0, 4), 0);
        assert_eq!(p.load, vec![4 * unit, 4 * unit, 3 * unit, unit, 0]);
        assert_eq!(p.lower_bound_total(), 2 * 4 * unit);
    }

    /// Every pair's weight and every expert's partner list (ascending, pairs of weight 0
    /// left out) against counting each row's pairs, on a table where some experts' rows
    /// hold more ids than there are experts and others' fewer (both ways of summing).
    #[test]
    fn pair_weights_equal_counting_each_row() {
        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};
        let (e, k) = (120, 4);
        let mut rng = SmallRng::seed_from_u64(5);
        let mut ids = Vec::new();
        for _ in 0..600 {
            let mut row: Vec<i64> = Vec::new();
            while row.len() < k {
                // Skewed: low ids are in many rows, high ids in few.
                let x = (rng.random_range(0.0f64..1.0).powi(3) * e as f64) as i64;
                if !row.contains(&x) {
                    row.push(x);
                }
            }
            ids.extend(row);
        }
        let weights: Vec<f64> = (0..600).map(|i| (i % 4) as f64).collect();
        let t = SubsetTable::from_subsets(&ids, k, e, &weights).unwrap();
        let p = Problem::new(&t, 4);
        let mut expected = vec![0i64; e * e];
        for r in 0..t.len() {
            let row = t.subset(r);
            for &a in row {
                for &b in row {
                    if a != b {
                        expected[a as usize * e + b as usize] += p.weights[r];
                    }
                }
            }
        }
        let mut dense_seen = false;
        for a in 0..e {
            let list: Vec<(u16, i64)> = (0..e)
                .filter(|&b| expected[a * e + b] != 0)
                .map(|b| (b as u16, expected[a * e + b]))
                .collect();
            let (partners, pair_weights) = p.coactivation.partners_of(a);
            let got: Vec<(u16, i64)> = partners
                .iter()
                .copied()
                .zip(pair_weights.iter().copied())
                .collect();
            assert_eq!(got, list, "expert {a}");
            dense_seen |= p.index.rows_of(a).len() * k >= e;
        }
        assert!(dense_seen && p.index.rows_of(e - 1).len() * k < e);
    }

    #[test]
    fn scaling_every_weight_keeps_the_fixed_point_weights() {
        let ids = [0, 1, 2, 0, 1, 3, 2, 3, 1, 4];
        let weights = [3.0, 1.0, 7.0, 2.0, 5.0];
        let plain = SubsetTable::from_subsets(&ids, 2, 5, &weights).unwrap();
        let expected = Problem::new(&plain, 2).weights;
        for scale in [1e-300, 1e-305, 1e300, 1e-3, 3.0] {
            let scaled: Vec<f64> = weights.iter().map(|w| w * scale).collect();
            let t = SubsetTable::from_subsets(&ids, 2, 5, &scaled).unwrap();
            assert_eq!(Problem::new(&t, 2).weights, expected, "scale {scale}");
        }
    }
}
