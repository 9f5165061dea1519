"""Held-out evaluation: splits, folds, per-token scoring, bootstrap intervals, plan(holdout=...),
learning curves and drift."""

from __future__ import annotations

import moefast
import numpy as np
import pytest
from moefast.data import GPTOSS20B_DECODE
from moefast.evaluate.heldout import MIN_HOLDOUT_TOKENS, cross_validated
from moefast.evaluate.learning_curve import learning_curve
from moefast.evaluate.scoring import UnitSums, token_costs, token_rows
from moefast.planning.plan import plan_layers
from moefast.splits import bootstrap_units, fold_positions
from moefast.trace import Trace
from support.reference import reference_cost


def topic_trace(tokens=800, layers=2, experts=12, k=3, requests=None, seed=0) -> Trace:
    """Tokens drawn from a few co-activated groups, so placements differ from baselines."""
    rng = np.random.default_rng(seed)
    groups = rng.permutation(experts).reshape(-1, k)
    topk = np.empty((tokens, layers, k), dtype=np.int64)
    for t in range(tokens):
        for layer in range(layers):
            if rng.random() < 0.7:
                topk[t, layer] = groups[rng.integers(0, min(2, len(groups)))]
            else:
                topk[t, layer] = rng.permutation(experts)[:k]
    ids = (
        None
        if requests is None
        else np.repeat(np.arange(requests), -(-tokens // requests))[:tokens]
    )
    return Trace(topk, experts, list(range(layers)), request_ids=ids)


def test_split_by_time_keeps_order():
    trace = topic_trace(100)
    train, test = trace.split(0.25)
    assert (train.num_tokens, test.num_tokens) == (75, 25)
    np.testing.assert_array_equal(test.topk, trace.topk[75:])
    np.testing.assert_array_equal(train.topk, trace.topk[:75])


def test_split_by_request_keeps_requests_whole():
    trace = topic_trace(200, requests=10)
    train, test = trace.split(0.3, by="request", seed=4)
    assert not set(train.request_ids) & set(test.request_ids)
    assert test.num_tokens >= 0.3 * 200
    assert train.num_tokens + test.num_tokens == 200
    again = trace.split(0.3, by="request", seed=4)[1]
    np.testing.assert_array_equal(again.request_ids, test.request_ids)


def test_split_refuses_bad_arguments():
    trace = topic_trace(50)
    with pytest.raises(ValueError, match="request_ids"):
        trace.split(0.2, by="request")
    with pytest.raises(ValueError, match="test_fraction"):
        trace.split(1.0)
    with pytest.raises(ValueError, match="by must be"):
        trace.split(0.2, by="tokens")


@pytest.mark.parametrize("by, requests", [("time", None), ("request", 7)])
def test_folds_partition_the_tokens(by, requests):
    trace = topic_trace(90, requests=requests)
    folds = fold_positions(trace, 3, by, seed=1)
    tested = np.sort(np.concatenate([test for _, test in folds]))
    np.testing.assert_array_equal(tested, np.arange(90))
    for train, test in folds:
        assert not set(train) & set(test)
        if by == "request":
            assert not set(trace.request_ids[train]) & set(trace.request_ids[test])


def test_npz_round_trip_keeps_request_ids(tmp_path):
    trace = topic_trace(30, requests=3)
    trace.save(tmp_path / "t.npz")
    back = moefast.load_trace(tmp_path / "t.npz")
    np.testing.assert_array_equal(back.request_ids, trace.request_ids)
    # Files without the array (written before request ids existed) still load.
    np.savez(tmp_path / "old.npz", topk=trace.topk, num_experts=np.int64(12))
    assert moefast.load_trace(tmp_path / "old.npz").request_ids is None


def test_bundled_trace_knows_its_answers():
    trace = moefast.load_trace(GPTOSS20B_DECODE)
    assert np.bincount(trace.request_ids).tolist() == [289, 116, 240]
    assert (np.diff(trace.request_ids) >= 0).all()


def test_jsonl_request_ids(tmp_path):
    path = tmp_path / "t.jsonl"
    lines = [
        '{"layer": 0, "experts": [0, 1], "token_idx": 0, "request_id": "b"}',
        '{"layer": 0, "experts": [1, 2], "token_idx": 0, "request_id": "a"}',
        '{"layer": 0, "experts": [2, 3], "token_idx": 1, "request_id": "a"}',
    ]
    path.write_text("\n".join(lines))
    trace = moefast.load_trace(path)
    assert trace.request_ids.tolist() == [0, 0, 1]


def test_sglang_request_ids_follow_runs_of_positions():
    from moefast.io.readers.sglang import trace_from_sglang_per_token

    ids = np.array([[[0, 1], [1, 2], [2, 3], [0, 3]]])  # one layer, 4 tokens
    record = {"forward_pass_id": 0, "topk_ids_of_layer": ids, "positions": [5, 6, 0, 9]}
    trace = trace_from_sglang_per_token([{"records": [record]}], num_experts=4)
    assert trace.request_ids.tolist() == [0, 0, 1, 2]


def test_token_costs_match_the_subset_costs():
    trace = topic_trace(300)
    placement = moefast.optimize(trace.table(0), 3, 4, method="contiguous")
    costs = token_costs(trace.topk[:, 0, :], 12, [placement])[0]
    expected = [reference_cost(set(row), placement.replicas) for row in trace.topk[:, 0, :]]
    np.testing.assert_array_equal(costs, expected)
    table = trace.table(0)
    rows = token_rows(table, trace.topk[:, 0, :])
    np.testing.assert_array_equal(table.subsets[rows], np.sort(trace.topk[:, 0, :], axis=1))


def test_token_rows_without_packing():
    # 2^16 experts x k = 5 does not fit a uint64 key: the byte-key path.
    topk = np.array([[0, 1, 2, 3, 65534], [5, 4, 3, 2, 1], [0, 1, 2, 3, 65534]])
    table = moefast.SubsetTable.from_topk(topk, 65535)
    rows = token_rows(table, topk)
    np.testing.assert_array_equal(table.subsets[rows], np.sort(topk, axis=1))


def test_held_out_figures_equal_expected_cost_on_the_test_part():
    trace = topic_trace(MIN_HOLDOUT_TOKENS + 100)
    model = moefast.plan(trace, 3, 5, holdout=0.25)
    train, test = trace.split(0.25)
    assert model.settings["cost_basis"] == "held-out"
    assert model.evaluation.basis == "held-out"
    for position, placement in enumerate(model.placements):
        assert model.layer_costs[position] == pytest.approx(
            moefast.expected_cost(test.table(position), placement), abs=1e-12
        )
    np.testing.assert_allclose(model.evaluate(test), model.layer_costs, atol=1e-12)
    # The baselines are planned on the train part and scored on the test part too.
    eplb = [moefast.optimize(t, 3, 5, method="eplb") for t in train.tables()]
    np.testing.assert_allclose(
        model.evaluation.costs["eplb"],
        [moefast.expected_cost(t, p) for t, p in zip(test.tables(), eplb, strict=True)],
    )
    # The placement was planned on the train part only.
    again = plan_layers(train.tables(), 3, 5)
    for p, q in zip(model.placements, again, strict=True):
        np.testing.assert_array_equal(p.replicas, q.replicas)
    low, high = model.settings["gain_interval_95"]
    assert low <= model.settings["gain_vs_best_baseline"] <= high


def test_small_traces_are_scored_in_sample_and_say_why():
    trace = topic_trace(MIN_HOLDOUT_TOKENS - 1)
    model = moefast.plan(trace, 3, 5)
    assert model.settings["cost_basis"] == "in-sample"
    assert "fewer than the 500 needed" in model.settings["cost_note"]
    np.testing.assert_allclose(model.layer_costs, model.evaluate(trace))
    off = moefast.plan(topic_trace(700), 3, 5, holdout=0)
    assert off.settings["cost_basis"] == "in-sample"
    tables = moefast.plan(topic_trace(700).tables(), 3, 5)
    assert "carry no tokens" in tables.settings["cost_note"]


def test_in_sample_scoring_on_given_tables_equals_scoring_that_builds_them():
    from moefast.evaluate.heldout import score_methods

    trace = topic_trace(700)
    model = moefast.plan(trace, 3, 5, holdout=0)
    placed = {m: list(p) for m, p in model.evaluation.placements.items()}
    built = score_methods(trace, placed, 3, "greedy", "in-sample", "n")
    given = score_methods(trace, placed, 3, "greedy", "in-sample", "n", 0, trace.tables())
    with_rows = score_methods(
        trace, placed, 3, "greedy", "in-sample", "n", 0, *trace.tables_with_rows()
    )
    for m in placed:
        np.testing.assert_array_equal(built.costs[m], given.costs[m])
        np.testing.assert_array_equal(built.costs[m], with_rows.costs[m])
        np.testing.assert_array_equal(built.costs[m], model.evaluation.costs[m])
    np.testing.assert_array_equal(built.lower_bounds, given.lower_bounds)
    np.testing.assert_array_equal(built.lower_bounds, with_rows.lower_bounds)
    assert built.gain_interval == given.gain_interval == model.evaluation.gain_interval
    assert with_rows.gain_interval == built.gain_interval


def test_bootstrap_interval_against_a_plain_loop():
    trace = topic_trace(200, layers=1)
    units, _ = bootstrap_units(trace)
    placed = {
        m: [moefast.optimize(trace.table(0), 3, 4, method=m)]
        for m in ("greedy", "round_robin", "contiguous")
    }
    sums = UnitSums(int(units.max()) + 1, 1, list(placed))
    sums.add(trace, units, placed)
    samples = sums.gain_samples("greedy", resamples=50, seed=3)
    cost = {m: token_costs(trace.topk[:, 0, :], 12, p)[0] for m, p in placed.items()}
    rng = np.random.default_rng(3)
    count = int(units.max()) + 1
    draws = rng.multinomial(count, np.full(count, 1 / count), size=50)
    for draw, got in zip(draws, samples, strict=True):
        w = draw[units]
        mean = {m: (c * w).sum() / w.sum() for m, c in cost.items()}
        best = min(mean["round_robin"], mean["contiguous"])
        assert got == pytest.approx((best - mean["greedy"]) / best)


def test_units_are_blocks_or_requests():
    units, what = bootstrap_units(topic_trace(125))
    assert what == "25 blocks of 5 consecutive tokens"
    assert np.bincount(units).tolist() == [5] * 25
    units, what = bootstrap_units(topic_trace(100, requests=25))
    assert what == "25 requests"


def test_cross_validated_scores_each_token_once_with_outside_placements():
    trace = topic_trace(120, layers=1, requests=3)

    def planner(tables):
        return plan_layers(tables, 3, 4)

    comparison = cross_validated(trace, planner, 3, 4, "greedy", 3, "request")
    expected, total = 0.0, 0
    for train_at, test_at in fold_positions(trace, 3, "request"):
        placement = planner(trace.select_tokens(train_at).tables())[0]
        test = trace.select_tokens(test_at).table(0)
        expected += moefast.expected_cost(test, placement) * len(test_at)
        total += len(test_at)
    assert comparison.costs["greedy"][0] == pytest.approx(expected / total)
    assert comparison.basis == "held-out"


def test_learning_curve_points_and_verdict():
    trace = topic_trace(400, layers=1)
    folds = [(np.arange(320), np.arange(320, 400))]

    def planner(tables):
        return plan_layers(tables, 3, 4)

    curve = learning_curve(trace, folds, planner, 3, 4)
    assert curve.train_tokens == [40, 80, 160, 320]
    placement = planner([trace.select_tokens(slice(0, 160)).table(0)])[0]
    test = trace.select_tokens(slice(320, 400))
    greedy = moefast.expected_cost(test.table(0), placement)
    base = min(
        moefast.expected_cost(
            test.table(0),
            moefast.optimize(trace.select_tokens(slice(0, 160)).table(0), 3, 4, method=m),
        )
        for m in ("contiguous", "round_robin", "eplb")
    )
    assert curve.gains[2] == pytest.approx((base - greedy) / base)
    assert curve.verdict == ("still rising" if curve.gains[3] - curve.gains[2] >= 0.01 else "flat")
    assert curve.verdict in curve.sentence()


def test_drift_windows():
    from moefast.evaluate.drift import drift_windows

    trace = topic_trace(300)
    model = moefast.plan(trace, 3, 5, holdout=0)
    windows = drift_windows(trace, model, 3)
    assert [w.tokens for w in windows] == [100, 100, 100]
    part = trace.select_tokens(slice(100, 200))
    assert windows[1].fixed == pytest.approx(model.evaluate(part).sum())
    assert windows[0].replanned_previous is None and windows[1].replanned_previous is not None


def pair_trace(tokens=300) -> Trace:
    """Tokens pick experts (2i, 2i + 1): on 4 GPUs x 2 slots greedy splits every pair
    (1 round), the contiguous placement keeps each pair on one GPU (2 rounds)."""
    rng = np.random.default_rng(0)
    pairs = 2 * rng.integers(0, 4, size=tokens)
    return Trace(np.stack([pairs, pairs + 1], axis=1)[:, None, :], 8)


def test_estimator_selection_keeps_plain_unless_a_candidate_wins_on_held_out_folds():
    from moefast.evaluate.selection import (
        CV_SEEDS,
        FOLDS,
        Estimator,
        pair_count_error,
        select_estimator,
    )

    trace = pair_trace()
    calls = []

    def planner(tables, estimator, seed):
        calls.append((len(calls) // (2 * CV_SEEDS), estimator, seed))
        # The plain table gets contiguous (2 rounds); the unpruned one greedy (1 round).
        table = tables[0]
        best = moefast.optimize(table, 4, 2)
        worst = moefast.optimize(table, 4, 2, method="contiguous")
        return [worst if estimator == Estimator(0.99) else best]

    chosen = select_estimator(trace, planner, 0.99, seed=3)
    assert chosen.estimator == Estimator(1.0)
    assert "cross-validation on the train part" in chosen.note
    assert chosen.cv_costs[Estimator(1.0)] == pytest.approx(1.0)
    assert chosen.cv_costs[Estimator(0.99)] == pytest.approx(2.0)
    # Paired: on every fold, both candidates are planned with the same seeds 3, 4, ...
    assert len(calls) == FOLDS * 2 * CV_SEEDS
    for fold in range(FOLDS):
        for e in (Estimator(0.99), Estimator(1.0)):
            assert [s for f, c, s in calls if f == fold and c == e] == list(range(3, 3 + CV_SEEDS))
    # Deterministic: the same call gives the same choice and costs.
    again = select_estimator(trace, planner, 0.99, seed=3)
    assert again == chosen

    # Pair counts: sum(sqrt(c)) / sum(c) over co-activated pairs.
    table = trace.table(0)
    counts = {}
    for row, w in zip(table.subsets.tolist(), table.weights, strict=True):
        counts[tuple(row)] = counts.get(tuple(row), 0) + w
    c = np.array(list(counts.values()))
    assert pair_count_error(trace) == pytest.approx(np.sqrt(c).sum() / c.sum())


def test_estimator_selection_wants_a_win_larger_than_the_fold_to_fold_spread():
    from moefast.evaluate.selection import CV_SEEDS, Estimator, select_estimator

    trace = pair_trace()
    calls = []

    def planner(tables, estimator, seed):
        fold = len(calls) // (2 * CV_SEEDS)
        calls.append(estimator)
        table = tables[0]
        best = moefast.optimize(table, 4, 2)
        worst = moefast.optimize(table, 4, 2, method="contiguous")
        # The unpruned table halves the cost on the first fold only: 1/6 below the plain
        # table on mean (above MARGIN), but with a fold-to-fold spread of 0.29.
        return [best if estimator == Estimator(1.0) and fold == 0 else worst]

    chosen = select_estimator(trace, planner, 0.99)
    assert chosen.estimator == Estimator(0.99)
    assert "no candidate won" in chosen.note and "16.7% below" in chosen.note


def test_estimator_selection_never_sees_the_test_part(monkeypatch):
    import moefast.planning.plan as planner_module

    seen = []
    real = planner_module.select_estimator

    def spy(train, planner, coverage, by, seed, tables):
        seen.append(train)
        return real(train, planner, coverage, by, seed, tables)

    monkeypatch.setattr(planner_module, "select_estimator", spy)
    trace = topic_trace(MIN_HOLDOUT_TOKENS + 400, requests=None)
    model = moefast.plan(trace, 3, 5, holdout=0.25, split_by="time", estimator="auto")
    train, test = trace.split(0.25, by="time")
    assert len(seen) == 1 and seen[0].num_tokens == train.num_tokens
    np.testing.assert_array_equal(seen[0].topk, train.topk)
    assert model.settings["cost_basis"] == "held-out"
    assert model.layer_costs == pytest.approx(model.evaluate(test))


def test_estimator_selection_is_skipped_when_pair_counts_are_settled():
    from moefast.evaluate.selection import select_estimator

    trace = topic_trace(20_000, layers=1, experts=8, k=2)

    def planner(tables, estimator, seed):
        raise AssertionError("no search expected")

    chosen = select_estimator(trace, planner, 0.99)
    assert "no search needed" in chosen.note and chosen.cv_costs == {}


def test_written_placement_says_held_out_or_in_sample(tmp_path):
    trace = topic_trace(MIN_HOLDOUT_TOKENS + 100)
    model = moefast.plan(trace, 3, 5)
    model.save(tmp_path / "p.json", "json")
    back = moefast.load_placement(tmp_path / "p.json")
    assert back.settings["cost_basis"] == "held-out"
    assert back.settings["cost_note"] == model.settings["cost_note"]
    np.testing.assert_allclose(back.layer_costs, model.layer_costs)


def test_evaluation_fields_are_checked():
    assert moefast.Evaluation().holdout == 0.2
    assert (
        moefast.Evaluation(holdout=None, split_by="time", estimator="auto", coverage=1).coverage
        == 1.0
    )
    with pytest.raises(ValueError, match=r"holdout must be in \[0, 1\), got 1.5"):
        moefast.Evaluation(holdout=1.5)
    with pytest.raises(TypeError, match="holdout must be a number or None, got str"):
        moefast.Evaluation(holdout="20%")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="split_by must be one of"):
        moefast.Evaluation(split_by="layer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="estimator must be one of"):
        moefast.Evaluation(estimator="smoothed")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"coverage must be in \(0, 1\], got 2.0"):
        moefast.Evaluation(coverage=2)
