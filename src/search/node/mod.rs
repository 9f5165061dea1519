//! The node-aware searches, on layer times with communication (`crate::cost::topology`):
//! one token's time (`place`) and sampled batches' (`batch`).

pub mod batch;
pub mod place;
