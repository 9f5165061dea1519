import moefast as mf
import numpy as np
import pytest
from moefast.evaluate.serving import ServingScores, regime, score_candidates, settings_rows


def _scores(times: dict[str, dict[int, float]], weights=(0.5, 0.5)) -> ServingScores:
    rounds = {name: np.array([1.0]) for name in times}
    return ServingScores((1, 64), weights, times, rounds, "held-out", "", "cm")


def test_recommendation_is_the_least_expected_step_time_and_warns_per_size():
    scores = _scores(
        {
            "greedy": {1: 30.0, 64: 160.0},
            "EPLB": {1: 40.0, 64: 150.0},
            "engine default (SGLang)": {1: 45.0, 64: 170.0},
        }
    )
    assert scores.recommended == "greedy"  # 95 against 95 and 107.5: the first of equals
    (warning,) = scores.warnings()
    assert "at B = 64 greedy is 6.7% slower than EPLB" in warning
    assert "B = 64 step time, held-out" in warning
    # All weight on B = 64: EPLB, which no reference beats there.
    heavy = _scores(scores.step_times, weights=(0.0, 1.0))
    assert heavy.recommended == "EPLB" and heavy.warnings() == []
    assert "held-out" in heavy.headline() and "B = 64" in heavy.headline()


def test_settings_name_their_regime_and_give_back_the_table():
    scores = _scores({"greedy": {1: 30.0, 64: 160.0}, "EPLB": {1: 40.0, 64: 150.0}})
    record = scores.as_settings()
    assert record["candidates"]["EPLB"]["step_time_us"] == {
        regime(1, "held-out"): 40.0,
        regime(64, "held-out"): 150.0,
    }
    assert settings_rows(record) == scores.rows()


def test_step_times_are_simulate_summed_over_layers():
    trace = mf.synthetic_trace(600, num_experts=16, k=2, num_layers=2, seed=1)
    tables = trace.tables()
    greedy = [mf.optimize(t, 4, 5) for t in tables]
    cm = mf.CostModel(10.0, 0.1)
    scores = score_candidates(
        trace, tables, {"greedy": greedy}, [1, 8], [1, 1], cm, basis="in-sample", note="", steps=20
    )
    direct = mf.simulate(trace, greedy, [1, 8], cm, seed=0, steps=20)
    assert scores.step_times["greedy"] == {
        r["batch_size"]: pytest.approx(r["mean_step_time"]) for r in direct
    }
    assert scores.rounds["greedy"].tolist() == [
        pytest.approx(mf.expected_cost(t, p)) for t, p in zip(tables, greedy, strict=True)
    ]
