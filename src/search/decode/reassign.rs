//! Local search over which experts the extra slots hold. The greedy picks replicas one
//! at a time, so an early pick can block a better pair later, and the last GPUs to
//! fill take what is left. A move here gives a slot of a replicated expert to another
//! expert (`Move::Replace`): candidates are ranked by the exact gain of the new replica
//! (gain table), evaluated exactly with the loss of the old one, and the best
//! improvement is made.

use rayon::prelude::*;

use crate::cost::matching::RowScratch;
use crate::model::layout::Move;
use crate::search::kernel::gains::GainTable;
use crate::search::kernel::state::State;

/// New experts tried for each replica slot.
const EXPERTS_PER_SLOT: usize = 4;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Candidates evaluated exactly at once.
    pub candidates: usize,
    /// Moves made at most.
    pub max_moves: usize,
}

/// (old expert, GPU, new expert) for every slot of an expert with several replicas.
fn candidates(state: &State, gains: &GainTable, width: usize) -> Vec<(i64, usize, usize, usize)> {
    let layout = &state.layout;
    let mut found = Vec::new();
    for old in 0..layout.num_experts() {
        if layout.replicas(old) < 2 {
            continue;
        }
        for &gpu in layout.gpus_of(old) {
            let gpu = gpu as usize;
            let mut best: Vec<(i64, usize)> = (0..layout.num_experts())
                .filter(|&new| !layout.holds(new, gpu) && gains.may_gain(new))
                .map(|new| (-gains.gain(new, gpu), new))
                .filter(|x| x.0 < 0)
                .collect();
            best.sort_unstable();
            found.extend(
                best.into_iter()
                    .take(EXPERTS_PER_SLOT)
                    .map(|(g, new)| (g, old, gpu, new)),
            );
        }
    }
    found.sort_unstable();
    found.truncate(width);
    found
}

/// Returns the number of moves made.
pub fn improve(state: &mut State, gains: &mut GainTable, limits: Limits) -> usize {
    improve_counted(state, gains, limits).0
}

/// `improve`, also returning the rows read by exact evaluations.
pub fn improve_counted(state: &mut State, gains: &mut GainTable, limits: Limits) -> (usize, usize) {
    let mut made = 0;
    let mut spent = 0usize;
    while made < limits.max_moves && !state.problem.effort.exhausted() {
        let candidates = candidates(state, gains, limits.candidates);
        let replace = |&(_, old, gpu, new): &(i64, usize, usize, usize)| Move::Replace {
            old: old as u16,
            gpu: gpu as u16,
            new: new as u16,
        };
        let evaluated: Vec<(i64, usize)> = candidates
            .par_iter()
            .map_init(
                || RowScratch::new(state.layout.num_gpus()),
                |s, c| state.move_delta(replace(c), s),
            )
            .collect();
        let rows = evaluated.iter().map(|x| x.1).sum::<usize>();
        spent += rows;
        state.problem.effort.spend(rows);
        let deltas: Vec<i64> = evaluated.into_iter().map(|x| x.0).collect();
        let best = deltas
            .iter()
            .enumerate()
            .filter(|x| *x.1 < 0)
            .min_by_key(|x| (*x.1, x.0));
        let Some((i, _)) = best else { break };
        let (_, old, gpu, new) = candidates[i];
        gains.remove_replica(state, old, gpu);
        gains.add_replica(state, new, gpu);
        made += 1;
    }
    (made, spent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layout::Layout;
    use crate::model::table::SubsetTable;
    use crate::search::kernel::problem::Problem;
    use crate::search::kernel::state::total_cost;

    #[test]
    fn moves_a_useless_replica_where_it_helps() {
        // {0,1} always together on GPU 0; expert 3's extra replica on GPU 1 serves nobody.
        let t = SubsetTable::from_subsets(&[0, 1, 2, 3], 2, 4, &[10.0, 1.0]).unwrap();
        let p = Problem::new(&t, 2);
        let mut l = Layout::new(4, 2);
        for (e, g) in [(0, 0), (1, 0), (2, 1), (3, 0), (3, 1)] {
            l.add(e, g);
        }
        let mut s = State::new(&p, l);
        let mut gains = GainTable::new(&s);
        let before = s.total;
        assert_eq!(
            improve(
                &mut s,
                &mut gains,
                Limits {
                    candidates: 8,
                    max_moves: 4
                }
            ),
            1
        );
        assert!(s.total < before);
        assert_eq!(s.total, total_cost(&p, &s.layout));
        assert_eq!(s.layout.replicas(3), 1);
        assert_eq!(s.layout.used(0), 3);
        assert_eq!(s.layout.used(1), 2);
    }
}
