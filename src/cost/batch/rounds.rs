//! Expert rounds of sampled batches, kept per batch so that the batch-aware search can
//! bound a move's gain without re-timing every batch it touches.
//!
//! A batch's step time is at least f(1) times its rounds, the semi-matching makespan of
//! its experts, since every expert run costs at least f(1) (docs/cost-model.md#a-batch).
//! For each batch the
//! cache keeps an optimal semi-matching and a Hall witness of it: a set R of GPUs, all
//! loaded to at least rounds - 1 and one to rounds, that holds every replica of the
//! experts assigned to it, so that those experts alone need `rounds` on R. A move (a
//! change of at most two experts' replicas) keeps the rounds exactly when
//! - the witness survives: no expert assigned inside R gains a GPU outside it (losing
//!   replicas only shrinks the experts' room), and
//! - the assignment, with each expert that loses its GPU moved to the GPU it gains (or
//!   to its least loaded remaining replica), stays within `rounds` per GPU.
//!
//! That test costs a few lookups; the other moves are counted from scratch.

use crate::cost::matching::SemiMatching;
use crate::model::layout::Change;
use crate::model::placement::Replicas;

/// Rounds of one batch with the matching and witness that prove them.
#[derive(Clone, Debug)]
pub struct BatchRounds {
    pub rounds: u32,
    /// GPU of each of the batch's experts (in the batch's ascending order).
    assign: Vec<u16>,
    /// Experts assigned to each GPU.
    load: Vec<u32>,
    /// GPUs of the Hall witness (bit g: GPU g); 0 when unknown (over 64 GPUs).
    witness: u64,
}

/// Scratch of the from-scratch count.
pub struct RoundsSolver {
    matching: SemiMatching,
    on_gpu: Vec<Vec<u32>>,
    parent: Vec<(u16, u32)>,
    queue: Vec<u16>,
}

impl RoundsSolver {
    pub fn new(num_gpus: usize) -> Self {
        RoundsSolver {
            matching: SemiMatching::new(num_gpus),
            on_gpu: vec![Vec::new(); num_gpus],
            parent: vec![(0, 0); num_gpus],
            queue: Vec::new(),
        }
    }

    /// Rounds of the batch `experts` (ascending ids) on `layout`, with a witness.
    pub fn solve(&mut self, layout: &impl Replicas, experts: &[u32]) -> BatchRounds {
        let num_gpus = layout.num_gpus();
        let rounds = self
            .matching
            .solve(experts.len(), |i| layout.gpus_of(experts[i] as usize));
        let mut assign = self.matching.assign.clone();
        let mut load = vec![0u32; num_gpus];
        for list in &mut self.on_gpu {
            list.clear();
        }
        for (i, &g) in assign.iter().enumerate() {
            load[g as usize] += 1;
            self.on_gpu[g as usize].push(i as u32);
        }
        let witness = if num_gpus <= 64 && rounds > 0 {
            self.witness(layout, experts, rounds, &mut assign, &mut load)
        } else {
            0
        };
        BatchRounds {
            rounds,
            assign,
            load,
            witness,
        }
    }

    /// Relieves GPUs at `rounds` by alternating paths to GPUs at most at rounds - 2 until
    /// one cannot be: the GPUs its search reached are a witness. The matching is optimal,
    /// so one of them cannot be relieved.
    fn witness(
        &mut self,
        layout: &impl Replicas,
        experts: &[u32],
        rounds: u32,
        assign: &mut [u16],
        load: &mut [u32],
    ) -> u64 {
        for start in 0..load.len() {
            if load[start] != rounds {
                continue;
            }
            let mut seen = 1u64 << start;
            self.queue.clear();
            self.queue.push(start as u16);
            let mut head = 0;
            let mut end = None;
            'search: while head < self.queue.len() {
                let g = self.queue[head];
                head += 1;
                for &j in &self.on_gpu[g as usize] {
                    for &h in layout.gpus_of(experts[j as usize] as usize) {
                        if seen >> h & 1 == 1 {
                            continue;
                        }
                        seen |= 1 << h;
                        self.parent[h as usize] = (g, j);
                        if load[h as usize] + 2 <= rounds {
                            end = Some(h);
                            break 'search;
                        }
                        self.queue.push(h);
                    }
                }
            }
            let Some(mut h) = end else {
                return seen;
            };
            load[h as usize] += 1;
            load[start] -= 1;
            while h as usize != start {
                let (g, j) = self.parent[h as usize];
                let list = &mut self.on_gpu[g as usize];
                let pos = list
                    .iter()
                    .position(|&x| x == j)
                    .expect("expert on its GPU");
                list.swap_remove(pos);
                self.on_gpu[h as usize].push(j);
                assign[j as usize] = h;
                h = g;
            }
        }
        debug_assert!(false, "an optimal semi-matching has a witness");
        0
    }
}

impl BatchRounds {
    /// Whether the batch `experts` keeps its rounds after `changes` (made on `after`).
    /// False means: count them again.
    pub fn unchanged_by(&self, experts: &[u32], changes: &[Change], after: &impl Replicas) -> bool {
        if self.witness == 0 {
            return false;
        }
        let inside = |g: u16| self.witness >> g & 1 == 1;
        // Load changes of at most two experts: (GPU, change) pairs.
        let mut delta = [(0u16, 0i32); 4];
        let mut n = 0;
        let mut bump = |delta: &mut [(u16, i32); 4], g: u16, d: i32| {
            if let Some(x) = delta[..n].iter_mut().find(|x| x.0 == g) {
                x.1 += d;
            } else {
                delta[n] = (g, d);
                n += 1;
            }
        };
        for c in changes {
            let Ok(i) = experts.binary_search(&(c.expert as u32)) else {
                continue;
            };
            let at = self.assign[i];
            if let Some(h) = c.add {
                if inside(at) && !inside(h) {
                    return false;
                }
            }
            if c.remove == Some(at) {
                let to = match c.add {
                    Some(h) => h,
                    None => {
                        // Its least loaded remaining replica (loads before this move's
                        // other changes: any choice gives a valid assignment).
                        let gpus = after.gpus_of(c.expert as usize);
                        match gpus.iter().min_by_key(|&&g| self.load[g as usize]) {
                            Some(&g) => g,
                            None => return false,
                        }
                    }
                };
                bump(&mut delta, at, -1);
                bump(&mut delta, to, 1);
            }
        }
        delta[..n]
            .iter()
            .all(|&(g, d)| self.load[g as usize] as i64 + d as i64 <= self.rounds as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layout::{Layout, Move};
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    fn random_layout(rng: &mut SmallRng, experts: usize, gpus: usize, slots: usize) -> Layout {
        let mut l = Layout::new(experts, gpus);
        for e in 0..experts {
            l.add(e, e % gpus);
        }
        for _ in 0..gpus * slots {
            let (e, g) = (rng.random_range(0..experts), rng.random_range(0..gpus));
            if !l.holds(e, g) && l.used(g) < slots {
                l.add(e, g);
            }
        }
        l
    }

    fn random_move(rng: &mut SmallRng, l: &Layout, slots: usize) -> Option<Move> {
        let (e, f) = (
            rng.random_range(0..l.num_experts()) as u16,
            rng.random_range(0..l.num_experts()) as u16,
        );
        let pick = |e: u16, r: &mut SmallRng| {
            let gpus = l.gpus_of(e as usize);
            gpus[r.random_range(0..gpus.len())]
        };
        let (g, h) = (pick(e, rng), pick(f, rng));
        let other = rng.random_range(0..l.num_gpus()) as u16;
        let mv = match rng.random_range(0..4) {
            0 => Move::Swap {
                first: e,
                from: g,
                second: f,
                to: h,
            },
            1 => Move::Replace {
                old: e,
                gpu: g,
                new: f,
            },
            2 => Move::Relocate {
                expert: e,
                from: g,
                to: other,
            },
            _ => Move::Add {
                expert: e,
                gpu: other,
            },
        };
        l.allows(mv, slots).then_some(mv)
    }

    /// The fast test never claims unchanged rounds that a fresh count contradicts, and
    /// the witness is a true Hall set.
    #[test]
    fn unchanged_rounds_agree_with_a_fresh_count() {
        let mut rng = SmallRng::seed_from_u64(12);
        let mut solver = RoundsSolver::new(64);
        let (mut claimed, mut checked) = (0, 0);
        for case in 0..400 {
            let gpus = [2, 3, 5, 8, 16, 64][case % 6];
            let experts = rng.random_range(2..40usize);
            let slots = experts.div_ceil(gpus) + rng.random_range(0..3);
            let mut l = random_layout(&mut rng, experts, gpus, slots);
            for _ in 0..20 {
                let mut batch: Vec<u32> = (0..experts as u32)
                    .filter(|_| rng.random_bool(0.6))
                    .collect();
                batch.dedup();
                let cached = solver.solve(&l, &batch);
                let fresh = solver
                    .matching
                    .solve(batch.len(), |i| l.gpus_of(batch[i] as usize));
                assert_eq!(cached.rounds, fresh);
                if cached.rounds > 0 {
                    let w = cached.witness;
                    assert_ne!(w, 0);
                    let on_w: Vec<usize> = (0..batch.len())
                        .filter(|&i| w >> cached.assign[i] & 1 == 1)
                        .collect();
                    for &i in &on_w {
                        assert!(l
                            .gpus_of(batch[i] as usize)
                            .iter()
                            .all(|&g| w >> g & 1 == 1));
                    }
                    let size = w.count_ones() as usize;
                    assert!(on_w.len() > (cached.rounds as usize - 1) * size);
                }
                let Some(mv) = random_move(&mut rng, &l, slots) else {
                    continue;
                };
                l.apply(mv);
                let after = solver
                    .matching
                    .solve(batch.len(), |i| l.gpus_of(batch[i] as usize));
                checked += 1;
                if cached.unchanged_by(&batch, &mv.changes(), &l) {
                    claimed += 1;
                    assert_eq!(after, cached.rounds, "{mv:?} on {batch:?}");
                }
                if rng.random_bool(0.5) {
                    l.undo(mv);
                }
            }
        }
        // The test has teeth: it claims something for a good share of the moves.
        assert!(claimed * 4 > checked, "{claimed} of {checked}");
    }
}
