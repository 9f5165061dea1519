//! The one mutable placement (`Layout`) and the one vocabulary of moves on it, shared by
//! the decode searches (`crate::search::decode`) and the batch-aware search
//! (`crate::search::batch`). A `Move` is a change of replicas that keeps every expert
//! held; `Change`, one expert's part of a move, is what the decode search overlays on the
//! layout to score a move exactly before making it. `Placement` is the checked, frozen
//! form the API returns.

use crate::cost::matching::{cost_from_masks, RowScratch};
use crate::model::placement::{Placement, Replicas};
use crate::util::error::Result;
use crate::util::limits::MAX_K;

/// One expert's part of a move: drop GPU `remove`, gain GPU `add`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub expert: u16,
    pub remove: Option<u16>,
    pub add: Option<u16>,
}

/// A change of replicas. The order of the variants and fields is the order the decode
/// search breaks ties in (`Ord`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Move {
    /// Replica `first` moves from GPU `from` to `to` and replica `second` from `to` to
    /// `from`: every GPU keeps its number of experts.
    Swap {
        first: u16,
        from: u16,
        second: u16,
        to: u16,
    },
    /// The replica of `old` on `gpu` becomes a replica of `new` (`old` keeps another).
    Replace { old: u16, gpu: u16, new: u16 },
    /// The replica of `expert` on GPU `from` moves to GPU `to`.
    Relocate { expert: u16, from: u16, to: u16 },
    /// A new replica of `expert` on `gpu`.
    Add { expert: u16, gpu: u16 },
}

impl Move {
    /// The swap of expert `x`'s replica on GPU `gx` with expert `y`'s on GPU `gy`, written
    /// with the lower expert first, so that a swap found from either side is one move.
    pub fn swap(x: u16, gx: u16, y: u16, gy: u16) -> Move {
        if x < y {
            Move::Swap {
                first: x,
                from: gx,
                second: y,
                to: gy,
            }
        } else {
            Move::Swap {
                first: y,
                from: gy,
                second: x,
                to: gx,
            }
        }
    }

    /// The move as changes of distinct experts (one or two).
    pub fn changes(&self) -> Changes {
        let one = |expert, remove, add| Change {
            expert,
            remove,
            add,
        };
        match *self {
            Move::Swap {
                first,
                from,
                second,
                to,
            } => Changes::two(
                one(first, Some(from), Some(to)),
                one(second, Some(to), Some(from)),
            ),
            Move::Replace { old, gpu, new } => {
                Changes::two(one(old, Some(gpu), None), one(new, None, Some(gpu)))
            }
            Move::Relocate { expert, from, to } => Changes::one(one(expert, Some(from), Some(to))),
            Move::Add { expert, gpu } => Changes::one(one(expert, None, Some(gpu))),
        }
    }

    /// The experts whose replicas change.
    pub fn experts(&self) -> impl Iterator<Item = u16> {
        let changes = self.changes();
        (0..changes.len).map(move |i| changes.list[i].expert)
    }
}

/// The changes of one move, without allocating.
#[derive(Clone, Copy, Debug)]
pub struct Changes {
    list: [Change; 2],
    len: usize,
}

impl Changes {
    fn one(a: Change) -> Self {
        Changes {
            list: [a, a],
            len: 1,
        }
    }
    fn two(a: Change, b: Change) -> Self {
        Changes {
            list: [a, b],
            len: 2,
        }
    }
}

impl std::ops::Deref for Changes {
    type Target = [Change];
    fn deref(&self) -> &[Change] {
        &self.list[..self.len]
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    num_gpus: usize,
    /// GPUs of each expert, ascending.
    gpus: Vec<Vec<u16>>,
    /// Experts of each GPU, ascending.
    experts: Vec<Vec<u16>>,
    /// GPU mask per expert when num_gpus <= 64.
    masks: Vec<u64>,
}

impl Layout {
    pub fn new(num_experts: usize, num_gpus: usize) -> Self {
        Layout {
            num_gpus,
            gpus: vec![Vec::new(); num_experts],
            experts: vec![Vec::new(); num_gpus],
            masks: if num_gpus <= 64 {
                vec![0; num_experts]
            } else {
                Vec::new()
            },
        }
    }

    /// The mutable copy of a placement.
    pub fn from_placement(placement: &Placement) -> Self {
        let mut layout = Layout::new(placement.num_experts(), placement.num_gpus());
        for e in 0..placement.num_experts() {
            for &g in placement.gpus_of(e) {
                layout.add(e, g as usize);
            }
        }
        layout
    }

    pub fn num_experts(&self) -> usize {
        self.gpus.len()
    }
    pub fn num_gpus(&self) -> usize {
        self.num_gpus
    }
    pub fn gpus_of(&self, expert: usize) -> &[u16] {
        &self.gpus[expert]
    }
    pub fn experts_on(&self, gpu: usize) -> &[u16] {
        &self.experts[gpu]
    }
    pub fn used(&self, gpu: usize) -> usize {
        self.experts[gpu].len()
    }
    pub fn replicas(&self, expert: usize) -> usize {
        self.gpus[expert].len()
    }
    pub fn holds(&self, expert: usize, gpu: usize) -> bool {
        self.gpus[expert].binary_search(&(gpu as u16)).is_ok()
    }

    pub fn add(&mut self, expert: usize, gpu: usize) {
        let list = &mut self.gpus[expert];
        let Err(pos) = list.binary_search(&(gpu as u16)) else {
            debug_assert!(false, "expert {expert} added twice to GPU {gpu}");
            return;
        };
        list.insert(pos, gpu as u16);
        let on = &mut self.experts[gpu];
        let pos = on.binary_search(&(expert as u16)).unwrap_or_else(|p| p);
        on.insert(pos, expert as u16);
        if !self.masks.is_empty() {
            self.masks[expert] |= 1 << gpu;
        }
    }

    pub fn remove(&mut self, expert: usize, gpu: usize) {
        let list = &mut self.gpus[expert];
        if let Ok(pos) = list.binary_search(&(gpu as u16)) {
            list.remove(pos);
        }
        let on = &mut self.experts[gpu];
        if let Ok(pos) = on.binary_search(&(expert as u16)) {
            on.remove(pos);
        }
        if !self.masks.is_empty() {
            self.masks[expert] &= !(1 << gpu);
        }
    }

    /// Whether `mv` can be made now within `slots` experts per GPU: it moves replicas
    /// that exist, never puts an expert twice on a GPU, nor takes an expert's last replica.
    pub fn allows(&self, mv: Move, slots: usize) -> bool {
        let (e, g) = (|x: u16| x as usize, |x: u16| x as usize);
        match mv {
            Move::Swap {
                first,
                from,
                second,
                to,
            } => {
                first != second
                    && from != to
                    && self.holds(e(first), g(from))
                    && self.holds(e(second), g(to))
                    && !self.holds(e(first), g(to))
                    && !self.holds(e(second), g(from))
            }
            Move::Replace { old, gpu, new } => {
                old != new
                    && self.holds(e(old), g(gpu))
                    && self.replicas(e(old)) >= 2
                    && !self.holds(e(new), g(gpu))
            }
            Move::Relocate { expert, from, to } => {
                self.holds(e(expert), g(from))
                    && !self.holds(e(expert), g(to))
                    && self.used(g(to)) < slots
            }
            Move::Add { expert, gpu } => {
                !self.holds(e(expert), g(gpu)) && self.used(g(gpu)) < slots
            }
        }
    }

    /// Makes a move (that `allows` accepts).
    pub fn apply(&mut self, mv: Move) {
        for c in mv.changes().iter() {
            self.change(c);
        }
    }

    /// Takes back a move just made.
    pub fn undo(&mut self, mv: Move) {
        for c in mv.changes().iter() {
            self.change(&Change {
                expert: c.expert,
                remove: c.add,
                add: c.remove,
            });
        }
    }

    /// Makes one expert's change.
    pub fn change(&mut self, c: &Change) {
        if let Some(g) = c.remove {
            self.remove(c.expert as usize, g as usize);
        }
        if let Some(g) = c.add {
            self.add(c.expert as usize, g as usize);
        }
    }

    pub fn to_placement(&self) -> Result<Placement> {
        let lists: Vec<Vec<usize>> = self
            .gpus
            .iter()
            .map(|l| l.iter().map(|&g| g as usize).collect())
            .collect();
        Placement::from_lists(&lists, self.num_gpus)
    }

    /// The GPUs of `expert` after `changes`, for the slow path.
    fn gpus_after(&self, expert: u16, changes: &[Change]) -> Vec<u16> {
        let mut list = self.gpus[expert as usize].clone();
        if let Some(c) = changes.iter().find(|c| c.expert == expert) {
            list.retain(|&g| Some(g) != c.remove);
            list.extend(c.add);
        }
        list
    }

    /// The row's GPU sets after `changes` as masks. Bits are GPU ids when G <= 64, else
    /// bit b stands for GPU `scratch.local.gpus[b]`. False if the row spans over 64 GPUs.
    pub fn row_masks(
        &self,
        row: &[u16],
        changes: &[Change],
        scratch: &mut RowScratch,
        out: &mut [u64],
    ) -> bool {
        if !self.masks.is_empty() {
            for (o, &e) in out.iter_mut().zip(row) {
                let mut m = self.masks[e as usize];
                for c in changes.iter().filter(|c| c.expert == e) {
                    if let Some(g) = c.remove {
                        m &= !(1u64 << g);
                    }
                    if let Some(g) = c.add {
                        m |= 1u64 << g;
                    }
                }
                *o = m;
            }
            return true;
        }
        scratch.local.clear();
        let mut fits = true;
        for (o, &e) in out.iter_mut().zip(row) {
            let change = changes.iter().find(|c| c.expert == e);
            let removed = change.and_then(|c| c.remove);
            let added = change.and_then(|c| c.add);
            let mut m = 0u64;
            for &g in self.gpus[e as usize]
                .iter()
                .filter(|&&g| Some(g) != removed)
                .chain(added.iter())
            {
                match scratch.local.bit(g) {
                    Some(b) => m |= 1 << b,
                    None => fits = false,
                }
            }
            *o = m;
        }
        fits
    }

    /// Exact cost of a row after `changes` (expert rounds of its busiest GPU).
    pub fn row_cost(&self, row: &[u16], changes: &[Change], scratch: &mut RowScratch) -> u32 {
        let mut masks = [0u64; MAX_K];
        let k = row.len();
        if self.row_masks(row, changes, scratch, &mut masks[..k]) {
            cost_from_masks(&masks[..k])
        } else {
            let lists: Vec<Vec<u16>> = row.iter().map(|&e| self.gpus_after(e, changes)).collect();
            scratch.general_cost(k, |i| &lists[i])
        }
    }
}

impl Replicas for Layout {
    fn num_experts(&self) -> usize {
        self.gpus.len()
    }
    fn num_gpus(&self) -> usize {
        self.num_gpus
    }
    fn gpus_of(&self, expert: usize) -> &[u16] {
        &self.gpus[expert]
    }
    fn masks(&self) -> Option<&[u64]> {
        (self.num_gpus <= 64).then_some(&self.masks[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_overlaid_without_being_made() {
        for num_gpus in [4, 200] {
            let mut l = Layout::new(3, num_gpus);
            l.add(0, 1);
            l.add(1, 1);
            l.add(2, 3);
            let mut s = RowScratch::new(num_gpus);
            assert_eq!(l.row_cost(&[0, 1, 2], &[], &mut s), 2);
            let mv = Change {
                expert: 1,
                remove: Some(1),
                add: Some(2),
            };
            assert_eq!(l.row_cost(&[0, 1, 2], &[mv], &mut s), 1);
            let extra = Change {
                expert: 0,
                remove: None,
                add: Some(0),
            };
            assert_eq!(l.row_cost(&[0, 1, 2], &[extra], &mut s), 1);
            assert_eq!(l.row_cost(&[0, 1, 2], &[], &mut s), 2);
            l.remove(1, 1);
            l.add(1, 2);
            assert_eq!(l.row_cost(&[0, 1, 2], &[], &mut s), 1);
            assert_eq!(l.experts_on(1), &[0]);
            assert_eq!(l.to_placement().unwrap().gpus_of(1), &[2]);
        }
    }

    #[test]
    fn moves_are_checked_made_taken_back_and_scored_as_made() {
        for num_gpus in [4, 200] {
            // Expert 0 on GPUs 0 and 1, 1 on 0, 2 on 1, 3 on 2; GPU 3 is empty.
            let mut l = Layout::new(4, num_gpus);
            for (e, g) in [(0, 0), (0, 1), (1, 0), (2, 1), (3, 2)] {
                l.add(e, g);
            }
            let start = l.clone();
            let moves = [
                Move::Swap {
                    first: 1,
                    from: 0,
                    second: 3,
                    to: 2,
                },
                Move::Replace {
                    old: 0,
                    gpu: 1,
                    new: 3,
                },
                Move::Relocate {
                    expert: 2,
                    from: 1,
                    to: 3,
                },
                Move::Add { expert: 1, gpu: 3 },
            ];
            let mut s = RowScratch::new(num_gpus);
            for mv in moves {
                assert!(l.allows(mv, 2), "{mv:?}");
                let rows: [&[u16]; 3] = [&[0, 1, 2], &[1, 3], &[0, 2, 3]];
                let overlaid: Vec<u32> = rows
                    .iter()
                    .map(|r| l.row_cost(r, &mv.changes(), &mut s))
                    .collect();
                l.apply(mv);
                let made: Vec<u32> = rows.iter().map(|r| l.row_cost(r, &[], &mut s)).collect();
                assert_eq!(overlaid, made, "{mv:?}");
                l.undo(mv);
                assert_eq!(l, start, "{mv:?}");
            }
            // Refused: a second replica on the same GPU, an expert's last replica, a full GPU.
            let refused = [
                Move::Swap {
                    first: 0,
                    from: 0,
                    second: 2,
                    to: 1,
                },
                Move::Replace {
                    old: 1,
                    gpu: 0,
                    new: 3,
                },
                Move::Relocate {
                    expert: 3,
                    from: 2,
                    to: 0,
                },
                Move::Add { expert: 0, gpu: 1 },
                Move::Add { expert: 3, gpu: 3 },
            ];
            for (i, mv) in refused.into_iter().enumerate() {
                let slots = if i == 4 { 0 } else { 2 };
                assert!(!l.allows(mv, slots), "{mv:?}");
            }
        }
    }
}
