//! The one error type of the core. The binding layer turns each variant into a
//! Python ValueError or TypeError once, at the boundary.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum MoeError {
    /// An argument has an invalid value (ids out of range, wrong lengths, ...).
    Value(String),
    /// An argument has the wrong kind (dtype, dimensions).
    Type(String),
}

impl MoeError {
    pub fn value(msg: impl Into<String>) -> Self {
        MoeError::Value(msg.into())
    }
}

impl fmt::Display for MoeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MoeError::Value(m) | MoeError::Type(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for MoeError {}

pub type Result<T> = std::result::Result<T, MoeError>;
