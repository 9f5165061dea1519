//! The greedy's working state: a layout with the exact cost of every row, their
//! weighted total, and each expert's co-activation with each GPU's experts (the cheap
//! score that picks which moves are worth an exact evaluation), all kept current.

use rayon::prelude::*;

use super::problem::Problem;
use crate::cost::matching::{cost_from_masks, RowScratch};
use crate::model::layout::{Change, Layout, Move};
use crate::model::placement::Replicas;
use crate::util::limits::MAX_K;

/// Rows per parallel task: a row costs 30-300 ns.
pub const ROWS_PER_TASK: usize = 2048;

/// An expert id no table holds (ids are below `crate::util::limits::MAX_EXPERTS`).
const NO_EXPERT: u16 = u16::MAX;

#[derive(Clone)]
pub struct State<'p> {
    pub problem: &'p Problem<'p>,
    pub layout: Layout,
    pub costs: Vec<u8>,
    /// Sum of weight * cost over the rows.
    pub total: i64,
    /// [E * G]: co-activation weight of expert e with the experts of GPU g (e excluded),
    /// each partner's weight divided by its number of replicas.
    conn: Vec<i64>,
}

/// Weighted total cost of a layout, without building a state.
pub fn total_cost(problem: &Problem, layout: &Layout) -> i64 {
    let k = problem.k();
    problem
        .table
        .subsets()
        .par_chunks(ROWS_PER_TASK * k)
        .zip(problem.weights.par_chunks(ROWS_PER_TASK))
        .map_init(
            || RowScratch::new(layout.num_gpus()),
            |scratch, (rows, weights)| {
                rows.chunks_exact(k)
                    .zip(weights)
                    .map(|(row, &w)| w * layout.row_cost(row, &[], scratch) as i64)
                    .sum::<i64>()
            },
        )
        .sum()
}

impl<'p> State<'p> {
    pub fn new(problem: &'p Problem<'p>, layout: Layout) -> Self {
        let k = problem.k();
        let mut costs = vec![0u8; problem.weights.len()];
        costs
            .par_chunks_mut(ROWS_PER_TASK)
            .zip(problem.table.subsets().par_chunks(ROWS_PER_TASK * k))
            .for_each_init(
                || RowScratch::new(layout.num_gpus()),
                |scratch, (out, rows)| {
                    for (c, row) in out.iter_mut().zip(rows.chunks_exact(k)) {
                        *c = layout.row_cost(row, &[], scratch) as u8;
                    }
                },
            );
        let total = costs
            .iter()
            .zip(&problem.weights)
            .map(|(&c, &w)| c as i64 * w)
            .sum();
        let num_gpus = layout.num_gpus();
        let mut state = State {
            problem,
            layout,
            costs,
            total,
            conn: vec![0; problem.num_experts() * num_gpus],
        };
        for g in 0..num_gpus {
            for i in 0..state.layout.used(g) {
                let e = state.layout.experts_on(g)[i];
                state.shift_conn(e as usize, g, 1);
            }
        }
        state
    }

    pub fn conn(&self, expert: usize, gpu: usize) -> i64 {
        self.conn[expert * self.layout.num_gpus() + gpu]
    }

    /// A replicated expert blocks a partner on one GPU only when its other replicas
    /// are busy too: its co-activation is split over its replicas.
    fn shift_conn(&mut self, expert: usize, gpu: usize, sign: i64) {
        let g_count = self.layout.num_gpus();
        let replicas = self.layout.replicas(expert).max(1) as i64;
        let (partners, weights) = self.problem.coactivation.partners_of(expert);
        for (&p, &w) in partners.iter().zip(weights) {
            self.conn[p as usize * g_count + gpu] += sign * (w / replicas);
        }
    }

    /// Changes the replicas of `expert` by `change`, re-splitting its co-activation.
    fn change_replicas(&mut self, expert: usize, change: impl FnOnce(&mut Layout)) {
        for i in 0..self.layout.replicas(expert) {
            let g = self.layout.gpus_of(expert)[i] as usize;
            self.shift_conn(expert, g, -1);
        }
        change(&mut self.layout);
        for i in 0..self.layout.replicas(expert) {
            let g = self.layout.gpus_of(expert)[i] as usize;
            self.shift_conn(expert, g, 1);
        }
    }

    /// Recomputes the costs of `rows` (after a change of the layout) and the total.
    fn recost(&mut self, rows: &[u32]) {
        let layout = &self.layout;
        let problem = self.problem;
        let updates: Vec<(u32, u8)> = rows
            .par_chunks(ROWS_PER_TASK)
            .map_init(
                || RowScratch::new(layout.num_gpus()),
                |scratch, chunk| {
                    chunk
                        .iter()
                        .map(|&r| {
                            (
                                r,
                                layout.row_cost(problem.row(r as usize), &[], scratch) as u8,
                            )
                        })
                        .collect::<Vec<_>>()
                },
            )
            .flatten_iter()
            .collect();
        for (r, c) in updates {
            let old = std::mem::replace(&mut self.costs[r as usize], c);
            self.total += (c as i64 - old as i64) * problem.weights[r as usize];
        }
    }

    /// Adds replica (expert, gpu); returns the rows whose cost may have changed.
    pub fn add_replica(&mut self, expert: usize, gpu: usize) -> Vec<u32> {
        self.change_replicas(expert, |l| l.add(expert, gpu));
        // A row of cost 1 cannot get cheaper.
        let rows: Vec<u32> = self
            .problem
            .index
            .rows_of(expert)
            .iter()
            .copied()
            .filter(|&r| self.costs[r as usize] >= 2)
            .collect();
        self.recost(&rows);
        rows
    }

    /// Makes `mv` (a swap, or any move the layout allows) and recosts the rows of the
    /// experts it changes.
    pub fn apply(&mut self, mv: Move) {
        let mut rows: Vec<u32> = Vec::new();
        for c in mv.changes().iter() {
            self.change_replicas(c.expert as usize, |l| l.change(c));
            rows.extend_from_slice(self.problem.index.rows_of(c.expert as usize));
        }
        rows.sort_unstable();
        rows.dedup();
        self.recost(&rows);
    }

    /// Exact change of the total if `mv` were made, and the number of rows it read.
    pub fn move_delta(&self, mv: Move, scratch: &mut RowScratch) -> (i64, usize) {
        self.delta(&mv.changes(), scratch)
    }

    /// Exact change of the total if `changes` (of one or two distinct experts) were
    /// made, and the number of rows it read.
    pub fn delta(&self, changes: &[Change], scratch: &mut RowScratch) -> (i64, usize) {
        if let Some(masks) = Replicas::masks(&self.layout).filter(|_| changes.len() <= 2) {
            return self.delta_masks(masks, changes);
        }
        let problem = self.problem;
        let k = problem.k();
        let mut delta = 0i64;
        let mut read = 0usize;
        for (n, change) in changes.iter().enumerate() {
            let (rows, subsets, weights) = problem.rows_with(change.expert as usize);
            read += rows.len();
            for ((&r, row), &w) in rows.iter().zip(subsets.chunks_exact(k)).zip(weights) {
                // A row of several changed experts is counted with the first of them.
                if changes[..n].iter().any(|c| row.contains(&c.expert)) {
                    continue;
                }
                let c = self.layout.row_cost(row, changes, scratch) as i64;
                delta += (c - self.costs[r as usize] as i64) * w;
            }
        }
        (delta, read)
    }

    /// `delta` on at most 64 GPUs: the changed experts' masks after the move are set
    /// once, and each row reads its experts' masks through them in one tight loop (the
    /// searches' hot path).
    fn delta_masks(&self, masks: &[u64], changes: &[Change]) -> (i64, usize) {
        let problem = self.problem;
        let k = problem.k();
        // (expert, its mask after the move) for the one or two changed experts; the
        // second is an id no row holds where only one changes.
        let mut moved = [(NO_EXPERT, 0u64); 2];
        for c in changes {
            let bit = |g: Option<u16>| g.map_or(0, |g| 1u64 << g);
            let slot = usize::from(moved[0].0 != NO_EXPERT && moved[0].0 != c.expert);
            let before = if moved[slot].0 == c.expert {
                moved[slot].1
            } else {
                masks[c.expert as usize]
            };
            moved[slot] = (c.expert, (before & !bit(c.remove)) | bit(c.add));
        }
        // Every expert's mask after the move: each row then reads its masks without a
        // test per expert (a copy of E words per evaluation of thousands of rows).
        let mut after = masks.to_vec();
        for (e, mask) in moved {
            if e != NO_EXPERT {
                after[e as usize] = mask;
            }
        }
        let mut delta = 0i64;
        let mut read = 0usize;
        let mut row_masks = [0u64; MAX_K];
        for (n, change) in changes.iter().enumerate() {
            let (rows, subsets, weights) = problem.rows_with(change.expert as usize);
            read += rows.len();
            // A row of both changed experts is counted with the first of them.
            let skip = if n == 0 { NO_EXPERT } else { changes[0].expert };
            for ((&r, row), &w) in rows.iter().zip(subsets.chunks_exact(k)).zip(weights) {
                let out = &mut row_masks[..k];
                let mut counted = false;
                for (o, &e) in out.iter_mut().zip(row) {
                    counted |= e == skip;
                    *o = after[e as usize];
                }
                if counted {
                    continue;
                }
                let c = cost_from_masks(out);
                delta += (c as i64 - self.costs[r as usize] as i64) * w;
            }
        }
        (delta, read)
    }

    /// Removes replica (expert, gpu); returns the rows whose cost may have changed.
    pub fn remove_replica(&mut self, expert: usize, gpu: usize) -> Vec<u32> {
        self.change_replicas(expert, |l| l.remove(expert, gpu));
        let rows = self.problem.index.rows_of(expert).to_vec();
        self.recost(&rows);
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::table::SubsetTable;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    /// Every kind of move's exact delta (the mask loop up to 64 GPUs, the general path
    /// beyond) equals making the move and recomputing the total from scratch, on random
    /// tables and layouts with replicas, and the state's costs stay exact.
    #[test]
    fn deltas_equal_recomputed_totals() {
        let mut rng = SmallRng::seed_from_u64(17);
        let mut checked = 0;
        for case in 0..300 {
            let num_gpus = if case % 5 == 0 {
                rng.random_range(65..=90)
            } else {
                rng.random_range(2..=8)
            };
            let e = rng.random_range(4..=20);
            let k = rng.random_range(1..=e.min(16));
            let table = crate::testing::skewed_table(case, 60, e as u64, k, 3, 61);
            let problem = Problem::new(&table, num_gpus);
            // Few GPUs in use so that rows of several rounds are common; some replicas.
            let spread = rng.random_range(1..=num_gpus.min(4));
            let layout = crate::testing::random_layout(&mut rng, e, num_gpus, spread);
            let mut state = State::new(&problem, layout);
            let mut scratch = RowScratch::new(num_gpus);
            for _ in 0..20 {
                let x = rng.random_range(0..e) as u16;
                let y = rng.random_range(0..e) as u16;
                let g = rng.random_range(0..num_gpus) as u16;
                let l = &state.layout;
                let from = l.gpus_of(x as usize)[rng.random_range(0..l.replicas(x as usize))];
                let to = l.gpus_of(y as usize)[0];
                let mv = match rng.random_range(0..4) {
                    0 => Move::Swap {
                        first: x,
                        from,
                        second: y,
                        to,
                    },
                    1 => Move::Replace {
                        old: x,
                        gpu: from,
                        new: y,
                    },
                    2 => Move::Relocate {
                        expert: x,
                        from,
                        to: g,
                    },
                    _ => Move::Add { expert: x, gpu: g },
                };
                if !l.allows(mv, usize::MAX) {
                    continue;
                }
                let (delta, _) = state.move_delta(mv, &mut scratch);
                let before = state.total;
                state.apply(mv);
                assert_eq!(state.total, before + delta, "case {case} {mv:?}");
                assert_eq!(
                    state.total,
                    total_cost(&problem, &state.layout),
                    "case {case}"
                );
                checked += 1;
            }
        }
        assert!(checked > 1000, "{checked} moves checked");
    }

    #[test]
    fn swap_delta_matches_recomputed_total() {
        let t = SubsetTable::from_subsets(
            &[0, 1, 2, 0, 2, 3, 1, 3, 4, 0, 4, 5],
            3,
            6,
            &[5.0, 3.0, 2.0, 1.0],
        )
        .unwrap();
        for num_gpus in [3, 100] {
            let p = Problem::new(&t, num_gpus);
            let mut l = Layout::new(6, num_gpus);
            for e in 0..6 {
                l.add(e, e / 2);
            }
            l.add(0, 2);
            let mut s = State::new(&p, l);
            let mut scratch = RowScratch::new(num_gpus);
            for swap in [
                Move::Swap {
                    first: 1,
                    from: 0,
                    second: 3,
                    to: 1,
                },
                Move::Swap {
                    first: 2,
                    from: 1,
                    second: 4,
                    to: 2,
                },
            ] {
                let (delta, _) = s.move_delta(swap, &mut scratch);
                let before = s.total;
                s.apply(swap);
                assert_eq!(s.total, before + delta);
                assert_eq!(s.total, total_cost(&p, &s.layout));
            }
            let before = s.total;
            s.add_replica(2, 0);
            assert!(s.total <= before);
            assert_eq!(s.total, total_cost(&p, &s.layout));
            for e in 0..6 {
                for g in 0..num_gpus {
                    let on_g = s.layout.experts_on(g).iter().filter(|&&x| x as usize != e);
                    let split =
                        |x: usize| p.coactivation.weight(e, x) / s.layout.replicas(x) as i64;
                    let expected: i64 = on_g.map(|&x| split(x as usize)).sum();
                    assert_eq!(s.conn(e, g), expected, "expert {e} GPU {g}");
                }
            }
        }
    }
}
