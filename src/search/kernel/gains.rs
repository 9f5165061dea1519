//! The gain table: the exact decrease of the total cost that each possible new replica
//! (expert i on GPU g) would bring, kept current as replicas are added and removed
//! (docs/algorithms.md#semi-matching).
//!
//! A replica (i, g) lowers cost(S) = t >= 2 by one iff every violating X of S
//! (|X| > (t-1)|N(X)|) contains i, misses g in N(X), and has |X| <= (t-1)(|N(X)|+1).
//! So one pass per row gives C (the experts in every violating X) and U (the union
//! of their N(X)), and the row adds its weight to gain(i, g) for i in C, g not in U.
//! The table stores per expert `base` = sum of w over rows with i in C and `minus[i][g]`
//! = sum of w over those rows with g in U, so a row costs |C| * |U| updates, not |C| * G.
//! Adding replica (i, g) changes only rows holding i: they are taken out with their
//! old contribution and put back with the new one.
//!
//! C and U are found by alternating paths (`matching::single_replica_gain`), a few
//! hundred nanoseconds per row even at k = 16, where the 2^k pass reads 65,536 sets.

use rayon::prelude::*;

use super::state::{State, ROWS_PER_TASK};
use crate::cost::matching::{single_replica_gain, RowScratch};
use crate::util::limits::MAX_K;

/// Which new replicas lower one row's cost: experts at positions `experts` (bits over
/// the row) on any GPU outside `gpus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowGain {
    pub row: u32,
    pub experts: u16,
    /// U as a GPU mask when G <= 64 (no allocation on the fast path) ...
    pub mask: u64,
    /// ... else as GPU ids.
    pub gpus: Vec<u16>,
}

/// C and U (in the masks' bit space) of a row of cost `t`, or None if no single
/// replica lowers its cost, by the 2^k loop over violating sets: the plain reference of
/// `matching::single_replica_gain`. `unions` needs 2^k entries.
#[cfg(test)]
pub fn violating_core(masks: &[u64], t: u32, unions: &mut [u64]) -> Option<(u16, u64)> {
    if t < 2 {
        return None;
    }
    let k = masks.len();
    let mut core = (1u32 << k) - 1;
    let mut union_of_violating = 0u64;
    unions[0] = 0;
    for x in 1usize..1 << k {
        let low = x.trailing_zeros() as usize;
        let n = unions[x & (x - 1)] | masks[low];
        unions[x] = n;
        let size = x.count_ones();
        let neighbours = n.count_ones();
        if size > (t - 1) * neighbours {
            if size > (t - 1) * (neighbours + 1) {
                return None;
            }
            core &= x as u32;
            if core == 0 {
                return None;
            }
            union_of_violating |= n;
        }
    }
    Some((core as u16, union_of_violating))
}

pub struct GainTable {
    num_gpus: usize,
    base: Vec<i64>,
    minus: Vec<i64>,
}

impl GainTable {
    /// Gains of every replica under the state's layout.
    pub fn new(state: &State) -> Self {
        let problem = state.problem;
        let num_gpus = state.layout.num_gpus();
        let mut table = GainTable {
            num_gpus,
            base: vec![0; problem.num_experts()],
            minus: vec![0; problem.num_experts() * num_gpus],
        };
        let rows: Vec<u32> = (0..state.costs.len() as u32)
            .filter(|&r| state.costs[r as usize] >= 2)
            .collect();
        for g in row_gains(state, &rows) {
            table.apply(state, &g, 1);
        }
        table
    }

    /// Exact decrease of the weighted total cost if replica (expert, gpu) were added.
    pub fn gain(&self, expert: usize, gpu: usize) -> i64 {
        self.base[expert] - self.minus[expert * self.num_gpus + gpu]
    }

    /// Experts some replica of which has a positive gain (base is an upper bound).
    pub fn may_gain(&self, expert: usize) -> bool {
        self.base[expert] > 0
    }

    fn apply(&mut self, state: &State, gain: &RowGain, sign: i64) {
        let row = state.problem.row(gain.row as usize);
        let w = sign * state.problem.weights[gain.row as usize];
        let mut experts = gain.experts;
        while experts != 0 {
            let e = row[experts.trailing_zeros() as usize] as usize;
            experts &= experts - 1;
            self.base[e] += w;
            let minus = &mut self.minus[e * self.num_gpus..(e + 1) * self.num_gpus];
            let mut mask = gain.mask;
            while mask != 0 {
                minus[mask.trailing_zeros() as usize] += w;
                mask &= mask - 1;
            }
            for &g in &gain.gpus {
                minus[g as usize] += w;
            }
        }
    }

    /// Adds replica (expert, gpu) to the state and updates the gains it changes.
    pub fn add_replica(&mut self, state: &mut State, expert: usize, gpu: usize) {
        self.update(state, expert, |state| state.add_replica(expert, gpu));
    }

    /// Removes replica (expert, gpu) from the state and updates the gains it changes
    /// (any row of the expert may get dearer).
    pub fn remove_replica(&mut self, state: &mut State, expert: usize, gpu: usize) {
        self.update(state, expert, |state| state.remove_replica(expert, gpu));
    }

    /// Takes out the gains of the expert's rows, applies `change` (which returns the rows
    /// whose cost it changed), and puts back the gains of the rows still above one round.
    fn update(
        &mut self,
        state: &mut State,
        expert: usize,
        change: impl FnOnce(&mut State) -> Vec<u32>,
    ) {
        let rows: Vec<u32> = state
            .problem
            .index
            .rows_of(expert)
            .iter()
            .copied()
            .filter(|&r| state.costs[r as usize] >= 2)
            .collect();
        for g in row_gains(state, &rows) {
            self.apply(state, &g, -1);
        }
        let changed = change(state);
        let still: Vec<u32> = changed
            .into_iter()
            .filter(|&r| state.costs[r as usize] >= 2)
            .collect();
        for g in row_gains(state, &still) {
            self.apply(state, &g, 1);
        }
    }
}

/// The gains of `rows` (each of cost >= 2), in row order.
fn row_gains(state: &State, rows: &[u32]) -> Vec<RowGain> {
    let problem = state.problem;
    let layout = &state.layout;
    rows.par_chunks(ROWS_PER_TASK)
        .map_init(
            || RowScratch::new(layout.num_gpus()),
            |buf, chunk| {
                let mut out = Vec::new();
                let mut masks = [0u64; MAX_K];
                for &r in chunk {
                    let row = problem.row(r as usize);
                    let masks = &mut masks[..row.len()];
                    // A row over more than 64 GPUs is left out: its replicas are plenty.
                    if !layout.row_masks(row, &[], buf, masks) {
                        continue;
                    }
                    let t = state.costs[r as usize] as u32;
                    if let Some((experts, bits)) = single_replica_gain(masks, t) {
                        let gain = if layout.num_gpus() <= 64 {
                            RowGain {
                                row: r,
                                experts,
                                mask: bits,
                                gpus: Vec::new(),
                            }
                        } else {
                            let gpus = (0..64)
                                .filter(|b| bits >> b & 1 == 1)
                                .map(|b| buf.local.gpus[b as usize])
                                .collect();
                            RowGain {
                                row: r,
                                experts,
                                mask: 0,
                                gpus,
                            }
                        };
                        out.push(gain);
                    }
                }
                out
            },
        )
        .flatten_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layout::Layout;
    use crate::model::table::SubsetTable;
    use crate::search::kernel::problem::Problem;
    use crate::search::kernel::state::total_cost;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    fn random_case(rng: &mut SmallRng, num_gpus: usize) -> (SubsetTable, Layout) {
        let e = rng.random_range(4..=9);
        let k = rng.random_range(2..=e.min(6));
        let rows = rng.random_range(1..=12);
        let mut ids = Vec::new();
        let mut weights = Vec::new();
        for _ in 0..rows {
            let mut row: Vec<i64> = (0..e as i64).collect();
            for i in 0..k {
                let j = rng.random_range(i..e);
                row.swap(i, j);
            }
            ids.extend_from_slice(&row[..k]);
            weights.push(rng.random_range(1..=5) as f64);
        }
        let table = SubsetTable::from_subsets(&ids, k, e, &weights).unwrap();
        // Few GPUs in use so that costs above 1 are common.
        let spread = rng.random_range(1..=3.min(num_gpus));
        let layout = crate::testing::random_layout(rng, e, num_gpus, spread);
        (table, layout)
    }

    /// The alternating-path analysis says the same replicas help as the 2^k loop.
    #[test]
    fn alternating_paths_equal_violating_sets() {
        let mut rng = SmallRng::seed_from_u64(9);
        let mut unions = vec![0u64; 1 << 10];
        let mut helped = 0;
        for _ in 0..40_000 {
            let k = rng.random_range(1..=10);
            let g = rng.random_range(1..=8);
            let masks: Vec<u64> = (0..k)
                .map(|_| {
                    let mut m = 0u64;
                    for _ in 0..rng.random_range(1..=2) {
                        m |= 1 << rng.random_range(0..g);
                    }
                    m
                })
                .collect();
            let t = crate::cost::matching::cost_from_masks(&masks);
            let old = violating_core(&masks, t, &mut unions);
            let new = single_replica_gain(&masks, t);
            // GPU bit g stands for the GPUs outside the subset.
            for i in 0..k {
                for gpu in 0..=g {
                    if masks[i] >> gpu & 1 == 1 {
                        continue;
                    }
                    let helps = |x: Option<(u16, u64)>| {
                        x.is_some_and(|(c, u)| c >> i & 1 == 1 && u >> gpu & 1 == 0)
                    };
                    assert_eq!(helps(old), helps(new), "{masks:?} t={t} i={i} g={gpu}");
                    let mut more = masks.clone();
                    more[i] |= 1 << gpu;
                    let lower = crate::cost::matching::cost_from_masks(&more) < t;
                    assert_eq!(helps(new), lower, "{masks:?} t={t} i={i} g={gpu}");
                    helped += usize::from(lower);
                }
            }
        }
        assert!(helped > 1000);
    }

    /// Every candidate replica's gain equals adding it and recomputing the total.
    #[test]
    fn gains_equal_brute_force() {
        let mut rng = SmallRng::seed_from_u64(3);
        for case in 0..400 {
            let num_gpus = if case % 4 == 0 {
                70
            } else {
                rng.random_range(2..=5)
            };
            let (table, layout) = random_case(&mut rng, num_gpus);
            let problem = Problem::new(&table, num_gpus);
            let state = State::new(&problem, layout.clone());
            let gains = GainTable::new(&state);
            // For G > 64 check GPUs near the used ones and a few far away.
            let gpus: Vec<usize> = if num_gpus <= 64 {
                (0..num_gpus).collect()
            } else {
                vec![0, 1, 2, 3, 40, 69]
            };
            for e in 0..table.num_experts() {
                for &g in &gpus {
                    if layout.holds(e, g) {
                        continue;
                    }
                    let mut more = layout.clone();
                    more.add(e, g);
                    let brute = state.total - total_cost(&problem, &more);
                    assert_eq!(gains.gain(e, g), brute, "case {case} expert {e} GPU {g}");
                }
            }
        }
    }

    /// Incremental updates after adding replicas equal gains built from scratch.
    #[test]
    fn incremental_gains_equal_rebuilt() {
        let mut rng = SmallRng::seed_from_u64(5);
        for case in 0..200 {
            let num_gpus = if case % 4 == 0 {
                66
            } else {
                rng.random_range(2..=5)
            };
            let (table, layout) = random_case(&mut rng, num_gpus);
            let problem = Problem::new(&table, num_gpus);
            let mut state = State::new(&problem, layout);
            let mut gains = GainTable::new(&state);
            for _ in 0..3 {
                let e = rng.random_range(0..table.num_experts());
                let g = rng.random_range(0..num_gpus.min(6));
                if state.layout.holds(e, g) {
                    continue;
                }
                gains.add_replica(&mut state, e, g);
                assert_eq!(state.total, total_cost(&problem, &state.layout));
                let fresh = GainTable::new(&state);
                assert_eq!(gains.base, fresh.base, "case {case}");
                assert_eq!(gains.minus, fresh.minus, "case {case}");
                let f = state.layout.gpus_of(e)[0] as usize;
                gains.remove_replica(&mut state, e, f);
                assert_eq!(state.total, total_cost(&problem, &state.layout));
                let fresh = GainTable::new(&state);
                assert_eq!(gains.base, fresh.base, "case {case}");
                assert_eq!(gains.minus, fresh.minus, "case {case}");
            }
        }
    }
}
