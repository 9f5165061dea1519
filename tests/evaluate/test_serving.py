import moefast as mf
import numpy as np
import pytest
from moefast.evaluate.serving import (
    TIE_TOLERANCE,
    ServingScores,
    dispatch_rounds,
    regime,
    score_candidates,
    settings_rows,
)
from moefast.search.dispatch import dispatch_cost


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


def test_a_loss_within_the_paired_standard_error_is_a_tie():
    rng = np.random.default_rng(0)
    eplb = 100 + rng.normal(0, 5, size=(2, 400))
    noisy = eplb + rng.normal(0, 4, size=(2, 400))  # means differ by noise only
    noisy[1] = eplb[1] * 1.05  # at B = 64: 5% slower on every step
    samples = {"greedy": noisy, "EPLB": eplb}
    times = {n: {1: float(r[0].mean()), 64: float(r[1].mean())} for n, r in samples.items()}
    rounds = {n: np.array([1.0]) for n in times}
    scores = ServingScores(
        (1, 64), (0.5, 0.5), times, rounds, "held-out", "", "cm", samples=samples
    )
    error = np.std(noisy[0] - eplb[0], ddof=1) / np.sqrt(400) / times["EPLB"][1]
    assert scores.tolerance("greedy", "EPLB", 1) == pytest.approx(max(TIE_TOLERANCE, 2 * error))
    assert scores.tolerance("greedy", "EPLB", 64) == pytest.approx(TIE_TOLERANCE)  # paired
    warnings, ties = scores.warnings("greedy"), scores.ties("greedy")
    assert len(warnings) == 1 and "at B = 64 greedy is 5.0% slower than EPLB" in warnings[0]
    if times["greedy"][1] > times["EPLB"][1]:
        assert len(ties) == 1 and "at B = 1" in ties[0] and "tie tolerance" in ties[0]


def test_figures_under_an_engine_dispatch_name_it():
    trace = mf.synthetic_trace(600, num_experts=16, k=2, num_layers=2, seed=1)
    tables = trace.tables()
    eplb = [mf.optimize(t, 4, 5, method="eplb") for t in tables]
    cm = mf.CostModel(10.0, 0.1)
    scores = score_candidates(
        trace,
        tables,
        {"EPLB": eplb},
        [1, 8],
        [1, 1],
        cm,
        basis="held-out",
        note="",
        steps=20,
        dispatch="sglang-static",
        compare_best=True,
    )
    direct = mf.simulate(trace, eplb, [1, 8], cm, steps=20, dispatch="sglang-static")
    assert [scores.step_times["EPLB"][b] for b in (1, 8)] == pytest.approx(
        [r["mean_step_time"] for r in direct]
    )
    best = mf.simulate(trace, eplb, [1, 8], cm, steps=20)
    assert [scores.best_step_times["EPLB"][b] for b in (1, 8)] == pytest.approx(
        [r["mean_step_time"] for r in best]
    )
    record = scores.as_settings()
    entry = record["candidates"]["EPLB"]
    assert regime(8, "held-out", "SGLang static dispatch") in entry["step_time_us"]
    assert "SGLang static dispatch" in record["headline"]
    assert record["rounds_regime"].endswith("held-out, SGLang static dispatch")
    header, _ = settings_rows(record)
    assert header[-2:] == ["B = 1 best choice (us)", "B = 8 best choice (us)"]
    # The first layer's rounds are those of its map drawn alone; the second's map is
    # drawn after the first's, as the engine draws its file.
    first = dispatch_cost(tables[0], eplb[0], "sglang-static")
    assert scores.rounds["EPLB"][0] == pytest.approx(first)
    best_rounds = dispatch_rounds(tables, eplb, "best")
    assert best_rounds.tolist() == pytest.approx(
        [mf.expected_cost(t, p) for t, p in zip(tables, eplb, strict=True)]
    )


def test_what_the_best_choice_would_run_is_the_least_expected_under_it():
    times = {"greedy": {1: 10.0, 64: 100.0}, "EPLB": {1: 12.0, 64: 98.0}}
    best = {"greedy": {1: 8.0, 64: 90.0}, "EPLB": {1: 9.0, 64: 80.0}}
    rounds = {name: np.ones(1) for name in times}
    static = ServingScores(
        (1, 64),
        (0.5, 0.5),
        times,
        rounds,
        "held-out",
        "",
        "cm",
        dispatch="sglang-static",
        redundant={"greedy": 0, "EPLB": 8},
        best_step_times=best,
    )
    alternative = static.with_best_choice()
    assert alternative is not None
    # greedy is recommended under the static rule (55 us); EPLB runs 44.5 us under the best.
    assert static.recommended == "greedy"
    assert alternative["candidate"] == "EPLB" and alternative["redundant_experts"] == 8
    assert alternative["expected_step_time_us"] == pytest.approx(44.5)
    assert alternative["below_recommended"] == pytest.approx(1 - 44.5 / 55.0)
    assert static.as_settings()["with_moefast_dispatch"] == alternative
    assert _scores(times).with_best_choice() is None
