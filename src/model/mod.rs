//! What is placed and where: a layer's subset table, the frozen placement, the mutable
//! layout the searches edit, the nodes of GPUs, and expert groups on nodes.

pub mod groups;
pub mod layout;
pub mod placement;
pub mod table;
pub mod topology;
