//! Test helpers shared by the unit tests of several modules (compiled for tests only).

use crate::model::table::SubsetTable;

/// The one generator of test tables: skewed top-`k` rows from a fixed linear
/// congruential generator; ids fall among the first `hot + 2 * (x >> shift)` experts, so
/// low ids are hot and often chosen together.
pub(crate) fn skewed_table(
    seed: u64,
    rows: usize,
    experts: u64,
    k: usize,
    hot: i64,
    shift: u32,
) -> SubsetTable {
    assert!(k as u64 <= experts);
    let mut ids = Vec::new();
    let mut x = seed;
    for _ in 0..rows {
        let mut row = Vec::new();
        while row.len() < k {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let e = ((x >> 33) % experts) as i64 % (hot + (x >> shift) as i64 * 2);
            if !row.contains(&e) {
                row.push(e);
            }
        }
        ids.extend(row);
    }
    SubsetTable::from_topk(&ids, k, experts as usize, None).unwrap()
}

/// The one random test layout: each of `experts` on one of the first `spread`
/// GPUs (few GPUs in use, so rows of several rounds are common), and with probability 0.3
/// a second replica on any of `num_gpus`.
pub(crate) fn random_layout(
    rng: &mut rand::rngs::SmallRng,
    experts: usize,
    num_gpus: usize,
    spread: usize,
) -> crate::model::layout::Layout {
    use rand::Rng;
    let mut layout = crate::model::layout::Layout::new(experts, num_gpus);
    for x in 0..experts {
        layout.add(x, rng.random_range(0..spread));
        if rng.random_bool(0.3) {
            let g = rng.random_range(0..num_gpus);
            if !layout.holds(x, g) {
                layout.add(x, g);
            }
        }
    }
    layout
}
