//! Binding of the DeepSeek EPLB transcription (`crate::search::eplb`).

use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;

use super::input::{self, count_arg};
use crate::search::eplb::{self, Topology};

type Int2d<'py> = Bound<'py, numpy::PyArray2<i64>>;

/// (phy2log int64 [layers, num_replicas], phyrank int64 [layers, num_replicas],
/// logcnt int64 [layers, num_experts]) of DeepSeek's `rebalance_experts` on the float32
/// loads `weight` [layers, num_experts].
#[pyfunction]
#[pyo3(signature = (weight, num_replicas, num_groups, num_nodes, num_gpus))]
fn rebalance_experts<'py>(
    py: Python<'py>,
    weight: &Bound<'py, PyAny>,
    num_replicas: &Bound<'py, PyAny>,
    num_groups: &Bound<'py, PyAny>,
    num_nodes: &Bound<'py, PyAny>,
    num_gpus: &Bound<'py, PyAny>,
) -> PyResult<(Int2d<'py>, Int2d<'py>, Int2d<'py>)> {
    let topo = Topology {
        num_replicas: count_arg(num_replicas, "num_replicas", 1)?,
        num_groups: count_arg(num_groups, "num_groups", 1)?,
        num_nodes: count_arg(num_nodes, "num_nodes", 1)?,
        num_gpus: count_arg(num_gpus, "num_gpus", 1)?,
    };
    // Copied once (input.rs): the balancer runs without the GIL while the caller may change
    // the array. DeepSeek's EPLB computes in float32: rounded as numpy's astype would.
    let array = input::reals(weight, "weight", 2)?;
    let (layers, experts) = (array.shape[0], array.shape[1]);
    let weight: Vec<f32> = array.data.iter().map(|&w| w as f32).collect();
    let r = py.detach(|| eplb::rebalance_experts(&weight, experts, topo))?;
    let as_2d = |v: Vec<usize>, cols: usize| -> PyResult<Int2d<'py>> {
        let v: Vec<i64> = v.into_iter().map(|x| x as i64).collect();
        PyArray1::from_vec(py, v).reshape([layers, cols])
    };
    Ok((
        as_2d(r.phy2log, r.num_replicas)?,
        as_2d(r.phyrank, r.num_replicas)?,
        as_2d(r.logcnt, experts)?,
    ))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(rebalance_experts, m)?)?;
    Ok(())
}
