//! The time of one layer for a batch given as token rows: the input checks and the
//! public entry point over the step-time solver.

use super::cost_model::CostModel;
use super::step_time::StepTimeSolver;
use crate::model::placement::Placement;
use crate::util::error::{MoeError, Result};
use crate::util::limits::MAX_SAMPLED_IDS;

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

/// The split behind `batch_time` for a batch given by its token count per expert: the step
/// time and the tokens each (expert, GPU) serves, `[E * G]` row-major. A dispatch that
/// sends each expert's tokens in these numbers runs the batch in the time `batch_time`
/// reports (the same solver, on the same counts).
pub fn batch_split(
    counts: &[u64],
    placement: &Placement,
    model: CostModel,
) -> Result<(f64, Vec<u32>)> {
    let (e, g) = (placement.num_experts(), placement.num_gpus());
    if counts.len() != e {
        return Err(MoeError::value(format!(
            "{} token counts for a placement of {e} experts",
            counts.len()
        )));
    }
    let total = counts.iter().fold(0u64, |a, &c| a.saturating_add(c));
    if total > MAX_SAMPLED_IDS as u64 {
        return Err(MoeError::value(format!(
            "the batch has {total} (token, expert) pairs, more than {MAX_SAMPLED_IDS}"
        )));
    }
    let experts: Vec<u32> = (0..e as u32).collect();
    let counts32: Vec<u32> = counts.iter().map(|&c| c as u32).collect();
    let mut solver = StepTimeSolver::new(placement, model);
    solver.set_counts(&experts, &counts32);
    let time = solver.solve();
    let (offsets, parts) = solver.assignment();
    let mut out = vec![0u32; e * g];
    let active = (0..e).filter(|&x| counts[x] > 0);
    for (i, expert) in active.enumerate() {
        for (r, &gpu) in placement.gpus_of(expert).iter().enumerate() {
            out[expert * g + gpu as usize] += parts[offsets[i] + r];
        }
    }
    Ok((time, out))
}

#[cfg(test)]
mod tests {
    //! The split against `batch_time`: the same time, every token on a GPU of its expert.

    use super::*;
    use crate::testing::random_layout;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn split_matches_batch_time_and_serves_every_token() {
        let mut rng = SmallRng::seed_from_u64(5);
        for case in 0..40 {
            let (experts, gpus, k) = (12, 4, 3);
            let placement = random_layout(&mut rng, experts, gpus, gpus)
                .to_placement()
                .unwrap();
            let tokens = 1 + case % 17;
            let mut ids = Vec::new();
            for _ in 0..tokens {
                let mut row: Vec<i64> = Vec::new();
                while row.len() < k {
                    let e = rng.random_range(0..experts as i64);
                    if !row.contains(&e) {
                        row.push(e);
                    }
                }
                ids.extend(row);
            }
            let model =
                CostModel::new(10.0, 1.0 + case as f64 % 3.0, 1.0 + (case % 2) as f64).unwrap();
            let (want, _) = batch_time(&ids, k, &placement, model, false).unwrap();
            let mut counts = vec![0u64; experts];
            for &e in &ids {
                counts[e as usize] += 1;
            }
            let (time, split) = batch_split(&counts, &placement, model).unwrap();
            assert_eq!(time, want);
            let mut load = vec![0.0; gpus];
            for e in 0..experts {
                let row = &split[e * gpus..(e + 1) * gpus];
                assert_eq!(row.iter().map(|&c| c as u64).sum::<u64>(), counts[e]);
                for (g, &c) in row.iter().enumerate() {
                    if c > 0 {
                        assert!(placement.gpus_of(e).contains(&(g as u16)));
                        load[g] += model.expert_time(c);
                    }
                }
            }
            let busiest = load.iter().cloned().fold(0.0, f64::max);
            assert!(
                (busiest - time).abs() <= 1e-9 * time.max(1.0),
                "{busiest} vs {time}"
            );
        }
    }

    #[test]
    fn split_refuses_wrong_counts() {
        let placement = Placement::from_lists(&[vec![0], vec![1]], 2).unwrap();
        let model = CostModel::new(1.0, 1.0, 1.0).unwrap();
        assert!(batch_split(&[1], &placement, model).is_err());
        assert!(batch_split(&[u64::MAX, 1], &placement, model).is_err());
    }
}
