//! The Python binding layer (`moefast._core`): each submodule converts arguments,
//! calls the core with the GIL released and converts results. No algorithm lives here.

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::util::error::MoeError;
use crate::util::limits;

mod batch;
mod dispatch;
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
    dispatch::register(m)?;
    eplb::register(m)?;
    topology::register(m)?;
    replan::register(m)?;
    m.add_function(wrap_pyfunction!(interrupt::interrupt, m)?)?;
    Ok(())
}
