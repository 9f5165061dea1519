//! Bindings of the topology: presets, times with communication, the node-aware search.

use std::sync::Arc;

use numpy::PyArray1;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::input;
use super::input::count_arg;
use super::interrupt::interruptible;
use super::table::{PyPlacement, PySubsetTable};
use crate::cost;
use crate::cost::batch::CostModel;
use crate::model::groups::Groups;
use crate::model::topology::{Topology, Transfer};
use crate::search::{groups, node};

/// A transfer as Python passes it: (bytes_per_token, 3 latencies us, 3 bandwidths GB/s),
/// link classes in the order same GPU, NVLink, RDMA.
type TransferTuple = (f64, [f64; 3], [f64; 3]);
/// (gpus_per_node, per_pair, dispatch, combine).
type TopologyTuple = (usize, bool, TransferTuple, TransferTuple);

fn transfer((bytes_per_token, latency_us, bandwidth_gb_s): TransferTuple) -> Transfer {
    Transfer {
        bytes_per_token,
        latency_us,
        bandwidth_gb_s,
    }
}

fn topology(t: TopologyTuple) -> Topology {
    Topology {
        gpus_per_node: t.0,
        per_pair: t.1,
        dispatch: transfer(t.2),
        combine: transfer(t.3),
    }
}

fn tuple(t: &Topology) -> TopologyTuple {
    let tr = |x: &Transfer| (x.bytes_per_token, x.latency_us, x.bandwidth_gb_s);
    (t.gpus_per_node, t.per_pair, tr(&t.dispatch), tr(&t.combine))
}

/// The preset `name` ("h800_normal" or "h800_low_latency") as a topology tuple.
#[pyfunction]
fn topology_preset(name: &str) -> PyResult<TopologyTuple> {
    match name {
        "h800_normal" => Ok(tuple(&Topology::h800_normal())),
        "h800_low_latency" => Ok(tuple(&Topology::h800_low_latency())),
        _ => Err(PyValueError::new_err(format!(
            "unknown topology preset {name:?}: expected \"h800_normal\" or \"h800_low_latency\""
        ))),
    }
}

/// Dispatch + combine time (us) of `tokens` tokens with `k` experts each reaching
/// `node_sum` nodes in all, on `num_gpus` GPUs.
#[pyfunction]
fn topology_comm_us(
    topology: TopologyTuple,
    tokens: usize,
    k: usize,
    node_sum: usize,
    num_gpus: usize,
) -> PyResult<f64> {
    let t = self::topology(topology);
    t.check(num_gpus)?;
    Ok(t.batch_comm_us(tokens, k, node_sum, num_gpus))
}

/// Time (us) of each row of the table: round_us per expert round of the busiest GPU plus
/// dispatch and combine, the replica choice exact.
#[pyfunction]
fn topology_subset_times<'py>(
    py: Python<'py>,
    table: &PySubsetTable,
    placement: &PyPlacement,
    topology: TopologyTuple,
    round_us: f64,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let t = self::topology(topology);
    let (table, placement) = (table.inner.clone(), placement.inner.clone());
    let times = py.detach(|| cost::topology::subset_times(&table, &placement, &t, round_us))?;
    Ok(PyArray1::from_vec(py, times))
}

/// (achievable time, lower bound) in us of one layer for a batch [tokens, k].
#[pyfunction]
#[pyo3(signature = (topk, placement, alpha, beta, p, topology))]
fn topology_batch_time(
    py: Python<'_>,
    topk: &Bound<'_, PyAny>,
    placement: &PyPlacement,
    alpha: f64,
    beta: f64,
    p: f64,
    topology: TopologyTuple,
) -> PyResult<(f64, f64)> {
    let model = CostModel::new(alpha, beta, p)?;
    let t = self::topology(topology);
    let ids = input::ids(topk, "topk_batch", 2)?;
    let k = ids.shape[1];
    if ids.shape[0] == 0 {
        return Ok((0.0, 0.0));
    }
    let ids = ids.data;
    let placement = placement.inner.clone();
    Ok(py.detach(|| cost::topology::batch_time_bounds(&ids, k, &placement, model, &t))?)
}

/// (copies, expected time in us) after each move of a search.
type WalkPath = Vec<(usize, f64)>;

/// (placement, replicas moved, path): `start` improved for the expected one-token time
/// under the topology, adding at most `max_moves` replicas that `start` lacks; with
/// `num_groups`, every expert group stays on the node it has in `start`. The path:
/// (copies, expected time in us) from the start after each move (re-planning), or the
/// start and the end (a fresh plan). `copy_price`: (in node, across nodes) in us per
/// token per copy (None: free); a move is made only if it gains more than its copies' price.
#[pyfunction]
#[pyo3(signature = (table, start, slots_per_gpu, topology, round_us, max_moves, max_evaluations, seed, target=None, num_groups=None, copy_price=None))]
#[allow(clippy::too_many_arguments)]
fn improve_placement(
    py: Python<'_>,
    table: &PySubsetTable,
    start: &PyPlacement,
    slots_per_gpu: &Bound<'_, PyAny>,
    topology: TopologyTuple,
    round_us: f64,
    max_moves: Option<&Bound<'_, PyAny>>,
    max_evaluations: &Bound<'_, PyAny>,
    seed: &Bound<'_, PyAny>,
    target: Option<&PyPlacement>,
    num_groups: Option<&Bound<'_, PyAny>>,
    copy_price: Option<(f64, f64)>,
) -> PyResult<(PyPlacement, usize, WalkPath)> {
    let (in_node, across_nodes) = copy_price.unwrap_or((0.0, 0.0));
    let target = target.map(|t| t.inner.clone());
    let limits = node::place::SearchLimits {
        max_moves: max_moves
            .map(|m| count_arg(m, "max_moves", 0))
            .transpose()?,
        copy_price: node::place::CopyPrice {
            in_node,
            across_nodes,
        },
        max_evaluations: count_arg(max_evaluations, "max_evaluations", 0)?,
        seed: count_arg(seed, "seed", 0)? as u64,
        target: target.as_deref(),
        num_groups: num_groups
            .map(|n| count_arg(n, "num_groups", 1))
            .transpose()?,
    };
    let slots = count_arg(slots_per_gpu, "slots_per_gpu", 1)?;
    let t = self::topology(topology);
    let (table, start) = (table.inner.clone(), start.inner.clone());
    let walk = interruptible(py, || {
        node::place::improve_walk(&table, &start, slots, &t, round_us, limits)
    })?;
    let inner = Arc::new(walk.placement);
    Ok((PyPlacement { inner }, walk.moved, walk.path))
}

/// The options that the batch searches with communication share, checked once when built
/// from Python's keyword arguments: the machine (slots per GPU, cost model, topology) and
/// the sample and effort of the search.
#[pyclass(name = "BatchSearchOptions", module = "moefast._core", frozen)]
pub struct PyBatchSearchOptions {
    slots: usize,
    model: CostModel,
    topology: Topology,
    options: node::batch::BatchOptions,
}

#[pymethods]
impl PyBatchSearchOptions {
    /// Each argument checked and named (ValueError or TypeError otherwise).
    #[new]
    #[pyo3(signature = (*, slots_per_gpu, alpha, beta, p, topology, batch_size, num_batches, seed, max_evaluations, num_groups=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        slots_per_gpu: &Bound<'_, PyAny>,
        alpha: f64,
        beta: f64,
        p: f64,
        topology: TopologyTuple,
        batch_size: &Bound<'_, PyAny>,
        num_batches: &Bound<'_, PyAny>,
        seed: &Bound<'_, PyAny>,
        max_evaluations: &Bound<'_, PyAny>,
        num_groups: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let model = CostModel::new(alpha, beta, p)?;
        let options = node::batch::BatchOptions {
            batch_size: count_arg(batch_size, "batch_size", 1)?,
            num_batches: count_arg(num_batches, "num_batches", 1)?,
            seed: count_arg(seed, "seed", 0)? as u64,
            max_evaluations: count_arg(max_evaluations, "max_evaluations", 0)?,
            num_groups: num_groups
                .map(|n| count_arg(n, "num_groups", 1))
                .transpose()?,
        };
        Ok(PyBatchSearchOptions {
            slots: count_arg(slots_per_gpu, "slots_per_gpu", 1)?,
            model,
            topology: self::topology(topology),
            options,
        })
    }
}

/// (placement, mean time us on the sample): the best of `starts` on a fixed sample of
/// batches of the table, improved for the layer time with communication.
#[pyfunction]
#[pyo3(signature = (table, starts, options, score_only=false, validation=false))]
fn improve_batch_placement(
    py: Python<'_>,
    table: &PySubsetTable,
    starts: Vec<PyRef<'_, PyPlacement>>,
    options: &PyBatchSearchOptions,
    score_only: bool,
    validation: bool,
) -> PyResult<(PyPlacement, f64)> {
    let PyBatchSearchOptions {
        slots,
        model,
        topology: t,
        options,
    } = *options;
    let table = table.inner.clone();
    let starts: Vec<_> = starts.iter().map(|s| (*s.inner).clone()).collect();
    if score_only {
        let [one] = &starts[..] else {
            return Err(PyValueError::new_err("score_only takes one placement"));
        };
        let mean = py.detach(|| {
            node::batch::sample_mean_time(&table, one, model, &t, options, validation)
        })?;
        return Ok((
            PyPlacement {
                inner: Arc::new(one.clone()),
            },
            mean,
        ));
    }
    let (p, mean) = interruptible(py, || {
        node::batch::improve_batch(&table, &starts, slots, model, &t, options)
    })?;
    Ok((PyPlacement { inner: Arc::new(p) }, mean))
}

/// (placement, mean time us on the sample, copies, path): `current` re-planned by the
/// batch search with communication, at most `max_moves` replicas `current` lacks on their
/// GPU, a step made only if it gains more than `copy_price` us per copy, half the
/// candidates toward `target` when given; the path as (copies, sample mean time) after
/// each step, `current` first.
#[pyfunction]
#[pyo3(signature = (table, current, options, max_moves=None, copy_price=0.0, target=None))]
fn replan_batch_placement(
    py: Python<'_>,
    table: &PySubsetTable,
    current: &PyPlacement,
    options: &PyBatchSearchOptions,
    max_moves: Option<&Bound<'_, PyAny>>,
    copy_price: f64,
    target: Option<&PyPlacement>,
) -> PyResult<(PyPlacement, f64, usize, WalkPath)> {
    let PyBatchSearchOptions {
        slots,
        model,
        topology: t,
        options,
    } = *options;
    let max_moves = max_moves
        .map(|m| count_arg(m, "max_moves", 0))
        .transpose()?;
    let (table, current) = (table.inner.clone(), current.inner.clone());
    let target = target.map(|t| t.inner.clone());
    let limits = node::batch::MoveLimits {
        max_moves,
        copy_price,
        target: target.as_deref(),
    };
    let walk = interruptible(py, || {
        node::batch::replan_batch(&table, &current, slots, model, &t, options, limits)
    })?;
    let inner = Arc::new(walk.placement);
    Ok((PyPlacement { inner }, walk.mean, walk.moved, walk.path))
}

/// The node of each expert group when every group lives on one node (ValueError naming
/// the first stray replica otherwise).
#[pyfunction]
fn topology_group_nodes(
    placement: &PyPlacement,
    num_groups: &Bound<'_, PyAny>,
    gpus_per_node: &Bound<'_, PyAny>,
) -> PyResult<Vec<usize>> {
    Ok(node::batch::group_nodes(
        &placement.inner,
        count_arg(num_groups, "num_groups", 1)?,
        count_arg(gpus_per_node, "gpus_per_node", 1)?,
    )?)
}

/// Checks a topology for `num_gpus` GPUs and, with `num_groups`, that the groups can be
/// placed one per node with `slots_per_gpu` slots (ValueError saying why not).
#[pyfunction]
#[pyo3(signature = (topology, num_experts, num_gpus, slots_per_gpu, num_groups=None))]
fn topology_check(
    topology: TopologyTuple,
    num_experts: usize,
    num_gpus: usize,
    slots_per_gpu: usize,
    num_groups: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let t = self::topology(topology);
    t.check(num_gpus)?;
    if let Some(n) = num_groups {
        let n = count_arg(n, "num_groups", 1)?;
        Groups::new(num_experts, num_gpus, t.gpus_per_node, slots_per_gpu, n)?;
    }
    Ok(())
}

/// `placement` made to keep each expert group on one node, every GPU full (groups placed
/// on nodes for the topology's communication against round_us per crowded round).
#[pyfunction]
fn topology_regroup(
    py: Python<'_>,
    table: &PySubsetTable,
    placement: &PyPlacement,
    slots_per_gpu: &Bound<'_, PyAny>,
    topology: TopologyTuple,
    round_us: f64,
    num_groups: &Bound<'_, PyAny>,
) -> PyResult<PyPlacement> {
    let slots = count_arg(slots_per_gpu, "slots_per_gpu", 1)?;
    let n = count_arg(num_groups, "num_groups", 1)?;
    let t = self::topology(topology);
    let (table, placement) = (table.inner.clone(), placement.inner.clone());
    let p = py.detach(|| groups::regroup(&table, &placement, slots, &t, round_us, n))?;
    Ok(PyPlacement { inner: Arc::new(p) })
}

/// A placement that keeps each group on one node, built from the table's co-activation.
#[pyfunction]
fn topology_spread_groups(
    py: Python<'_>,
    table: &PySubsetTable,
    num_gpus: &Bound<'_, PyAny>,
    slots_per_gpu: &Bound<'_, PyAny>,
    topology: TopologyTuple,
    round_us: f64,
    num_groups: &Bound<'_, PyAny>,
) -> PyResult<PyPlacement> {
    let g = count_arg(num_gpus, "num_gpus", 1)?;
    let slots = count_arg(slots_per_gpu, "slots_per_gpu", 1)?;
    let n = count_arg(num_groups, "num_groups", 1)?;
    let t = self::topology(topology);
    let table = table.inner.clone();
    let p = py.detach(|| groups::spread_groups(&table, g, slots, &t, round_us, n))?;
    Ok(PyPlacement { inner: Arc::new(p) })
}

/// DeepSeek EPLB's hierarchical placement of the table's load, or None when EPLB would
/// take its global policy.
#[pyfunction]
fn topology_eplb_hierarchical(
    py: Python<'_>,
    table: &PySubsetTable,
    num_gpus: &Bound<'_, PyAny>,
    slots_per_gpu: &Bound<'_, PyAny>,
    gpus_per_node: &Bound<'_, PyAny>,
    num_groups: &Bound<'_, PyAny>,
) -> PyResult<Option<PyPlacement>> {
    let g = count_arg(num_gpus, "num_gpus", 1)?;
    let slots = count_arg(slots_per_gpu, "slots_per_gpu", 1)?;
    let gpn = count_arg(gpus_per_node, "gpus_per_node", 1)?;
    let n = count_arg(num_groups, "num_groups", 1)?;
    let table = table.inner.clone();
    let p = py.detach(|| groups::eplb_hierarchical(&table, g, slots, gpn, n))?;
    Ok(p.map(|p| PyPlacement { inner: Arc::new(p) }))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyBatchSearchOptions>()?;
    m.add_function(wrap_pyfunction!(improve_batch_placement, m)?)?;
    m.add_function(wrap_pyfunction!(replan_batch_placement, m)?)?;
    m.add_function(wrap_pyfunction!(topology_group_nodes, m)?)?;
    m.add_function(wrap_pyfunction!(topology_preset, m)?)?;
    m.add_function(wrap_pyfunction!(topology_comm_us, m)?)?;
    m.add_function(wrap_pyfunction!(topology_subset_times, m)?)?;
    m.add_function(wrap_pyfunction!(topology_batch_time, m)?)?;
    m.add_function(wrap_pyfunction!(improve_placement, m)?)?;
    m.add_function(wrap_pyfunction!(topology_check, m)?)?;
    m.add_function(wrap_pyfunction!(topology_regroup, m)?)?;
    m.add_function(wrap_pyfunction!(topology_eplb_hierarchical, m)?)?;
    m.add_function(wrap_pyfunction!(topology_spread_groups, m)?)?;
    Ok(())
}
