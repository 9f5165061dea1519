//! Inputs from Python: numpy arrays copied once into owned Rust memory, then checked, and
//! integer arguments read with errors that name them.
//!
//! The core runs with the GIL released, when another Python thread may write to the
//! caller's array: a view of it (as `numpy.ascontiguousarray` gives for an array that
//! already has the right layout) could change between the checks and their use. Every
//! array is therefore read exactly once, element by element with the GIL held, into a
//! `Vec` nobody else sees; checks and work then read only that copy.

use numpy::{
    Element, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBool;

/// An array copied out of Python: row-major values and the shape.
pub struct Owned<T> {
    pub data: Vec<T>,
    pub shape: Vec<usize>,
}

/// `obj` as a numpy array of `ndim` dimensions whose dtype kind is one of `kinds`
/// (empty arrays of any kind pass, so `[]` is an empty id list).
fn checked_array<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    ndim: usize,
    kinds: &str,
    what: &str,
) -> PyResult<Bound<'py, PyUntypedArray>> {
    let py = obj.py();
    let arr = py.import("numpy")?.call_method1("asarray", (obj,))?;
    let arr = arr.cast_into::<PyUntypedArray>().map_err(|_| {
        PyTypeError::new_err(format!("{name} must be a numpy array or a nested list"))
    })?;
    if arr.ndim() != ndim {
        return Err(PyValueError::new_err(format!(
            "{name} must be a {ndim}-dimensional array, got shape {:?}",
            arr.shape()
        )));
    }
    let kind = arr.dtype().kind() as char;
    if !kinds.contains(kind) && arr.len() > 0 {
        return Err(PyTypeError::new_err(format!(
            "{name} must hold {what}, got dtype {}",
            arr.dtype().str()?
        )));
    }
    Ok(arr)
}

/// Copies `arr` if its dtype is `T` in native byte order (None otherwise).
fn copy_as<T, U>(
    arr: &Bound<'_, PyUntypedArray>,
    convert: impl Fn(T) -> PyResult<U>,
) -> PyResult<Option<Vec<U>>>
where
    T: Element + Copy,
{
    let Ok(typed) = arr.cast::<PyArrayDyn<T>>() else {
        return Ok(None);
    };
    let view = typed
        .try_readonly()
        .map_err(|e| PyValueError::new_err(format!("cannot read the array: {e}")))?;
    let view = view.as_array();
    let mut out = Vec::with_capacity(view.len());
    for &x in view.iter() {
        out.push(convert(x)?);
    }
    Ok(Some(out))
}

/// Any other layout (byte-swapped, odd dtypes) through numpy's own cast to `dtype`.
fn cast_copy<'py, T: Element + Copy>(
    arr: &Bound<'py, PyUntypedArray>,
    dtype: &str,
) -> PyResult<Vec<T>> {
    let fresh = arr.call_method1("astype", (dtype,))?;
    let typed = fresh.cast::<PyArrayDyn<T>>()?;
    let view = typed
        .try_readonly()
        .map_err(|e| PyValueError::new_err(format!("cannot read the array: {e}")))?;
    Ok(view.as_array().iter().copied().collect())
}

/// Integer expert ids (any integer dtype) as an owned i64 array of `ndim` dimensions.
pub fn ids(obj: &Bound<'_, PyAny>, name: &str, ndim: usize) -> PyResult<Owned<i64>> {
    let arr = checked_array(obj, name, ndim, "iu", "integer expert ids")?;
    let shape = arr.shape().to_vec();
    if arr.len() == 0 {
        return Ok(Owned {
            data: Vec::new(),
            shape,
        });
    }
    let big = |x: u64| {
        i64::try_from(x)
            .map_err(|_| PyValueError::new_err(format!("{name} holds id {x}, out of range")))
    };
    let data = if let Some(v) = copy_as::<i64, i64>(&arr, Ok)? {
        v
    } else if let Some(v) = copy_as::<i32, i64>(&arr, |x| Ok(x.into()))? {
        v
    } else if let Some(v) = copy_as::<u64, i64>(&arr, big)? {
        v
    } else if let Some(v) = copy_as::<u32, i64>(&arr, |x| Ok(x.into()))? {
        v
    } else if let Some(v) = copy_as::<i16, i64>(&arr, |x| Ok(x.into()))? {
        v
    } else if let Some(v) = copy_as::<u16, i64>(&arr, |x| Ok(x.into()))? {
        v
    } else if let Some(v) = copy_as::<i8, i64>(&arr, |x| Ok(x.into()))? {
        v
    } else if let Some(v) = copy_as::<u8, i64>(&arr, |x| Ok(x.into()))? {
        v
    } else if arr.dtype().kind() == b'u' {
        let wide: Vec<u64> = cast_copy(&arr, "uint64")?;
        wide.into_iter().map(big).collect::<PyResult<_>>()?
    } else {
        cast_copy(&arr, "int64")?
    };
    Ok(Owned { data, shape })
}

/// Real numbers (any integer or float dtype) as an owned f64 array of `ndim` dimensions.
/// Values are not checked here: the core refuses NaN, infinities and negatives where
/// they matter, on this copy.
pub fn reals(obj: &Bound<'_, PyAny>, name: &str, ndim: usize) -> PyResult<Owned<f64>> {
    let arr = checked_array(obj, name, ndim, "iuf", "real numbers")?;
    let shape = arr.shape().to_vec();
    let data = if let Some(v) = copy_as::<f64, f64>(&arr, Ok)? {
        v
    } else if let Some(v) = copy_as::<f32, f64>(&arr, |x| Ok(x.into()))? {
        v
    } else {
        cast_copy(&arr, "float64")?
    };
    Ok(Owned { data, shape })
}

/// A bool array (numpy bool dtype) as owned bools; any nonzero byte is True.
pub fn bools(obj: &Bound<'_, PyAny>, name: &str, ndim: usize) -> PyResult<Owned<bool>> {
    let arr = checked_array(obj, name, ndim, "b", "bool values")?;
    let shape = arr.shape().to_vec();
    if arr.len() == 0 {
        return Ok(Owned {
            data: Vec::new(),
            shape,
        });
    }
    // Read as bytes: a numpy bool may hold any byte (through a uint8 view), which is not
    // a valid Rust bool.
    let bytes = arr.call_method1("view", ("uint8",))?;
    let bytes = bytes.cast::<PyUntypedArray>()?;
    let data = match copy_as::<u8, bool>(bytes, |x| Ok(x != 0))? {
        Some(v) => v,
        None => cast_copy::<u8>(bytes, "uint8")?
            .into_iter()
            .map(|x| x != 0)
            .collect(),
    };
    Ok(Owned { data, shape })
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

/// `v` as a non-negative int named `name`.
pub fn non_negative(name: &str, v: &Bound<'_, PyAny>) -> PyResult<u64> {
    let v = int_arg(v, name)?;
    u64::try_from(v)
        .map_err(|_| PyValueError::new_err(format!("{name} must be non-negative, got {v}")))
}
