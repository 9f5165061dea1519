//! moefast's core: subset tables, placements and their exact costs, with no Python in
//! it. The `python` feature adds the one binding module (`bindings`).
//!
//! `util` (the error type, limits, the generator, the stop flag), `model` (what is placed and
//! where: tables, placements, the mutable layout, topologies, expert groups), `cost` (what a
//! placement costs: one token, a batch, with communication), `search` (placements that lower
//! those costs, and re-planning from a served one).

pub mod cost;
pub mod model;
pub mod search;
pub mod util;

#[cfg(feature = "python")]
mod bindings;
#[cfg(test)]
mod testing;

pub use model::placement::Placement;
pub use model::table::SubsetTable;
pub use search::decode::{fill_free_slots, optimize};
pub use util::error::{MoeError, Result};
