//! Re-planning with few moves: from the placement being served (`current`),
//! a placement for a new table that copies at most `max_copies` expert replicas.
//!
//! What counts: a *copy* is a replica of the result that `current` does not hold on that
//! GPU, i.e. one expert's weights sent to one GPU. Dropping a replica is free. So giving a
//! slot to another expert (replace) or moving a replica to another GPU (relocate) is one
//! copy, a swap of two experts between two GPUs is two, and a move that puts back a
//! replica `current` holds there gives a copy back. `copies(current, result)` counts them;
//! the budget is per layer.
//!
//! How: the decode cost does not depend on the GPUs' labels, so the full re-plan (`target`)
//! is first relabelled to share the most replicas with `current` (an assignment problem
//! solved exactly, `relabel`; with nodes, a permutation of nodes and of GPUs inside each).
//! If it is within the budget, it is a candidate answer as it is. Then a greedy walks from
//! `current`: each step evaluates exactly (on the rows of the experts a move changes) the
//! moves toward the relabelled target (its swaps: those the greedy's co-activation score
//! ranks best), the swaps that lower co-activation on a GPU and the replica reassignments
//! of largest exact gain, and makes the improving move of largest
//! gain per copy that fits the budget (a move that copies nothing first). When none fits,
//! an exchange pairs a move that gives copies back (toward `current`) with one that spends
//! them, if the pair lowers the cost (on the bench it adds about one point). With a
//! `copy_cost` (the price of one copy in expert rounds per token), a move is made only if
//! its gain exceeds the price of its copies. The better of the two answers is returned,
//! with the walk's cost after each move (the gain against copies).

use rayon::prelude::*;

use crate::cost::matching::RowScratch;
use crate::model::layout::{Layout, Move};
use crate::model::placement::Placement;
use crate::model::table::SubsetTable;
use crate::search::kernel::gains::GainTable;
use crate::search::kernel::problem::Problem;
use crate::search::kernel::state::{total_cost, State};
use crate::util::error::{MoeError, Result};

/// Destination GPUs tried per replica, and candidates kept, for the co-activation swaps.
const SWAP_TARGETS: usize = 6;
const SWAP_CANDIDATES: usize = 256;
/// Swaps toward the target evaluated per step, the best by the same cheap score: of
/// about 2,300 on a DeepSeek-V3-size layer, where exact deltas were 85% of the walk.
const TOWARD_SWAPS: usize = 384;
/// New experts tried per replica slot, and candidates kept, for reassignments.
const EXPERTS_PER_SLOT: usize = 4;
const REPLACE_CANDIDATES: usize = 256;
/// Moves that give copies back, and moves that spend them, paired in an exchange.
const EXCHANGE_BACK: usize = 6;
const EXCHANGE_SPEND: usize = 48;

/// What the re-plan may copy.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplanLimits<'t> {
    /// Most copies (replicas of the result that `current` lacks on their GPU); None: any.
    pub max_copies: Option<usize>,
    /// Price of one copy in expert rounds per token (the unit of the expected cost): a
    /// move is made only if it lowers the expected cost by more than its copies' price.
    pub copy_cost: f64,
    /// The full re-plan the walk moves toward (any GPU labels).
    pub target: Option<&'t Placement>,
}

/// A re-planned placement.
#[derive(Clone, Debug)]
pub struct Replan {
    pub placement: Placement,
    /// Replicas of `placement` that `current` lacks on their GPU.
    pub copies: usize,
    /// Expected cost (rounds) of `placement`.
    pub cost: f64,
    /// (copies, expected cost) of the walk: `current` first, then after each move.
    pub path: Vec<(usize, f64)>,
    /// The relabelled target, its copies and its expected cost, when a target was given.
    pub target: Option<(Placement, usize, f64)>,
}

/// Replicas of `to` that `from` lacks on their GPU: the copies that turn `from` into `to`.
pub fn copies(from: &Placement, to: &Placement) -> usize {
    (0..to.num_experts())
        .map(|e| {
            to.gpus_of(e)
                .iter()
                .filter(|&&g| !from.holds(e, g as usize))
                .count()
        })
        .sum()
}

/// Copies a move adds (negative: it puts back replicas `current` holds).
pub(crate) fn move_copies(current: &Placement, mv: Move) -> isize {
    let mut d = 0;
    for c in mv.changes().iter() {
        let e = c.expert as usize;
        if let Some(g) = c.remove {
            d -= isize::from(!current.holds(e, g as usize));
        }
        if let Some(g) = c.add {
            d += isize::from(!current.holds(e, g as usize));
        }
    }
    d
}

/// The column of each row in an assignment of least total cost (square `n` x `n`
/// matrix, row-major): the Hungarian method with potentials, O(n^3).
fn assignment(cost: &[i64], n: usize) -> Vec<usize> {
    let inf = i64::MAX / 4;
    let (mut u, mut v) = (vec![0i64; n + 1], vec![0i64; n + 1]);
    // row_of[j]: the row (1-based) holding column j; column 0 is the free root.
    let mut row_of = vec![0usize; n + 1];
    let mut way = vec![0usize; n + 1];
    for i in 1..=n {
        row_of[0] = i;
        let mut j0 = 0;
        let mut min_to = vec![inf; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = row_of[j0];
            let (mut delta, mut j1) = (inf, 0);
            for j in 1..=n {
                if !used[j] {
                    let reduced = cost[(i0 - 1) * n + j - 1] - u[i0] - v[j];
                    if reduced < min_to[j] {
                        min_to[j] = reduced;
                        way[j] = j0;
                    }
                    if min_to[j] < delta {
                        delta = min_to[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[row_of[j]] += delta;
                    v[j] -= delta;
                } else {
                    min_to[j] -= delta;
                }
            }
            j0 = j1;
            if row_of[j0] == 0 {
                break;
            }
        }
        while j0 != 0 {
            let j1 = way[j0];
            row_of[j0] = row_of[j1];
            j0 = j1;
        }
    }
    let mut column = vec![0; n];
    for j in 1..=n {
        column[row_of[j] - 1] = j - 1;
    }
    column
}

/// `target` with its GPUs renamed so that it shares the most replicas with `current`
/// (fewest copies from `current`). With `gpus_per_node` > 1 only nodes and GPUs inside a
/// node are permuted (GPU g is on node g / gpus_per_node), so times with communication
/// are kept too. Exact: the best node pairing over the best GPU pairing of each pair.
pub fn relabel(current: &Placement, target: &Placement, gpus_per_node: usize) -> Result<Placement> {
    check_same_shape(current, target)?;
    let g = current.num_gpus();
    if gpus_per_node == 0 || g % gpus_per_node != 0 {
        return Err(MoeError::value(format!(
            "gpus_per_node = {gpus_per_node} must divide the {g} GPUs"
        )));
    }
    // shared[a * g + b]: experts of target's GPU a on current's GPU b.
    let mut shared = vec![0i64; g * g];
    for e in 0..current.num_experts() {
        for &a in target.gpus_of(e) {
            for &b in current.gpus_of(e) {
                shared[a as usize * g + b as usize] += 1;
            }
        }
    }
    let (n, nodes) = (gpus_per_node, g / gpus_per_node);
    // Best GPU pairing inside each (target node, current node) pair.
    let pairs: Vec<(i64, Vec<usize>)> = (0..nodes * nodes)
        .into_par_iter()
        .map(|ab| {
            let (a, b) = (ab / nodes, ab % nodes);
            let cost: Vec<i64> = (0..n * n)
                .map(|ij| -shared[(a * n + ij / n) * g + b * n + ij % n])
                .collect();
            let column = assignment(&cost, n);
            let value = column
                .iter()
                .enumerate()
                .map(|(i, &j)| cost[i * n + j])
                .sum();
            (value, column)
        })
        .collect();
    let node_cost: Vec<i64> = pairs.iter().map(|p| p.0).collect();
    let node_of = assignment(&node_cost, nodes);
    let mut gpu_of = vec![0usize; g];
    for (a, &b) in node_of.iter().enumerate() {
        for (i, &j) in pairs[a * nodes + b].1.iter().enumerate() {
            gpu_of[a * n + i] = b * n + j;
        }
    }
    let lists: Vec<Vec<usize>> = (0..target.num_experts())
        .map(|e| {
            let mut l: Vec<usize> = target
                .gpus_of(e)
                .iter()
                .map(|&x| gpu_of[x as usize])
                .collect();
            l.sort_unstable();
            l
        })
        .collect();
    Placement::from_lists(&lists, g)
}

fn check_same_shape(current: &Placement, other: &Placement) -> Result<()> {
    if (other.num_experts(), other.num_gpus()) != (current.num_experts(), current.num_gpus()) {
        return Err(MoeError::value(format!(
            "the target placement has {} experts on {} GPUs, the current one {} on {}",
            other.num_experts(),
            other.num_gpus(),
            current.num_experts(),
            current.num_gpus()
        )));
    }
    Ok(())
}

/// Checks that `current` fits the table and at most `slots` experts per GPU.
pub fn check_current(table: &SubsetTable, current: &Placement, slots: usize) -> Result<()> {
    crate::util::limits::check_memory(table.num_experts(), current.num_gpus(), slots)?;
    crate::cost::decode::check_compatible(table, current)?;
    if let Some((g, n)) = current
        .slots_used()
        .iter()
        .enumerate()
        .find(|(_, &n)| n > slots)
    {
        return Err(MoeError::value(format!(
            "the current placement has {n} experts on GPU {g}, more than slots_per_gpu = {slots}"
        )));
    }
    Ok(())
}

/// Moves that give a GPU an expert `target` has there, in place of one it does not want
/// there (replace, or swap with a replica of the new expert elsewhere), or into a free slot.
fn toward(layout: &Layout, target: &Layout, slots: usize) -> Vec<Move> {
    let mut moves = Vec::new();
    let t = target;
    for g in 0..layout.num_gpus() {
        let wanted: Vec<u16> = t
            .experts_on(g)
            .iter()
            .copied()
            .filter(|&e| !layout.holds(e as usize, g))
            .collect();
        let unwanted: Vec<u16> = layout
            .experts_on(g)
            .iter()
            .copied()
            .filter(|&e| !t.holds(e as usize, g))
            .collect();
        for &new in &wanted {
            if layout.used(g) < slots {
                moves.push(Move::Add {
                    expert: new,
                    gpu: g as u16,
                });
            }
            for &old in &unwanted {
                if layout.replicas(old as usize) >= 2 {
                    moves.push(Move::Replace {
                        old,
                        gpu: g as u16,
                        new,
                    });
                }
                for &h in layout.gpus_of(new as usize) {
                    if !layout.holds(old as usize, h as usize) {
                        moves.push(Move::Swap {
                            first: new,
                            from: h,
                            second: old,
                            to: g as u16,
                        });
                    }
                }
            }
        }
    }
    moves
}

/// The greedy's cheap score of swapping expert `i` (on GPU `a`) with `j` (on `b`): the
/// change of their co-activation with the GPUs' other experts; lower is better.
fn swap_score(state: &State, i: usize, a: usize, j: usize, b: usize) -> i64 {
    let pair = state.problem.coactivation.weight(i, j);
    state.conn(i, b) - state.conn(i, a) - 2 * pair + state.conn(j, a) - state.conn(j, b)
}

/// The moves a step evaluates exactly (module docs), without repeats.
fn candidates(
    state: &State,
    gains: &GainTable,
    target: Option<&Layout>,
    slots: usize,
) -> Vec<Move> {
    let layout = &state.layout;
    let mut moves: Vec<Move> = Vec::new();
    if let Some(t) = target {
        moves.extend(toward_candidates(state, t, slots));
    }
    moves.extend(swap_candidates(state));
    moves.extend(replace_candidates(state, gains, slots));
    moves.sort_unstable();
    moves.dedup();
    moves.retain(|&mv| layout.allows(mv, slots));
    moves
}

/// Toward the target (the relabelled full re-plan): every replacement, and the swaps the
/// greedy's cheap score ranks best.
fn toward_candidates(state: &State, target: &Layout, slots: usize) -> Vec<Move> {
    let layout = &state.layout;
    let mut moves: Vec<Move> = Vec::new();
    let (swaps, others): (Vec<Move>, Vec<Move>) = toward(layout, target, slots)
        .into_iter()
        .partition(|mv| matches!(mv, Move::Swap { .. }));
    moves.extend(others);
    let mut ranked: Vec<(i64, Move)> = swaps
        .into_iter()
        .map(|mv| {
            let Move::Swap {
                first,
                from,
                second,
                to,
            } = mv
            else {
                unreachable!("partitioned by kind")
            };
            let (i, j, a, b) = (first as usize, second as usize, from as usize, to as usize);
            (swap_score(state, i, a, j, b), mv)
        })
        .collect();
    let keep = TOWARD_SWAPS.min(ranked.len());
    if keep > 0 && keep < ranked.len() {
        ranked.select_nth_unstable(keep - 1);
    }
    moves.extend(ranked.into_iter().take(keep).map(|x| x.1));
    moves
}

/// Swaps that lower co-activation on a GPU (the greedy's cheap score), the best
/// `SWAP_CANDIDATES`.
fn swap_candidates(state: &State) -> Vec<Move> {
    let layout = &state.layout;
    let (num_experts, num_gpus) = (layout.num_experts(), layout.num_gpus());
    // Swaps that lower co-activation on a GPU (the greedy's cheap score).
    let mut swaps: Vec<(i64, Move)> = (0..num_experts)
        .into_par_iter()
        .flat_map_iter(|i| {
            let mut found = Vec::new();
            for &a in layout.gpus_of(i) {
                let here = state.conn(i, a as usize);
                let mut targets: Vec<(i64, u16)> = (0..num_gpus)
                    .filter(|&b| !layout.holds(i, b))
                    .map(|b| (state.conn(i, b) - here, b as u16))
                    .collect();
                let keep = SWAP_TARGETS.min(targets.len());
                if keep == 0 {
                    continue;
                }
                targets.select_nth_unstable(keep - 1);
                for &(_, b) in &targets[..keep] {
                    for &j in layout.experts_on(b as usize) {
                        if j as usize == i || layout.holds(j as usize, a as usize) {
                            continue;
                        }
                        let score = swap_score(state, i, a as usize, j as usize, b as usize);
                        found.push((
                            score,
                            Move::Swap {
                                first: i as u16,
                                from: a,
                                second: j,
                                to: b,
                            },
                        ));
                    }
                }
            }
            found
        })
        .collect();
    swaps.sort_unstable();
    swaps
        .into_iter()
        .take(SWAP_CANDIDATES)
        .map(|x| x.1)
        .collect()
}

/// A slot of a replicated expert (or a free slot) given to the expert of largest gain, the
/// best `REPLACE_CANDIDATES`.
fn replace_candidates(state: &State, gains: &GainTable, slots: usize) -> Vec<Move> {
    let layout = &state.layout;
    let (num_experts, num_gpus) = (layout.num_experts(), layout.num_gpus());
    // A slot of a replicated expert (or a free slot) given to the expert of largest gain.
    let mut replaces: Vec<(i64, Move)> = Vec::new();
    let best_new = |gpu: usize, old: Option<u16>, out: &mut Vec<(i64, Move)>| {
        let mut best: Vec<(i64, u16)> = (0..num_experts)
            .filter(|&new| !layout.holds(new, gpu) && gains.may_gain(new))
            .map(|new| (-gains.gain(new, gpu), new as u16))
            .filter(|x| x.0 < 0)
            .collect();
        best.sort_unstable();
        for (score, new) in best.into_iter().take(EXPERTS_PER_SLOT) {
            let mv = match old {
                Some(old) => Move::Replace {
                    old,
                    gpu: gpu as u16,
                    new,
                },
                None => Move::Add {
                    expert: new,
                    gpu: gpu as u16,
                },
            };
            out.push((score, mv));
        }
    };
    for old in 0..num_experts {
        if layout.replicas(old) >= 2 {
            for &gpu in layout.gpus_of(old) {
                best_new(gpu as usize, Some(old as u16), &mut replaces);
            }
        }
    }
    for gpu in 0..num_gpus {
        if layout.used(gpu) < slots {
            best_new(gpu, None, &mut replaces);
        }
    }
    replaces.sort_unstable();
    replaces
        .into_iter()
        .take(REPLACE_CANDIDATES)
        .map(|x| x.1)
        .collect()
}

/// When no move fits what is left of the budget (`left` copies): a move that gives copies
/// back (toward `home`, the current placement) made together with one of `spend` (moves
/// that did not fit: move, copies, delta), the pair of lowest exact delta that fits and
/// lowers the cost by more than its copies' price. Returns (back, forward, net copies).
fn exchange(
    state: &State,
    home: &Layout,
    current: &Placement,
    slots: usize,
    left: isize,
    price: f64,
    spend: &[(Move, isize, i64)],
) -> Option<(Move, Move, isize)> {
    let num_gpus = state.layout.num_gpus();
    let back: Vec<(Move, isize)> = toward(&state.layout, home, slots)
        .into_iter()
        .filter(|&mv| state.layout.allows(mv, slots))
        .map(|mv| (mv, move_copies(current, mv)))
        .filter(|&(_, c)| c < 0)
        .collect();
    let losses: Vec<i64> = back
        .par_iter()
        .map_init(
            || RowScratch::new(num_gpus),
            |s, &(mv, _)| state.move_delta(mv, s).0,
        )
        .collect();
    // The give-backs that lose least per copy returned.
    let mut ranked: Vec<(f64, Move, isize, i64)> = back
        .iter()
        .zip(&losses)
        .map(|(&(mv, c), &d)| (d as f64 / -c as f64, mv, c, d))
        .collect();
    ranked.sort_by(|a, b| {
        a.0.partial_cmp(&b.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.1.cmp(&b.1))
    });
    ranked.truncate(EXCHANGE_BACK);
    let pairs: Vec<(i64, Move, Move, isize)> = ranked
        .par_iter()
        .filter_map(|&(_, b, cb, db)| {
            let mut after = state.clone();
            after.apply(b);
            let mut scratch = RowScratch::new(num_gpus);
            let mut best: Option<(i64, Move, Move, isize)> = None;
            for &(f, cf, _) in spend {
                let net = cb + cf;
                if net > left || !after.layout.allows(f, slots) {
                    continue;
                }
                let d = db + after.move_delta(f, &mut scratch).0;
                let worth = d < 0 && (-d as f64) > price * net.max(0) as f64;
                if worth && best.is_none_or(|x| (d, b, f) < (x.0, x.1, x.2)) {
                    best = Some((d, b, f, net));
                }
            }
            best
        })
        .collect();
    pairs
        .into_iter()
        .min_by_key(|x| (x.0, x.1, x.2))
        .map(|(_, b, f, net)| (b, f, net))
}

/// `target` checked against `current` (same shape, at most `slots_per_gpu` experts per
/// GPU) and relabelled to `current`'s GPUs.
fn checked_target(current: &Placement, t: &Placement, slots_per_gpu: usize) -> Result<Placement> {
    check_same_shape(current, t)?;
    if let Some((g, n)) = t
        .slots_used()
        .iter()
        .enumerate()
        .find(|(_, &n)| n > slots_per_gpu)
    {
        return Err(MoeError::value(format!(
            "the target placement has {n} experts on GPU {g}, more than slots_per_gpu = {slots_per_gpu}"
        )));
    }
    relabel(current, t, 1)
}

/// The move a step makes (move, copies), of those that fit in the `budget` of copies with
/// `used` spent and gain more than their copies' `price`: moves that copy nothing first,
/// then the largest gain per copy; ties by the move.
fn best_move(
    moves: &[(Move, isize)],
    deltas: &[i64],
    (used, budget): (usize, usize),
    price: f64,
) -> Option<(Move, isize)> {
    moves
        .iter()
        .zip(deltas)
        .filter(|&(&(_, c), &d)| {
            let fits = c <= 0 || used + c as usize <= budget;
            fits && d < 0 && (-d as f64) > price * c.max(0) as f64
        })
        .map(|(&(mv, c), &d)| {
            let per_copy = if c <= 0 {
                d as f64
            } else {
                d as f64 / c as f64
            };
            (c > 0, per_copy, mv, c)
        })
        .min_by(|x, y| {
            (x.0, x.1)
                .partial_cmp(&(y.0, y.1))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(x.2.cmp(&y.2))
        })
        .map(|(_, _, mv, c)| (mv, c))
}

/// The moves an exchange may spend copies on (move, copies, delta): those that copy and
/// gain, the largest gain per copy first (ties by the move), at most `EXCHANGE_SPEND`.
fn exchange_spend(moves: &[(Move, isize)], deltas: &[i64]) -> Vec<(Move, isize, i64)> {
    let mut spend: Vec<(Move, isize, i64)> = moves
        .iter()
        .zip(deltas)
        .filter(|&(&(_, c), &d)| c > 0 && d < 0)
        .map(|(&(mv, c), &d)| (mv, c, d))
        .collect();
    spend.sort_by(|a, b| {
        (a.2 as f64 / a.1 as f64)
            .partial_cmp(&(b.2 as f64 / b.1 as f64))
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.0.cmp(&b.0))
    });
    spend.truncate(EXCHANGE_SPEND);
    spend
}

/// Re-plans `current` for `table` within `limits` (module docs). `current` may leave
/// slots free (up to `slots_per_gpu` per GPU); filling one is a copy.
pub fn replan(
    table: &SubsetTable,
    current: &Placement,
    slots_per_gpu: usize,
    limits: ReplanLimits<'_>,
) -> Result<Replan> {
    check_current(table, current, slots_per_gpu)?;
    if !(limits.copy_cost.is_finite() && limits.copy_cost >= 0.0) {
        return Err(MoeError::value(format!(
            "copy_cost = {}: must be finite and non-negative",
            limits.copy_cost
        )));
    }
    let target = limits
        .target
        .map(|t| checked_target(current, t, slots_per_gpu))
        .transpose()?;
    let num_gpus = current.num_gpus();
    let problem = Problem::new(table, num_gpus);
    let scale = problem.weights.iter().sum::<i64>().max(1) as f64;
    // A fixed-point total of the weights as the table's expected cost (rounds).
    let expected = |total: i64| total as f64 / scale;
    let price = limits.copy_cost * scale;
    let budget = limits.max_copies.unwrap_or(usize::MAX);
    let mut state = State::new(&problem, Layout::from_placement(current));
    let target_layout = target.as_ref().map(Layout::from_placement);
    let home = Layout::from_placement(current);
    let mut used = 0usize;
    let mut path = vec![(0, expected(state.total))];
    while !crate::util::cancel::requested() {
        let gains = GainTable::new(&state);
        // Moves beyond what is left of the budget are kept for exchanges.
        let moves: Vec<(Move, isize)> =
            candidates(&state, &gains, target_layout.as_ref(), slots_per_gpu)
                .into_iter()
                .map(|mv| (mv, move_copies(current, mv)))
                .filter(|&(_, c)| c <= 0 || c as usize <= budget)
                .collect();
        let deltas: Vec<i64> = moves
            .par_iter()
            .map_init(
                || RowScratch::new(num_gpus),
                |s, &(mv, _)| state.move_delta(mv, s).0,
            )
            .collect();
        if let Some((mv, c)) = best_move(&moves, &deltas, (used, budget), price) {
            state.apply(mv);
            used = (used as isize + c) as usize;
            path.push((used, expected(state.total)));
            continue;
        }
        if used == 0 {
            break;
        }
        let left = isize::try_from(budget - used).unwrap_or(isize::MAX);
        let spend = exchange_spend(&moves, &deltas);
        let Some((back, forward, net)) =
            exchange(&state, &home, current, slots_per_gpu, left, price, &spend)
        else {
            break;
        };
        state.apply(back);
        state.apply(forward);
        used = (used as isize + net) as usize;
        path.push((used, expected(state.total)));
    }
    let walked = state.layout.to_placement()?;
    let mut answer = (walked, used, expected(state.total));
    let target = target.map(|t| {
        let copies = copies(current, &t);
        let cost = expected(total_cost(&problem, &Layout::from_placement(&t)));
        (t, copies, cost)
    });
    if let Some((t, c, cost)) = &target {
        let net = |cost: f64, copies: usize| cost + limits.copy_cost * copies as f64;
        if *c <= budget && net(*cost, *c) < net(answer.2, answer.1) {
            answer = (t.clone(), *c, *cost);
        }
    }
    Ok(Replan {
        placement: answer.0,
        copies: answer.1,
        cost: answer.2,
        path,
        target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::decode::expected_cost;
    use crate::search::decode::optimize;
    use crate::testing::skewed_table;

    fn limits(max_copies: Option<usize>, target: Option<&Placement>) -> ReplanLimits<'_> {
        ReplanLimits {
            max_copies,
            copy_cost: 0.0,
            target,
        }
    }

    #[test]
    fn assignment_is_optimal_on_small_matrices() {
        let mut rng = crate::util::rng::SplitMix64::new(5);
        for n in 1..=6 {
            for _ in 0..20 {
                let cost: Vec<i64> = (0..n * n).map(|_| rng.below(20) as i64 - 10).collect();
                let got = assignment(&cost, n);
                let value = |p: &[usize]| -> i64 {
                    p.iter().enumerate().map(|(i, &j)| cost[i * n + j]).sum()
                };
                let mut perm: Vec<usize> = (0..n).collect();
                let mut best = i64::MAX;
                permutations(&mut perm, 0, &mut |p| best = best.min(value(p)));
                let mut sorted = got.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..n).collect::<Vec<_>>());
                assert_eq!(value(&got), best, "{cost:?}");
            }
        }
    }

    fn permutations(p: &mut Vec<usize>, i: usize, f: &mut impl FnMut(&[usize])) {
        if i == p.len() {
            f(p);
            return;
        }
        for j in i..p.len() {
            p.swap(i, j);
            permutations(p, i + 1, f);
            p.swap(i, j);
        }
    }

    #[test]
    fn relabelling_a_permuted_placement_needs_no_copy() {
        let t = skewed_table(2, 2000, 24, 4, 5, 58);
        let p = optimize(&t, 8, 4, "greedy", 0).unwrap();
        // GPUs renamed: nodes of 2 permuted, and the GPUs inside one of them swapped (not
        // a renaming of nodes of 4).
        let rename = [6, 7, 3, 2, 4, 5, 0, 1];
        let lists: Vec<Vec<usize>> = p
            .to_lists()
            .into_iter()
            .map(|l| l.into_iter().map(|g| rename[g]).collect())
            .collect();
        let q = Placement::from_lists(&lists, 8).unwrap();
        assert!(copies(&p, &q) > 0);
        for gpn in [1, 2, 8] {
            let r = relabel(&p, &q, gpn).unwrap();
            assert_eq!(copies(&p, &r), 0, "{gpn}");
            assert_eq!(r, p);
        }
        // Nodes of 4: GPUs 0 and 1 must stay together, so some copies remain, but fewer.
        let r = relabel(&p, &q, 4).unwrap();
        assert!(copies(&p, &r) <= copies(&p, &q));
        // Only nodes and GPUs inside them were renamed: the experts of each node agree.
        let by_node = |x: &Placement| {
            let mut nodes = vec![Vec::new(); 2];
            for (e, gpus) in x.to_lists().into_iter().enumerate() {
                for g in gpus {
                    nodes[g / 4].push(e);
                }
            }
            nodes.iter_mut().for_each(|n| n.sort_unstable());
            nodes.sort();
            nodes
        };
        assert_eq!(by_node(&r), by_node(&q));
        assert!(relabel(&p, &q, 3).is_err());
    }

    #[test]
    fn the_walk_stays_within_the_budget_and_never_gets_worse() {
        let before = skewed_table(4, 3000, 32, 4, 6, 58);
        let after = skewed_table(9, 3000, 32, 4, 6, 58);
        let served = optimize(&before, 8, 5, "greedy", 0).unwrap();
        let fresh = optimize(&after, 8, 5, "greedy", 0).unwrap();
        let stale = expected_cost(&after, &served).unwrap();
        let mut last = stale;
        for m in [0, 1, 2, 4, 8, 40] {
            for target in [None, Some(&fresh)] {
                let r = replan(&after, &served, 5, limits(Some(m), target)).unwrap();
                assert!(r.copies <= m, "{m}: {}", r.copies);
                assert_eq!(copies(&served, &r.placement), r.copies);
                assert_eq!(r.placement.slots_used(), vec![5; 8]);
                let cost = expected_cost(&after, &r.placement).unwrap();
                assert!((cost - r.cost).abs() < 1e-9 && cost <= stale + 1e-12);
                assert!(r.path.windows(2).all(|w| w[1].1 < w[0].1 && w[1].0 <= m));
                if m == 0 {
                    assert_eq!(r.placement, served);
                }
                if target.is_some() {
                    last = cost;
                }
            }
        }
        // Enough copies: at least as good as the full re-plan.
        assert!(last <= expected_cost(&after, &fresh).unwrap() + 1e-12);
    }

    #[test]
    fn a_copy_price_stops_the_walk() {
        let before = skewed_table(4, 3000, 32, 4, 6, 58);
        let after = skewed_table(9, 3000, 32, 4, 6, 58);
        let served = optimize(&before, 8, 5, "greedy", 0).unwrap();
        let free = replan(&after, &served, 5, limits(None, None)).unwrap();
        let priced = replan(
            &after,
            &served,
            5,
            ReplanLimits {
                copy_cost: 0.01,
                ..limits(None, None)
            },
        )
        .unwrap();
        assert!(priced.copies < free.copies);
        let steps = priced.path.windows(2);
        for w in steps {
            let gain = w[0].1 - w[1].1;
            assert!(gain > 0.01 * (w[1].0 as f64 - w[0].0 as f64) - 1e-12);
        }
        let huge = ReplanLimits {
            copy_cost: 1e9,
            ..limits(None, None)
        };
        assert_eq!(replan(&after, &served, 5, huge).unwrap().copies, 0);
    }

    #[test]
    fn bad_inputs_are_refused() {
        let t = skewed_table(4, 100, 8, 2, 3, 60);
        let p = optimize(&t, 4, 3, "contiguous", 0).unwrap();
        let other = optimize(&t, 2, 5, "contiguous", 0).unwrap();
        let msg = |r: Result<Replan>| r.unwrap_err().to_string();
        assert!(msg(replan(&t, &p, 2, limits(None, None))).contains("more than slots_per_gpu"));
        assert!(msg(replan(&t, &p, 3, limits(None, Some(&other)))).contains("target placement"));
        let bad = ReplanLimits {
            copy_cost: -1.0,
            ..limits(None, None)
        };
        assert!(msg(replan(&t, &p, 3, bad)).contains("copy_cost"));
    }
}
