//! Binding of the optimizers.

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

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
#[pyo3(signature = (table, num_gpus, slots_per_gpu, method="greedy", seed=0))]
fn optimize_placement(
    py: Python<'_>,
    table: &PySubsetTable,
    num_gpus: i64,
    slots_per_gpu: i64,
    method: &str,
    seed: i64,
) -> PyResult<PyPlacement> {
    if num_gpus < 1 {
        return Err(PyValueError::new_err(format!("num_gpus must be at least 1, got {num_gpus}")));
    }
    if slots_per_gpu < 1 {
        return Err(PyValueError::new_err(format!("slots_per_gpu must be at least 1, got {slots_per_gpu}")));
    }
    if seed < 0 {
        return Err(PyValueError::new_err(format!("seed must be non-negative, got {seed}")));
    }
    let table = table.inner.clone();
    let placement = py.detach(|| {
        optimize::optimize(&table, num_gpus as usize, slots_per_gpu as usize, method, seed as u64)
    })?;
    Ok(PyPlacement { inner: Arc::new(placement) })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(optimize_placement, m)?)?;
    Ok(())
}
