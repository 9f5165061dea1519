//! Placement with communication and re-planning with few moves (docs/algorithms.md,
//! "Topology").
//!
//! A local search on the exact one-token time of `crate::cost::topology` (compute of the
//! busiest GPU plus dispatch and combine of the nodes used): it starts from a placement
//! (the compute-only greedy's, or the one being served) and makes the best of a few
//! sampled moves while it lowers the table's expected time. A fresh plan (no `max_moves`,
//! no target) first lets pairs of GPUs of different nodes trade all their experts while
//! that helps: a token's rounds on a set of GPUs stay the same, the nodes it reaches change. Moves keep every GPU full:
//! `Swap` (two replicas trade GPUs) and `Replace` (a second replica of one expert becomes a
//! replica of another). Candidates come from the heavy rows whose time is above the best
//! a row can have; each is scored exactly on the rows its experts appear in.
//!
//! With `max_moves`, the result differs from the start by at most that many replicas
//! (expert copies to a GPU that did not hold them): the best the search reaches with that
//! many weight copies. With a `CopyPrice` (us per token per copy, the search's time
//! unit), a move is made only if it lowers the expected time by more than the price of
//! the copies it adds (a move that gives copies back gains theirs), ranked by that net
//! gain per copy: the search minimizes time + price x copies. Under `Topology::free` and
//! `round_us` = 1 the time is the compute-only cost, so the same search re-plans the
//! compute-only placement.

use super::batch::swap_gpus;
use crate::cost::topology::{check_topology, token_time, TokenScratch};
use crate::model::layout::{Layout, Move};
use crate::model::placement::Placement;
use crate::model::table::SubsetTable;
use crate::model::topology::Topology;
use crate::search::replan::{copies, move_copies};
use crate::util::error::{MoeError, Result};
use crate::util::limits::check_memory;
use crate::util::rng::SplitMix64;

/// Candidates scored per step, and steps without progress before the search stops
/// (more under groups: moves stay inside a node, and the search starts further from a
/// good placement; on the V3-size bench 160 steps gave 0.5% lower held-out times than 40
/// for twice the CPU).
const CANDIDATES: usize = 24;
const PATIENCE: usize = 40;
const GROUPED_PATIENCE: usize = 160;

/// The price of one copy in the search's time unit per token (us with a topology,
/// rounds under `Topology::free` with `round_us` = 1): `in_node` for an expert the start
/// holds on another GPU of the destination's node (an NVLink copy), `across_nodes` for
/// one it holds on other nodes only (an RDMA copy). A copy's link depends only on the
/// start and the (expert, GPU) copied, so the price of a result does not depend on the
/// path that reached it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CopyPrice {
    pub in_node: f64,
    pub across_nodes: f64,
}

impl CopyPrice {
    /// One price whatever the link.
    pub fn flat(price: f64) -> Self {
        CopyPrice {
            in_node: price,
            across_nodes: price,
        }
    }

    fn is_free(&self) -> bool {
        self.in_node == 0.0 && self.across_nodes == 0.0
    }

    fn check(&self) -> Result<()> {
        for (name, x) in [
            ("in_node", self.in_node),
            ("across_nodes", self.across_nodes),
        ] {
            if !(x.is_finite() && x >= 0.0) {
                return Err(MoeError::value(format!(
                    "copy price {name} = {x}: must be finite and non-negative"
                )));
            }
        }
        Ok(())
    }
}

/// What the search may do.
#[derive(Clone, Copy, Debug)]
pub struct SearchLimits<'t> {
    /// Most replicas of the result not in the start.
    pub max_moves: Option<usize>,
    /// The price of a copy (zero: copies are free, the search of a budget alone).
    pub copy_price: CopyPrice,
    /// Most candidate moves scored.
    pub max_evaluations: usize,
    /// Half the candidates move toward this placement (a fresh plan) when given.
    pub seed: u64,
    pub target: Option<&'t Placement>,
    /// Expert groups of consecutive ids that must each stay on one node (the start's).
    pub num_groups: Option<usize>,
}

struct Search<'a> {
    table: &'a SubsetTable,
    topology: &'a Topology,
    round_us: f64,
    layout: Layout,
    /// The placement re-planned from (copies are counted against it).
    start: &'a Placement,
    rows_of: Vec<Vec<u32>>,
    times: Vec<f64>,
    /// The best time each row can have: ceil(k / G) rounds on one node; under groups,
    /// the nodes of its groups (fixed) with its experts spread over their GPUs.
    floors: Vec<f64>,
    stamp: Vec<u32>,
    epoch: u32,
    scratch: TokenScratch,
    moved: usize,
    /// The node of each group and the group size, under `num_groups`.
    groups: Option<(Vec<usize>, usize)>,
}

impl<'a> Search<'a> {
    /// The search's state at `start`: rows by expert, each row's time and the floor no
    /// placement goes below (under groups, the row's groups on their nodes).
    fn new(
        table: &'a SubsetTable,
        start: &'a Placement,
        topology: &'a Topology,
        round_us: f64,
        groups: Option<(Vec<usize>, usize)>,
    ) -> Result<Self> {
        let layout = Layout::from_placement(start);
        let mut rows_of = vec![Vec::new(); table.num_experts()];
        for (r, row) in table.subsets().chunks_exact(table.k()).enumerate() {
            for &e in row {
                rows_of[e as usize].push(r as u32);
            }
        }
        let g = start.num_gpus();
        let times = crate::cost::topology::subset_times(table, start, topology, round_us)?;
        let floor =
            round_us * table.k().div_ceil(g) as f64 + topology.token_comm_us(table.k(), 1, g);
        let floors = match &groups {
            None => vec![floor; table.len()],
            Some((nodes, size)) => table
                .subsets()
                .chunks_exact(table.k())
                .map(|row| group_floor(row, nodes, *size, topology, round_us, g))
                .collect(),
        };
        Ok(Search {
            table,
            topology,
            round_us,
            start,
            layout,
            rows_of,
            times,
            floors,
            stamp: vec![0; table.len()],
            epoch: 0,
            scratch: TokenScratch::new(g),
            moved: 0,
            groups,
        })
    }

    /// Up to `candidates` moves drawn from rows sampled by their weighted time over the floor
    /// (`cumulative`, summing to `total`), or toward the target half of the time; the best
    /// that lowers the time by more than `eps` (under a budget or a price, by (net) gain per
    /// copy), within the move budget. Counts its evaluations in `evaluations`.
    #[allow(clippy::too_many_arguments)]
    fn best_move(
        &mut self,
        cumulative: &[f64],
        total: f64,
        limits: &SearchLimits<'_>,
        slots_per_gpu: usize,
        rng: &mut SplitMix64,
        evaluations: &mut usize,
        eps: f64,
    ) -> Option<(f64, Move)> {
        let priced = !limits.copy_price.is_free();
        let per_copy = limits.max_moves.is_some() || priced;
        let total_weight = self.table.total_weight().max(f64::MIN_POSITIVE);
        // Under a move budget or a price, more candidates per step, ranked by (net) gain
        // per replica copied.
        let candidates = if per_copy { 4 * CANDIDATES } else { CANDIDATES };
        let mut best: Option<(f64, Move)> = None;
        for _ in 0..candidates {
            let x = rng.unit() * total;
            let r = cumulative
                .partition_point(|&c| c <= x)
                .min(cumulative.len() - 1);
            let mv = match limits.target {
                Some(t) if rng.below(2) == 0 => self.toward(t, slots_per_gpu, rng),
                _ => self.candidate(self.row(r), slots_per_gpu, rng),
            };
            let Some(mv) = mv.filter(|&mv| self.keeps_groups(mv)) else {
                continue;
            };
            let copies = move_copies(self.start, mv);
            if let Some(m) = limits.max_moves {
                if (self.moved as isize + copies) as usize > m {
                    continue;
                }
            }
            *evaluations += 1;
            let mut d = self.delta(mv);
            if priced {
                d += self.price_delta(mv, limits.copy_price) * total_weight;
            }
            if d < -eps && per_copy {
                d /= copies.max(1) as f64;
            }
            if d < -eps && best.is_none_or(|(bd, _)| d < bd) {
                best = Some((d, mv));
            }
        }
        best
    }

    fn row(&self, r: usize) -> &'a [u16] {
        let k = self.table.k();
        &self.table.subsets()[r * k..(r + 1) * k]
    }

    /// The price (per token) of the copies `mv` adds that the start lacks, less that of
    /// those it gives back.
    fn price_delta(&self, mv: Move, price: CopyPrice) -> f64 {
        let gpn = self.topology.gpus_per_node;
        let of = |e: usize, g: usize| {
            let node = g / gpn;
            if self
                .start
                .gpus_of(e)
                .iter()
                .any(|&h| h as usize / gpn == node)
            {
                price.in_node
            } else {
                price.across_nodes
            }
        };
        let mut d = 0.0;
        for c in mv.changes().iter() {
            let e = c.expert as usize;
            if let Some(g) = c.remove.filter(|&g| !self.start.holds(e, g as usize)) {
                d -= of(e, g as usize);
            }
            if let Some(g) = c.add.filter(|&g| !self.start.holds(e, g as usize)) {
                d += of(e, g as usize);
            }
        }
        d
    }

    /// The change of the weighted time sum if `mv` were made (made and taken back).
    fn delta(&mut self, mv: Move) -> f64 {
        self.layout.apply(mv);
        let d = self.retime(mv.experts(), false);
        self.layout.undo(mv);
        d
    }

    /// The change of the weighted time sum from the rows of `experts` (each row once)
    /// between their recorded times and the layout's; with `keep`, those times recorded.
    fn retime(&mut self, experts: impl IntoIterator<Item = u16>, keep: bool) -> f64 {
        self.epoch += 1;
        let mut d = 0.0;
        for e in experts {
            for i in 0..self.rows_of[e as usize].len() {
                let r = self.rows_of[e as usize][i] as usize;
                if self.stamp[r] == self.epoch {
                    continue;
                }
                self.stamp[r] = self.epoch;
                let row = self.row(r);
                let t = token_time(
                    row,
                    &self.layout,
                    self.topology,
                    self.round_us,
                    &mut self.scratch,
                )
                .0;
                d += self.table.weights()[r] * (t - self.times[r]);
                if keep {
                    self.times[r] = t;
                }
            }
        }
        d
    }

    /// Whether every replica `mv` adds is on its group's node.
    fn keeps_groups(&self, mv: Move) -> bool {
        let Some((nodes, size)) = &self.groups else {
            return true;
        };
        let gpn = self.topology.gpus_per_node;
        mv.changes().iter().all(|c| {
            c.add
                .is_none_or(|g| nodes[c.expert as usize / size] == g as usize / gpn)
        })
    }

    fn make(&mut self, mv: Move) {
        self.moved = (self.moved as isize + move_copies(self.start, mv)) as usize;
        self.layout.apply(mv);
        self.retime(mv.experts(), true);
    }

    /// The change of the weighted time sum if GPUs a and b traded all their experts, or
    /// (with `keep`) the trade made and the row times updated.
    fn gpu_swap(&mut self, a: usize, b: usize, keep: bool) -> f64 {
        let mut experts: Vec<u16> = self.layout.experts_on(a).to_vec();
        experts.extend_from_slice(self.layout.experts_on(b));
        swap_gpus(&mut self.layout, a, b);
        let d = self.retime(experts, keep);
        if !keep {
            swap_gpus(&mut self.layout, a, b);
        }
        d
    }

    /// Node level: pairs of GPUs on different nodes trade their experts while that lowers
    /// the time (the rounds of a token on a set of GPUs do not change, the nodes it
    /// reaches do), in passes over the pairs in a seeded order, within `budget` scores.
    fn permute_nodes(&mut self, budget: usize, eps: f64, rng: &mut SplitMix64) -> usize {
        let (g, gpn) = (self.layout.num_gpus(), self.topology.gpus_per_node);
        let mut pairs: Vec<(usize, usize)> = (0..g)
            .flat_map(|a| (a + 1..g).map(move |b| (a, b)))
            .filter(|&(a, b)| a / gpn != b / gpn)
            .collect();
        let mut used = 0;
        loop {
            for i in (1..pairs.len()).rev() {
                pairs.swap(i, rng.below(i + 1));
            }
            let mut improved = false;
            for &(a, b) in &pairs {
                if used >= budget || crate::util::cancel::requested() {
                    return used;
                }
                used += 1;
                if self.gpu_swap(a, b, false) < -eps {
                    self.gpu_swap(a, b, true);
                    improved = true;
                }
            }
            if !improved {
                return used;
            }
        }
    }

    /// A move that gives GPU g a replica the target has there: a sampled (expert, GPU)
    /// of the target that the layout lacks, made by replacing or swapping out an expert
    /// the target does not want on g.
    fn toward(&self, target: &Placement, slots: usize, rng: &mut SplitMix64) -> Option<Move> {
        let g = rng.below(self.layout.num_gpus());
        let wanted: Vec<u16> = (0..target.num_experts())
            .filter(|&e| target.holds(e, g) && !self.layout.holds(e, g))
            .map(|e| e as u16)
            .collect();
        let unwanted: Vec<u16> = self
            .layout
            .experts_on(g)
            .iter()
            .copied()
            .filter(|&e| !target.holds(e as usize, g))
            .collect();
        if wanted.is_empty() || unwanted.is_empty() {
            return None;
        }
        let new = wanted[rng.below(wanted.len())];
        let old = unwanted[rng.below(unwanted.len())];
        let mv = if self.layout.replicas(old as usize) >= 2 {
            Move::Replace {
                old,
                gpu: g as u16,
                new,
            }
        } else {
            let from = self.layout.gpus_of(new as usize);
            Move::Swap {
                first: new,
                from: from[rng.below(from.len())],
                second: old,
                to: g as u16,
            }
        };
        self.layout.allows(mv, slots).then_some(mv)
    }

    /// A sampled move that touches one expert of `row`, or None.
    fn candidate(&self, row: &[u16], slots: usize, rng: &mut SplitMix64) -> Option<Move> {
        let g = self.layout.num_gpus();
        let e = row[rng.below(row.len())];
        let gpus = self.layout.gpus_of(e as usize);
        let from = gpus[rng.below(gpus.len())];
        let gpn = self.topology.gpus_per_node;
        // A third of the moves put a second replica of e on `to` (replacing an expert
        // there); the rest trade e with an expert on `to`. `to` is a GPU of a node the row
        // already uses half the time, anywhere otherwise.
        let replace = rng.below(3) == 0;
        let to = if let Some((nodes, size)) = &self.groups {
            // Under groups, e stays on its group's node (and so does what e trades with).
            (nodes[e as usize / size] * gpn + rng.below(gpn)) as u16
        } else if rng.below(2) == 0 {
            let other = row[rng.below(row.len())];
            let og = self.layout.gpus_of(other as usize);
            let node = og[rng.below(og.len())] as usize / gpn;
            (node * gpn + rng.below(gpn)) as u16
        } else {
            rng.below(g) as u16
        };
        let on = self.layout.experts_on(to as usize);
        let there = on[rng.below(on.len())];
        let mv = if replace {
            Move::Replace {
                old: there,
                gpu: to,
                new: e,
            }
        } else {
            Move::Swap {
                first: e,
                from,
                second: there,
                to,
            }
        };
        self.layout.allows(mv, slots).then_some(mv)
    }
}

/// The best time of a row when each expert group stays on its node: the row reaches the
/// nodes of its groups whatever the placement, and needs on each of them at least
/// ceil(its experts there / GPUs per node) rounds.
fn group_floor(
    row: &[u16],
    nodes: &[usize],
    size: usize,
    topology: &Topology,
    round_us: f64,
    num_gpus: usize,
) -> f64 {
    let mut per_node: Vec<(usize, usize)> = Vec::with_capacity(row.len());
    for &e in row {
        let node = nodes[e as usize / size];
        match per_node.iter_mut().find(|(n, _)| *n == node) {
            Some((_, c)) => *c += 1,
            None => per_node.push((node, 1)),
        }
    }
    let gpn = topology.gpus_per_node;
    let rounds = per_node
        .iter()
        .map(|&(_, c)| c.div_ceil(gpn))
        .max()
        .unwrap_or(0);
    round_us * rounds as f64 + topology.token_comm_us(row.len(), per_node.len(), num_gpus)
}

/// Improves `start` for the table's expected one-token time under `topology` (module
/// docs). Returns the placement and the number of replicas it has that `start` lacks.
pub fn improve(
    table: &SubsetTable,
    start: &Placement,
    slots_per_gpu: usize,
    topology: &Topology,
    round_us: f64,
    limits: SearchLimits<'_>,
) -> Result<(Placement, usize)> {
    let walk = improve_walk(table, start, slots_per_gpu, topology, round_us, limits)?;
    Ok((walk.placement, walk.moved))
}

/// What `improve_walk` returns: the placement, its replicas that the start lacks, and
/// the search's path as (copies, expected time in us) after each move made, the start
/// first: the gain against moves of a re-plan.
pub struct Walk {
    pub placement: Placement,
    pub moved: usize,
    pub path: Vec<(usize, f64)>,
}

/// `improve`, keeping the path of the search.
pub fn improve_walk(
    table: &SubsetTable,
    start: &Placement,
    slots_per_gpu: usize,
    topology: &Topology,
    round_us: f64,
    limits: SearchLimits<'_>,
) -> Result<Walk> {
    check_walk(table, start, slots_per_gpu, topology, round_us, &limits)?;
    let groups = match limits.num_groups {
        None => None,
        Some(n) => {
            let nodes = super::batch::group_nodes(start, n, topology.gpus_per_node)
                .map_err(|e| MoeError::value(format!("the start placement: {e}")))?;
            Some((nodes, start.num_experts() / n))
        }
    };
    let mut s = Search::new(table, start, topology, round_us, groups)?;
    let mut rng = SplitMix64::new(limits.seed);
    let mut evaluations = 0;
    let mut idle = 0;
    let eps = 1e-9 * table.total_weight().max(1.0);
    let total_weight = table.total_weight().max(f64::MIN_POSITIVE);
    let mean_time = |s: &Search<'_>| -> f64 {
        s.times
            .iter()
            .zip(table.weights())
            .map(|(t, w)| t * w)
            .sum::<f64>()
            / total_weight
    };
    let mut path = vec![(0, mean_time(&s))];
    let priced = !limits.copy_price.is_free();
    // Copies are counted move by move only when re-planning (no uncounted first pass).
    let replanning = limits.max_moves.is_some() || limits.target.is_some() || priced;
    // A fresh plan (no move budget, no target, no price) first permutes GPUs among nodes,
    // within a quarter of the evaluations (not under groups: a GPU's experts would leave
    // theirs).
    if !replanning && s.groups.is_none() && topology.gpus_per_node < start.num_gpus() {
        evaluations += s.permute_nodes(limits.max_evaluations / 4, eps, &mut rng);
    }
    let patience = if s.groups.is_some() {
        GROUPED_PATIENCE
    } else {
        PATIENCE
    };
    while evaluations < limits.max_evaluations
        && idle < patience
        && !crate::util::cancel::requested()
    {
        // Rows by the time they lose over the floor, weighted: sample one per candidate.
        let mut cumulative = Vec::with_capacity(s.times.len());
        let mut total = 0.0;
        for ((&t, &w), &floor) in s.times.iter().zip(table.weights()).zip(&s.floors) {
            total += w * (t - floor).max(0.0);
            cumulative.push(total);
        }
        if total <= eps {
            break;
        }
        let best = s.best_move(
            &cumulative,
            total,
            &limits,
            slots_per_gpu,
            &mut rng,
            &mut evaluations,
            eps,
        );
        match best {
            Some((_, mv)) => {
                s.make(mv);
                if replanning {
                    path.push((s.moved, mean_time(&s)));
                }
                idle = 0;
            }
            None => idle += 1,
        }
    }
    let found = s.layout.to_placement()?;
    let moved = copies(start, &found);
    debug_assert!(limits.max_moves.is_none() || moved == s.moved);
    if !replanning && path.len() == 1 {
        path.push((moved, mean_time(&s)));
    }
    Ok(Walk {
        placement: found,
        moved,
        path,
    })
}

/// The inputs of `improve_walk` checked.
fn check_walk(
    table: &SubsetTable,
    start: &Placement,
    slots_per_gpu: usize,
    topology: &Topology,
    round_us: f64,
    limits: &SearchLimits<'_>,
) -> Result<()> {
    check_topology(topology, start)?;
    if let Some(t) = limits.target {
        if (t.num_experts(), t.num_gpus()) != (start.num_experts(), start.num_gpus()) {
            return Err(MoeError::value(format!(
                "the target placement has {} experts on {} GPUs, the current one {} on {}",
                t.num_experts(),
                t.num_gpus(),
                start.num_experts(),
                start.num_gpus()
            )));
        }
    }
    check_memory(table.num_experts(), start.num_gpus(), slots_per_gpu)?;
    crate::cost::decode::check_compatible(table, start)?;
    if let Some((g, n)) = start
        .slots_used()
        .iter()
        .enumerate()
        .find(|(_, &n)| n != slots_per_gpu)
    {
        return Err(MoeError::value(format!(
            "the current placement has {n} experts on GPU {g}, not slots_per_gpu = {slots_per_gpu}"
        )));
    }
    if !(round_us.is_finite() && round_us >= 0.0) {
        return Err(MoeError::value(format!(
            "round_us = {round_us}: must be finite and non-negative"
        )));
    }
    limits.copy_price.check()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::topology::expected_time;

    fn limits(max_moves: Option<usize>) -> SearchLimits<'static> {
        SearchLimits {
            max_moves,
            copy_price: CopyPrice::default(),
            max_evaluations: 3_000,
            seed: 3,
            target: None,
            num_groups: None,
        }
    }

    #[test]
    fn search_lowers_the_time_with_communication() {
        let t = crate::testing::skewed_table(9, 3000, 32, 4, 6, 58);
        let topo = Topology::h800_normal();
        let topo = Topology {
            gpus_per_node: 4,
            ..topo
        };
        let start = crate::search::decode::optimize(&t, 16, 3, "round_robin", 0).unwrap();
        let before = expected_time(&t, &start, &topo, 47.0).unwrap();
        let (p, moved) = improve(&t, &start, 3, &topo, 47.0, limits(None)).unwrap();
        let after = expected_time(&t, &p, &topo, 47.0).unwrap();
        assert!(after < before, "{after} vs {before}");
        assert_eq!(moved, copies(&start, &p));
        assert_eq!(p.slots_used(), vec![3; 16]);
    }

    #[test]
    fn max_moves_bounds_the_replicas_copied() {
        let t = crate::testing::skewed_table(4, 3000, 32, 4, 6, 58);
        let topo = Topology::free(1);
        let start = crate::search::decode::optimize(&t, 8, 5, "contiguous", 0).unwrap();
        let before = expected_time(&t, &start, &topo, 1.0).unwrap();
        let mut last = before;
        for m in [0, 2, 6, 20] {
            let (p, moved) = improve(&t, &start, 5, &topo, 1.0, limits(Some(m))).unwrap();
            assert!(moved <= m && copies(&start, &p) == moved, "{m}: {moved}");
            let cost = expected_time(&t, &p, &topo, 1.0).unwrap();
            assert!(cost <= before + 1e-12);
            if m == 0 {
                assert_eq!(p, start);
            }
            last = last.min(cost);
        }
        assert!(last < before);
    }

    #[test]
    fn the_walk_records_copies_and_times_from_the_start() {
        let t = crate::testing::skewed_table(4, 3000, 32, 4, 6, 58);
        let topo = Topology {
            gpus_per_node: 4,
            ..Topology::h800_normal()
        };
        let start = crate::search::decode::optimize(&t, 8, 5, "contiguous", 0).unwrap();
        let w = improve_walk(&t, &start, 5, &topo, 47.0, limits(Some(12))).unwrap();
        let time = |p: &Placement| expected_time(&t, p, &topo, 47.0).unwrap();
        assert!(w.path.len() > 2, "{:?}", w.path);
        assert_eq!(w.path[0], (0, time(&start)));
        let &(moved, last) = w.path.last().unwrap();
        assert_eq!(moved, w.moved);
        assert!((last - time(&w.placement)).abs() < 1e-9 * last);
        for pair in w.path.windows(2) {
            assert!(pair[1].1 < pair[0].1 && pair[1].0 <= 12, "{pair:?}");
        }
    }

    /// A copy's price stops the walk: at a huge one nothing moves; at a moderate one
    /// every step lowers time + price x copies (a step that gives copies back may
    /// lose time, by less than their price), the budget still holds, and copies are
    /// fewer than without a price.
    #[test]
    fn a_copy_price_stops_the_walk() {
        let t = crate::testing::skewed_table(4, 3000, 32, 4, 6, 58);
        let topo = Topology {
            gpus_per_node: 4,
            ..Topology::h800_normal()
        };
        let start = crate::search::decode::optimize(&t, 8, 5, "contiguous", 0).unwrap();
        let fresh = crate::search::decode::optimize(&t, 8, 5, "greedy", 0).unwrap();
        let priced = |price: f64, max_moves: Option<usize>| SearchLimits {
            copy_price: CopyPrice::flat(price),
            target: Some(&fresh),
            ..limits(max_moves)
        };
        let huge = improve_walk(&t, &start, 5, &topo, 47.0, priced(1e6, None)).unwrap();
        assert_eq!((huge.placement == start, huge.moved), (true, 0));
        assert_eq!(huge.path.len(), 1);
        let free = improve_walk(&t, &start, 5, &topo, 47.0, priced(0.0, None)).unwrap();
        let gain_per_copy = (free.path[0].1 - free.path.last().unwrap().1) / free.moved as f64;
        let price = gain_per_copy / 2.0;
        for max_moves in [None, Some(6)] {
            let w = improve_walk(&t, &start, 5, &topo, 47.0, priced(price, max_moves)).unwrap();
            assert!(
                w.moved > 0 && w.moved < free.moved,
                "{} vs {}",
                w.moved,
                free.moved
            );
            assert!(w.moved <= max_moves.unwrap_or(usize::MAX));
            let net = |(c, x): (usize, f64)| x + price * c as f64;
            for pair in w.path.windows(2) {
                assert!(net(pair[1]) < net(pair[0]), "{pair:?}");
                assert!(pair[1].0 <= max_moves.unwrap_or(usize::MAX));
            }
            let time = expected_time(&t, &w.placement, &topo, 47.0).unwrap();
            assert!((time - w.path.last().unwrap().1).abs() < 1e-9 * time);
        }
    }

    /// With a price per link, copies inside a node free and copies across nodes dear,
    /// every copy the walk makes is of an expert the start holds on the same node.
    #[test]
    fn copies_across_nodes_are_priced_apart() {
        let t = crate::testing::skewed_table(4, 3000, 32, 4, 6, 58);
        let topo = Topology {
            gpus_per_node: 4,
            ..Topology::h800_normal()
        };
        let start = crate::search::decode::optimize(&t, 8, 5, "round_robin", 0).unwrap();
        let l = SearchLimits {
            copy_price: CopyPrice {
                in_node: 0.0,
                across_nodes: 1e6,
            },
            ..limits(None)
        };
        let w = improve_walk(&t, &start, 5, &topo, 47.0, l).unwrap();
        assert!(w.moved > 0, "{:?}", w.path);
        for e in 0..32 {
            for &g in w.placement.gpus_of(e) {
                let g = g as usize;
                if !start.holds(e, g) {
                    let same = start.gpus_of(e).iter().any(|&h| h as usize / 4 == g / 4);
                    assert!(same, "expert {e} copied to GPU {g} from another node");
                }
            }
        }
        let bad = SearchLimits {
            copy_price: CopyPrice::flat(f64::NAN),
            ..limits(None)
        };
        let msg = improve_walk(&t, &start, 5, &topo, 47.0, bad)
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("copy price in_node = NaN"), "{msg}");
    }

    #[test]
    fn moves_toward_a_target_reach_it_when_allowed() {
        let t = crate::testing::skewed_table(4, 3000, 32, 4, 6, 58);
        let topo = Topology::free(1);
        let start = crate::search::decode::optimize(&t, 8, 5, "contiguous", 0).unwrap();
        let fresh = crate::search::decode::optimize(&t, 8, 5, "greedy", 0).unwrap();
        let l = SearchLimits {
            target: Some(&fresh),
            ..limits(Some(10))
        };
        let (p, moved) = improve(&t, &start, 5, &topo, 1.0, l).unwrap();
        assert!(moved <= 10);
        let (q, _) = improve(&t, &start, 5, &topo, 1.0, limits(Some(10))).unwrap();
        let cost = |x: &Placement| expected_time(&t, x, &topo, 1.0).unwrap();
        assert!(cost(&p) < cost(&start) && cost(&q) < cost(&start));
    }

    #[test]
    fn gpus_trade_nodes_so_that_partners_share_one() {
        // Tokens pick {0, 1} or {2, 3}; each pair starts split over the two nodes.
        let ids: Vec<i64> = (0..200)
            .flat_map(|i| if i % 2 == 0 { [0, 1] } else { [2, 3] })
            .collect();
        let t = SubsetTable::from_topk(&ids, 2, 4, None).unwrap();
        let start = Placement::from_lists(&[vec![0], vec![2], vec![1], vec![3]], 4).unwrap();
        let topo = Topology {
            gpus_per_node: 2,
            ..Topology::h800_normal()
        };
        let one_node = 47.0 + topo.token_comm_us(2, 1, 4);
        assert!(expected_time(&t, &start, &topo, 47.0).unwrap() > one_node + 0.1);
        let (p, moved) = improve(&t, &start, 1, &topo, 47.0, limits(None)).unwrap();
        assert!((expected_time(&t, &p, &topo, 47.0).unwrap() - one_node).abs() < 1e-9);
        // Same rounds (one per token), every expert on a new GPU or not.
        assert_eq!(
            crate::cost::decode::subset_costs(&t, &p).unwrap(),
            vec![1, 1]
        );
        assert_eq!(moved, copies(&start, &p));
    }

    #[test]
    fn grouped_search_keeps_every_group_on_its_node_and_never_loses() {
        use crate::search::node::batch::group_nodes;
        for seed in 0..2u64 {
            let t = crate::testing::skewed_table(seed, 600, 64, 6, 8, 58);
            let topo = Topology {
                gpus_per_node: 4,
                ..Topology::h800_normal()
            };
            let source = crate::search::decode::optimize(&t, 16, 6, "round_robin", 0).unwrap();
            let start = crate::search::groups::regroup(&t, &source, 6, &topo, 47.0, 8).unwrap();
            let nodes = group_nodes(&start, 8, 4).unwrap();
            let l = SearchLimits {
                num_groups: Some(8),
                seed,
                max_evaluations: 800,
                ..limits(None)
            };
            let (p, _) = improve(&t, &start, 6, &topo, 47.0, l).unwrap();
            assert_eq!(group_nodes(&p, 8, 4).unwrap(), nodes);
            let time = |x: &Placement| expected_time(&t, x, &topo, 47.0).unwrap();
            assert!(time(&p) < time(&start), "{} vs {}", time(&p), time(&start));
            assert_eq!(p.slots_used(), vec![6; 16]);
        }
        // A start that splits a group is refused.
        let t = crate::testing::skewed_table(1, 300, 64, 6, 8, 58);
        let start = crate::search::decode::optimize(&t, 16, 6, "round_robin", 0).unwrap();
        let l = SearchLimits {
            num_groups: Some(8),
            ..limits(None)
        };
        let msg = improve(&t, &start, 6, &Topology::free(4), 1.0, l)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("the start placement: expert"), "{msg}");
    }

    #[test]
    fn rejects_a_start_that_does_not_fill_the_slots() {
        let t = crate::testing::skewed_table(4, 100, 8, 2, 3, 60);
        let start = crate::search::decode::optimize(&t, 4, 2, "contiguous", 0).unwrap();
        let msg = improve(&t, &start, 3, &Topology::free(1), 1.0, limits(None))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not slots_per_gpu = 3"), "{msg}");
    }
}
