//! The one error type of the core. The binding layer converts it once, at the boundary
//! (`From<MoeError> for PyErr`): `Value` becomes a ValueError, `Internal` a RuntimeError.
//! The core never sees Python types: wrong types are refused by the bindings.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum MoeError {
    /// An argument has an invalid value (ids out of range, wrong lengths, sizes that do
    /// not fit, ...).
    Value(String),
    /// A broken invariant of the core: a bug, never the caller's fault.
    Internal(String),
}

impl MoeError {
    pub fn value(msg: impl Into<String>) -> Self {
        MoeError::Value(msg.into())
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        MoeError::Internal(msg.into())
    }
}

impl fmt::Display for MoeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MoeError::Value(m) => f.write_str(m),
            MoeError::Internal(m) => write!(f, "internal error (a bug in moefast): {m}"),
        }
    }
}

impl std::error::Error for MoeError {}

pub type Result<T> = std::result::Result<T, MoeError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_say_they_are_bugs() {
        assert_eq!(MoeError::value("bad k").to_string(), "bad k");
        let msg = MoeError::internal("GPU 3 has 2 experts").to_string();
        assert!(msg.starts_with("internal error") && msg.ends_with("GPU 3 has 2 experts"));
    }
}
