//! Bindings of subset tables, placements and their costs.

use std::sync::Arc;

use numpy::{PyArray1, PyArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::input::{self, count_arg, int_arg};
use crate::cost::decode;
use crate::model::placement::Placement;
use crate::model::table::SubsetTable;

/// What `SubsetTable.__reduce__` returns: `_restore` and (rows, weights, num_experts,
/// original_weight).
type Reduced<'py> = (
    Bound<'py, PyAny>,
    (Bound<'py, PyAny>, Bound<'py, PyAny>, usize, f64),
);

/// A table constructor's checked input: ids (flat), k, weights, number of experts.
type Input = (Vec<i64>, usize, Option<Vec<f64>>, usize);

/// The frequency table of co-activated expert subsets of one layer.
#[pyclass(name = "SubsetTable", module = "moefast", frozen)]
pub struct PySubsetTable {
    pub inner: Arc<SubsetTable>,
}

impl PySubsetTable {
    fn wrap(t: SubsetTable) -> Self {
        PySubsetTable { inner: Arc::new(t) }
    }

    /// The checked ids (flat, with k), weights and expert count of a constructor's input.
    fn input(
        ids: &Bound<'_, PyAny>,
        name: &str,
        num_experts: &Bound<'_, PyAny>,
        weights: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Input> {
        let num_experts = count_arg(num_experts, "num_experts", 1)?;
        let ids = input::ids(ids, name, 2)?;
        let k = ids.shape[1];
        if k == 0 {
            return Err(PyValueError::new_err(format!(
                "{name} has 0 columns: k must be at least 1"
            )));
        }
        let weights = weights.map(|w| input::reals(w, "weights", 1)).transpose()?;
        Ok((ids.data, k, weights.map(|w| w.data), num_experts))
    }

    fn build(
        py: Python<'_>,
        ids: &Bound<'_, PyAny>,
        name: &str,
        num_experts: &Bound<'_, PyAny>,
        weights: Option<&Bound<'_, PyAny>>,
        counted: bool,
    ) -> PyResult<Self> {
        let (ids, k, weights, num_experts) = Self::input(ids, name, num_experts, weights)?;
        let table = py.detach(|| match (counted, weights.as_deref()) {
            (false, Some(w)) => SubsetTable::from_subsets(&ids, k, num_experts, w),
            (_, w) => SubsetTable::from_topk(&ids, k, num_experts, w),
        })?;
        Ok(Self::wrap(table))
    }
}

#[pymethods]
impl PySubsetTable {
    /// Counts the subsets of a [tokens, k] array of expert ids (any integer dtype,
    /// rows in any order). A subset's weight is its token count, or the sum of the
    /// optional per-token `weights`.
    #[staticmethod]
    #[pyo3(signature = (topk, num_experts, weights=None))]
    fn from_topk(
        py: Python<'_>,
        topk: &Bound<'_, PyAny>,
        num_experts: &Bound<'_, PyAny>,
        weights: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        Self::build(py, topk, "topk", num_experts, weights, true)
    }

    /// `from_topk`, and for each token the row of the table holding its subset
    /// (int64 [tokens]): a token's cost under a placement is its row's, e.g.
    /// `subset_costs(table, placement)[rows]`.
    #[staticmethod]
    #[pyo3(signature = (topk, num_experts, weights=None))]
    fn from_topk_with_rows<'py>(
        py: Python<'py>,
        topk: &Bound<'py, PyAny>,
        num_experts: &Bound<'py, PyAny>,
        weights: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(Self, Bound<'py, PyArray1<i64>>)> {
        let (ids, k, weights, num_experts) = Self::input(topk, "topk", num_experts, weights)?;
        let (table, rows) = py.detach(|| {
            SubsetTable::from_topk_with_rows(&ids, k, num_experts, weights.as_deref())
                .map(|(t, rows)| (t, rows.into_iter().map(i64::from).collect::<Vec<i64>>()))
        })?;
        Ok((Self::wrap(table), PyArray1::from_vec(py, rows)))
    }

    /// A table from subsets [n, k] and their weights [n]; repeated rows add up.
    #[staticmethod]
    #[pyo3(signature = (subsets, weights, num_experts))]
    fn from_subsets(
        py: Python<'_>,
        subsets: &Bound<'_, PyAny>,
        weights: &Bound<'_, PyAny>,
        num_experts: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        Self::build(py, subsets, "subsets", num_experts, Some(weights), false)
    }

    /// One table of the rows of all `tables` (same num_experts and k), equal rows adding
    /// their weights: the table `from_topk` gives over the concatenated tokens, same order.
    #[staticmethod]
    fn merge(py: Python<'_>, tables: Vec<PyRef<'_, PySubsetTable>>) -> PyResult<Self> {
        let inner: Vec<Arc<SubsetTable>> = tables.iter().map(|t| t.inner.clone()).collect();
        let table = py.detach(|| {
            let refs: Vec<&SubsetTable> = inner.iter().map(|t| t.as_ref()).collect();
            SubsetTable::merge(&refs)
        })?;
        Ok(Self::wrap(table))
    }

    #[getter]
    fn subsets<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let flat: Vec<i64> = self.inner.subsets().iter().map(|&e| e as i64).collect();
        Ok(PyArray1::from_vec(py, flat)
            .reshape([self.inner.len(), self.inner.k()])?
            .into_any())
    }

    #[getter]
    fn weights<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        PyArray1::from_slice(py, self.inner.weights())
    }

    #[getter]
    fn num_experts(&self) -> usize {
        self.inner.num_experts()
    }

    #[getter]
    fn k(&self) -> usize {
        self.inner.k()
    }

    #[getter]
    fn total_weight(&self) -> f64 {
        self.inner.total_weight()
    }

    /// Share of the unpruned table's weight kept (1.0 unless pruned).
    #[getter]
    fn coverage(&self) -> f64 {
        self.inner.coverage()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// A new table: the shortest prefix of rows whose weight share reaches `coverage`,
    /// and/or at most `max_subsets` rows.
    #[pyo3(signature = (coverage=None, max_subsets=None))]
    fn prune(
        &self,
        coverage: Option<f64>,
        max_subsets: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let max_subsets = max_subsets
            .map(|n| count_arg(n, "max_subsets", 1))
            .transpose()?;
        Ok(Self::wrap(self.inner.prune(coverage, max_subsets)?))
    }

    /// Weight of the rows holding each expert (token load per expert), float [E].
    fn expert_load<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        PyArray1::from_vec(py, self.inner.expert_load())
    }

    /// The rows holding each expert, as CSR arrays `(offsets [E+1], rows)`: the rows of
    /// expert e are `rows[offsets[e]:offsets[e+1]]`, ascending.
    fn expert_index<'py>(
        &self,
        py: Python<'py>,
    ) -> (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>) {
        let index = self.inner.expert_index();
        (
            PyArray1::from_vec(py, index.offsets.iter().map(|&o| o as i64).collect()),
            PyArray1::from_vec(py, index.rows.iter().map(|&r| r as i64).collect()),
        )
    }

    /// Pickling and copying: the rows (uint16 [n, k]), weights, num_experts and the
    /// weight of the unpruned table, rebuilt exactly by `_restore`.
    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Reduced<'py>> {
        let py = slf.py();
        let t = &slf.get().inner;
        let rows = PyArray1::from_slice(py, t.subsets())
            .reshape([t.len(), t.k()])?
            .into_any();
        let weights = PyArray1::from_slice(py, t.weights()).into_any();
        let restore = slf.get_type().getattr("_restore")?;
        Ok((
            restore,
            (rows, weights, t.num_experts(), t.original_weight()),
        ))
    }

    #[classmethod]
    fn _restore(
        _cls: &Bound<'_, pyo3::types::PyType>,
        py: Python<'_>,
        subsets: &Bound<'_, PyAny>,
        weights: &Bound<'_, PyAny>,
        num_experts: &Bound<'_, PyAny>,
        original_weight: f64,
    ) -> PyResult<Self> {
        let table = Self::build(py, subsets, "subsets", num_experts, Some(weights), false)?;
        let inner = (*table.inner)
            .clone()
            .with_original_weight(original_weight)?;
        Ok(Self::wrap(inner))
    }

    fn __repr__(&self) -> String {
        format!(
            "SubsetTable(subsets={}, num_experts={}, k={}, total_weight={}, coverage={:.4})",
            self.inner.len(),
            self.inner.num_experts(),
            self.inner.k(),
            self.inner.total_weight(),
            self.inner.coverage()
        )
    }
}

/// Which GPUs hold a replica of each expert.
#[pyclass(name = "Placement", module = "moefast", frozen, eq)]
#[derive(PartialEq)]
pub struct PyPlacement {
    pub inner: Arc<Placement>,
}

#[pymethods]
impl PyPlacement {
    /// A placement from a bool array [num_experts, num_gpus]: True where GPU g holds expert e.
    #[new]
    fn new(replicas: &Bound<'_, PyAny>) -> PyResult<Self> {
        let arr = input::bools(replicas, "replicas", 2)?;
        let (e, g) = (arr.shape[0], arr.shape[1]);
        Ok(PyPlacement {
            inner: Arc::new(Placement::from_matrix(&arr.data, e, g)?),
        })
    }

    /// A placement from one list of GPU ids per expert.
    #[staticmethod]
    fn from_lists(
        lists: Vec<Vec<Bound<'_, PyAny>>>,
        num_gpus: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let num_gpus = count_arg(num_gpus, "num_gpus", 1)?;
        let mut converted = Vec::with_capacity(lists.len());
        for (e, list) in lists.iter().enumerate() {
            let mut gpus = Vec::with_capacity(list.len());
            for g in list {
                // True would pass as GPU 1: ids must be ints.
                let g = int_arg(g, &format!("the GPU id of expert {e}"))?;
                if g < 0 {
                    return Err(PyValueError::new_err(format!(
                        "expert {e} is placed on GPU {g}, out of range [0, {num_gpus})"
                    )));
                }
                gpus.push(g as usize);
            }
            converted.push(gpus);
        }
        Ok(PyPlacement {
            inner: Arc::new(Placement::from_lists(&converted, num_gpus)?),
        })
    }

    /// bool array [num_experts, num_gpus].
    #[getter]
    fn replicas<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let m = self.inner.to_matrix();
        Ok(PyArray1::from_vec(py, m)
            .reshape([self.inner.num_experts(), self.inner.num_gpus()])?
            .into_any())
    }

    #[getter]
    fn num_experts(&self) -> usize {
        self.inner.num_experts()
    }

    #[getter]
    fn num_gpus(&self) -> usize {
        self.inner.num_gpus()
    }

    /// Experts held by each GPU, int [num_gpus].
    #[getter]
    fn slots_used<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        PyArray1::from_vec(
            py,
            self.inner
                .slots_used()
                .into_iter()
                .map(|x| x as i64)
                .collect(),
        )
    }

    /// Pickling and copying: the bool matrix [num_experts, num_gpus].
    fn __reduce__<'py>(
        slf: &Bound<'py, Self>,
    ) -> PyResult<(Bound<'py, PyAny>, (Bound<'py, PyAny>,))> {
        let replicas = slf.get().replicas(slf.py())?;
        Ok((slf.get_type().into_any(), (replicas,)))
    }

    /// One ascending list of GPU ids per expert.
    fn to_lists(&self) -> Vec<Vec<usize>> {
        self.inner.to_lists()
    }

    fn __repr__(&self) -> String {
        format!(
            "Placement(num_experts={}, num_gpus={}, replicas={})",
            self.inner.num_experts(),
            self.inner.num_gpus(),
            self.inner.num_replicas()
        )
    }
}

/// The exact cost (expert rounds of the busiest GPU) of every subset of the table, int [n].
#[pyfunction]
fn subset_costs<'py>(
    py: Python<'py>,
    table: &PySubsetTable,
    placement: &PyPlacement,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let costs = py.detach(|| decode::subset_costs(&table.inner, &placement.inner))?;
    Ok(PyArray1::from_vec(
        py,
        costs.into_iter().map(|c| c as i64).collect(),
    ))
}

/// The weighted mean subset cost (expert rounds per token) of the table under the placement.
#[pyfunction]
fn expected_cost(py: Python<'_>, table: &PySubsetTable, placement: &PyPlacement) -> PyResult<f64> {
    Ok(py.detach(|| decode::expected_cost(&table.inner, &placement.inner))?)
}

/// The cost no placement on `num_gpus` GPUs can beat: ceil(k / G); with `slots_per_gpu`,
/// the collision bound of `crate::cost::bounds`, which reads the table.
#[pyfunction]
#[pyo3(signature = (table, num_gpus, slots_per_gpu=None))]
fn lower_bound(
    py: Python<'_>,
    table: &PySubsetTable,
    num_gpus: &Bound<'_, PyAny>,
    slots_per_gpu: Option<&Bound<'_, PyAny>>,
) -> PyResult<f64> {
    let num_gpus = count_arg(num_gpus, "num_gpus", 1)?;
    let Some(slots) = slots_per_gpu.filter(|s| !s.is_none()) else {
        return Ok(decode::lower_bound(&table.inner, num_gpus)?);
    };
    let slots = count_arg(slots, "slots_per_gpu", 1)?;
    Ok(py.detach(|| crate::cost::bounds::collision_bound(&table.inner, num_gpus, slots))?)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySubsetTable>()?;
    m.add_class::<PyPlacement>()?;
    m.add_function(wrap_pyfunction!(subset_costs, m)?)?;
    m.add_function(wrap_pyfunction!(expected_cost, m)?)?;
    m.add_function(wrap_pyfunction!(lower_bound, m)?)?;
    Ok(())
}
