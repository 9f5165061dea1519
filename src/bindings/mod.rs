//! The Python binding layer (`moefast._core`): each submodule converts arguments,
//! calls the core with the GIL released and converts results. No algorithm lives here.

use pyo3::exceptions::{PyOverflowError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBool;

use crate::error::MoeError;
use crate::limits;

mod batch;
mod eplb;
mod input;
mod interrupt;
mod optimize;
mod replan;
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
    replan::register(m)?;
    m.add_function(wrap_pyfunction!(interrupt::interrupt, m)?)?;
    Ok(())
}
