"""Replica tables read from engine maps: one slot per (expert, GPU), ordered for ties."""

from __future__ import annotations

import moefast as mf
import numpy as np
import pytest
from moefast.dispatch import ReplicaTable


def test_one_slot_per_gpu_in_gpu_order() -> None:
    # 3 GPUs x 3 slots; expert 0 twice on GPU 0 (a repeat, as EPLB maps hold) and on GPU 2.
    slots = np.array([0, 0, 1, 2, 3, 1, 4, 0, 5])
    table = ReplicaTable(slots, 3)
    assert table.count.tolist() == [2, 2, 1, 1, 1, 1]
    assert table.physical[0, :2].tolist() == [0, 7]
    assert table.gpu[0, :2].tolist() == [0, 2]
    assert table.physical[1, :2].tolist() == [2, 5]
    assert (slots[table.physical] == np.arange(6)[:, None]).all()
    assert table.placement.replicas[0].tolist() == [True, False, True]


def test_rank_orders_replicas_by_distance() -> None:
    slots = np.array([0, 1, 0, 2, 0, 3])
    assert ReplicaTable(slots, 3, rank=1).gpu[0].tolist() == [1, 2, 0]
    assert ReplicaTable(slots, 3, rank=2).gpu[0].tolist() == [2, 0, 1]


def test_from_placement_matches_the_written_map() -> None:
    # GPU 0 holds experts 0, 1, 2 in slots 0-2; GPU 1 holds 0, 3, 4 in slots 3-5.
    placement = mf.Placement.from_lists([[0, 1], [0], [0], [1], [1]], num_gpus=2)
    table = ReplicaTable.from_placement(placement, 3)
    assert table.physical[:, 0].tolist() == [0, 1, 2, 4, 5]
    assert table.physical[0, 1] == 3


@pytest.mark.parametrize(
    ("slots", "gpus", "error", "match"),
    [
        (np.zeros((2, 2), dtype=int), 2, ValueError, "one layer's map"),
        (np.array([0.0, 1.0]), 1, TypeError, "integer expert ids"),
        (np.array([0, 1, 2]), 2, ValueError, "do not divide"),
        (np.array([0, -1]), 1, ValueError, "negative"),
        (np.array([0, 2]), 1, ValueError, "expert 1 has no physical slot"),
        (np.array([0, 1]), 0, ValueError, "num_gpus"),
    ],
)
def test_bad_maps_are_named(slots, gpus, error, match) -> None:
    with pytest.raises(error, match=match):
        ReplicaTable(slots, gpus)


def test_bad_rank_is_named() -> None:
    with pytest.raises(ValueError, match="rank"):
        ReplicaTable(np.array([0, 1]), 2, rank=2)
