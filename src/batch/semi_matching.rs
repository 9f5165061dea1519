//! Optimal semi-matching (DESIGN 3) for any number of experts and GPUs: each expert
//! goes to one GPU holding it, minimizing the most experts on one GPU. A batch's union
//! of experts can far exceed the 16 that `cost::matching_cost_masks` handles, so this
//! version keeps per-GPU lists and searches alternating paths breadth-first.
//!
//! Experts are added one at a time while a matching of makespan t is kept; a new
//! expert either reaches a GPU below t by an alternating path or, when none exists,
//! the optimum of the experts so far is exactly t + 1 (it can grow by at most one).

use crate::placement::Placement;

const ROOT: u32 = u32::MAX;

/// Reusable buffers for semi-matchings over one placement's GPUs.
pub struct SemiMatching {
    load: Vec<u32>,
    on_gpu: Vec<Vec<u32>>,
    /// GPU of each (local) expert after `solve`.
    pub assign: Vec<u16>,
    parent: Vec<(u32, u32)>,
    seen: Vec<u32>,
    stamp: u32,
    queue: Vec<u16>,
    touched: Vec<u16>,
    order: Vec<u32>,
}

impl SemiMatching {
    pub fn new(num_gpus: usize) -> Self {
        SemiMatching {
            load: vec![0; num_gpus],
            on_gpu: vec![Vec::new(); num_gpus],
            assign: Vec::new(),
            parent: vec![(ROOT, 0); num_gpus],
            seen: vec![0; num_gpus],
            stamp: 0,
            queue: Vec::new(),
            touched: Vec::new(),
            order: Vec::new(),
        }
    }

    fn next_stamp(&mut self) -> u32 {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.seen.iter_mut().for_each(|s| *s = 0);
            self.stamp = 1;
        }
        self.stamp
    }

    /// Makespan (experts on the busiest GPU) of an optimal semi-matching of `experts`
    /// (global ids, each with at least one replica); `assign[i]` is then expert i's GPU.
    pub fn solve(&mut self, experts: &[u32], placement: &Placement) -> u32 {
        for &g in &self.touched {
            self.load[g as usize] = 0;
            self.on_gpu[g as usize].clear();
        }
        self.touched.clear();
        self.assign.clear();
        self.assign.resize(experts.len(), u16::MAX);
        if experts.is_empty() {
            return 0;
        }
        // |N(U)| gives the Hall bound ceil(|U| / |N(U)|) to start from: fewer failed searches.
        let stamp = self.next_stamp();
        for &e in experts {
            for &g in placement.gpus_of(e as usize) {
                if self.seen[g as usize] != stamp {
                    self.seen[g as usize] = stamp;
                    self.touched.push(g);
                }
            }
        }
        let mut t = (experts.len() as u32)
            .div_ceil(self.touched.len() as u32)
            .max(1);
        // Experts with fewer replicas first: they have the fewest choices.
        let mut order = std::mem::take(&mut self.order);
        order.clear();
        order.extend(0..experts.len() as u32);
        order.sort_by_key(|&i| placement.gpus_of(experts[i as usize] as usize).len());
        for &i in &order {
            if !self.augment(i, experts, placement, t) {
                t += 1;
                let gpus = placement.gpus_of(experts[i as usize] as usize);
                let g = *gpus.iter().min_by_key(|&&g| self.load[g as usize]).unwrap();
                self.put(i, g);
            }
        }
        self.order = order;
        t
    }

    fn put(&mut self, i: u32, g: u16) {
        self.assign[i as usize] = g;
        self.load[g as usize] += 1;
        self.on_gpu[g as usize].push(i);
    }

    fn augment(&mut self, i: u32, experts: &[u32], placement: &Placement, t: u32) -> bool {
        let stamp = self.next_stamp();
        self.queue.clear();
        for &g in placement.gpus_of(experts[i as usize] as usize) {
            if self.seen[g as usize] == stamp {
                continue;
            }
            self.seen[g as usize] = stamp;
            self.parent[g as usize] = (ROOT, i);
            if self.load[g as usize] < t {
                self.apply(g);
                return true;
            }
            self.queue.push(g);
        }
        let mut head = 0;
        while head < self.queue.len() {
            let g = self.queue[head];
            head += 1;
            for idx in 0..self.on_gpu[g as usize].len() {
                let j = self.on_gpu[g as usize][idx];
                for &h in placement.gpus_of(experts[j as usize] as usize) {
                    if self.seen[h as usize] == stamp {
                        continue;
                    }
                    self.seen[h as usize] = stamp;
                    self.parent[h as usize] = (g as u32, j);
                    if self.load[h as usize] < t {
                        self.apply(h);
                        return true;
                    }
                    self.queue.push(h);
                }
            }
        }
        false
    }

    /// Shifts every expert along the path that ends at `end` (a GPU below t).
    fn apply(&mut self, end: u16) {
        self.load[end as usize] += 1;
        let mut cur = end;
        loop {
            let (prev, j) = self.parent[cur as usize];
            if prev == ROOT {
                self.assign[j as usize] = cur;
                self.on_gpu[cur as usize].push(j);
                return;
            }
            let list = &mut self.on_gpu[prev as usize];
            let pos = list
                .iter()
                .position(|&x| x == j)
                .expect("expert on its GPU");
            list.swap_remove(pos);
            self.on_gpu[cur as usize].push(j);
            self.assign[j as usize] = cur;
            cur = prev as u16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::{hall_cost, matching_cost_masks};
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn equals_mask_matching_and_hall() {
        let mut rng = SmallRng::seed_from_u64(3);
        for _ in 0..3000 {
            let g = rng.random_range(1..=10);
            let e = rng.random_range(1..=14);
            let lists: Vec<Vec<usize>> = (0..e)
                .map(|_| {
                    let r = rng.random_range(1..=3.min(g));
                    let mut l: Vec<usize> = (0..r).map(|_| rng.random_range(0..g)).collect();
                    l.sort();
                    l.dedup();
                    l
                })
                .collect();
            let p = Placement::from_lists(&lists, g).unwrap();
            let experts: Vec<u32> = (0..e as u32).filter(|_| rng.random_bool(0.7)).collect();
            let masks: Vec<u64> = experts
                .iter()
                .map(|&x| p.masks().unwrap()[x as usize])
                .collect();
            let mut sm = SemiMatching::new(g);
            let t = sm.solve(&experts, &p);
            assert_eq!(t, matching_cost_masks(&masks));
            assert_eq!(t, hall_cost(&masks));
            let mut load = vec![0u32; g];
            for (i, &x) in experts.iter().enumerate() {
                assert!(p.holds(x as usize, sm.assign[i] as usize));
                load[sm.assign[i] as usize] += 1;
            }
            assert_eq!(load.iter().copied().max().unwrap_or(0), t);
        }
    }

    #[test]
    fn handles_many_experts() {
        // 256 experts on 32 GPUs, two replicas each: the union of a large batch.
        let lists: Vec<Vec<usize>> = (0..256).map(|e| vec![e % 32, (e * 7 + 3) % 32]).collect();
        let p = Placement::from_lists(&lists, 32).unwrap();
        let experts: Vec<u32> = (0..256).collect();
        let mut sm = SemiMatching::new(32);
        assert_eq!(sm.solve(&experts, &p), 8);
        let one: Vec<u32> = (0..40)
            .map(|i| i * 32)
            .collect::<Vec<_>>()
            .into_iter()
            .filter(|&e| e < 256)
            .collect();
        // Experts 0, 32, ..., 224 all live on GPU 0 and on GPU 3 + 0 = 3.
        assert_eq!(sm.solve(&one, &p), 4);
    }
}
