//! Token-load balancing by max-flow (docs/algorithms.md#semi-matching): source -> expert (its tokens) ->
//! each GPU holding it -> sink (capacity T). The smallest feasible T is
//! max over expert sets A of L(A) / |N(A)|; it is found by raising T to the density of
//! the violated set that each min cut exposes (Dinkelbach), keeping the flow between
//! rounds since raising sink capacities never invalidates it.

#[cfg(test)]
use crate::model::placement::Placement;
use crate::model::placement::Replicas;

/// Dinic's max-flow on a small graph with f64 capacities (integers stay exact).
struct Dinic {
    adj: Vec<Vec<u32>>,
    to: Vec<u32>,
    cap: Vec<f64>,
    level: Vec<i32>,
    next: Vec<usize>,
    queue: Vec<u32>,
}

impl Dinic {
    fn new() -> Self {
        Dinic {
            adj: Vec::new(),
            to: Vec::new(),
            cap: Vec::new(),
            level: Vec::new(),
            next: Vec::new(),
            queue: Vec::new(),
        }
    }

    fn reset(&mut self, nodes: usize) {
        for a in self.adj.iter_mut() {
            a.clear();
        }
        self.adj.resize_with(nodes.max(self.adj.len()), Vec::new);
        self.adj.truncate(nodes);
        self.to.clear();
        self.cap.clear();
        self.level.resize(nodes, -1);
        self.next.resize(nodes, 0);
    }

    fn add_edge(&mut self, u: usize, v: usize, cap: f64) -> usize {
        let e = self.to.len();
        self.to.push(v as u32);
        self.cap.push(cap);
        self.adj[u].push(e as u32);
        self.to.push(u as u32);
        self.cap.push(0.0);
        self.adj[v].push(e as u32 + 1);
        e
    }

    /// Levels from `s` in the residual graph; after the last round they mark the
    /// source side of a minimum cut.
    fn bfs(&mut self, s: usize, t: usize, eps: f64) -> bool {
        self.level.iter_mut().for_each(|l| *l = -1);
        self.level[s] = 0;
        self.queue.clear();
        self.queue.push(s as u32);
        let mut head = 0;
        while head < self.queue.len() {
            let u = self.queue[head] as usize;
            head += 1;
            for &e in &self.adj[u] {
                let v = self.to[e as usize] as usize;
                if self.cap[e as usize] > eps && self.level[v] < 0 {
                    self.level[v] = self.level[u] + 1;
                    self.queue.push(v as u32);
                }
            }
        }
        self.level[t] >= 0
    }

    fn dfs(&mut self, u: usize, t: usize, pushed: f64, eps: f64) -> f64 {
        if u == t {
            return pushed;
        }
        while self.next[u] < self.adj[u].len() {
            let e = self.adj[u][self.next[u]] as usize;
            let v = self.to[e] as usize;
            if self.cap[e] > eps && self.level[v] == self.level[u] + 1 {
                let got = self.dfs(v, t, pushed.min(self.cap[e]), eps);
                if got > eps {
                    self.cap[e] -= got;
                    self.cap[e ^ 1] += got;
                    return got;
                }
            }
            self.next[u] += 1;
        }
        0.0
    }

    fn max_flow(&mut self, s: usize, t: usize, eps: f64) -> f64 {
        let mut total = 0.0;
        while self.bfs(s, t, eps) {
            self.next.iter_mut().for_each(|x| *x = 0);
            loop {
                let got = self.dfs(s, t, f64::INFINITY, eps);
                if got <= eps {
                    break;
                }
                total += got;
            }
        }
        total
    }
}

/// Reusable max-flow over the experts of a batch and the GPUs holding them.
pub struct LoadFlow {
    dinic: Dinic,
    gpu_local: Vec<u32>,
    /// Global id of each local GPU.
    pub gpus: Vec<u16>,
    sink_edges: Vec<usize>,
    /// First expert -> GPU edge of each local expert (one per replica, in replica order).
    expert_edges: Vec<usize>,
}

const NO_GPU: u32 = u32::MAX;

impl LoadFlow {
    pub fn new(num_gpus: usize) -> Self {
        LoadFlow {
            dinic: Dinic::new(),
            gpu_local: vec![NO_GPU; num_gpus],
            gpus: Vec::new(),
            sink_edges: Vec::new(),
            expert_edges: Vec::new(),
        }
    }

    /// Smallest T such that every expert's `weights[i]` can be spread over its replicas
    /// with at most T per GPU. `integral` rounds T up to whole tokens at every step, which
    /// gives the optimum with whole token-expert pairs (flows are integral).
    /// Returns T; the flow stays readable with `split`.
    pub fn min_makespan(
        &mut self,
        experts: &[u32],
        weights: &[f64],
        placement: &impl Replicas,
        integral: bool,
    ) -> f64 {
        self.index_gpus(experts, placement);
        let u = experts.len();
        let m = self.gpus.len();
        let total: f64 = weights.iter().sum();
        if u == 0 || total <= 0.0 {
            return 0.0;
        }
        let (s, t) = (0, u + m + 1);
        self.dinic.reset(u + m + 2);
        self.add_expert_edges(experts, weights, placement);
        let round = |x: f64| if integral { (x - 1e-9).ceil() } else { x };
        // Start at the best single-set bounds: all experts over all their GPUs, and each
        // expert over its own replicas.
        let mut level = total / m as f64;
        for (i, &e) in experts.iter().enumerate() {
            level = level.max(weights[i] / placement.gpus_of(e as usize).len() as f64);
        }
        let mut level = round(level);
        self.sink_edges.clear();
        for l in 0..m {
            let e = self.dinic.add_edge(1 + u + l, t, level);
            self.sink_edges.push(e);
        }
        let eps = 1e-9 * total.max(1.0);
        let mut flow = self.pre_flow(experts, placement, eps, integral);
        for _ in 0..200 {
            flow += self.dinic.max_flow(s, t, eps);
            if flow >= total - if integral { 0.5 } else { 1e-9 * total } {
                break;
            }
            // The experts still reachable from the source form a set A with
            // L(A) > level * |N(A)|: its density is the next candidate.
            let (load, gpus) = self.reachable(weights, u, m);
            let next = round(load / gpus.max(1) as f64);
            let next = if next > level {
                next
            } else if integral {
                level + 1.0
            } else {
                // Only rounding keeps the flow short of the total: level is the answer.
                break;
            };
            for &e in &self.sink_edges {
                self.dinic.cap[e] += next - level;
            }
            level = next;
        }
        level
    }

    /// Numbers the GPUs that hold one of `experts` (`gpu_local`, `gpus`), clearing the
    /// previous call's.
    fn index_gpus(&mut self, experts: &[u32], placement: &impl Replicas) {
        for &g in &self.gpus {
            self.gpu_local[g as usize] = NO_GPU;
        }
        self.gpus.clear();
        for &e in experts {
            for &g in placement.gpus_of(e as usize) {
                if self.gpu_local[g as usize] == NO_GPU {
                    self.gpu_local[g as usize] = self.gpus.len() as u32;
                    self.gpus.push(g);
                }
            }
        }
    }

    /// The source's edge to each expert (its weight) and the expert's edges to its
    /// replicas' GPUs (`expert_edges`: the first of each expert's).
    fn add_expert_edges(&mut self, experts: &[u32], weights: &[f64], placement: &impl Replicas) {
        let (s, u) = (0, experts.len());
        self.expert_edges.clear();
        for (i, &e) in experts.iter().enumerate() {
            self.dinic.add_edge(s, 1 + i, weights[i]);
            let gpus = placement.gpus_of(e as usize);
            let first = self.dinic.add_edge(
                1 + i,
                1 + u + self.gpu_local[gpus[0] as usize] as usize,
                f64::INFINITY,
            );
            self.expert_edges.push(first);
            for &g in &gpus[1..] {
                self.dinic.add_edge(
                    1 + i,
                    1 + u + self.gpu_local[g as usize] as usize,
                    f64::INFINITY,
                );
            }
        }
    }

    /// Greedy pre-flow: experts without a choice first, then the others spread over
    /// their replicas in proportion to the room left. Most tokens land directly,
    /// leaving Dinic few phases. Returns the flow sent.
    fn pre_flow(
        &mut self,
        experts: &[u32],
        placement: &impl Replicas,
        eps: f64,
        integral: bool,
    ) -> f64 {
        let u = experts.len();
        let mut flow = 0.0;
        for pass in 0..2 {
            for (i, &e) in experts.iter().enumerate() {
                let reps = placement.gpus_of(e as usize).len();
                if (reps == 1) != (pass == 0) {
                    continue;
                }
                let source_edge = self.expert_edges[i] - 2;
                let sink_of = |d: &Dinic, r: usize| {
                    self.sink_edges[d.to[self.expert_edges[i] + 2 * r] as usize - 1 - u]
                };
                let total_room: f64 = (0..reps)
                    .map(|r| self.dinic.cap[sink_of(&self.dinic, r)])
                    .sum();
                if total_room <= eps {
                    continue;
                }
                let supply = self.dinic.cap[source_edge];
                for r in 0..reps {
                    let sink = sink_of(&self.dinic, r);
                    let room = self.dinic.cap[sink];
                    let share = supply * room / total_room;
                    let share = if integral { share.ceil() } else { share };
                    let x = share.min(room).min(self.dinic.cap[source_edge]);
                    if x <= 0.0 {
                        continue;
                    }
                    let edge = self.expert_edges[i] + 2 * r;
                    self.dinic.cap[source_edge] -= x;
                    self.dinic.cap[source_edge ^ 1] += x;
                    self.dinic.cap[edge ^ 1] += x;
                    self.dinic.cap[sink] -= x;
                    self.dinic.cap[sink ^ 1] += x;
                    flow += x;
                }
            }
        }
        flow
    }

    /// (load, GPUs) of the experts and GPUs still reachable from the source after a max
    /// flow, of `u` experts and `m` GPUs.
    fn reachable(&self, weights: &[f64], u: usize, m: usize) -> (f64, usize) {
        let (mut load, mut gpus) = (0.0, 0usize);
        for (i, &w) in weights.iter().enumerate() {
            if self.dinic.level[1 + i] >= 0 {
                load += w;
            }
        }
        for l in 0..m {
            if self.dinic.level[1 + u + l] >= 0 {
                gpus += 1;
            }
        }
        (load, gpus)
    }

    /// Flow of local expert `i` to its `r`-th replica after `min_makespan`.
    pub fn split(&self, i: usize, r: usize) -> f64 {
        self.dinic.cap[(self.expert_edges[i] + 2 * r) ^ 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_set_decides_the_makespan() {
        // Experts 0, 1 only on GPU 0 (loads 5, 4); expert 2 on GPUs 0, 1 (load 10).
        let p = Placement::from_lists(&[vec![0], vec![0], vec![0, 1]], 2).unwrap();
        let mut f = LoadFlow::new(2);
        assert_eq!(
            f.min_makespan(&[0, 1, 2], &[5.0, 4.0, 10.0], &p, true),
            10.0
        );
        assert_eq!(f.split(2, 0) + f.split(2, 1), 10.0);
        assert!(f.split(2, 0) <= 1.0);
        // Loads 5, 4, 12: total 21 over 2 GPUs = 10.5 -> 11 whole tokens.
        assert_eq!(
            f.min_makespan(&[0, 1, 2], &[5.0, 4.0, 12.0], &p, true),
            11.0
        );
        assert!((f.min_makespan(&[0, 1, 2], &[5.0, 4.0, 12.0], &p, false) - 10.5).abs() < 1e-9);
        // A single expert with 9 tokens on 2 replicas: ceil(4.5).
        assert_eq!(f.min_makespan(&[2], &[9.0], &p, true), 5.0);
    }
}
