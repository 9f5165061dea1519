//! A placement under construction: replicas are added, removed and swapped, and the
//! cost of a row is evaluated with tentative changes overlaid, so a move is scored
//! before it is made.

use crate::error::Result;
use crate::limits::MAX_K;
use crate::matching::{cost_from_masks, single_replica_cost, RowScratch};
use crate::placement::Placement;

/// A tentative change of one expert's replicas: drop GPU `remove`, gain GPU `add`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub expert: u16,
    pub remove: Option<u16>,
    pub add: Option<u16>,
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
            single_replica_cost(&masks[..k]).unwrap_or_else(|| cost_from_masks(&masks[..k]))
        } else {
            let lists: Vec<Vec<u16>> = row.iter().map(|&e| self.gpus_after(e, changes)).collect();
            scratch.general_cost(k, |i| &lists[i])
        }
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
}
