//! Placements that lower the costs of `crate::cost`: the decode search (`decode`, on the
//! shared `kernel`), EPLB, the batch-aware search (`batch`), the node-aware searches (`node`),
//! expert groups on nodes (`groups`) and re-planning from a served placement (`replan`).

pub mod batch;
pub mod decode;
pub mod eplb;
pub mod groups;
pub(crate) mod kernel;
pub mod node;
pub mod replan;
