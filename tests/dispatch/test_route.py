"""The dispatch's checks and the kinds of arrays it takes and returns."""

from __future__ import annotations

import moefast as mf
import numpy as np
import pytest
from moefast.dispatch import ReplicaTable, route
from support.optional import require

SLOTS = np.array([0, 2, 0, 3, 1, 4])


def test_dtype_and_empty_batches() -> None:
    table = ReplicaTable(SLOTS, 3)
    out = route(np.array([[0, 1]], dtype=np.int32), table)
    assert out.dtype == np.int32 and SLOTS[out].tolist() == [[0, 1]]
    assert route(np.zeros((0, 2), dtype=np.int64), table).shape == (0, 2)
    empty = route(np.zeros((0, 2), dtype=np.int64), table, cost_model=mf.CostModel(1.0, 1.0))
    assert empty.shape == (0, 2)


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        (np.array([[0, 5]]), r"expert 5, out of range \[0, 5\)"),
        (np.array([[-1, 0]]), "expert -1"),
        (np.array([0, 1]), r"\[tokens, k\]"),
    ],
)
def test_bad_ids_are_named(ids, match) -> None:
    with pytest.raises(ValueError, match=match):
        route(ids, ReplicaTable(SLOTS, 3))


def test_bad_arguments_are_named() -> None:
    with pytest.raises(TypeError, match="ReplicaTable"):
        route(np.array([[0]]), SLOTS)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="CostModel"):
        route(np.array([[0]]), ReplicaTable(SLOTS, 3), cost_model=(1.0, 1.0))  # type: ignore[arg-type]


def test_torch_keeps_device_and_dtype() -> None:
    torch = require("torch")
    out = route(torch.tensor([[0, 1], [2, 4]], dtype=torch.int32), ReplicaTable(SLOTS, 3))
    assert out.dtype == torch.int32 and out.device.type == "cpu"
    assert SLOTS[out.numpy()].tolist() == [[0, 1], [2, 4]]
