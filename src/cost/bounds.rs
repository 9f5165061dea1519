//! Lower bounds on the expected decode cost that read the table: no placement of its
//! experts on `num_gpus` GPUs with at most `slots_per_gpu` experts each costs less
//! (docs/algorithms.md#lower-bounds).
//!
//! The collision bound. Let E experts go on G GPUs with at most s experts each, k <= G
//! experts per row and R = G s - E spare slots.
//!
//! 1. At most R experts have two or more replicas (each takes a spare slot), so at least
//!    u = E - R experts are *singles* (one replica). GPU g holds n_g <= s of them, and
//!    sum n_g = u' >= u, so sum n_g (n_g - 1) >= P, the value at the most balanced
//!    split of u over G GPUs (n(n - 1) is convex).
//! 2. In a row S, let m be the most singles of S on one GPU and C_S the pairs of singles
//!    of S that share a GPU. Those m experts have one GPU between them, so cost(S) >= m
//!    (Hall's bound of docs/algorithms.md#semi-matching with X those experts), and
//!    |C_S| = sum over GPUs of a_g (a_g - 1) / 2 <= (m - 1) k / 2, as sum a_g <= k. So
//!    cost(S) >= 1 + 2 |C_S| / k (also when C_S is empty).
//! 3. Summed with the row weights, W E[cost] >= W + (2 / k) sum over co-located single
//!    pairs {i, j} of w(i, j), where w(i, j) is the weight of the rows holding both.
//! 4. A single i sharing GPU g with t_i = n_g - 1 other singles has those pairs of weight
//!    at least m_i(t_i) = the sum of the t_i smallest w(i, .) over the other experts
//!    (pairs never seen weigh 0). Each pair is counted from both ends, so the sum of
//!    step 3 is at least half of sum_i m_i(t_i), with 0 <= t_i <= s - 1 and
//!    sum_i t_i = sum_g n_g (n_g - 1) >= P.
//! 5. m_i is convex (its steps are sorted), so the least sum_i m_i(t_i) under those
//!    constraints takes the P smallest of all the steps: the P smallest values among the
//!    s - 1 smallest w(i, .) of every expert. Hence E[cost] >= 1 + (sum of those P
//!    values) / (k W).
//!
//! Where k > G the bound is ceil(k / G), that of `crate::cost::decode::lower_bound`.
//! The bound reads the rows of the table it is given: on a pruned table it bounds that
//! table's expected cost (what `expected_cost` of the same table returns).

use rayon::prelude::*;

use crate::model::table::SubsetTable;
use crate::util::error::{MoeError, Result};
use crate::util::limits::check_memory;

/// Sum n_g (n_g - 1) over `num_gpus` GPUs holding `singles` experts as evenly as possible:
/// the fewest ordered pairs of co-located singles.
pub fn colocated_pairs(singles: usize, num_gpus: usize) -> usize {
    let (q, r) = (singles / num_gpus, singles % num_gpus);
    r * (q + 1) * q + (num_gpus - r) * q * q.saturating_sub(1)
}

/// Up to this many experts, each expert's pair weights are summed into a dense array of
/// all experts (no test per id; E^2 work in all), beyond it into the ids its rows touch.
const DENSE_EXPERTS: usize = 4096;

/// The `t` smallest pair weights w(i, j) of expert i over the other experts, ascending
/// (pairs that no row holds weigh 0); `dense`: summed by `smallest_dense`, else into the
/// ids the rows touch only (the same sums).
fn smallest_pair_weights(
    table: &SubsetTable,
    rows_of: &[u32],
    expert: usize,
    t: usize,
    scratch: &mut Scratch,
    dense: bool,
) -> Vec<f64> {
    if dense {
        return smallest_dense(table, rows_of, expert, t, &mut scratch.acc);
    }
    let k = table.k();
    let Scratch { acc, seen, touched } = scratch;
    for &row in rows_of {
        let row = row as usize;
        let w = table.weights()[row];
        for &j in &table.subsets()[row * k..(row + 1) * k] {
            let j = j as usize;
            if j == expert {
                continue;
            }
            if !seen[j] {
                seen[j] = true;
                touched.push(j);
            }
            acc[j] += w;
        }
    }
    let mut weights: Vec<f64> = touched.iter().map(|&j| acc[j]).collect();
    for &j in touched.iter() {
        acc[j] = 0.0;
        seen[j] = false;
    }
    touched.clear();
    let unseen = (table.num_experts() - 1).saturating_sub(weights.len());
    let mut out = vec![0.0; unseen.min(t)];
    if out.len() < t {
        weights.sort_by(f64::total_cmp);
        out.extend(weights.into_iter().take(t - out.len()));
    }
    out
}

/// `smallest_pair_weights` with every expert's sum in `acc` (all zero before and after):
/// the same sums, added in the same order.
fn smallest_dense(
    table: &SubsetTable,
    rows_of: &[u32],
    expert: usize,
    t: usize,
    acc: &mut [f64],
) -> Vec<f64> {
    let k = table.k();
    let (subsets, weights) = (table.subsets(), table.weights());
    for &row in rows_of {
        let row = row as usize;
        let w = weights[row];
        for &j in &subsets[row * k..(row + 1) * k] {
            acc[j as usize] += w;
        }
    }
    acc[expert] = 0.0;
    let mut others: Vec<f64> = acc
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != expert)
        .map(|(_, &x)| x)
        .collect();
    acc.fill(0.0);
    let t = t.min(others.len());
    if t == 0 {
        return Vec::new();
    }
    others.select_nth_unstable_by(t - 1, f64::total_cmp);
    others.truncate(t);
    others.sort_by(f64::total_cmp);
    others
}

/// Per-task memory of `smallest_pair_weights`: pair weights of one expert, which experts
/// they touch.
struct Scratch {
    acc: Vec<f64>,
    seen: Vec<bool>,
    touched: Vec<usize>,
}

/// The collision bound (module docs) on the expected cost of `table` under any placement
/// on `num_gpus` GPUs with at most `slots_per_gpu` experts per GPU; ceil(k / G) where
/// k > G. Never below ceil(k / G).
pub fn collision_bound(table: &SubsetTable, num_gpus: usize, slots_per_gpu: usize) -> Result<f64> {
    let num_experts = table.num_experts();
    check_memory(num_experts, num_gpus, slots_per_gpu)?;
    let total = table.total_weight();
    if total.is_nan() || total <= 0.0 {
        return Err(MoeError::value(
            "the table is empty (total weight 0): no expected cost to bound",
        ));
    }
    let k = table.k();
    let base = k.div_ceil(num_gpus) as f64;
    if k > num_gpus || k < 2 {
        return Ok(base);
    }
    let spare = num_gpus * slots_per_gpu - num_experts;
    let singles = num_experts.saturating_sub(spare);
    let needed = colocated_pairs(singles, num_gpus);
    if needed == 0 {
        return Ok(base);
    }
    let steps = (slots_per_gpu - 1).min(num_experts - 1);
    let index = table.expert_index();
    let dense = num_experts <= DENSE_EXPERTS;
    // Each expert's sums run over its rows in order: the same bound on any thread count.
    let mut pool: Vec<f64> = (0..num_experts)
        .into_par_iter()
        .map_init(
            || Scratch {
                acc: vec![0.0; num_experts],
                seen: vec![false; num_experts],
                touched: Vec::new(),
            },
            |scratch, e| smallest_pair_weights(table, index.rows_of(e), e, steps, scratch, dense),
        )
        .flatten_iter()
        .collect();
    pool.sort_by(f64::total_cmp);
    let forced: f64 = pool.iter().take(needed).sum();
    Ok(base + forced / (k as f64 * total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::decode::expected_cost;
    use crate::model::placement::Placement;
    use crate::testing::skewed_table;

    /// Every placement with exactly `slots` distinct experts per GPU and every expert
    /// placed (extra replicas never raise a cost, so fewer slots are no better).
    fn optimum(table: &SubsetTable, num_gpus: usize, slots: usize) -> f64 {
        let e = table.num_experts();
        let sets: Vec<u32> = (0u32..1 << e)
            .filter(|m| m.count_ones() as usize == slots)
            .collect();
        let mut best = f64::INFINITY;
        let mut choice = vec![0usize; num_gpus];
        loop {
            // GPUs in non-decreasing order of their set: GPUs are interchangeable.
            let cover = choice.iter().fold(0u32, |m, &c| m | sets[c]);
            if cover == (1 << e) - 1 {
                let lists: Vec<Vec<usize>> = (0..e)
                    .map(|x| {
                        (0..num_gpus)
                            .filter(|&g| sets[choice[g]] >> x & 1 == 1)
                            .collect()
                    })
                    .collect();
                let p = Placement::from_lists(&lists, num_gpus).unwrap();
                best = best.min(expected_cost(table, &p).unwrap());
            }
            let mut g = num_gpus;
            loop {
                if g == 0 {
                    return best;
                }
                g -= 1;
                if choice[g] + 1 < sets.len() {
                    choice[g] += 1;
                    for h in g + 1..num_gpus {
                        choice[h] = choice[g];
                    }
                    break;
                }
            }
        }
    }

    #[test]
    fn balanced_pairs() {
        assert_eq!(colocated_pairs(224, 32), 32 * 7 * 6);
        assert_eq!(colocated_pairs(7, 3), 3 * 2 + 2 + 2);
        assert_eq!(colocated_pairs(2, 4), 0);
        assert_eq!(colocated_pairs(0, 4), 0);
    }

    #[test]
    fn never_above_the_optimum() {
        let mut above_base = 0;
        for case in 0..24u64 {
            let e = 5 + (case % 3) as usize;
            let g = 2 + (case % 2) as usize;
            let k = 2 + (case % 2) as usize;
            let table = skewed_table(case, 60, e as u64, k, 3, 60);
            for s in e.div_ceil(g)..=(e.div_ceil(g) + 1).min(e) {
                let bound = collision_bound(&table, g, s).unwrap();
                let best = optimum(&table, g, s);
                assert!(bound >= 1.0);
                assert!(bound <= best + 1e-12, "case {case} s {s}: {bound} > {best}");
                if bound > 1.0 {
                    above_base += 1;
                }
            }
        }
        assert!(
            above_base >= 10,
            "only {above_base} bounds above ceil(k / G)"
        );
    }

    #[test]
    fn pairs_no_row_holds_weigh_nothing() {
        // Experts 0-3 on 2 GPUs with 2 slots: two pairs of singles share a GPU, and
        // {0, 2}, {1, 3} never occur together, so nothing is forced.
        let t = SubsetTable::from_subsets(&[0, 1, 2, 3], 2, 4, &[1.0, 1.0]).unwrap();
        assert_eq!(collision_bound(&t, 2, 2).unwrap(), 1.0);
        // All six pairs occur: two co-located pairs, each with one of three rows' weight.
        let all = [0, 1, 0, 2, 0, 3, 1, 2, 1, 3, 2, 3];
        let t = SubsetTable::from_subsets(&all, 2, 4, &[1.0; 6]).unwrap();
        // P = 4 ordered pairs, the 4 smallest steps weigh 1 each: 1 + 4 / (2 * 6).
        assert!((collision_bound(&t, 2, 2).unwrap() - (1.0 + 4.0 / 12.0)).abs() < 1e-12);
        assert!((optimum(&t, 2, 2) - (1.0 + 2.0 / 6.0)).abs() < 1e-12);
        // A spare slot per GPU lets experts replicate: fewer singles.
        assert!(collision_bound(&t, 2, 3).unwrap() < collision_bound(&t, 2, 2).unwrap());
    }

    /// Both ways of summing an expert's pair weights give the same smallest ones.
    #[test]
    fn dense_and_sparse_pair_weights_agree() {
        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(3);
        for (e, k) in [(6, 2), (40, 4), (300, 8)] {
            let mut ids = Vec::new();
            for _ in 0..400 {
                let mut row: Vec<i64> = Vec::new();
                while row.len() < k {
                    let x = rng.random_range(0..e as i64);
                    if !row.contains(&x) {
                        row.push(x);
                    }
                }
                ids.extend(row);
            }
            let weights: Vec<f64> = (0..400).map(|_| rng.random_range(0.1..3.0)).collect();
            let table = SubsetTable::from_topk(&ids, k, e, Some(&weights)).unwrap();
            let index = table.expert_index();
            let mut scratch = Scratch {
                acc: vec![0.0; e],
                seen: vec![false; e],
                touched: Vec::new(),
            };
            for expert in 0..e {
                for t in [0, 1, 3, e - 1, e + 2] {
                    let rows = index.rows_of(expert);
                    let dense = smallest_pair_weights(&table, rows, expert, t, &mut scratch, true);
                    let sparse =
                        smallest_pair_weights(&table, rows, expert, t, &mut scratch, false);
                    assert_eq!(dense, sparse, "expert {expert}, t {t}");
                }
            }
        }
    }

    #[test]
    fn rejects_bad_sizes_and_falls_back_where_k_exceeds_g() {
        let t = skewed_table(1, 50, 8, 4, 3, 60);
        let msg = |r: Result<f64>| r.unwrap_err().to_string();
        assert!(msg(collision_bound(&t, 2, 3)).contains("cannot hold 8 experts"));
        assert!(msg(collision_bound(&t, 0, 3)).contains("num_gpus"));
        assert_eq!(collision_bound(&t, 3, 8).unwrap(), 2.0);
        let empty = SubsetTable::from_subsets(&[0, 1], 2, 4, &[0.0]).unwrap();
        assert!(msg(collision_bound(&empty, 2, 2)).contains("empty"));
    }
}
