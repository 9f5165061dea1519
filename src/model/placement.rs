//! Placements: which GPUs hold a replica of each expert. `Placement` is the checked,
//! frozen form (what the API takes and returns); `crate::model::layout::Layout` the mutable one
//! the searches change. `Replicas` reads either.

use crate::util::error::{MoeError, Result};
use crate::util::limits::{check_num_gpus, MAX_EXPERTS};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    num_experts: usize,
    num_gpus: usize,
    /// CSR: the GPUs of expert e are `gpus[offsets[e]..offsets[e + 1]]`, ascending.
    offsets: Vec<usize>,
    gpus: Vec<u16>,
    /// One 64-bit GPU mask per expert when num_gpus <= 64 (the fast path), else empty.
    masks: Vec<u64>,
}

impl Placement {
    /// A placement from per-expert GPU lists; each expert needs at least one replica.
    pub fn from_lists(lists: &[Vec<usize>], num_gpus: usize) -> Result<Self> {
        check_num_gpus(num_gpus)?;
        if lists.is_empty() || lists.len() > MAX_EXPERTS {
            return Err(MoeError::value(format!(
                "a placement needs 1 to {MAX_EXPERTS} experts, got {}",
                lists.len()
            )));
        }
        let mut offsets = Vec::with_capacity(lists.len() + 1);
        let mut gpus = Vec::new();
        offsets.push(0);
        for (e, list) in lists.iter().enumerate() {
            let mut sorted = list.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.is_empty() {
                return Err(MoeError::value(format!(
                    "expert {e} has no replica: every expert needs one"
                )));
            }
            if let Some(&g) = sorted.iter().find(|&&g| g >= num_gpus) {
                return Err(MoeError::value(format!(
                    "expert {e} is placed on GPU {g}, out of range [0, {num_gpus})"
                )));
            }
            gpus.extend(sorted.iter().map(|&g| g as u16));
            offsets.push(gpus.len());
        }
        let masks = if num_gpus <= 64 {
            (0..lists.len())
                .map(|e| {
                    gpus[offsets[e]..offsets[e + 1]]
                        .iter()
                        .fold(0u64, |m, &g| m | 1 << g)
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Placement {
            num_experts: lists.len(),
            num_gpus,
            offsets,
            gpus,
            masks,
        })
    }

    /// A placement from a row-major bool matrix [num_experts, num_gpus].
    pub fn from_matrix(replicas: &[bool], num_experts: usize, num_gpus: usize) -> Result<Self> {
        if replicas.len() != num_experts * num_gpus {
            return Err(MoeError::value(format!(
                "replicas has {} entries, expected {num_experts} x {num_gpus}",
                replicas.len()
            )));
        }
        if num_gpus == 0 {
            return Err(MoeError::value("replicas has 0 GPU columns"));
        }
        let lists: Vec<Vec<usize>> = replicas
            .chunks_exact(num_gpus)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .filter(|(_, &x)| x)
                    .map(|(g, _)| g)
                    .collect()
            })
            .collect();
        Self::from_lists(&lists, num_gpus)
    }

    pub fn num_experts(&self) -> usize {
        self.num_experts
    }
    pub fn num_gpus(&self) -> usize {
        self.num_gpus
    }
    /// GPUs holding a replica of `expert`, ascending.
    pub fn gpus_of(&self, expert: usize) -> &[u16] {
        &self.gpus[self.offsets[expert]..self.offsets[expert + 1]]
    }
    /// 64-bit GPU masks per expert, present only when num_gpus <= 64.
    pub fn masks(&self) -> Option<&[u64]> {
        (self.num_gpus <= 64).then_some(&self.masks[..])
    }
    pub fn holds(&self, expert: usize, gpu: usize) -> bool {
        self.gpus_of(expert).binary_search(&(gpu as u16)).is_ok()
    }
    pub fn num_replicas(&self) -> usize {
        self.gpus.len()
    }
    /// Experts held by each GPU.
    pub fn slots_used(&self) -> Vec<usize> {
        let mut used = vec![0usize; self.num_gpus];
        for &g in &self.gpus {
            used[g as usize] += 1;
        }
        used
    }
    /// Per-expert GPU lists (the inverse of `from_lists`).
    pub fn to_lists(&self) -> Vec<Vec<usize>> {
        (0..self.num_experts)
            .map(|e| self.gpus_of(e).iter().map(|&g| g as usize).collect())
            .collect()
    }
    /// Row-major bool matrix [num_experts, num_gpus].
    pub fn to_matrix(&self) -> Vec<bool> {
        let mut m = vec![false; self.num_experts * self.num_gpus];
        for e in 0..self.num_experts {
            for &g in self.gpus_of(e) {
                m[e * self.num_gpus + g as usize] = true;
            }
        }
        m
    }
}

/// Read access to which GPUs hold each expert, for code that evaluates both frozen
/// placements and layouts under search (the step-time solver, the max-flow).
pub trait Replicas: Sync {
    fn num_experts(&self) -> usize;
    fn num_gpus(&self) -> usize;
    /// GPUs holding a replica of `expert`, ascending.
    fn gpus_of(&self, expert: usize) -> &[u16];
    /// 64-bit GPU masks per expert, present only when num_gpus <= 64.
    fn masks(&self) -> Option<&[u64]>;
}

impl Replicas for Placement {
    fn num_experts(&self) -> usize {
        self.num_experts
    }
    fn num_gpus(&self) -> usize {
        self.num_gpus
    }
    fn gpus_of(&self, expert: usize) -> &[u16] {
        Placement::gpus_of(self, expert)
    }
    fn masks(&self) -> Option<&[u64]> {
        Placement::masks(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_matrix_agree() {
        let p = Placement::from_lists(&[vec![1, 0], vec![1], vec![0]], 2).unwrap();
        assert_eq!(p.to_matrix(), vec![true, true, false, true, true, false]);
        assert_eq!(p.slots_used(), vec![2, 2]);
        assert_eq!(p.masks().unwrap(), &[0b11, 0b10, 0b01]);
        let q = Placement::from_matrix(&p.to_matrix(), 3, 2).unwrap();
        assert_eq!(p, q);
    }

    #[test]
    fn rejects_missing_and_out_of_range() {
        let err = Placement::from_lists(&[vec![0], vec![]], 2).unwrap_err();
        assert!(err.to_string().contains("expert 1 has no replica"));
        let err = Placement::from_lists(&[vec![2]], 2).unwrap_err();
        assert!(err.to_string().contains("GPU 2"));
    }

    #[test]
    fn wide_placements_have_no_masks() {
        let p = Placement::from_lists(&[vec![0, 100]], 128).unwrap();
        assert!(p.masks().is_none());
        assert!(p.holds(0, 100) && !p.holds(0, 99));
    }
}
