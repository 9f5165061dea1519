//! Batches (DESIGN 2.2): the cost model of one expert serving n tokens, the time of a
//! layer for a batch of tokens, step-time simulation over traces, and placement search
//! against sampled batches. No Python here.

pub mod cost_model;
pub mod flow;
pub mod semi_matching;
pub mod step_time;

pub use cost_model::CostModel;
pub use step_time::{batch_time, StepTimeSolver};
pub mod optimize;
pub mod simulate;
