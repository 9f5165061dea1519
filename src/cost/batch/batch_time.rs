//! The time of one layer for a batch given as token rows: the input checks and the
//! public entry point over the step-time solver.

use super::cost_model::CostModel;
use super::step_time::StepTimeSolver;
use crate::model::placement::Placement;
use crate::util::error::{MoeError, Result};

/// Checks a [tokens, k] batch of expert ids against the placement: ids in range and no
/// expert twice in one token.
pub fn check_batch(ids: &[i64], k: usize, num_experts: usize) -> Result<()> {
    if k == 0 {
        return Err(MoeError::value(
            "the batch has 0 columns: each token needs at least one expert",
        ));
    }
    for (t, row) in ids.chunks_exact(k).enumerate() {
        for (c, &e) in row.iter().enumerate() {
            if e < 0 || e as u64 >= num_experts as u64 {
                return Err(MoeError::value(format!(
                    "token {t} picks expert {e}, out of range [0, {num_experts}) of the placement"
                )));
            }
            if row[..c].contains(&e) {
                return Err(MoeError::value(format!("token {t} picks expert {e} twice")));
            }
        }
    }
    Ok(())
}

/// Step time of one layer for a [tokens, k] batch, and, if asked, a lower bound on the
/// optimal step time (it costs a few max-flows more).
pub fn batch_time(
    ids: &[i64],
    k: usize,
    placement: &Placement,
    model: CostModel,
    with_bound: bool,
) -> Result<(f64, Option<f64>)> {
    check_batch(ids, k, placement.num_experts())?;
    let mut solver = StepTimeSolver::new(placement, model);
    solver.set_batch(ids.iter().map(|&e| e as u32));
    let time = solver.solve();
    let bound = with_bound.then(|| solver.lower_bound().min(time));
    Ok((time, bound))
}
