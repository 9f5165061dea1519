"""SGLang's --init-expert-location file: physical_to_logical_map, one row per decoder layer of
the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from moefast.io.engines.slots import (
    as_list,
    default_map,
    engine_rows,
    from_maps,
    need,
)
from moefast.io.layouts import ModelLayout
from moefast.placement import ModelPlacement


def write(model: ModelPlacement, layout: ModelLayout) -> dict[str, Any]:
    ids, rows = engine_rows(model, layout)
    table = np.tile(default_map(rows.shape[1], model.num_experts), (layout.num_layers, 1))
    for layer, row in zip(ids, rows, strict=True):
        if layer in layout.mtp_layers:
            # SGLang builds DeepSeek's NextN draft layer as decoder layer 0 (deepseek_nextn.py).
            if 0 in layout.moe_layers:
                raise ValueError(
                    f"{layout.name}: the MTP layer would read row 0, which is a MoE layer"
                )
            table[0] = row
        else:
            table[layer] = row
    return {"physical_to_logical_map": table.tolist()}


def read(path: Path, data: dict, num_gpus: int | None, num_experts: int | None) -> ModelPlacement:
    """A placement from an SGLang map; ``num_gpus`` is needed (the file does not record it)."""
    rows = as_list(data["physical_to_logical_map"], path, "physical_to_logical_map")
    g = need(num_gpus, "num_gpus", path, "sglang")
    # SGLang loads each GPU's slots as given: a repeated expert misroutes its tokens.
    return from_maps(rows, list(range(len(rows))), g, num_experts, path, distinct=True)
