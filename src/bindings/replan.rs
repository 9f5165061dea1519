//! Bindings of re-planning with few moves: the budgeted re-plan, GPU relabelling and the
//! count of copies between two placements.

use std::sync::Arc;

use pyo3::prelude::*;

use super::input::count_arg;
use super::interrupt::interruptible;
use super::table::{PyPlacement, PySubsetTable};
use crate::search::replan::{self, ReplanLimits};

fn wrap(p: crate::Placement) -> PyPlacement {
    PyPlacement { inner: Arc::new(p) }
}

/// (placement, copies, expected cost, walk [(copies, cost)], target) where target is
/// (relabelled target, its copies, its cost) or None: `current` re-planned for `table`
/// with at most `max_moves` copies and `copy_cost` rounds per copy.
#[pyfunction]
#[pyo3(signature = (table, current, slots_per_gpu, max_moves=None, copy_cost=0.0, target=None))]
#[allow(clippy::type_complexity)]
fn replan_placement(
    py: Python<'_>,
    table: &PySubsetTable,
    current: &PyPlacement,
    slots_per_gpu: &Bound<'_, PyAny>,
    max_moves: Option<&Bound<'_, PyAny>>,
    copy_cost: f64,
    target: Option<&PyPlacement>,
) -> PyResult<(
    PyPlacement,
    usize,
    f64,
    Vec<(usize, f64)>,
    Option<(PyPlacement, usize, f64)>,
)> {
    let slots = count_arg(slots_per_gpu, "slots_per_gpu", 1)?;
    let max_copies = max_moves
        .map(|m| count_arg(m, "max_moves", 0))
        .transpose()?;
    let target = target.map(|t| t.inner.clone());
    let (table, current) = (table.inner.clone(), current.inner.clone());
    let r = interruptible(py, || {
        replan::replan(
            &table,
            &current,
            slots,
            ReplanLimits {
                max_copies,
                copy_cost,
                target: target.as_deref(),
            },
        )
    })?;
    let target = r.target.map(|(p, c, cost)| (wrap(p), c, cost));
    Ok((wrap(r.placement), r.copies, r.cost, r.path, target))
}

/// `target` with its GPUs renamed (nodes of `gpus_per_node`, and GPUs inside them) to
/// share the most replicas with `current`.
#[pyfunction]
fn relabel_gpus(
    py: Python<'_>,
    current: &PyPlacement,
    target: &PyPlacement,
    gpus_per_node: &Bound<'_, PyAny>,
) -> PyResult<PyPlacement> {
    let gpn = count_arg(gpus_per_node, "gpus_per_node", 1)?;
    let (current, target) = (current.inner.clone(), target.inner.clone());
    Ok(wrap(py.detach(|| replan::relabel(&current, &target, gpn))?))
}

/// Replicas of `placement` that `current` lacks on their GPU (weight copies).
#[pyfunction]
fn replica_copies(current: &PyPlacement, placement: &PyPlacement) -> PyResult<usize> {
    let (a, b) = (&current.inner, &placement.inner);
    if (a.num_experts(), a.num_gpus()) != (b.num_experts(), b.num_gpus()) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "placement has {} experts on {} GPUs, current {} on {}",
            b.num_experts(),
            b.num_gpus(),
            a.num_experts(),
            a.num_gpus()
        )));
    }
    Ok(replan::copies(a, b))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(replan_placement, m)?)?;
    m.add_function(wrap_pyfunction!(relabel_gpus, m)?)?;
    m.add_function(wrap_pyfunction!(replica_copies, m)?)?;
    Ok(())
}
