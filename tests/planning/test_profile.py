import moefast as mf
import numpy as np
import pytest
from moefast.evaluate.heldout import choose_split
from moefast.io.engines.slots import default_map
from moefast.planning.profile import DEFAULT_PROFILE, ServingProfile, engine_default


def test_parse_sizes_and_shares():
    profile = ServingProfile.parse("64:0.8,1:0.2")
    assert profile.batch_sizes == (1, 64) and profile.weights == pytest.approx((0.2, 0.8))
    assert ServingProfile.parse("1,16").weights == (0.5, 0.5)
    assert DEFAULT_PROFILE.batch_sizes == (1, 64) and not DEFAULT_PROFILE.batch_aware


@pytest.mark.parametrize(
    "text, match",
    [("1,x", "--batch-sizes must be"), ("0", ">= 1"), ("4,4", "distinct"), ("1:0,2:0", "all be 0")],
)
def test_bad_profiles_are_refused(text, match):
    with pytest.raises(ValueError, match=match):
        ServingProfile.parse(text)


def test_engine_default_is_the_map_slot_p_expert_p_mod_e():
    placement = engine_default(6, 2, 4)
    slots = default_map(8, 6)  # [0 1 2 3 4 5 0 1]
    expected = np.zeros((6, 2), dtype=bool)
    expected[slots, np.arange(8) // 4] = True
    assert np.array_equal(placement.replicas, expected)


def test_plan_with_a_profile_returns_the_fastest_candidate():
    trace = mf.synthetic_trace(1000, num_experts=16, k=4, num_layers=2, seed=2)
    cm = mf.CostModel(18.0, 0.02, 1.05)
    profile = ServingProfile((1, 16), steps=32, max_evaluations=200)
    model = mf.plan(trace, 4, 5, profile=profile, cost_model=cm)
    serving = model.settings["serving"]
    best = serving["recommended"]
    expected = {n: c["expected_step_time_us"] for n, c in serving["candidates"].items()}
    assert expected[best] == min(expected.values())
    assert {"greedy", "batch-aware (B=16)", "EPLB"} <= set(expected)
    assert any(n.startswith("engine default") for n in expected)
    # The written placement is the recommended one, scored on the same held-out steps.
    held = choose_split(trace, 0.2, None, 0).test
    again = mf.simulate(held, model, [1, 16], cm, steps=32)  # the same draws: the same sizes
    times = serving["candidates"][best]["step_time_us"]
    assert again[1]["mean_step_time"] == pytest.approx(times["B = 16 step time, held-out"])
    # Without a profile the plan is the greedy's, as before.
    plain = mf.plan(trace, 4, 5)
    assert "serving" not in plain.settings
    with pytest.raises(ValueError, match="needs cost_model"):
        mf.plan(trace, 4, 5, profile=profile)
