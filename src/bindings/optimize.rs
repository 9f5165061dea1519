//! Binding of the optimizers.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::input::{self, count_arg};
use super::interrupt::interruptible;
use super::table::{PyPlacement, PySubsetTable};
use crate::search::decode;
use crate::util::limits;

/// A placement of the table's experts on `num_gpus` GPUs, each holding exactly
/// `slots_per_gpu` distinct experts, every expert at least once.
///
/// `method`: "greedy" (co-activation aware, exact replica gains, the default),
/// "contiguous", "round_robin" or "eplb" (the baselines engines ship). The result
/// depends only on the inputs and `seed`, not on the number of threads
/// (RAYON_NUM_THREADS). Raises ValueError for an unknown method or sizes that do not fit.
///
/// The greedy's searches stop early at `work_budget` (rows read by exact evaluations:
/// still deterministic for a given seed) or `time_budget` (seconds from the call: the
/// best placement found by then, which depends on the machine); a complete placement
/// is always built first.
#[pyfunction]
#[pyo3(signature = (table, num_gpus, slots_per_gpu, method="greedy", seed=None, time_budget=None, work_budget=None))]
#[allow(clippy::too_many_arguments)]
fn optimize_placement(
    py: Python<'_>,
    table: &PySubsetTable,
    num_gpus: &Bound<'_, PyAny>,
    slots_per_gpu: &Bound<'_, PyAny>,
    method: &str,
    seed: Option<&Bound<'_, PyAny>>,
    time_budget: Option<f64>,
    work_budget: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyPlacement> {
    let num_gpus = count_arg(num_gpus, "num_gpus", 1)?;
    let slots_per_gpu = count_arg(slots_per_gpu, "slots_per_gpu", 1)?;
    let seed = seed
        .map(|s| count_arg(s, "seed", 0))
        .transpose()?
        .unwrap_or(0) as u64;
    let budget = decode::SearchBudget {
        work: work_budget
            .map(|w| count_arg(w, "work_budget", 0))
            .transpose()?,
        seconds: time_budget,
    };
    let table = table.inner.clone();
    let run = || decode::optimize_within(&table, num_gpus, slots_per_gpu, method, seed, budget);
    // The baselines take microseconds: a helper thread to watch for Ctrl-C would cost more.
    let placement = if method == "greedy" {
        interruptible(py, run)?
    } else {
        py.detach(run)?
    };
    Ok(PyPlacement {
        inner: Arc::new(placement),
    })
}

/// Raises ValueError unless `num_gpus` GPUs of `slots_per_gpu` slots can hold
/// `num_experts` experts (each at least once, never twice on one GPU).
#[pyfunction]
fn check_memory(
    num_experts: &Bound<'_, PyAny>,
    num_gpus: &Bound<'_, PyAny>,
    slots_per_gpu: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let num_experts = count_arg(num_experts, "num_experts", 1)?;
    let num_gpus = count_arg(num_gpus, "num_gpus", 1)?;
    let slots_per_gpu = count_arg(slots_per_gpu, "slots_per_gpu", 1)?;
    Ok(limits::check_memory(num_experts, num_gpus, slots_per_gpu)?)
}

/// `placement` with every free slot (up to `slots_per_gpu` per GPU) filled by the
/// expert of highest `expert_load` per replica that the GPU lacks, as the baselines fill.
#[pyfunction]
fn fill_free_slots(
    placement: &PyPlacement,
    slots_per_gpu: &Bound<'_, PyAny>,
    expert_load: &Bound<'_, PyAny>,
) -> PyResult<PyPlacement> {
    let slots_per_gpu = count_arg(slots_per_gpu, "slots_per_gpu", 1)?;
    let load = input::reals(expert_load, "expert_load", 1)?.data;
    let filled = decode::fill_free_slots(&placement.inner, slots_per_gpu, &load)?;
    Ok(PyPlacement {
        inner: Arc::new(filled),
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(optimize_placement, m)?)?;
    m.add_function(wrap_pyfunction!(check_memory, m)?)?;
    m.add_function(wrap_pyfunction!(fill_free_slots, m)?)?;
    m.add("METHODS", PyTuple::new(m.py(), decode::METHODS)?)?;
    Ok(())
}
