//! What every module uses: the one error type, the size limits, the seeded generator and
//! the process-wide stop flag.

pub mod cancel;
pub mod error;
pub mod limits;
pub mod rng;
