"""Model layouts: exact integers, bounded by the layer limit of the ids."""

from __future__ import annotations

import moefast as mf
import pytest
from moefast._util.checks import MAX_LAYERS
from moefast.io.layouts import ModelLayout, model_layout


@pytest.mark.parametrize(
    ("num_layers", "moe_layers"),
    [(61.9, [3, 10]), (61, [3.7, 10.2]), (True, [0]), (4, (True, 2)), (4, "12"), (4, 3)],
)
def test_layouts_refuse_what_is_not_an_int_instead_of_truncating(num_layers, moe_layers):
    with pytest.raises(TypeError):
        model_layout(None, num_layers, moe_layers)
    with pytest.raises(TypeError):
        ModelLayout("x", num_layers, moe_layers)


def test_num_layers_is_bounded_like_layer_ids(tmp_path):
    with pytest.raises(ValueError, match=f"at most {MAX_LAYERS}"):
        model_layout(None, 50_000_000, [3, 4, 5])
    with pytest.raises(ValueError, match=f"at most {MAX_LAYERS}"):
        model_layout(None, 50_000_000)
    model = mf.plan(mf.synthetic_trace(50, 8, 2, 1, seed=1, layer_ids=[3]), 2, 4, progress=False)
    with pytest.raises(ValueError, match=f"at most {MAX_LAYERS}"):
        model.save(tmp_path / "p.json", "sglang", num_layers=50_000_000, moe_layers=[3, 4])
    assert not (tmp_path / "p.json").exists()
    assert model_layout(None, MAX_LAYERS, [3]).num_layers == MAX_LAYERS


def test_optional_counts_are_checked():
    with pytest.raises(TypeError, match="num_experts"):
        ModelLayout("x", 4, (1, 2), num_experts=2.5)
    with pytest.raises(ValueError, match="k must be at least 1"):
        ModelLayout("x", 4, (1, 2), k=0)
    assert ModelLayout("x", 4, [1, 2], 8, 2).moe_layers == (1, 2)
