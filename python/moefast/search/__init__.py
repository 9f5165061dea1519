"""One layer's placement search: `optimize` (the greedy, the baselines, the exact MILP, the batch
objective), the node-aware searches and re-planning within a move budget."""
