//! Bindings of the costs under an engine's dispatch rule (`crate::cost::dispatch`). A rule
//! is a static map int [ranks, experts] (the GPU serving each expert for each source
//! rank) or None (a uniform draw among the replicas for every pair).

use numpy::PyArray1;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::batch::StepInputs;
use super::input::{self, non_negative};
use super::table::{PyPlacement, PySubsetTable};
use crate::cost::dispatch::{self, Dispatch};
use crate::model::placement::Placement;

/// The rule of a layer: a uniform draw (no map), the static map, or, with `round_robin`,
/// TensorRT-LLM's round robin over the ranks of the map (its first pairs' replicas).
fn rule(
    map: Option<&Bound<'_, PyAny>>,
    placement: &Placement,
    round_robin: bool,
) -> PyResult<Dispatch> {
    match map {
        None if round_robin => Err(PyValueError::new_err(
            "the round-robin rule needs the map of its ranks' first pairs",
        )),
        None => Ok(Dispatch::Uniform),
        Some(m) => {
            let m = input::ids(m, "dispatch_map", 2)?;
            let checked = Dispatch::checked_static(&m.data, m.shape[0], placement)?;
            Ok(if round_robin {
                Dispatch::RoundRobin { ranks: m.shape[0] }
            } else {
                checked
            })
        }
    }
}

/// float [rows]: each row's expected cost (expert rounds of the busiest GPU) when the rule
/// picks the replicas: a static map [ranks, experts] averaged over the ranks, or, with
/// None, a uniform draw per expert (exact up to 4,096 combinations, else 4,096 draws
/// seeded by `seed`).
#[pyfunction]
#[pyo3(signature = (table, placement, dispatch_map, seed))]
fn dispatch_costs<'py>(
    py: Python<'py>,
    table: &PySubsetTable,
    placement: &PyPlacement,
    dispatch_map: Option<&Bound<'py, PyAny>>,
    seed: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let seed = non_negative("seed", seed)?;
    let rule = rule(dispatch_map, &placement.inner, false)?;
    let costs =
        py.detach(|| dispatch::dispatch_costs(&table.inner, &placement.inner, &rule, seed))?;
    Ok(PyArray1::from_vec(py, costs))
}

/// Step times float [len(batch_sizes), steps] under one rule per layer, on the batches
/// `simulate_steps` draws for the same seed; token j of a step sits on source rank
/// (offset + j) mod ranks, the offset drawn per step. `round_robin`: every map is
/// TensorRT-LLM's first-pair map, and the pairs follow its round robin.
#[pyfunction]
#[pyo3(signature = (topk, weights, placements, dispatch_maps, batch_sizes, alpha, beta, p, seed, steps, round_robin=false))]
#[allow(clippy::too_many_arguments)]
fn simulate_dispatch_steps<'py>(
    py: Python<'py>,
    topk: &Bound<'py, PyAny>,
    weights: Option<&Bound<'py, PyAny>>,
    placements: Vec<PyRef<'py, PyPlacement>>,
    dispatch_maps: Vec<Option<Bound<'py, PyAny>>>,
    batch_sizes: Vec<Bound<'py, PyAny>>,
    alpha: f64,
    beta: f64,
    p: f64,
    seed: &Bound<'py, PyAny>,
    steps: &Bound<'py, PyAny>,
    round_robin: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let inputs = StepInputs::new(
        topk,
        weights,
        &placements,
        &batch_sizes,
        (alpha, beta, p),
        seed,
        steps,
    )?;
    let layers = inputs.layers;
    if inputs.placements.len() != layers || dispatch_maps.len() != layers {
        return Err(PyValueError::new_err(format!(
            "the trace has {layers} layers but {} placements and {} dispatch maps were given",
            inputs.placements.len(),
            dispatch_maps.len()
        )));
    }
    let rules = dispatch_maps
        .iter()
        .zip(&inputs.placements)
        .map(|(m, p)| rule(m.as_ref(), p, round_robin))
        .collect::<PyResult<Vec<_>>>()?;
    inputs.run(py, |trace, i| {
        dispatch::simulate_dispatch(
            trace,
            &i.placements,
            &rules,
            &i.batch_sizes,
            i.model,
            i.seed,
            i.steps,
        )
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(dispatch_costs, m)?)?;
    m.add_function(wrap_pyfunction!(simulate_dispatch_steps, m)?)?;
    Ok(())
}
