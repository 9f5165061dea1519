//! The exact decode cost of a subset under a placement (DESIGN 2.1): the fewest
//! expert rounds the busiest GPU runs when each expert of the subset is served by
//! one of its replicas, i.e. the makespan of an optimal semi-matching.
//!
//! Experts are added one at a time while a matching of makespan `t` is kept; a new
//! expert either finds an alternating path to a GPU below `t` or raises `t` by one
//! (Berge's theorem for b-matchings makes this exact). For G <= 64, or when the
//! subset's GPUs fit in 64 local ids, GPU sets are 64-bit masks.

use rayon::prelude::*;

use crate::error::{MoeError, Result};
use crate::placement::Placement;
use crate::table::{SubsetTable, MAX_K};

/// Rows per parallel task (a row costs ~100 ns).
const ROWS_PER_TASK: usize = 4096;
const NONE: u8 = u8::MAX;

/// Incremental semi-matching over at most 16 experts and 64 GPUs.
struct MaskMatching<'a> {
    masks: &'a [u64],
    assign: [u8; MAX_K],
    load: [u8; 64],
    /// Experts placed on each GPU, as bit masks over the subset's positions.
    on_gpu: [u16; 64],
    /// GPUs whose load equals `t`.
    full: u64,
    /// GPUs that serve anything (new experts prefer the others).
    used: u64,
    t: u8,
}

impl<'a> MaskMatching<'a> {
    fn new(masks: &'a [u64]) -> Self {
        MaskMatching {
            masks,
            assign: [NONE; MAX_K],
            load: [0; 64],
            on_gpu: [0; 64],
            full: 0,
            used: 0,
            t: 1,
        }
    }

    #[inline]
    fn place(&mut self, i: usize, g: u32) {
        self.assign[i] = g as u8;
        self.on_gpu[g as usize] |= 1 << i;
        self.load[g as usize] += 1;
        self.used |= 1 << g;
        if self.load[g as usize] == self.t {
            self.full |= 1 << g;
        }
    }

    /// Moves expert `j` from its GPU to `g` (which is below `t`).
    #[inline]
    fn shift(&mut self, j: usize, g: u32) {
        let from = self.assign[j] as usize;
        self.on_gpu[from] &= !(1u16 << j);
        self.load[from] -= 1;
        self.full &= !(1u64 << from);
        self.place(j, g);
    }

    /// Places expert `i` on a non-full GPU, moving others along an alternating path.
    /// A breadth-first search over GPU masks: GPU g is reached through expert via[g],
    /// which may move there; the experts on a reached GPU may move on.
    fn augment(&mut self, i: usize) -> bool {
        let mut via = [NONE; 64];
        let mut reached = 0u64;
        let mut frontier = self.masks[i];
        let mut seen_experts: u16 = 1 << i;
        // The GPUs first reached from expert i.
        let mut from_i = frontier;
        while from_i != 0 {
            via[from_i.trailing_zeros() as usize] = i as u8;
            from_i &= from_i - 1;
        }
        loop {
            let free = frontier & !self.full;
            if free != 0 {
                // Walk back: each expert moves to the GPU it reached, freeing its own.
                let mut g = free.trailing_zeros();
                loop {
                    let j = via[g as usize] as usize;
                    if j == i {
                        self.place(i, g);
                        return true;
                    }
                    let from = self.assign[j] as u32;
                    self.shift(j, g);
                    g = from;
                }
            }
            reached |= frontier;
            let mut experts: u16 = 0;
            let mut f = frontier;
            while f != 0 {
                experts |= self.on_gpu[f.trailing_zeros() as usize];
                f &= f - 1;
            }
            experts &= !seen_experts;
            if experts == 0 {
                return false;
            }
            seen_experts |= experts;
            let mut next = 0u64;
            while experts != 0 {
                let j = experts.trailing_zeros() as usize;
                experts &= experts - 1;
                let mut new = self.masks[j] & !reached & !next;
                next |= new;
                while new != 0 {
                    via[new.trailing_zeros() as usize] = j as u8;
                    new &= new - 1;
                }
            }
            if next == 0 {
                return false;
            }
            frontier = next;
        }
    }

    #[inline]
    fn add(&mut self, i: usize) {
        // Most experts find a free GPU at once: skip the path search for them.
        let free = self.masks[i] & !self.full;
        if free != 0 {
            let empty = free & !self.used;
            self.place(i, if empty != 0 { empty } else { free }.trailing_zeros());
            return;
        }
        if !self.augment(i) {
            // No matching of makespan t covers the experts so far: t + 1 does, and then
            // every GPU of expert i is below the new t.
            self.t += 1;
            self.full = 0;
            self.place(i, self.masks[i].trailing_zeros());
        }
    }
}

/// Cost of a subset given the GPU mask of each of its experts (at most 16 experts).
pub fn matching_cost_masks(masks: &[u64]) -> u32 {
    debug_assert!(masks.len() <= MAX_K && masks.iter().all(|&m| m != 0));
    let mut m = MaskMatching::new(masks);
    for i in 0..masks.len() {
        m.add(i);
    }
    if masks.is_empty() {
        0
    } else {
        m.t as u32
    }
}

/// Which single new replica lowers the cost `t` of a subset by one (DESIGN 3), found by
/// alternating paths instead of the 2^k loop over violating sets: a matching with each GPU
/// capped at t - 1 rounds leaves one expert u unserved (else no replica helps); a new
/// replica (i, g) completes it iff i is reachable from u by an alternating path (the
/// experts of every violating set) and g reaches spare capacity by one (g "absorbs").
/// Returns (the reachable experts as bits over the subset, the GPUs that do not absorb
/// as bits of the masks' space), i.e. the replica (i, g) helps iff i is in the first
/// and g outside the second; None if no replica helps. A few hundred nanoseconds at
/// k = 16, where the 2^k loop reads 65,536 sets.
pub fn single_replica_gain(masks: &[u64], t: u32) -> Option<(u16, u64)> {
    if t < 2 || masks.is_empty() {
        return None;
    }
    let mut m = MaskMatching::new(masks);
    m.t = (t - 1) as u8;
    let mut unserved = None;
    for (i, &mask) in masks.iter().enumerate() {
        let free = mask & !m.full;
        if free != 0 {
            m.place(i, free.trailing_zeros());
        } else if !m.augment(i) {
            if unserved.is_some() {
                return None;
            }
            unserved = Some(i);
        }
    }
    // A cost of t means no t - 1 matching serves everyone.
    let u = unserved?;
    // Experts reachable from u: every GPU they reach is full (no augmenting path).
    let mut experts: u16 = 1 << u;
    let mut reached = masks[u];
    loop {
        let mut more = experts;
        let mut f = reached;
        while f != 0 {
            more |= m.on_gpu[f.trailing_zeros() as usize];
            f &= f - 1;
        }
        if more == experts {
            break;
        }
        experts = more;
        let mut e = experts;
        while e != 0 {
            reached |= masks[e.trailing_zeros() as usize];
            e &= e - 1;
        }
    }
    // GPUs that absorb: below t - 1, or holding an expert that can move to one that absorbs.
    let union = masks.iter().fold(0u64, |a, &b| a | b);
    let mut absorb = union & !m.full;
    loop {
        let mut grown = absorb;
        let mut f = union & !absorb;
        while f != 0 {
            let g = f.trailing_zeros() as usize;
            f &= f - 1;
            let mut on = m.on_gpu[g];
            while on != 0 {
                let j = on.trailing_zeros() as usize;
                on &= on - 1;
                if masks[j] & absorb & !(1u64 << g) != 0 {
                    grown |= 1 << g;
                    break;
                }
            }
        }
        if grown == absorb {
            break;
        }
        absorb = grown;
    }
    Some((experts, union & !absorb))
}

/// Hall's formula (DESIGN 3): max over nonempty X of ceil(|X| / |N(X)|), by a 2^k loop.
/// Slower than the matching; kept as an independent check and for the greedy's gains.
pub fn hall_cost(masks: &[u64]) -> u32 {
    let k = masks.len();
    let mut union = vec![0u64; 1 << k];
    let mut best = 0;
    for x in 1usize..1 << k {
        let low = x.trailing_zeros() as usize;
        union[x] = union[x & (x - 1)] | masks[low];
        let need = (x.count_ones()).div_ceil(union[x].count_ones());
        best = best.max(need);
    }
    best
}

/// Cost by plain augmenting paths over GPU lists, for subsets spanning more than 64 GPUs.
pub fn matching_cost_lists(gpus: &[&[u16]]) -> u32 {
    fn augment(
        i: usize,
        gpus: &[&[u16]],
        t: u32,
        assign: &mut [usize],
        load: &mut Vec<(u16, u32)>,
        visited: &mut Vec<u16>,
    ) -> bool {
        for &g in gpus[i] {
            if visited.contains(&g) {
                continue;
            }
            visited.push(g);
            let l = load.iter().find(|(h, _)| *h == g).map_or(0, |x| x.1);
            if l < t {
                bump(load, g, 1);
                assign[i] = g as usize;
                return true;
            }
            for j in 0..assign.len() {
                if j != i && assign[j] == g as usize {
                    assign[j] = usize::MAX;
                    bump(load, g, -1);
                    if augment(j, gpus, t, assign, load, visited) {
                        bump(load, g, 1);
                        assign[i] = g as usize;
                        return true;
                    }
                    bump(load, g, 1);
                    assign[j] = g as usize;
                }
            }
        }
        false
    }
    fn bump(load: &mut Vec<(u16, u32)>, g: u16, by: i32) {
        match load.iter_mut().find(|(h, _)| *h == g) {
            Some(x) => x.1 = (x.1 as i32 + by) as u32,
            None => load.push((g, by as u32)),
        }
    }
    let mut assign = vec![usize::MAX; gpus.len()];
    let mut load = Vec::new();
    let mut t = if gpus.is_empty() { 0 } else { 1 };
    for i in 0..gpus.len() {
        let mut visited = Vec::new();
        if !augment(i, gpus, t, &mut assign, &mut load, &mut visited) {
            t += 1;
            let g = gpus[i][0];
            bump(&mut load, g, 1);
            assign[i] = g as usize;
        }
    }
    t
}

/// Per-thread buffers for subsets of placements over more than 64 GPUs.
pub struct Scratch {
    local: Vec<u16>,
    touched: Vec<u16>,
}

impl Scratch {
    pub fn new(num_gpus: usize) -> Self {
        Scratch {
            local: vec![u16::MAX; num_gpus],
            touched: Vec::new(),
        }
    }
}

/// The subset's GPU masks over local GPU ids (the GPUs of N(S), numbered in order of
/// first appearance). Returns the number of local GPUs, or None if more than 64.
pub fn local_masks(
    subset: &[u16],
    placement: &Placement,
    scratch: &mut Scratch,
    out: &mut [u64],
) -> Option<usize> {
    if let Some(masks) = placement.masks() {
        for (o, &e) in out.iter_mut().zip(subset) {
            *o = masks[e as usize];
        }
        return Some(placement.num_gpus());
    }
    let mut fits = true;
    for (o, &e) in out.iter_mut().zip(subset) {
        *o = 0;
        for &g in placement.gpus_of(e as usize) {
            let mut id = scratch.local[g as usize];
            if id == u16::MAX {
                id = scratch.touched.len() as u16;
                scratch.local[g as usize] = id;
                scratch.touched.push(g);
            }
            if id < 64 {
                *o |= 1 << id;
            } else {
                fits = false;
            }
        }
    }
    let n = scratch.touched.len();
    for &g in &scratch.touched {
        scratch.local[g as usize] = u16::MAX;
    }
    scratch.touched.clear();
    fits.then_some(n)
}

/// The exact cost of one subset (expert rounds of the busiest GPU).
pub fn subset_cost(subset: &[u16], placement: &Placement, scratch: &mut Scratch) -> u32 {
    let mut masks = [0u64; MAX_K];
    let k = subset.len();
    if local_masks(subset, placement, scratch, &mut masks[..k]).is_some() {
        matching_cost_masks(&masks[..k])
    } else {
        let lists: Vec<&[u16]> = subset
            .iter()
            .map(|&e| placement.gpus_of(e as usize))
            .collect();
        matching_cost_lists(&lists)
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
            || Scratch::new(placement.num_gpus()),
            |scratch, (out, rows)| {
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
    if !(total > 0.0) {
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

/// The bound every placement meets: weighted mean of ceil(k / G) = ceil(k / G).
pub fn lower_bound(table: &SubsetTable, num_gpus: usize) -> Result<f64> {
    if num_gpus == 0 {
        return Err(MoeError::value("num_gpus must be at least 1"));
    }
    Ok(table.k().div_ceil(num_gpus) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    fn random_masks(rng: &mut SmallRng, k: usize, g: usize, max_reps: usize) -> Vec<u64> {
        (0..k)
            .map(|_| {
                let reps = rng.random_range(1..=max_reps.min(g));
                let mut m = 0u64;
                while (m.count_ones() as usize) < reps {
                    m |= 1 << rng.random_range(0..g);
                }
                m
            })
            .collect()
    }

    #[test]
    fn matching_equals_hall_formula() {
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let k = rng.random_range(1..=10);
            let g = rng.random_range(1..=12);
            let masks = random_masks(&mut rng, k, g, 3);
            assert_eq!(matching_cost_masks(&masks), hall_cost(&masks), "{masks:?}");
        }
    }

    #[test]
    fn list_matching_equals_mask_matching() {
        let mut rng = SmallRng::seed_from_u64(11);
        for _ in 0..5_000 {
            let k = rng.random_range(1..=8);
            let masks = random_masks(&mut rng, k, 10, 4);
            let lists: Vec<Vec<u16>> = masks
                .iter()
                .map(|&m| (0..64).filter(|g| m >> g & 1 == 1).collect())
                .collect();
            let refs: Vec<&[u16]> = lists.iter().map(|l| &l[..]).collect();
            assert_eq!(matching_cost_lists(&refs), matching_cost_masks(&masks));
        }
    }

    #[test]
    fn known_costs() {
        // Three experts on one GPU run in three rounds.
        assert_eq!(matching_cost_masks(&[1, 1, 1]), 3);
        // Two on GPU 0, one replicated: the replica takes the load.
        assert_eq!(matching_cost_masks(&[0b01, 0b01, 0b11]), 2);
        assert_eq!(matching_cost_masks(&[0b01, 0b11]), 1);
        // An alternating path is needed: 0 takes GPU 0 first, 1 can only use GPU 0.
        assert_eq!(matching_cost_masks(&[0b11, 0b01]), 1);
    }

    #[test]
    fn wide_placements_use_local_ids() {
        // 200 GPUs; the subset only touches a few.
        let lists: Vec<Vec<usize>> = (0..8).map(|e| vec![e * 25, (e * 25 + 199) % 200]).collect();
        let p = Placement::from_lists(&lists, 200).unwrap();
        let mut s = Scratch::new(200);
        assert_eq!(subset_cost(&[0, 1, 2, 3, 4, 5, 6, 7], &p, &mut s), 1);
        let same = Placement::from_lists(&vec![vec![150]; 8], 200).unwrap();
        assert_eq!(subset_cost(&[0, 1, 2, 3, 4, 5, 6, 7], &same, &mut s), 8);
    }

    #[test]
    fn expected_cost_is_weighted_mean() {
        let t = SubsetTable::from_subsets(&[0, 1, 0, 2], 2, 3, &[3.0, 1.0]).unwrap();
        let p = Placement::from_lists(&[vec![0], vec![0], vec![1]], 2).unwrap();
        assert_eq!(subset_costs(&t, &p).unwrap(), vec![2, 1]);
        assert!((expected_cost(&t, &p).unwrap() - 1.75).abs() < 1e-12);
    }
}
