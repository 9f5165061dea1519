//! Binding of the optimizers.

use std::sync::Arc;

use pyo3::prelude::*;

use super::count_arg;
use super::interrupt::interruptible;
use super::table::{PyPlacement, PySubsetTable};
use crate::optimize;

/// A placement of the table's experts on `num_gpus` GPUs, each holding exactly
/// `slots_per_gpu` distinct experts, every expert at least once.
///
/// `method`: "greedy" (co-activation aware, exact replica gains, the default),
/// "contiguous", "round_robin" or "eplb" (the baselines engines ship). The result
/// depends only on the inputs and `seed`, not on the number of threads
/// (RAYON_NUM_THREADS). Raises ValueError for an unknown method or sizes that do not fit.
#[pyfunction]
#[pyo3(signature = (table, num_gpus, slots_per_gpu, method="greedy", seed=None))]
fn optimize_placement(
    py: Python<'_>,
    table: &PySubsetTable,
    num_gpus: &Bound<'_, PyAny>,
    slots_per_gpu: &Bound<'_, PyAny>,
    method: &str,
    seed: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyPlacement> {
    let num_gpus = count_arg(num_gpus, "num_gpus", 1)?;
    let slots_per_gpu = count_arg(slots_per_gpu, "slots_per_gpu", 1)?;
    let seed = seed
        .map(|s| count_arg(s, "seed", 0))
        .transpose()?
        .unwrap_or(0) as u64;
    let table = table.inner.clone();
    let placement = interruptible(py, || {
        optimize::optimize(&table, num_gpus, slots_per_gpu, method, seed)
    })?;
    Ok(PyPlacement {
        inner: Arc::new(placement),
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(optimize_placement, m)?)?;
    Ok(())
}
