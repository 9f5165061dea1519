//! moefast's core: subset tables, placements and their exact costs, with no Python in
//! it. The `python` feature adds the one binding module (`bindings`).

pub mod batch;
pub mod cancel;
pub mod cost;
pub mod eplb;
pub mod error;
pub mod layout;
pub mod limits;
pub mod matching;
pub mod optimize;
pub mod placement;
pub mod replan;
pub mod rng;
pub mod table;
pub mod topology;
pub mod topology_batch;
pub mod topology_cost;
pub mod topology_groups;
pub mod topology_place;

#[cfg(feature = "python")]
mod bindings;

pub use error::{MoeError, Result};
pub use optimize::{fill_free_slots, optimize};
pub use placement::Placement;
pub use table::SubsetTable;
