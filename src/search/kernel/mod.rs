//! The decode search's kernel, which the decode search and re-planning share: what is read
//! from the table (`problem`), a layout with its row costs kept current (`state`), the exact
//! gain of every new replica (`gains`) and the caller's work and time budgets (`effort`).

pub mod effort;
pub mod gains;
pub mod problem;
pub mod state;
