//! What a placement costs: the semi-matching of one token's experts to GPUs (`matching`),
//! decode costs of a table (`decode`) and under an engine's map per rank (`rank_maps`), step times of batches (`batch`) and layer times with
//! communication (`topology`).

pub mod batch;
pub mod bounds;
pub mod decode;
pub mod dispatch;
pub mod matching;
pub mod rank_maps;
pub mod topology;
