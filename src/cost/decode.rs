//! The exact decode cost of a subset table under a placement (docs/cost-model.md#one-token): per row, the
//! fewest expert rounds the busiest GPU runs when each expert of the subset is served by
//! one of its replicas (the makespan of an optimal semi-matching, `crate::cost::matching`),
//! their weighted mean, and the bound every placement meets.

use rayon::prelude::*;

use crate::cost::matching::{cost_from_masks, row_costs, RowScratch};
use crate::model::placement::Placement;
use crate::model::table::SubsetTable;
use crate::util::error::{MoeError, Result};
use crate::util::limits::MAX_K;

/// Rows per parallel task (a row costs 10-100 ns).
const ROWS_PER_TASK: usize = 4096;

/// The subset's GPU masks: GPU ids when the placement spans at most 64 GPUs, else local
/// ids (`scratch.local`). False if the subset touches more than 64 GPUs.
fn subset_masks(
    subset: &[u16],
    placement: &Placement,
    scratch: &mut RowScratch,
    out: &mut [u64],
) -> bool {
    if let Some(masks) = placement.masks() {
        for (o, &e) in out.iter_mut().zip(subset) {
            *o = masks[e as usize];
        }
        return true;
    }
    scratch.local.clear();
    let mut fits = true;
    for (o, &e) in out.iter_mut().zip(subset) {
        *o = 0;
        for &g in placement.gpus_of(e as usize) {
            match scratch.local.bit(g) {
                Some(b) => *o |= 1 << b,
                None => fits = false,
            }
        }
    }
    fits
}

/// The exact cost of one subset (expert rounds of the busiest GPU).
pub fn subset_cost(subset: &[u16], placement: &Placement, scratch: &mut RowScratch) -> u32 {
    let mut masks = [0u64; MAX_K];
    let k = subset.len();
    if subset_masks(subset, placement, scratch, &mut masks[..k]) {
        cost_from_masks(&masks[..k])
    } else {
        scratch.general_cost(k, |i| placement.gpus_of(subset[i] as usize))
    }
}

pub fn check_compatible(table: &SubsetTable, placement: &Placement) -> Result<()> {
    if table.num_experts() != placement.num_experts() {
        return Err(MoeError::value(format!(
            "the table has {} experts but the placement has {}",
            table.num_experts(),
            placement.num_experts()
        )));
    }
    Ok(())
}

/// The exact cost of every row of the table, in parallel.
pub fn subset_costs(table: &SubsetTable, placement: &Placement) -> Result<Vec<u32>> {
    check_compatible(table, placement)?;
    let k = table.k();
    let mut costs = vec![0u32; table.len()];
    costs
        .par_chunks_mut(ROWS_PER_TASK)
        .zip(table.subsets().par_chunks(ROWS_PER_TASK * k))
        .for_each_init(
            || RowScratch::new(placement.num_gpus()),
            |scratch, (out, rows)| {
                // On at most 64 GPUs a row is its experts' masks, read into one buffer.
                if let Some(masks) = placement.masks() {
                    row_costs(masks, rows, k, out);
                    return;
                }
                for (c, subset) in out.iter_mut().zip(rows.chunks_exact(k)) {
                    *c = subset_cost(subset, placement, scratch);
                }
            },
        );
    Ok(costs)
}

/// Weighted mean cost (expert rounds per token) of the table under the placement.
pub fn expected_cost(table: &SubsetTable, placement: &Placement) -> Result<f64> {
    let costs = subset_costs(table, placement)?;
    weighted_mean(table, &costs)
}

pub fn weighted_mean(table: &SubsetTable, costs: &[u32]) -> Result<f64> {
    let total = table.total_weight();
    if total.is_nan() || total <= 0.0 {
        return Err(MoeError::value(
            "the table is empty (total weight 0): no expected cost",
        ));
    }
    let sum: f64 = costs
        .iter()
        .zip(table.weights())
        .map(|(&c, &w)| c as f64 * w)
        .sum();
    Ok(sum / total)
}

/// The bound every placement meets: every row has k experts on at most G GPUs, so it
/// costs at least ceil(k / G) rounds (the weighted mean of a constant is that constant).
pub fn lower_bound(table: &SubsetTable, num_gpus: usize) -> Result<f64> {
    if num_gpus == 0 {
        return Err(MoeError::value("num_gpus must be at least 1"));
    }
    Ok(table.k().div_ceil(num_gpus) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_placements_use_local_ids() {
        // 200 GPUs; the subset only touches a few.
        let lists: Vec<Vec<usize>> = (0..8).map(|e| vec![e * 25, (e * 25 + 199) % 200]).collect();
        let p = Placement::from_lists(&lists, 200).unwrap();
        let mut s = RowScratch::new(200);
        assert_eq!(subset_cost(&[0, 1, 2, 3, 4, 5, 6, 7], &p, &mut s), 1);
        let same = Placement::from_lists(&vec![vec![150]; 8], 200).unwrap();
        assert_eq!(subset_cost(&[0, 1, 2, 3, 4, 5, 6, 7], &same, &mut s), 8);
    }

    #[test]
    fn subsets_over_more_than_64_gpus_take_the_general_matching() {
        // 16 experts with 5 replicas each on 80 distinct GPUs: no local 64-bit masks.
        let lists: Vec<Vec<usize>> = (0..16)
            .map(|e| (0..5).map(|r| e * 5 + r).collect())
            .collect();
        let p = Placement::from_lists(&lists, 100).unwrap();
        let subset: Vec<u16> = (0..16).collect();
        let mut s = RowScratch::new(100);
        assert_eq!(subset_cost(&subset, &p, &mut s), 1);
        // Experts 0-3 only on GPU 0; the others on GPUs 0-4 and six private GPUs each.
        let crowded: Vec<Vec<usize>> = (0..16)
            .map(|e| {
                if e < 4 {
                    vec![0]
                } else {
                    (0..5).chain(10 * e..10 * e + 6).collect()
                }
            })
            .collect();
        let p = Placement::from_lists(&crowded, 200).unwrap();
        assert_eq!(subset_cost(&subset, &p, &mut RowScratch::new(200)), 4);
    }

    /// The table's costs equal those of one row at a time and Hall's formula, for rows of
    /// 2 to 9 experts on placements with replicas over few and many GPUs.
    #[test]
    fn table_costs_equal_single_rows_and_hall() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(9);
        for (case, k) in [2, 4, 5, 6, 8, 9].into_iter().enumerate() {
            for num_gpus in [3, 8, 64] {
                let t = crate::testing::skewed_table(case as u64, 5000, 24, k, 3, 61);
                let spread = num_gpus.min(4);
                let p = crate::testing::random_layout(&mut rng, 24, num_gpus, spread)
                    .to_placement()
                    .unwrap();
                let mut scratch = RowScratch::new(num_gpus);
                let single: Vec<u32> = t
                    .subsets()
                    .chunks_exact(k)
                    .map(|row| subset_cost(row, &p, &mut scratch))
                    .collect();
                assert_eq!(subset_costs(&t, &p).unwrap(), single, "k {k}, G {num_gpus}");
                let masks = p.masks().unwrap();
                let hall: Vec<u32> = t
                    .subsets()
                    .chunks_exact(k)
                    .map(|row| {
                        let row: Vec<u64> = row.iter().map(|&e| masks[e as usize]).collect();
                        crate::cost::matching::hall_cost(&row)
                    })
                    .collect();
                assert_eq!(single, hall, "k {k}, G {num_gpus}");
                assert!(single.iter().any(|&c| c >= 2), "k {k}, G {num_gpus}");
            }
        }
    }

    #[test]
    fn expected_cost_is_weighted_mean() {
        let t = SubsetTable::from_subsets(&[0, 1, 0, 2], 2, 3, &[3.0, 1.0]).unwrap();
        let p = Placement::from_lists(&[vec![0], vec![0], vec![1]], 2).unwrap();
        assert_eq!(subset_costs(&t, &p).unwrap(), vec![2, 1]);
        assert!((expected_cost(&t, &p).unwrap() - 1.75).abs() < 1e-12);
    }
}
