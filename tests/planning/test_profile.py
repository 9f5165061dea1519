import moefast as mf
import numpy as np
import pytest
from moefast.evaluate.heldout import choose_split
from moefast.io.engines.slots import default_map
from moefast.planning.profile import (
    DEFAULT_PROFILE,
    ServingProfile,
    engine_default,
    fewer_slots,
    redundant_flag,
)


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
    assert {"greedy", "EPLB", "greedy (0 redundant)", "EPLB (0 redundant)"} <= set(expected)
    assert any(n.startswith("engine default") for n in expected)
    assert "searched for SGLang static dispatch (B = 1)" in expected  # the engine's dispatch
    # The batch-aware search runs at the slot count of the fastest cheap candidate only.
    redundant = serving["candidates"][best]["redundant_experts"]
    assert serving["redundant_experts"] == redundant == 4 * model.slots_per_gpu - 16
    aware = [n for n in expected if n.startswith("batch-aware (B=16)")]
    assert len(aware) == 1 and serving["candidates"][aware[0]]["redundant_experts"] == redundant
    # The written placement is the recommended one, scored on the same held-out steps
    # under SGLang's static dispatch, and every figure says so.
    assert serving["dispatch"] == "sglang-static"
    held = choose_split(trace, 0.2, None, 0).test
    again = mf.simulate(held, model, [1, 16], cm, steps=32, dispatch="sglang-static")
    times = serving["candidates"][best]["step_time_us"]
    key = "B = 16 step time, held-out, SGLang static dispatch"
    assert again[1]["mean_step_time"] == pytest.approx(times[key])
    # Without a profile the plan is the greedy's, as before.
    plain = mf.plan(trace, 4, 5)
    assert "serving" not in plain.settings
    with pytest.raises(ValueError, match="needs cost_model"):
        mf.plan(trace, 4, 5, profile=profile)


def test_the_profile_dispatch_is_the_engines_unless_named():
    assert ServingProfile((1,)).rule == "sglang-static"
    assert ServingProfile((1,), engine="trtllm").rule == "trtllm"
    assert ServingProfile((1,), engine="vllm-ascend").rule == "vllm-ascend"
    assert ServingProfile((1,), engine="native").rule == "best"
    assert ServingProfile((1,), dispatch="best").rule == "best"
    assert ServingProfile((1, 64), (0.2, 0.8)).search_size == 64
    assert ServingProfile((1, 64)).search_size == 1  # the smallest of equal shares
    with pytest.raises(ValueError, match="unknown dispatch"):
        ServingProfile((1,), dispatch="round-robin")


def test_fewer_slots_go_down_to_no_redundant_expert_or_say_why_not():
    assert fewer_slots(16, 4, 6) == ([5, 4], "")
    counts, why = fewer_slots(60, 8, 9)
    assert counts == [8] and "60 experts do not divide over 8 GPUs" in why
    assert "the fewest is 4" in why


def test_redundant_flag_per_engine():
    assert redundant_flag("sglang", 32, 256) == "--ep-num-redundant-experts 32"
    assert redundant_flag("trtllm", 32, 256).startswith("num_slots: 288")
    assert '"num_redundant_experts": 32' in redundant_flag("vllm-ascend", 32, 256)


def test_best_dispatch_has_no_searched_candidate_and_no_sweep_when_asked():
    trace = mf.synthetic_trace(600, num_experts=16, k=2, num_layers=1, seed=4)
    cm = mf.CostModel(18.0, 0.02, 1.05)
    profile = ServingProfile(
        (1, 8), steps=16, batch_aware=False, dispatch="best", fewer_slots=False
    )
    serving = mf.plan(trace, 4, 5, profile=profile, cost_model=cm).settings["serving"]
    assert not any(n.startswith("searched") for n in serving["candidates"])
    assert {c["redundant_experts"] for c in serving["candidates"].values()} == {4}
    assert (
        "B = 8 step time, held-out, best replica choice"
        in serving["candidates"]["EPLB"]["step_time_us"]
    )
