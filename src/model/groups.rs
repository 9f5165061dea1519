//! Expert groups on nodes (group-limited routing): DeepSeek-V3 sends a token to the experts
//! of its top few groups of consecutive expert ids (8 groups of 32), assuming each group lives
//! on one node, so that a token reaches at most that many nodes. `Groups` checks that a
//! grouping can be placed at all: the groups are spread as evenly as possible over the nodes,
//! and a node must hold its groups' experts (at least one replica each) and fill each of its
//! GPUs with distinct experts of those groups. Placements that keep the groups on their nodes
//! are built in `crate::search::groups`.

use crate::util::error::{MoeError, Result};

/// A feasible grouping: `num_groups` groups of `size` consecutive expert ids on
/// `num_nodes` nodes of `gpus_per_node` GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Groups {
    pub num_groups: usize,
    pub size: usize,
    pub gpus_per_node: usize,
    pub num_nodes: usize,
}

impl Groups {
    /// The grouping, or a ValueError saying why it cannot be placed: `num_groups` must
    /// divide the experts, `gpus_per_node` the GPUs, the busiest node must hold its groups'
    /// experts in its slots, and the least busy must have as many experts as a GPU's slots.
    pub fn new(
        num_experts: usize,
        num_gpus: usize,
        gpus_per_node: usize,
        slots_per_gpu: usize,
        num_groups: usize,
    ) -> Result<Self> {
        if num_groups == 0 || num_experts % num_groups != 0 {
            return Err(MoeError::value(format!(
                "num_groups = {num_groups} must divide the {num_experts} experts"
            )));
        }
        if gpus_per_node == 0 || num_gpus % gpus_per_node != 0 {
            return Err(MoeError::value(format!(
                "gpus_per_node = {gpus_per_node} must divide the {num_gpus} GPUs"
            )));
        }
        let size = num_experts / num_groups;
        let num_nodes = num_gpus / gpus_per_node;
        let (most, least) = (num_groups.div_ceil(num_nodes), num_groups / num_nodes);
        let capacity = gpus_per_node * slots_per_gpu;
        if most * size > capacity {
            return Err(MoeError::value(format!(
                "num_groups = {num_groups} on {num_nodes} nodes: a node must hold {most} \
                 group(s) of {size} experts ({} experts), more than its {gpus_per_node} GPUs \
                 x {slots_per_gpu} slots",
                most * size
            )));
        }
        if least * size < slots_per_gpu {
            return Err(MoeError::value(if least == 0 {
                format!(
                    "num_groups = {num_groups} groups cannot cover the {num_nodes} nodes: a \
                     node without a group could hold no expert"
                )
            } else {
                format!(
                    "num_groups = {num_groups} on {num_nodes} nodes: a node with {least} \
                     group(s) has {} experts, fewer than the slots_per_gpu = {slots_per_gpu} \
                     distinct experts each of its GPUs holds",
                    least * size
                )
            }));
        }
        Ok(Groups {
            num_groups,
            size,
            gpus_per_node,
            num_nodes,
        })
    }

    pub fn group_of(&self, expert: usize) -> usize {
        expert / self.size
    }

    pub fn node_of_gpu(&self, gpu: usize) -> usize {
        gpu / self.gpus_per_node
    }
}
