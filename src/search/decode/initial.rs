//! The greedy's starting point: one replica per expert, floor or ceil(E / G) experts per
//! GPU, frequently co-activated experts on distinct GPUs.
//!
//! Experts are placed heaviest first, each on the GPU (with room) whose experts it is
//! least co-activated with; the seed perturbs the order among experts of similar load.
//! Kernighan-Lin swaps (`swaps`) then refine it under exact balance.

use crate::model::layout::Layout;
use crate::search::kernel::problem::Problem;
use crate::util::rng::SplitMix64;

/// Mixed into the optimizer's seeds so that seed 0 does not start the generator at 0.
pub const SEED_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// Experts per GPU: the first E mod G GPUs hold one more.
pub fn balanced_counts(num_experts: usize, num_gpus: usize) -> Vec<usize> {
    (0..num_gpus)
        .map(|g| num_experts / num_gpus + usize::from(g < num_experts % num_gpus))
        .collect()
}

/// Heaviest first, each expert's load scaled by a seeded factor in [1, 1.25) so that
/// seeds explore different orders of experts of similar load.
fn placement_order(problem: &Problem, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed ^ SEED_MIX);
    let mut keyed: Vec<(i128, usize)> = problem
        .load
        .iter()
        .enumerate()
        .map(|(e, &load)| {
            let factor = 1024 + (rng.next_u64() >> 56) as i128; // 1024..1280
            (-(load as i128) * factor, e)
        })
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|x| x.1).collect()
}

/// One replica per expert, balanced, co-activation aware.
pub fn assign(problem: &Problem, seed: u64) -> Layout {
    let num_experts = problem.num_experts();
    let num_gpus = problem.num_gpus;
    let mut layout = Layout::new(num_experts, num_gpus);
    let low = num_experts / num_gpus;
    let mut fuller_left = num_experts % num_gpus;
    // co[e * G + g]: co-activation of e with the experts placed on g so far.
    let mut co = vec![0i64; num_experts * num_gpus];
    for e in placement_order(problem, seed) {
        let room = |g: usize| layout.used(g) < low || (layout.used(g) == low && fuller_left > 0);
        let best = (0..num_gpus)
            .filter(|&g| room(g))
            .min_by_key(|&g| (co[e * num_gpus + g], layout.used(g), g))
            .expect("the balanced counts leave room for every expert");
        if layout.used(best) == low {
            fuller_left -= 1;
        }
        layout.add(e, best);
        let (partners, weights) = problem.coactivation.partners_of(e);
        for (&p, &w) in partners.iter().zip(weights) {
            co[p as usize * num_gpus + best] += w;
        }
    }
    layout
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::table::SubsetTable;

    #[test]
    fn balanced_and_spread() {
        // Pairs {0,1}, {2,3}, {4,5} are co-activated; 3 GPUs.
        let t = SubsetTable::from_subsets(&[0, 1, 2, 3, 4, 5, 0, 6], 2, 7, &[9.0, 8.0, 7.0, 1.0])
            .unwrap();
        let p = Problem::new(&t, 3);
        let l = assign(&p, 0);
        let used: Vec<usize> = (0..3).map(|g| l.used(g)).collect();
        let mut sorted = used.clone();
        sorted.sort();
        assert_eq!(sorted, vec![2, 2, 3]);
        for (a, b) in [(0, 1), (2, 3), (4, 5)] {
            assert_ne!(l.gpus_of(a), l.gpus_of(b));
        }
        assert_eq!(balanced_counts(7, 3), vec![3, 2, 2]);
    }
}
