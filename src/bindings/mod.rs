//! The Python binding layer (`moefast._core`): each submodule converts arguments,
//! calls the core with the GIL released and converts results. No algorithm lives here.

use numpy::{PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::{PyOverflowError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBool;

use crate::error::MoeError;
use crate::limits;

mod batch;
mod eplb;
mod optimize;
mod table;
mod topology;

impl From<MoeError> for PyErr {
    fn from(err: MoeError) -> PyErr {
        match err {
            MoeError::Value(m) => PyValueError::new_err(m),
            internal @ MoeError::Internal(_) => PyRuntimeError::new_err(internal.to_string()),
        }
    }
}

/// `obj` as a C-contiguous numpy array of `dtype` with `ndim` dimensions, refusing
/// arrays whose dtype kind is not one of `kinds` (so floats never pass as ids).
pub fn as_array<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    ndim: usize,
    kinds: &str,
    dtype: &str,
    what: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let py = obj.py();
    let np = py.import("numpy")?;
    let arr = np.call_method1("asarray", (obj,))?;
    let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
    let got_ndim: usize = arr.getattr("ndim")?.extract()?;
    if got_ndim != ndim {
        let shape = arr.getattr("shape")?.str()?;
        return Err(PyValueError::new_err(format!(
            "{name} must be a {ndim}-dimensional array, got shape {shape}"
        )));
    }
    let size: usize = arr.getattr("size")?.extract()?;
    if !kinds.contains(kind.as_str()) && size > 0 {
        let dt = arr.getattr("dtype")?.str()?;
        return Err(PyTypeError::new_err(format!(
            "{name} must hold {what}, got dtype {dt}"
        )));
    }
    if kind == "u" && size > 0 {
        // uint64 ids above i64::MAX would wrap on conversion: compare before it.
        let max: u64 = arr.call_method0("max")?.extract()?;
        if max > i64::MAX as u64 {
            return Err(PyValueError::new_err(format!(
                "{name} holds id {max}, out of range"
            )));
        }
    }
    np.call_method1("ascontiguousarray", (arr, dtype))
}

/// An integer argument as i64. pyo3's own conversion raises OverflowError (not a
/// ValueError) for ints beyond i64 or negative ints passed as usize, and takes True as 1;
/// here those are a ValueError and a TypeError naming the argument.
pub fn int_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<i64> {
    if obj.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "{name} must be an int, got bool"
        )));
    }
    obj.extract::<i64>().map_err(|err| {
        if err.is_instance_of::<PyOverflowError>(obj.py()) {
            PyValueError::new_err(format!("{name} = {obj} is out of range"))
        } else {
            let ty = obj
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default();
            PyTypeError::new_err(format!("{name} must be an int, got {ty}"))
        }
    })
}

/// `int_arg` that must be at least `min`, as usize.
pub fn count_arg(obj: &Bound<'_, PyAny>, name: &str, min: i64) -> PyResult<usize> {
    let v = int_arg(obj, name)?;
    if v < min {
        return Err(PyValueError::new_err(format!(
            "{name} must be at least {min}, got {v}"
        )));
    }
    Ok(v as usize)
}

pub fn ids_2d<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<PyReadonlyArray2<'py, i64>> {
    as_array(obj, name, 2, "iu", "int64", "integer expert ids")?.extract()
}

pub fn weights_1d<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<PyReadonlyArray1<'py, f64>> {
    as_array(obj, name, 1, "iuf", "float64", "real numbers")?.extract()
}

#[pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MAX_EXPERTS", limits::MAX_EXPERTS)?;
    m.add("MAX_K", limits::MAX_K)?;
    m.add("MAX_GPUS", limits::MAX_GPUS)?;
    m.add("MAX_BATCH", limits::MAX_BATCH)?;
    table::register(m)?;
    optimize::register(m)?;
    batch::register(m)?;
    eplb::register(m)?;
    topology::register(m)?;
    Ok(())
}
