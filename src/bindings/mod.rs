//! The Python binding layer (`moefast._core`): each submodule converts arguments,
//! calls the core with the GIL released and converts results. No algorithm lives here.

use numpy::{PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::error::MoeError;

mod optimize;
mod batch;
mod table;

impl From<MoeError> for PyErr {
    fn from(err: MoeError) -> PyErr {
        match err {
            MoeError::Value(m) => PyValueError::new_err(m),
            MoeError::Type(m) => PyTypeError::new_err(m),
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
        return Err(PyTypeError::new_err(format!("{name} must hold {what}, got dtype {dt}")));
    }
    if kind == "u" && size > 0 {
        // uint64 ids above i64::MAX would wrap on conversion: compare before it.
        let max: u64 = arr.call_method0("max")?.extract()?;
        if max > i64::MAX as u64 {
            return Err(PyValueError::new_err(format!("{name} holds id {max}, out of range")));
        }
    }
    np.call_method1("ascontiguousarray", (arr, dtype))
}

pub fn ids_2d<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<PyReadonlyArray2<'py, i64>> {
    Ok(as_array(obj, name, 2, "iu", "int64", "integer expert ids")?.extract()?)
}

pub fn weights_1d<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<PyReadonlyArray1<'py, f64>> {
    Ok(as_array(obj, name, 1, "iuf", "float64", "real numbers")?.extract()?)
}

#[pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    table::register(m)?;
    optimize::register(m)?;
    batch::register(m)?;
    Ok(())
}
