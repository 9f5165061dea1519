//! Bindings of the batch cost model: step times, simulation and batch-aware placement.

use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::input::{self, non_negative};
use super::interrupt::interruptible;
use super::table::PyPlacement;
use crate::cost::batch::simulate::{self, Trace};
use crate::cost::batch::{self as core_batch, CostModel};
use crate::model::placement::Placement;
use crate::search::batch::{self, BatchSearchOptions};

/// (step time, lower bound on the optimal step time or None) of one layer for a batch
/// [tokens, k] of expert ids, in the units of alpha and beta.
#[pyfunction]
#[pyo3(signature = (topk, placement, alpha, beta, p, with_bound))]
fn batch_time(
    py: Python<'_>,
    topk: &Bound<'_, PyAny>,
    placement: &PyPlacement,
    alpha: f64,
    beta: f64,
    p: f64,
    with_bound: bool,
) -> PyResult<(f64, Option<f64>)> {
    let model = CostModel::new(alpha, beta, p)?;
    let ids = input::ids(topk, "topk_batch", 2)?;
    let k = ids.shape[1];
    if ids.shape[0] == 0 {
        return Ok((0.0, with_bound.then_some(0.0)));
    }
    let ids = ids.data;
    let placement = placement.inner.clone();
    Ok(py.detach(|| core_batch::batch_time(&ids, k, &placement, model, with_bound))?)
}

/// (step time, tokens int [E, G] each expert serves on each GPU): the split behind
/// `batch_time` for a batch given by its token count per expert.
#[pyfunction]
#[pyo3(signature = (counts, placement, alpha, beta, p))]
fn batch_split<'py>(
    py: Python<'py>,
    counts: &Bound<'py, PyAny>,
    placement: &PyPlacement,
    alpha: f64,
    beta: f64,
    p: f64,
) -> PyResult<(f64, Bound<'py, PyArray2<u32>>)> {
    let model = CostModel::new(alpha, beta, p)?;
    let counts = input::ids(counts, "counts", 1)?.data;
    let counts = counts
        .iter()
        .map(|&c| {
            u64::try_from(c).map_err(|_| {
                PyValueError::new_err(format!("token counts must be non-negative, got {c}"))
            })
        })
        .collect::<PyResult<Vec<u64>>>()?;
    let placement = placement.inner.clone();
    let g = placement.num_gpus();
    let (time, split) = py.detach(|| core_batch::batch_split(&counts, &placement, model))?;
    let rows = split.len() / g.max(1);
    let array = PyArray1::from_vec(py, split).reshape([rows, g])?;
    Ok((time, array))
}

/// Step times float [len(batch_sizes), steps]: every step draws batch_size tokens
/// (rows of `topk` [tokens, layers, k], with probability proportional to `weights` if
/// given) and sums the layer times over the layers.
#[pyfunction]
#[pyo3(signature = (topk, weights, placements, batch_sizes, alpha, beta, p, seed, steps))]
#[allow(clippy::too_many_arguments)]
fn simulate_steps<'py>(
    py: Python<'py>,
    topk: &Bound<'py, PyAny>,
    weights: Option<&Bound<'py, PyAny>>,
    placements: Vec<PyRef<'py, PyPlacement>>,
    batch_sizes: Vec<Bound<'py, PyAny>>,
    alpha: f64,
    beta: f64,
    p: f64,
    seed: &Bound<'py, PyAny>,
    steps: &Bound<'py, PyAny>,
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
    if inputs.placements.len() != inputs.layers {
        return Err(PyValueError::new_err(format!(
            "the trace has {} layers but {} placements were given",
            inputs.layers,
            inputs.placements.len()
        )));
    }
    inputs.run(py, |trace, i| {
        simulate::simulate(
            trace,
            &i.placements,
            &i.batch_sizes,
            i.model,
            i.seed,
            i.steps,
        )
    })
}

/// What the step simulations take from Python, checked: the cost model, the seed, the
/// steps, the batch sizes, the trace's ids [tokens, layers, k] with optional row weights,
/// and the placements.
pub(super) struct StepInputs {
    pub model: CostModel,
    pub seed: u64,
    pub steps: usize,
    pub batch_sizes: Vec<usize>,
    pub layers: usize,
    pub placements: Vec<Placement>,
    k: usize,
    ids: Vec<i64>,
    weights: Option<Vec<f64>>,
}

impl StepInputs {
    pub(super) fn new(
        topk: &Bound<'_, PyAny>,
        weights: Option<&Bound<'_, PyAny>>,
        placements: &[PyRef<'_, PyPlacement>],
        batch_sizes: &[Bound<'_, PyAny>],
        (alpha, beta, p): (f64, f64, f64),
        seed: &Bound<'_, PyAny>,
        steps: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let model = CostModel::new(alpha, beta, p)?;
        let seed = non_negative("seed", seed)?;
        let steps = non_negative("steps", steps)? as usize;
        let batch_sizes = batch_sizes
            .iter()
            .map(|b| non_negative("batch_sizes", b).map(|b| b as usize))
            .collect::<PyResult<Vec<_>>>()?;
        let ids = input::ids(topk, "topk", 3)?;
        let (layers, k) = (ids.shape[1], ids.shape[2]);
        let weights = weights
            .map(|w| input::reals(w, "weights", 1))
            .transpose()?
            .map(|w| w.data);
        let placements = placements.iter().map(|p| (*p.inner).clone()).collect();
        Ok(StepInputs {
            model,
            seed,
            steps,
            batch_sizes,
            layers,
            placements,
            k,
            ids: ids.data,
            weights,
        })
    }

    /// The step times float [len(batch_sizes), steps] that `simulate` gives on the trace,
    /// run without the GIL and stopped by Ctrl-C.
    pub(super) fn run<'py, F>(&self, py: Python<'py>, simulate: F) -> PyResult<Bound<'py, PyAny>>
    where
        F: FnOnce(&Trace, &Self) -> crate::Result<Vec<Vec<f64>>> + Send,
    {
        let num_experts: Vec<usize> = self.placements.iter().map(|p| p.num_experts()).collect();
        let times = interruptible(py, || {
            let trace = Trace::new(
                &self.ids,
                self.layers,
                self.k,
                &num_experts,
                self.weights.as_deref(),
            )?;
            simulate(&trace, self)
        })?;
        let flat: Vec<f64> = times.into_iter().flatten().collect();
        Ok(PyArray1::from_vec(py, flat)
            .reshape([self.batch_sizes.len(), self.steps])?
            .into_any())
    }
}

/// A placement lowering the mean step time of sampled batches of `batch_size` tokens
/// drawn from `topk` [tokens, k] (rows weighted by `weights` if given), by local search
/// from `start` within `slots_per_gpu` experts per GPU; with `max_copies`, `start` is the
/// placement served and the search re-plans it within that many copies; with
/// `copy_price` (> 0, in the cost model's unit of mean step time per copy) too, moves gain
/// more than their copies' price.
#[pyfunction]
#[pyo3(signature = (topk, weights, start, slots_per_gpu, alpha, beta, p, batch_size, seed, num_batches, max_evaluations, max_copies=None, copy_price=0.0))]
#[allow(clippy::too_many_arguments)]
fn optimize_batch(
    py: Python<'_>,
    topk: &Bound<'_, PyAny>,
    weights: Option<&Bound<'_, PyAny>>,
    start: &PyPlacement,
    slots_per_gpu: &Bound<'_, PyAny>,
    alpha: f64,
    beta: f64,
    p: f64,
    batch_size: &Bound<'_, PyAny>,
    seed: &Bound<'_, PyAny>,
    num_batches: Option<&Bound<'_, PyAny>>,
    max_evaluations: &Bound<'_, PyAny>,
    max_copies: Option<&Bound<'_, PyAny>>,
    copy_price: f64,
) -> PyResult<PyPlacement> {
    let model = CostModel::new(alpha, beta, p)?;
    let max_copies = max_copies
        .map(|m| non_negative("max_copies", m))
        .transpose()?
        .map(|m| m as usize);
    let slots = non_negative("slots_per_gpu", slots_per_gpu)? as usize;
    let batch_size = non_negative("batch_size", batch_size)? as usize;
    let seed = non_negative("seed", seed)?;
    let max_evaluations = non_negative("max_evaluations", max_evaluations)? as usize;
    let num_batches = match num_batches {
        Some(n) => non_negative("num_batches", n)? as usize,
        None => BatchSearchOptions::default_num_batches(batch_size),
    };
    let ids = input::ids(topk, "topk", 2)?;
    let k = ids.shape[1];
    let ids = ids.data;
    let weights = weights
        .map(|w| input::reals(w, "weights", 1))
        .transpose()?
        .map(|w| w.data);
    let start = start.inner.clone();
    let options = BatchSearchOptions {
        batch_size,
        num_batches,
        seed,
        max_evaluations,
    };
    let placement = interruptible(py, || -> crate::Result<Placement> {
        let trace = Trace::new(&ids, 1, k, &[start.num_experts()], weights.as_deref())?;
        if max_copies.is_none() && copy_price == 0.0 {
            return batch::optimize_batch(&trace, &start, slots, model, options);
        }
        let limits = batch::CopyLimits {
            max_copies,
            copy_price,
        };
        batch::replan_batch(&trace, &start, slots, model, options, limits)
    })?;
    Ok(PyPlacement {
        inner: std::sync::Arc::new(placement),
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(batch_time, m)?)?;
    m.add_function(wrap_pyfunction!(batch_split, m)?)?;
    m.add_function(wrap_pyfunction!(simulate_steps, m)?)?;
    m.add_function(wrap_pyfunction!(optimize_batch, m)?)?;
    Ok(())
}
