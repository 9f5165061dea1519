"""moefast.placement: ModelPlacement, one placement per MoE layer with what produced it."""

import moefast as mf
import numpy as np
import pytest
from moefast.placement import ModelPlacement


def full_placement(num_experts: int, num_gpus: int, slots: int, shift: int) -> mf.Placement:
    """Expert e on GPUs (e + shift + j) % num_gpus for the first replicas that fit."""
    lists = [[] for _ in range(num_experts)]
    for g in range(num_gpus):
        for j in range(slots):
            lists[(g * slots + j + shift) % num_experts].append(g)
    return mf.Placement.from_lists(lists, num_gpus)


def test_layers_replicas_and_costs():
    layers = [full_placement(8, 4, 3, shift) for shift in range(3)]
    model = ModelPlacement(layers, 3, [3, 5, 9], layer_costs=[1.5, 1.25, 2.0])
    assert len(model) == 3 and model[1] == layers[1] and list(model) == layers
    assert model.num_experts == 8 and model.num_gpus == 4
    assert model.replicas().shape == (3, 8, 4)
    np.testing.assert_array_equal(model.replicas()[2], layers[2].replicas)
    assert model.expected_cost == pytest.approx(4.75)
    again = ModelPlacement.from_replicas(model.replicas(), 3, layer_ids=[3, 5, 9])
    assert list(again) == layers and again.layer_ids == [3, 5, 9]


def test_default_layer_ids_and_missing_costs():
    model = ModelPlacement([full_placement(8, 4, 2, 0)], np.int64(2))
    assert model.layer_ids == [0] and model.slots_per_gpu == 2
    with pytest.raises(ValueError, match="carries no layer costs"):
        model.expected_cost  # noqa: B018  # the property raises


def test_layers_must_agree_and_fit_their_slots():
    four = full_placement(8, 4, 2, 0)
    with pytest.raises(ValueError, match="same experts and GPUs"):
        ModelPlacement([four, full_placement(8, 2, 4, 0)], 4)
    with pytest.raises(ValueError, match="puts 3 experts on one GPU, more than slots_per_gpu = 2"):
        ModelPlacement([four, full_placement(8, 4, 3, 0)], 2)
    with pytest.raises(ValueError, match="lower_bounds must have one entry per layer"):
        ModelPlacement([four], 2, lower_bounds=[1.0, 1.0])
    with pytest.raises(ValueError, match="at least one layer"):
        ModelPlacement([], 2)


def test_model_placement_checks_its_fields():
    p = full_placement(8, 4, 2, 0)
    with pytest.raises(TypeError, match=r"placements\[1\] must be a moefast.Placement, got int"):
        ModelPlacement([p, 3], 9)
    with pytest.raises(TypeError, match="slots_per_gpu must be an int, got float"):
        ModelPlacement([p], 9.5)
    with pytest.raises(ValueError, match="layer_ids repeat a layer"):
        ModelPlacement([p, p], 9, layer_ids=[3, 3])
    with pytest.raises(TypeError, match="layer_ids must hold ints"):
        ModelPlacement([p, p], 9, layer_ids=["a", "b"])
    assert ModelPlacement([p, p], 9, layer_ids=np.array([3, 4])).layer_ids == [3, 4]
