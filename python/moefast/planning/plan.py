"""Planning whole models: one optimized placement per MoE layer, layers in parallel, scored
on tokens the plan has not seen (`moefast.evaluate.heldout`) when the trace has enough of them."""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

import moefast._core as _core
from moefast._core import Placement, SubsetTable
from moefast._util.deprecation import Homes, old_keywords, regroup
from moefast._util.progress import stage, steps
from moefast.batch.cost_model import CostModel, check_cost_model
from moefast.evaluate.comparison import BASELINES, METHOD_LABELS, Comparison
from moefast.evaluate.heldout import (
    MIN_HOLDOUT_TOKENS,
    Evaluation,
    Split,
    baseline_placements,
    choose_split,
    score_methods,
)
from moefast.evaluate.methods import compare_methods
from moefast.evaluate.selection import Estimator, select_estimator
from moefast.evaluate.serving import ROUNDS_REGIME, ServingScores
from moefast.io.engines.slots import gpu_slots, kept_slots
from moefast.io.layouts import PRESETS, ModelLayout, model_layout
from moefast.io.streaming import trace_files, trace_shape
from moefast.moves import MoveBudget, check_current, check_move_limits
from moefast.placement import ModelPlacement
from moefast.planning.executors import optimize_layers, stream_split_tables, tables_from_files
from moefast.planning.layer import plan_one_layer
from moefast.planning.profile import (
    ServingProfile,
    batch_aware,
    batch_searches,
    cheap_candidates,
    choose,
    fewer_slots,
    redundant_suffix,
)
from moefast.planning.replan import held_out_gain, replan_layers, replan_summary
from moefast.search.methods import OLD_KEYWORDS as OPTIMIZE_OLD_KEYWORDS
from moefast.search.methods import OPTION_CLASSES as OPTIMIZE_CLASSES
from moefast.search.methods import check_memory, check_option, optimize
from moefast.search.node_plan import compare_times, node_aware_batch, node_aware_decode
from moefast.search.options import Budget, Objective, check_budgets
from moefast.search.replan import check_replan_options
from moefast.topology.cluster import Cluster, as_cluster
from moefast.topology.groups import check as check_topology
from moefast.topology.times import Topology
from moefast.trace import PathLike, Trace

PLAIN = Estimator()


def _is_paths(obj: object) -> bool:
    if isinstance(obj, (str, os.PathLike)):
        return True
    return (
        isinstance(obj, Sequence)
        and len(obj) > 0
        and all(isinstance(p, (str, os.PathLike)) for p in obj)
    )


def layer_tables(
    trace_or_tables: Trace | Sequence[SubsetTable] | PathLike | Sequence[PathLike],
    *,
    chunk_tokens: int | None = None,
    executor: Executor | None = None,
    progress: bool | None = None,
) -> tuple[list[SubsetTable], list[int]]:
    """The subset table and model layer number of every layer of a trace, table list
    (a list's layers are numbered from 0), or trace files (read by streaming,
    `moefast.planning.executors.tables_from_files`)."""
    if _is_paths(trace_or_tables):
        return tables_from_files(
            trace_or_tables,  # type: ignore[arg-type]
            chunk_tokens=chunk_tokens,
            executor=executor,
            progress=progress,
        )
    if isinstance(trace_or_tables, Trace):
        return trace_or_tables.tables(), list(trace_or_tables.layer_ids)
    if isinstance(trace_or_tables, Sequence) and not isinstance(trace_or_tables, (str, bytes)):
        tables = [t for t in trace_or_tables if isinstance(t, SubsetTable)]
        if tables and len(tables) == len(trace_or_tables):
            return tables, list(range(len(tables)))
    raise TypeError(
        "expected a moefast.Trace or a non-empty sequence of SubsetTable (one per layer), or"
        " trace file paths, got"
        f" {type(trace_or_tables).__name__}"
    )


@dataclass
class StreamedSplit:
    """Tables of streamed trace files: planned on ``train``, scored on ``test`` (None:
    in-sample), and the split's note."""

    train: list[SubsetTable]
    test: list[SubsetTable] | None
    layer_ids: list[int]
    split: Split


def _stream(
    paths: PathLike | Sequence[PathLike],
    holdout: float | None,
    split_by: str | None,
    chunk_tokens: int | None,
    executor: Executor | None,
    progress: bool,
) -> StreamedSplit:
    """Streams the files' tables; with ``holdout``, the last tokens of each file are held
    out (the rule of a split by time, file by file: a file is a rank's or a shard's record
    in time order), if the files hold at least `MIN_HOLDOUT_TOKENS` tokens."""

    choose_split(None, holdout)  # checks holdout
    if split_by not in (None, "time"):
        raise ValueError(
            f"split_by={split_by!r}: streamed trace files are split by time (the last tokens"
            " of each file are held out); read the trace with load_trace to split by request"
        )
    streamed = stream_split_tables(
        paths, chunk_tokens=chunk_tokens, executor=executor, progress=progress, holdout=holdout
    )
    (train, test), files = streamed.tokens, streamed.num_files
    if streamed.test is None or train + test < MIN_HOLDOUT_TOKENS:
        tables = streamed.train
        if streamed.test is not None:  # too few tokens to hold some out: count them all
            tables = [SubsetTable.merge([a, b]) for a, b in zip(tables, streamed.test, strict=True)]
        why = (
            "held-out evaluation off (holdout=0)"
            if not holdout
            else f"held-out evaluation off: {train + test} tokens, fewer than the"
            f" {MIN_HOLDOUT_TOKENS} needed to hold {100 * holdout:.0f}% out"
        )
        note = f"{why}; figures are in-sample, on the {train + test} tokens of {files} file(s)"
        return StreamedSplit(tables, None, streamed.layer_ids, Split(None, None, note))
    note = (
        f"planned on {train} tokens, scored on {test} held-out tokens (the last"
        f" {100 * test / (train + test):.0f}% of each of {files} file(s), split by time;"
        " streamed tables keep no token order, so no bootstrap interval)"
    )
    return StreamedSplit(streamed.train, streamed.test, streamed.layer_ids, Split(None, None, note))


def plan_layers(
    tables: Sequence[SubsetTable],
    num_gpus: int,
    slots_per_gpu: int,
    method: str = "greedy",
    estimator: Estimator = PLAIN,
    seed: int = 0,
    progress: bool = False,
    time_budget: float | None = None,
    work_budget: int | None = None,
    desc: str = "planning layers",
    **optimize_options: Any,
) -> list[Placement]:
    """One placement per table, planned on the table the estimator makes of it
    (``optimize_options``: `optimize`'s time_limit, objective, batch_size, cost_model);
    ``progress`` shows the layers done, named ``desc``.
    `time_budget` (seconds, for all the layers) gives each layer, when it starts, its share
    of the time left; `work_budget` (rows read, for all the layers) an equal share."""
    time_budget, work_budget = check_budgets(time_budget, work_budget)
    workers = min(len(tables), os.cpu_count() or 1)
    deadline = None if time_budget is None else time.perf_counter() + time_budget
    started = itertools.count()  # next() on it is atomic in CPython

    def layer_budget() -> float | None:
        if deadline is None:
            return None
        left = len(tables) - next(started)  # layers not started yet, this one included
        return max(0.0, (deadline - time.perf_counter()) * min(workers, left) / left)

    def plan_layer(table: SubsetTable) -> Placement:
        return plan_one_layer(
            table,
            num_gpus,
            slots_per_gpu,
            method,
            estimator,
            seed,
            time_budget=layer_budget(),
            work_budget=None if work_budget is None else work_budget // len(tables),
            **optimize_options,
        )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(plan_layer, table) for table in tables]
        try:
            results = (f.result() for f in futures)
            return list(steps(results, len(tables), desc, progress))
        except KeyboardInterrupt:
            _stop(futures)
            raise


def _stop(futures: list[Future]) -> None:
    """After Ctrl-C: drop the layers not started and stop the running ones, whose core
    calls would otherwise run to their end before the pool lets the program exit (signals
    reach the main thread only)."""
    for f in futures:
        f.cancel()
    while not all(f.done() for f in futures):
        _core.interrupt()
        wait(futures, timeout=0.02)


#: Where each keyword of `plan`'s older calling form goes now: (option, field).
OLD_KEYWORDS = {
    **{
        name: home
        for name, home in OPTIMIZE_OLD_KEYWORDS.items()
        if name not in ("num_batches", "max_evaluations")  # not plan's
    },
    "holdout": ("evaluation", "holdout"),
    "split_by": ("evaluation", "split_by"),
    "estimator": ("evaluation", "estimator"),
    "coverage": ("evaluation", "coverage"),
}
#: The option classes of `plan`, by argument.
OPTION_CLASSES: dict[str, Callable[..., Any]] = {**OPTIMIZE_CLASSES, "evaluation": Evaluation}


def _new_form(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any], Homes]:
    return regroup(args, kwargs, OLD_KEYWORDS, OPTION_CLASSES)


@old_keywords(_new_form)
def plan(
    trace_or_tables: Trace | Sequence[SubsetTable] | PathLike | Sequence[PathLike],
    cluster: Cluster | int,
    slots_per_gpu: int | None = None,
    *,
    method: str = "greedy",
    seed: int = 0,
    objective: Objective | None = None,
    evaluation: Evaluation | None = None,
    budget: Budget | None = None,
    moves: MoveBudget | None = None,
    profile: ServingProfile | None = None,
    model: str | ModelLayout | None = None,
    executor: Executor | None = None,
    chunk_tokens: int | None = None,
    progress: bool | None = None,
) -> ModelPlacement:
    """Plans every layer of a `Trace` or a sequence of `SubsetTable` (one per layer) on the
    `cluster`'s GPUs and scores it, with the baselines, on tokens it has not seen.
    ``plan(trace, 8, 9)`` is short for ``plan(trace, Cluster(8, 9))``.

    The options come in groups, each a frozen value checked when it is made: `cluster`
    (`moefast.Cluster`: GPUs, slots, topology), `objective` (`moefast.Objective`: decode or
    batches), `evaluation` (`moefast.Evaluation`: the tokens held out, the table planned
    on), `budget` (`moefast.Budget`: how much search), `moves` (`moefast.MoveBudget`:
    re-planning from the served placement) and `profile` (`ServingProfile`: the batch sizes
    served). The older keywords (``holdout=``, ``topology=``, ``current=``, ...) still work
    for one release, with a DeprecationWarning naming each one's new home.

    ``model`` (a `moefast.io.layouts` preset name or layout) refuses, before any work, layer ids
    that are not the model's MoE layers, and is recorded so that `ModelPlacement.save` writes
    engine files for it.

    With a trace of at least `moefast.evaluate.heldout.MIN_HOLDOUT_TOKENS` tokens,
    ``evaluation.holdout`` of them are held out (``split_by`` "time": the last tokens;
    "request": whole requests; default by request when the trace knows at least 5
    requests): the placements are planned on the rest, and ``layer_costs`` are the returned
    placement's expected costs on the held-out tokens. Otherwise (or with ``holdout=0``/None)
    costs are in-sample. ``settings["cost_basis"]`` ("held-out"/"in-sample") and
    ``settings["cost_note"]`` say which and why; the result's ``evaluation`` compares every
    layer with the baselines (planned on the same train part, scored on the same tokens)
    with a bootstrap 95% interval of the gain.

    Tables are pruned to ``evaluation.coverage`` for optimizing. ``estimator="auto"``
    chooses between that table and the unpruned one by cross-validation on the train part,
    paired over the same greedy seeds (`moefast.evaluate.selection`); "plain" (the default:
    on the real traces measured, no estimator beat it) plans on the pruned empirical table.
    Layers run in parallel; `progress` shows the layers planned (default: when stderr is a
    terminal): a bar on a terminal, one line per layer on stderr otherwise. `method`,
    `seed`, ``budget.time_limit`` and `objective` are `optimize`'s.

    ``budget.time_budget`` (seconds, for the whole plan) and ``budget.work_budget`` (rows read
    by the greedy's exact evaluations, for the whole plan) bound the greedy's searches and
    the anytime search after it (`optimize`): each layer gets, when it starts, its share of
    the time left (less a reserve for the scoring, as long as building the tables took, at
    most half the budget), or an equal share of the rows; a work budget keeps the plan
    deterministic for a given seed, a time budget does not.

    Trace files (one path or many: shards, ranks, Arrow traces) are read by streaming,
    ``chunk_tokens`` tokens at a time, so memory holds the tables, not the trace; the last
    ``holdout`` of each file's tokens are counted apart and score the plan (a split by time,
    file by file; costs as a held-out plan of the same tokens, without the bootstrap interval,
    which needs token order). With an
    ``executor`` (a process pool, `moefast.planning.executors.RayExecutor`, Dask's), files are
    counted and layers optimized on its workers; the result is identical.

    ``moves`` (a `MoveBudget` whose ``current`` is the placement being served: a
    `ModelPlacement`, matched by layer id, or one `Placement` per layer) re-plans each layer
    from it with at most ``max_moves`` weight copies per layer and/or ``copy_cost`` rounds
    per copy (`moefast.moves`); ``settings["replan"]`` records each layer's copies and the
    gain against moves, and with tokens held out, ``held_out``: the served placement, the
    re-plan and the full re-plan scored on them (`moefast.planning.replan.held_out_gain`).
    It is checked against the trace's experts and layer ids before any work (for files,
    against the first file's). With trace files and an ``executor`` the layers are
    re-planned on its workers; the result is the in-process one. With a topology (decode)
    each layer is re-planned node-aware as `optimize(moves=)` with that cluster does (a copy
    priced ``copy_cost`` x ``cluster.round_us`` us per token, or by link with a
    `moefast.moves.CopyPrice`), or is the full node-aware plan (relabelled) when that fits
    the budget and is faster (time plus copies' price); the gain against moves is in us per
    token with communication, measured against that full plan, and ``settings["topology"]``
    has a column for the served placement. With a topology and the batch objective, each
    layer is re-planned as `optimize(objective=, moves=)` with that cluster does, toward the
    full node-aware batch plan as ``plan`` without ``moves`` makes it; costs in us per step
    of ``batch_size`` tokens on the walk's sample.

    ``cluster.topology`` (a `moefast.topology.times.Topology`: GPUs in nodes, dispatch and
    combine) plans every layer node-aware after its compute-only plan: for decode the
    node-aware search (`moefast.search.node.place`, ``cluster.round_us`` us per expert
    round), for the batch objective the batch search with communication (`place_batch`).
    ``cluster.num_groups`` keeps each of that many groups of consecutive expert ids on one
    node (DeepSeek-V3's group-limited routing; ValueError before any work when the grouping
    cannot fit). ``settings["topology"]`` records each layer's modeled time in us with
    communication (`moefast.search.node_plan.TimeComparison`) of the node-aware plan, EPLB
    hierarchical (with ``num_groups``), EPLB global and the compute-only plan, scored on the
    same tokens as the result's ``evaluation`` (held-out or in-sample, as ``basis`` says);
    the expert rounds of ``evaluation`` are the node-aware plan's. The budget bounds the
    compute-only searches only. Without a topology nothing changes.

    ``profile`` (a `moefast.planning.profile.ServingProfile`: the batch sizes served and
    their shares) makes the plan a choice: every candidate (this plan, the batch-aware
    search at each profile size above 1, EPLB, round-robin, contiguous, the engine's
    default map and, under an engine's dispatch, a placement searched for it) is planned on
    the same train part and simulated on the same tokens as ``evaluation`` (held out when it
    is) under the profile's dispatch (``profile.dispatch``, default the engine's), and the
    placement returned is the one of least expected step time over the profile under
    ``objective.cost_model`` (default: the preset of ``model`` on ``profile.gpu``). With
    ``profile.fewer_slots`` the candidates but the batch-aware searches are also planned
    with fewer slots per GPU, down to no redundant expert, and the batch-aware searches run
    at the slot count of the fastest of them: the returned placement's ``slots_per_gpu``
    may be below ``slots_per_gpu``. ``settings["serving"]`` records every candidate's step
    time at every size and its rounds (each key naming its dispatch), its redundant
    experts, the recommendation, a warning for each size at which it is slower than the
    engine default or EPLB beyond the tie tolerance and the ties; ``layer_costs`` are the
    recommended placement's rounds. Not with ``moves`` or a topology. Without a
    profile nothing changes.
    """
    cluster = as_cluster(cluster, slots_per_gpu)
    goal = check_option("objective", objective, Objective) or Objective()
    held = check_option("evaluation", evaluation, Evaluation) or Evaluation()
    search = check_option("budget", budget, Budget) or Budget()
    check_option("moves", moves, MoveBudget)
    num_gpus, slots_per_gpu = cluster.num_gpus, cluster.slots_per_gpu
    topology, num_groups, round_us = cluster.topology, cluster.num_groups, cluster.round_us
    kind, batch_size, cost_model = goal.kind, goal.batch_size, goal.cost_model
    if (goal.num_batches, goal.max_evaluations) != (None, Objective.max_evaluations):
        raise ValueError(
            "plan takes no objective.num_batches or max_evaluations: the batch search's"
            " sample and moves are its defaults (a profile's: profile.max_evaluations)"
        )
    holdout, split_by = held.holdout, held.split_by
    estimator, coverage = held.estimator, held.coverage
    time_limit, time_budget, work_budget = search.time_limit, search.time_budget, search.work_budget
    current: ModelPlacement | Sequence[Placement] | None = None
    max_moves, copy_cost = None, None
    if moves is not None:
        # A one-layer Placement is refused by _served_layers, naming what a plan takes.
        current = moves.current  # type: ignore[assignment]
        max_moves, copy_cost = moves.max_moves, moves.copy_cost
    began = time.perf_counter()
    trace = trace_or_tables if isinstance(trace_or_tables, Trace) else None
    if executor is not None and time_budget is not None:
        raise ValueError("time_budget is not supported with an executor: use work_budget")
    if progress is None:
        progress = sys.stderr.isatty()
    if trace is not None:
        stage(
            f"planning {trace.num_layers} layers of {trace.num_tokens} tokens on"
            f" {num_gpus} GPUs x {slots_per_gpu} slots",
            progress,
        )
    if current is not None:
        check_replan_options(topology, copy_cost, kind)
        check_move_limits(max_moves, None)
    streamed: StreamedSplit | None = None
    if trace is None and _is_paths(trace_or_tables):
        if current is not None:  # a mismatch is found before the files are counted
            shape = trace_shape(trace_files(trace_or_tables)[0])  # type: ignore[arg-type]
            _served_layers(current, shape.layer_ids, shape.num_experts, num_gpus, slots_per_gpu)
        streamed = _stream(trace_or_tables, holdout, split_by, chunk_tokens, executor, progress)  # type: ignore[arg-type]
        tables, layer_ids = streamed.train, streamed.layer_ids
    else:
        # A trace's own tables are built only where needed: held out, only its parts are.
        tables, layer_ids = (
            ([], list(trace.layer_ids))
            if trace
            else layer_tables(
                trace_or_tables, chunk_tokens=chunk_tokens, executor=executor, progress=progress
            )
        )
    num_experts = trace.num_experts if trace else tables[0].num_experts
    check_memory(num_experts, num_gpus, slots_per_gpu)
    layout = model_layout(model)
    serve_model = None
    if profile is not None:
        serve_model = _profile_checks(profile, cost_model, layout, current, topology)
        if kind == "decode":
            cost_model = None  # times the profile's steps, not the decode plan's
    if layout is not None:
        layout.check_layers(layer_ids, num_experts)
    if topology is not None:
        check_topology(topology, num_experts, num_gpus, slots_per_gpu, num_groups)
    if current is not None:
        currents = _served_layers(current, layer_ids, num_experts, num_gpus, slots_per_gpu)
    if tables and {t.num_experts for t in tables} != {num_experts}:
        raise ValueError("all layers must have the same number of experts")
    options: dict[str, Any] = {
        "time_limit": time_limit,
        "objective": kind,
        "batch_size": batch_size,
        "cost_model": cost_model,
    }

    split = streamed.split if streamed is not None else choose_split(trace, holdout, split_by, seed)
    plan_trace = split.train if split.train is not None else trace
    plan_rows = None
    if plan_trace is not None and _scored_in_sample(trace, split):
        # Scored on the same tokens: each token's row comes with the table (no lookup).
        plan_tables, plan_rows = plan_trace.tables_with_rows()
    else:
        plan_tables = plan_trace.tables() if plan_trace is not None else tables

    def planner(
        layer_tables: Sequence[SubsetTable], chosen: Estimator, cv_seed: int
    ) -> list[Placement]:
        return plan_layers(
            layer_tables, num_gpus, cluster.slots_per_gpu, method, chosen, cv_seed, False, **options
        )

    chosen = Estimator(coverage)
    estimator_note = chosen.name
    if estimator == "auto" and plan_trace is not None and kind == "decode":
        by = split_by or ("request" if plan_trace.request_ids is not None else "time")
        selection = select_estimator(plan_trace, planner, coverage, by, seed, plan_tables)
        chosen, estimator_note = selection.estimator, selection.note
    replans = None
    if current is not None:
        replans = replan_layers(
            plan_tables,
            currents,
            num_gpus,
            slots_per_gpu,
            max_moves=max_moves,
            copy_cost=copy_cost,
            coverage=chosen.coverage,
            method=method,
            seed=seed,
            topology=topology,
            round_us=round_us,
            num_groups=num_groups,
            executor=executor,
            layer_ids=layer_ids,
            **options,
        )
        placements = [r.placement for r in replans]
    elif executor is not None:
        placements = optimize_layers(
            executor,
            plan_tables,
            layer_ids,
            num_gpus,
            slots_per_gpu,
            method,
            chosen,
            seed,
            work_budget,
            options,
            progress,
        )
    else:
        placements = plan_layers(
            plan_tables,
            num_gpus,
            slots_per_gpu,
            method,
            chosen,
            seed,
            progress,
            time_budget=None
            if time_budget is None
            else layers_budget(time_budget, time.perf_counter() - began),
            work_budget=work_budget,
            **options,
        )
    compute_only = placements
    if replans is not None and topology is not None:  # re-planned node-aware already
        compute_only = [r.compute_only for r in replans]  # type: ignore[misc]
    elif topology is not None:
        placements = _node_aware_layers(
            plan_tables,
            compute_only,
            chosen.coverage,
            slots_per_gpu,
            topology,
            round_us,
            num_groups,
            seed,
            options,
        )
    comparison = _score(
        trace,
        split,
        None if streamed is None else streamed.test,
        tables,
        plan_tables,
        layer_ids,
        placements,
        num_gpus,
        slots_per_gpu,
        method,
        seed,
        plan_rows,
    )
    if kind == "batch":
        comparison.main_label = f"batch-aware (B={batch_size})"
    synthetic = trace is not None and trace.synthetic
    comparison.synthetic = synthetic
    serving = None
    if profile is not None:
        assert serve_model is not None  # _profile_checks gives one
        serving = _serve(
            profile,
            serve_model,
            comparison,
            split,
            None if streamed is None else streamed.test,
            trace,
            tables,
            plan_tables,
            placements,
            num_gpus,
            slots_per_gpu,
            chosen,
            seed,
            options,
            progress,
        )
    interval = comparison.gain_interval
    settings: dict[str, object] = {
        "method": method,
        "coverage": coverage,
        "seed": seed,
        "num_gpus": num_gpus,
        "cost_basis": comparison.basis,
        "cost_note": comparison.note,
        "estimator": estimator_note,
        "gain_vs_best_baseline": comparison.total_gain() if comparison.baselines else None,
        "gain_interval_95": None if interval is None else list(interval),
    }
    if synthetic:
        settings["synthetic"] = True  # every figure below is of generated routing
    if time_limit is not None:
        settings["time_limit"] = time_limit
    if time_budget is not None:
        settings["time_budget"] = time_budget
    if work_budget is not None:
        settings["work_budget"] = work_budget
    if layout is not None and PRESETS.get(layout.name) == layout:
        settings["model"] = layout.name  # save() writes engine files for it
    held_tables: list[SubsetTable] | None = None  # tokens not planned on, per layer
    if streamed is not None and streamed.test is not None:
        held_tables = list(streamed.test)
    elif split.test is not None:
        held_tables = split.test.tables()
    if replans is not None:
        summary = replan_summary(
            replans,
            max_moves,
            copy_cost,
            num_gpus * slots_per_gpu,
            _replan_unit(topology, kind, batch_size),
            walk_points=kind == "decode" or topology is not None,
        )
        if held_tables is not None:
            summary["held_out"] = held_out_gain(
                held_tables,
                replans,
                currents,
                topology,
                round_us,
                cost_model=cost_model,
                batch_size=batch_size,
                seed=seed,
            )
        settings["replan"] = summary
    if topology is not None:
        score_tables = held_tables if held_tables is not None else list(plan_tables)
        settings["topology"] = _topology_settings(
            score_tables,
            plan_tables,
            layer_ids,
            placements,
            compute_only,
            comparison,
            num_gpus,
            slots_per_gpu,
            method,
            seed,
            topology,
            round_us,
            num_groups,
            options,
            None if replans is None else currents,
        )
    if kind == "batch":
        # Files keep settings as JSON: a cost model is recorded by its repr.
        settings.update(objective=kind, batch_size=batch_size, cost_model=repr(cost_model))
    settings["gain_regime"] = f"{ROUNDS_REGIME}, {comparison.basis}"
    layer_costs = comparison.costs[method]
    if serving is not None:
        scores, placed, slots_per_gpu = serving
        scores = replace(scores, synthetic=synthetic)
        settings["serving"] = scores.as_settings()
        placements, layer_costs = placed[scores.recommended], scores.rounds[scores.recommended]
    return ModelPlacement(
        placements=placements,
        slots_per_gpu=slots_per_gpu,
        layer_ids=layer_ids,
        layer_costs=layer_costs,
        lower_bounds=comparison.lower_bounds,
        settings=settings,
        evaluation=comparison,
        slots=(
            None
            if replans is None
            else _replanned_slots(current, layer_ids, placements, slots_per_gpu)
        ),
    )


def _replanned_slots(
    current: object, layer_ids: list[int], placements: list[Placement], slots_per_gpu: int
) -> np.ndarray | None:
    """The re-planned slot map: served slots kept (`kept_slots`), from the served file's own
    slot map or each GPU's experts ascending (as moefast writes them); None when a layer has
    a free slot on either side."""
    served = _current_layers(current, layer_ids)  # type: ignore[arg-type]
    by_id = {}
    if isinstance(current, ModelPlacement) and current.slots is not None and current.layer_ids:
        by_id = dict(zip(current.layer_ids, current.slots, strict=True))
    rows = []
    for layer, old, new in zip(layer_ids, served, placements, strict=True):
        row = by_id.get(layer)
        if row is None:
            if int(old.slots_used.min()) != slots_per_gpu:
                return None
            row = gpu_slots(old, slots_per_gpu).ravel()
        kept = kept_slots(row, new, slots_per_gpu)
        if kept is None:
            return None
        rows.append(kept)
    return np.stack(rows)


def _profile_checks(
    profile: ServingProfile,
    cost_model: CostModel | None,
    layout: ModelLayout | None,
    current: object,
    topology: Topology | None,
) -> CostModel:
    """The cost model a profile is scored with; the options a profile does not take."""
    if not isinstance(profile, ServingProfile):
        raise TypeError(
            f"profile must be a moefast.planning.profile.ServingProfile, got"
            f" {type(profile).__name__}"
        )
    if current is not None or topology is not None:
        raise ValueError("profile= is not supported with current= or topology= yet")
    if cost_model is not None:
        return check_cost_model(cost_model)
    if layout is None:
        raise ValueError(
            "profile= needs cost_model= (or model= with a preset: CostModel.preset) to time steps"
        )
    return CostModel.preset(layout.name, gpu=profile.gpu)


def _serve(
    profile: ServingProfile,
    cost_model: CostModel,
    comparison: Comparison,
    split: Split,
    test_tables: list[SubsetTable] | None,
    trace: Trace | None,
    tables: list[SubsetTable],
    plan_tables: Sequence[SubsetTable],
    placements: list[Placement],
    num_gpus: int,
    slots_per_gpu: int,
    chosen: Estimator,
    seed: int,
    options: dict[str, Any],
    progress: bool = False,
) -> tuple[ServingScores, dict[str, list[Placement]], int]:
    """Every candidate of the profile, planned on ``plan_tables`` and scored on the tokens
    ``comparison`` was scored on under the profile's dispatch, and the recommended one's
    slots per GPU: the cheap candidates (`cheap_candidates`) with ``slots_per_gpu`` and
    every smaller count that holds every expert (``profile.fewer_slots``), then the
    batch-aware searches at the count of the fastest of them (``progress``: the layers of
    each search and the candidates scored, on stderr)."""
    main = comparison.main_label or METHOD_LABELS.get(
        comparison.main_method, comparison.main_method
    )
    routing: Trace | Sequence[SubsetTable]
    if test_tables is not None:
        routing = score_tables = test_tables
    elif split.test is not None:
        routing, score_tables = split.test, split.test.tables()
    elif trace is not None:
        routing, score_tables = trace, list(plan_tables)
    else:
        routing = score_tables = tables
    num_experts = plan_tables[0].num_experts

    def score(placed: dict[str, list[Placement]], slots: dict[str, int]) -> ServingScores:
        redundant = {name: num_gpus * s - num_experts for name, s in slots.items()}
        return choose(
            profile,
            cost_model,
            repr(cost_model),
            placed,
            routing,
            score_tables,
            comparison.basis,
            comparison.note,
            seed,
            progress,
            redundant,
        )

    # The cheap candidates at every slot count, the batch-aware searches at the count whose
    # cheap candidate is fastest (they cost seconds to minutes per layer and size).
    counts, why = fewer_slots(num_experts, num_gpus, slots_per_gpu)
    placed = cheap_candidates(
        plan_tables, (main, placements), num_gpus, slots_per_gpu, profile, cost_model, seed
    )
    slots = dict.fromkeys(placed, slots_per_gpu)
    for count in counts if profile.fewer_slots else []:
        own = None
        if options["objective"] == "decode":  # the plan's own method, when it is cheap
            own = plan_layers(
                plan_tables,
                num_gpus,
                count,
                comparison.main_method,
                chosen,
                seed,
                progress,
                desc=f"planning layers, {count} slots per GPU",
                **options,
            )
        suffix = redundant_suffix(num_experts, num_gpus, count)
        more = cheap_candidates(
            plan_tables, (main, own), num_gpus, count, profile, cost_model, seed, suffix
        )
        placed.update(more)
        slots.update(dict.fromkeys(more, count))
    scores = score(placed, slots)
    chosen_slots = slots[scores.recommended]
    suffix = (
        ""
        if chosen_slots == slots_per_gpu
        else redundant_suffix(num_experts, num_gpus, chosen_slots)
    )

    def plan_batches(sizes: list[int]) -> dict[int, list[Placement]]:
        # From the plan's own placement and EPLB at the chosen count.
        own = (main + suffix, METHOD_LABELS["eplb"] + suffix)
        return batch_searches(
            plan_tables,
            [placed[name] for name in own if name in placed],
            chosen_slots,
            cost_model,
            sizes,
            coverage=chosen.coverage,
            seed=seed,
            max_evaluations=profile.max_evaluations,
            progress=progress,
        )

    searched = batch_aware(profile, plan_batches, suffix, placed)
    if searched:
        first = next((n for n in placed if slots[n] == chosen_slots), None)
        scores = scores.merged(score(searched, dict.fromkeys(searched, chosen_slots)), first)
        placed.update(searched)
        slots.update(dict.fromkeys(searched, chosen_slots))
    if profile.fewer_slots and why:
        scores = replace(scores, redundancy_note=why)
    return scores, placed, slots[scores.recommended]


def _replan_unit(topology: Topology | None, objective: str, batch_size: int | None) -> str:
    """The unit of ``settings["replan"]``'s costs."""
    if objective == "batch":
        where = "simulated" if topology is None else "with communication"
        return f"us per step of {batch_size} tokens, {where}"
    return "rounds" if topology is None else "us per token, with communication"


def _topology_settings(
    score_tables: Sequence[SubsetTable],
    plan_tables: Sequence[SubsetTable],
    layer_ids: list[int],
    node_aware: Sequence[Placement],
    compute_only: Sequence[Placement],
    comparison: Comparison,
    num_gpus: int,
    slots_per_gpu: int,
    method: str,
    seed: int,
    topology: Topology,
    round_us: float,
    num_groups: int | None,
    options: dict[str, Any],
    served: Sequence[Placement] | None = None,
) -> dict[str, Any]:
    """``settings["topology"]``: the topology, and each layer's time with communication of
    the node-aware plan (or re-plan from ``served``, beside it) beside EPLB and the
    compute-only plan, scored on ``score_tables`` (the tokens ``comparison`` was scored
    on)."""
    batch = options["objective"] == "batch"
    times = compare_times(
        score_tables,
        plan_tables,
        layer_ids,
        num_gpus,
        slots_per_gpu,
        node_aware=node_aware,
        compute_only=compute_only,
        compute_only_label=f"compute-only {'batch search' if batch else method}",
        eplb_global=[optimize(t, num_gpus, slots_per_gpu, method="eplb") for t in plan_tables],
        topology=topology,
        round_us=round_us,
        num_groups=num_groups,
        basis=comparison.basis,
        note=comparison.note,
        cost_model=options["cost_model"] if batch else None,
        batch_size=options["batch_size"] if batch else None,
        seed=seed,
        served=served,
    )
    return {
        "gpus_per_node": topology.gpus_per_node,
        "per_pair": topology.per_pair,
        "num_groups": num_groups,
        "round_us": None if batch else round_us,
        **times.as_settings(),
    }


def _node_aware_layers(
    tables: Sequence[SubsetTable],
    compute_only: Sequence[Placement],
    coverage: float,
    slots_per_gpu: int,
    topology: Topology,
    round_us: float,
    num_groups: int | None,
    seed: int,
    options: dict[str, Any],
) -> list[Placement]:
    """Each layer's node-aware plan from its compute-only plan, on the table pruned as the
    compute-only plan's was; layers in parallel."""

    def one(table: SubsetTable, start: Placement) -> Placement:
        if coverage < 1.0:
            table = table.prune(coverage=coverage)
        if options["objective"] == "batch":
            return node_aware_batch(
                table,
                [start],
                slots_per_gpu,
                topology=topology,
                cost_model=options["cost_model"],
                batch_size=options["batch_size"],
                num_batches=None,
                seed=seed,
                num_groups=num_groups,
            )
        return node_aware_decode(
            table,
            [start],
            slots_per_gpu,
            topology=topology,
            round_us=round_us,
            seed=seed,
            num_groups=num_groups,
        )

    workers = max(1, min(len(tables), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(one, t, p) for t, p in zip(tables, compute_only, strict=True)]
        try:
            return [f.result() for f in futures]
        except KeyboardInterrupt:
            _stop(futures)
            raise


def _served_layers(
    current: ModelPlacement | Sequence[Placement],
    layer_ids: list[int],
    num_experts: int,
    num_gpus: int,
    slots_per_gpu: int,
) -> list[Placement]:
    """The served placement of each layer (`_current_layers`), each checked against the
    trace's experts, the GPUs and their slots; errors name the layer."""
    currents = _current_layers(current, layer_ids)
    for layer, c in zip(layer_ids, currents, strict=True):
        try:
            check_current(c, num_experts, num_gpus, slots_per_gpu)
        except (ValueError, TypeError) as e:
            raise type(e)(f"current, layer {layer}: {e}") from None
    return currents


def _current_layers(
    current: ModelPlacement | Sequence[Placement], layer_ids: list[int]
) -> list[Placement]:
    """The served placement of each layer: a ModelPlacement's by layer id, or a list's
    in order."""
    if isinstance(current, ModelPlacement) and not current.layer_ids:
        current = current.placements
    if isinstance(current, ModelPlacement):
        by_id = dict(zip(current.layer_ids, current.placements, strict=True))
        missing = [i for i in layer_ids if i not in by_id]
        if missing:
            raise ValueError(f"current has no placement for layer(s) {missing[:5]}")
        return [by_id[i] for i in layer_ids]
    if isinstance(current, Placement) or not isinstance(current, Sequence):
        raise TypeError(
            "current must be a ModelPlacement or a sequence of Placement (one per layer),"
            f" got {type(current).__name__}"
        )
    if len(current) != len(layer_ids):
        raise ValueError(
            f"current has {len(current)} layers, the trace {len(layer_ids)}: one placement per"
            " layer is needed"
        )
    return list(current)


def layers_budget(time_budget: float, spent: float) -> float:
    """What a plan's time budget leaves for its layers' searches: the budget less the
    seconds ``spent`` so far (reading the trace, building its tables) and as much again, at
    most half of the budget, for the scoring that follows them (it reads every token of
    every layer again)."""
    return max(0.0, time_budget - spent - min(spent, time_budget / 2))


def _score(
    trace: Trace | None,
    split: Split,
    test_tables: list[SubsetTable] | None,
    tables: list[SubsetTable],
    plan_tables: list[SubsetTable],
    layer_ids: list[int],
    placements: list[Placement],
    num_gpus: int,
    slots_per_gpu: int,
    method: str,
    seed: int,
    plan_rows: list[np.ndarray] | None = None,
) -> Comparison:
    """The comparison with the baselines: held-out on the test part when there is one
    (``test_tables``: the held-out tables of streamed files; ``plan_rows``: each token's
    row of ``plan_tables``, when scored in-sample)."""
    baselines = [m for m in BASELINES if m != method]
    if test_tables is not None:  # streamed and held out: scored on the test tables
        return compare_methods(
            test_tables,
            layer_ids,
            num_gpus,
            slots_per_gpu,
            main={method: placements},
            methods=baselines,
            seed=seed,
            plan_tables=plan_tables,
            basis="held-out",
            note=split.note,
        )
    if trace is None:  # tables only: in-sample, no tokens to bootstrap
        return compare_methods(
            tables,
            layer_ids,
            num_gpus,
            slots_per_gpu,
            main={method: placements},
            methods=baselines,
            seed=seed,
            note=f"planned and scored on the given tables ({split.note})",
        )
    placed = baseline_placements(plan_tables, num_gpus, slots_per_gpu, baselines, seed)
    placed = {method: placements, **placed}
    if split.test is not None:
        return score_methods(split.test, placed, num_gpus, method, "held-out", split.note, seed)
    note = f"planned and scored on all {trace.num_tokens} tokens ({split.note})"
    # In-sample, the tables planned on are the scored trace's: scoring reuses them (its
    # lower bounds are of unweighted tables, so only for an unweighted trace).
    reuse = _scored_in_sample(trace, split)
    return score_methods(
        trace,
        placed,
        num_gpus,
        method,
        "in-sample",
        note,
        seed,
        plan_tables if reuse else None,
        plan_rows if reuse else None,
    )


def _scored_in_sample(trace: Trace | None, split: Split) -> bool:
    """Whether `_score` scores ``trace`` on the tables planned on (in-sample, unweighted)."""
    return trace is not None and split.test is None and trace.weights is None
