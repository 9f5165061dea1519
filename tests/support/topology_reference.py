"""Plain references of the topology tests: which nodes a placement's expert groups occupy."""

from __future__ import annotations


def brute_group_nodes(placement, num_groups, gpn):
    size = placement.num_experts // num_groups
    nodes = []
    for group in range(num_groups):
        on = {
            g // gpn
            for e in range(group * size, (group + 1) * size)
            for g in placement.to_lists()[e]
        }
        if len(on) != 1:
            return None
        nodes.append(on.pop())
    return nodes
