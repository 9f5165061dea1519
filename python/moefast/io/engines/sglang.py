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
    # SGLang loads each GPU's slots as given, repeats included (init_by_eplb makes them).
    return from_maps(rows, list(range(len(rows))), g, num_experts, path)


def with_mtp_row(model: ModelPlacement, layout: ModelLayout) -> ModelPlacement:
    """The file's layers plus the model's MTP layer read from row 0 (where the writer puts
    it), when row 0 is a dense row that holds more than the default map."""
    if len(layout.mtp_layers) != 1 or 0 in layout.moe_layers or 0 not in model.layer_ids:
        return model
    mtp = layout.mtp_layers[0]
    if mtp in model.layer_ids or model.slots is None:
        return model
    row = model.slots[model.layer_ids.index(0)]
    if np.array_equal(row, default_map(row.size, model.num_experts)):
        return model
    return ModelPlacement(
        [*model.placements, model.placements[model.layer_ids.index(0)]],
        model.slots_per_gpu,
        [*model.layer_ids, mtp],
        slots=np.vstack([model.slots, row]),
    )
