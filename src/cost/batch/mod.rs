//! Batches (docs/cost-model.md#a-batch): the cost model of one expert serving n tokens, the time of a
//! layer for a batch of tokens, step-time simulation over traces, and placement search
//! against sampled batches. No Python here.
//!
//! - `cost_model`: f(n), the time of one expert serving n tokens;
//! - `flow`: token-load balancing by max-flow;
//! - `step_time`: the solver of one layer's time for a batch (per-expert token counts);
//! - `batch_time`: that time for a batch given as token rows, with its input checks;
//! - `simulate`: step times of batches drawn from a trace;
//! - `sample`: the fixed sample of batches that search scores placements on;
//! - `rounds`: expert rounds of sampled batches, kept per batch to bound a move's gain;

pub mod batch_time;
pub mod cost_model;
pub mod flow;
pub mod rounds;
pub mod sample;
pub mod simulate;
pub mod step_time;

pub use batch_time::{batch_split, batch_time};
pub use cost_model::CostModel;
pub use step_time::StepTimeSolver;
