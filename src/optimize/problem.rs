//! What the greedy optimizer reads from a table, computed once: integer row weights,
//! the expert -> rows index, per-expert load and pairwise co-activation weights.
//!
//! Weights are fixed-point integers so that every sum (a cost, a gain, a swap's
//! delta) is exact and independent of the order of addition: parallel results are
//! then the same for any number of threads.

use rayon::prelude::*;

use super::effort::Effort;
use crate::table::{ExpertIndex, SubsetTable};

/// The table's total weight maps to 2^40: sums of weight times a cost (<= 16) stay far
/// below i64::MAX, and a row lighter than 2^-40 of the total is negligible.
const WEIGHT_SCALE: f64 = (1u64 << 40) as f64;

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
    /// Weight of the rows holding each expert (token load).
    pub load: Vec<i64>,
    pub coactivation: CoActivation,
    /// What the searches may still spend (no limit unless the caller sets one).
    pub effort: Effort,
}

impl<'a> Problem<'a> {
    pub fn new(table: &'a SubsetTable, num_gpus: usize) -> Self {
        let total = table.total_weight();
        let scale = if total > 0.0 {
            WEIGHT_SCALE / total
        } else {
            0.0
        };
        let weights: Vec<i64> = table
            .weights()
            .iter()
            .map(|&w| (w * scale).round() as i64)
            .collect();
        let index = table.expert_index();
        let num_experts = table.num_experts();
        let load = (0..num_experts)
            .map(|e| index.rows_of(e).iter().map(|&r| weights[r as usize]).sum())
            .collect();
        let coactivation = coactivation(table, &index, &weights);
        Problem {
            table,
            num_gpus,
            index,
            weights,
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

    /// Weighted cost every placement reaches at least: each row costs >= ceil(k / G).
    pub fn lower_bound_total(&self) -> i64 {
        let per_row = self.k().div_ceil(self.num_gpus) as i64;
        self.weights.iter().sum::<i64>() * per_row
    }
}

/// Built per expert from its rows, so memory is the number of co-activated pairs.
fn coactivation(table: &SubsetTable, index: &ExpertIndex, weights: &[i64]) -> CoActivation {
    let num_experts = table.num_experts();
    let lists: Vec<Vec<(u16, i64)>> = (0..num_experts)
        .into_par_iter()
        .map_init(
            || vec![0i64; num_experts],
            |acc, e| {
                let mut touched = Vec::new();
                for &r in index.rows_of(e) {
                    let w = weights[r as usize];
                    for &other in table.subset(r as usize) {
                        if other as usize != e {
                            if acc[other as usize] == 0 {
                                touched.push(other);
                            }
                            acc[other as usize] += w;
                        }
                    }
                }
                touched.sort_unstable();
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
}
