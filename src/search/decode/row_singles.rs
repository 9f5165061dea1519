//! The single-replica experts of one row of a table, per GPU: what the move-gain counts
//! (`move_gains`, `replica_moves`) read from each row.

/// A GPU id no layout has (`crate::util::limits::MAX_GPUS` is far below it).
pub const NO_GPU: u16 = u16::MAX;

/// The distinct GPUs of a row's single-replica experts and how many of them each holds.
pub struct RowSingles {
    gpus: [(u16, u8); crate::util::limits::MAX_K],
    len: usize,
}

impl RowSingles {
    /// From each expert's GPU where it has one replica (`NO_GPU` where it has several).
    pub fn of(row: &[u16], single: &[u16]) -> Self {
        let mut gpus = [(0u16, 0u8); crate::util::limits::MAX_K];
        let mut len = 0;
        for &e in row {
            let g = single[e as usize];
            if g == NO_GPU {
                continue;
            }
            match gpus[..len].iter_mut().find(|x| x.0 == g) {
                Some(x) => x.1 += 1,
                None => {
                    gpus[len] = (g, 1);
                    len += 1;
                }
            }
        }
        RowSingles { gpus, len }
    }

    /// (GPU, singles on it), in the order the row first reaches each GPU.
    pub fn gpus(&self) -> &[(u16, u8)] {
        &self.gpus[..self.len]
    }
}
