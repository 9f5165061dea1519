"""The batch cost model (docs/cost-model.md#a-batch): one expert serving n tokens on one GPU takes
f(n) = (alpha^p + (beta*n)^p)^(1/p) microseconds (0 if n = 0); a GPU's time in a layer
is the sum of f over the experts it runs, and the layer takes as long as its busiest GPU.

alpha is the time to read an expert's weights, beta the compute time per token, p the
shape of the smooth maximum (p = 1: additive alpha + beta*n; p = inf: max(alpha, beta*n)).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from moefast._util.checks import check_count, check_non_negative, check_number, check_positive
from moefast.io.layouts import get_model


@dataclass(frozen=True)
class GpuSpec:
    """Peak figures of one GPU: HBM bandwidth (bytes/s) and dense bf16 tensor FLOP/s."""

    name: str
    bandwidth: float
    flops: float


#: Datasheet peaks (SXM parts, dense bf16). Measured experts reach ~75-80% of the
#: bandwidth and ~70% of the FLOP/s (see `fit_calibration`), so a datasheet estimate is
#: optimistic; presets use the measured fits (`CALIBRATED`) wherever they exist.
GPUS = {
    "h100": GpuSpec("H100 SXM 80GB", bandwidth=3.35e12, flops=989.4e12),
    "h200": GpuSpec("H200 SXM 141GB", bandwidth=4.8e12, flops=989.4e12),
}

#: (hidden, intermediate) of one routed expert of the models of docs/cost-model.md.
EXPERT_SHAPES = {
    "mixtral-8x7b": (4096, 14336),
    "dbrx": (6144, 10752),
    "deepseek-v2-lite": (2048, 1408),
    "olmoe-1b-7b": (2048, 1024),
    "qwen3-30b-a3b": (2048, 768),
    "deepseek-v3": (7168, 2048),
    "gpt-oss-20b": (2880, 2880),
    "deepseek-r1": (7168, 2048),
    "deepseek-v2": (5120, 1536),
    "qwen1.5-moe-a2.7b": (2048, 1408),
    "qwen2-moe-57b-a14b": (3584, 2560),
    "qwen3-235b-a22b": (4096, 1536),
    "mixtral-8x22b": (6144, 16384),
    "gpt-oss-120b": (2880, 2880),
}

#: (alpha us, beta us/token, p) fitted by `fit_calibration()` to the bundled measurements
#: (``moefast/data/h100_expert_ffn_graphs.json``, bf16, CUDA graphs), by GPU and expert
#: shape (hidden, intermediate): the calibration table of docs/cost-model.md#calibration.
#: A preset of a model whose expert has a measured shape is this fit; others are datasheet
#: estimates (`preset_source` says which).
CALIBRATED: dict[str, dict[tuple[int, int], tuple[float, float, float]]] = {
    "h100": {
        (4096, 14336): (136.51, 0.50424, 2.15),
        (2048, 1408): (19.88, 0.022317, 1.05),
        (7168, 2048): (47.26, 0.11006, 1.40),
        (2048, 768): (19.24, 0.013855, 1.15),
        (2048, 1024): (18.49, 0.016029, 1.05),
    },
}


def preset_key(model: str) -> str:
    """The `EXPERT_SHAPES` key of a model name: a key itself, or any name `--model`
    accepts (`moefast.io.layouts.get_model`, aliases such as "olmoe" included)."""
    key = str(model).lower().replace("_", "-")
    if key in EXPERT_SHAPES:
        return key
    try:
        key = get_model(key).name
    except ValueError:
        key = ""
    if key not in EXPERT_SHAPES:
        raise ValueError(
            f"unknown model {model!r}; known: {sorted(EXPERT_SHAPES)} (and their --model aliases)"
        )
    return key


def preset_source(model: str, gpu: str = "h100", dtype_bytes: float = 2) -> str:
    """Where `CostModel.preset(model, gpu)` comes from: a calibration fit or a datasheet
    estimate."""
    shape = EXPERT_SHAPES[preset_key(model)]
    if dtype_bytes == 2 and shape in CALIBRATED.get(_gpu_key(gpu), {}):
        return f"{GPUS[_gpu_key(gpu)].name} calibration fit (docs/cost-model.md#calibration)"
    return f"datasheet estimate ({GPUS[_gpu_key(gpu)].name} peaks; no measurement of this expert)"


def _gpu_key(gpu: str) -> str:
    key = str(gpu).lower()
    if key not in GPUS:
        raise ValueError(f"unknown gpu {gpu!r}; known: {sorted(GPUS)}")
    return key


@dataclass(frozen=True)
class CostModel:
    """Per-expert time f(n) = (alpha^p + (beta*n)^p)^(1/p) in microseconds.

    alpha: us to run an expert at all (weight read); beta: us per token it serves;
    p >= 1 (float('inf') for the hard maximum).
    """

    alpha: float
    beta: float
    p: float = 1.0

    def __post_init__(self) -> None:
        for name in ("alpha", "beta"):
            object.__setattr__(self, name, check_non_negative(name, getattr(self, name)))
        object.__setattr__(self, "p", check_number("p", self.p))
        if not self.p >= 1:
            raise ValueError(f"p must be at least 1 (or inf), got {self.p}")

    def expert_time(self, tokens: int | np.ndarray) -> np.ndarray:
        """Time (us) of one expert serving `tokens` tokens (0 tokens: not run, 0 us)."""
        n = np.asarray(tokens, dtype=np.float64)
        if not (np.all(np.isfinite(n)) and np.all(n >= 0)):
            raise ValueError(f"tokens must be finite and non-negative, got {tokens!r}")
        work = self.beta * n
        if self.p == 1:
            t = self.alpha + work
        elif math.isinf(self.p):
            t = np.maximum(self.alpha, work)
        elif self.alpha == 0 or self.beta == 0:
            t = self.alpha + work
        else:
            t = _f(n, self.alpha, self.beta, self.p)
        return np.where(n > 0, t, 0.0)

    @classmethod
    def for_expert(
        cls,
        hidden: int,
        intermediate: int,
        dtype_bytes: float = 2,
        bandwidth: float = GPUS["h100"].bandwidth,
        flops: float = GPUS["h100"].flops,
        overhead: float = 0.0,
        p: float = 1.0,
    ) -> CostModel:
        """From a SwiGLU expert's shape: alpha = 3*hidden*intermediate*dtype_bytes / bandwidth
        (+ overhead, us), beta = 6*hidden*intermediate FLOP / flops (bandwidth in bytes/s,
        flops in FLOP/s, results in us)."""
        hidden = check_count("hidden", hidden)
        intermediate = check_count("intermediate", intermediate)
        dtype_bytes = check_positive("dtype_bytes", dtype_bytes)
        bandwidth = check_positive("bandwidth", bandwidth)
        flops = check_positive("flops", flops)
        weight_bytes = 3 * hidden * intermediate * dtype_bytes
        alpha = weight_bytes / bandwidth * 1e6 + check_non_negative("overhead", overhead)
        beta = 6 * hidden * intermediate / flops * 1e6
        return cls(alpha, beta, p)

    @classmethod
    def preset(
        cls, model: str, gpu: str = "h100", p: float | None = None, dtype_bytes: float = 2
    ) -> CostModel:
        """The cost model of `model`'s expert (an `EXPERT_SHAPES` key or any name `--model`
        accepts) on `gpu` ("h100" or "h200"): the calibration fit (`CALIBRATED`) where the
        shape was measured on that GPU in bf16, else a datasheet estimate (`for_expert` with
        the GPU's peaks); `preset_source` says which. `p` fixes the shape: a measured preset
        is then refitted to the measurements with that p (default: the fit's p; 1 for an
        estimate)."""
        key = preset_key(model)
        gpu = _gpu_key(gpu)
        hidden, intermediate = EXPERT_SHAPES[key]
        fitted = CALIBRATED.get(gpu, {}).get((hidden, intermediate))
        if fitted is not None and dtype_bytes == 2:
            if p is None:
                return cls(*fitted)
            return _refit(hidden, intermediate, check_number("p", p))
        spec = GPUS[gpu]
        p = 1.0 if p is None else p
        return cls.for_expert(hidden, intermediate, dtype_bytes, spec.bandwidth, spec.flops, p=p)

    @classmethod
    def fit(
        cls,
        tokens: Sequence[int] | np.ndarray,
        times: Sequence[float] | np.ndarray,
        experts: Sequence[int] | np.ndarray | None = None,
        p: float | None = None,
    ) -> CostModelFit:
        """Fits alpha, beta (and p unless given) to measured times (us) of `experts[i]`
        distinct experts run one after the other with `tokens[i]` tokens each (1 expert
        if `experts` is None), minimizing the squared relative errors. p is searched over
        [1, 8] and inf."""
        n = np.asarray(tokens, dtype=np.float64)
        y = np.asarray(times, dtype=np.float64)
        t = np.ones_like(n) if experts is None else np.asarray(experts, dtype=np.float64)
        if not (n.ndim == y.ndim == t.ndim == 1 and n.shape == y.shape == t.shape):
            raise ValueError(
                "tokens, times and experts must be 1-D of one length,"
                f" got {n.shape}, {y.shape}, {t.shape}"
            )
        if len(n) < 2:
            raise ValueError("fitting needs at least 2 points")
        finite = np.all(np.isfinite(n)) and np.all(np.isfinite(t)) and np.all(np.isfinite(y))
        if not (finite and np.all(n >= 1) and np.all(t >= 1) and np.all(y > 0)):
            raise ValueError(
                "tokens and experts must be finite and >= 1 and times positive and finite"
            )
        if p is not None and not check_number("p", p) >= 1:
            raise ValueError(f"p must be at least 1 (or inf), got {p}")
        # The fit is scale-free (relative errors; f scales with alpha and beta, and n only
        # multiplies beta), so it runs on times and tokens of order 1: n^p and y^p of raw
        # values overflow or underflow (times of 1e300 or 1e-300 us, tokens of 1e300).
        y_scale, n_scale = float(np.max(y)), float(np.max(n))
        scale = lambda ab: (ab[0] * y_scale, ab[1] * y_scale / n_scale)  # noqa: E731
        n_unit, per_expert = n / n_scale, y / t / y_scale
        if p is not None:
            alpha, beta = scale(_fit_alpha_beta(n_unit, per_expert, check_number("p", p)))
            model = cls(alpha, beta, p)
        else:
            candidates = [*np.round(np.arange(1.0, 8.0001, 0.05), 2), math.inf]
            fits = []
            for q in map(float, candidates):
                a, b = _fit_alpha_beta(n_unit, per_expert, q)
                fits.append((_sq_rel_err(n_unit, per_expert, a, b, q), a, b, q))
            _, alpha, beta, q = min(fits, key=lambda fit: fit[0])  # the first of equals
            model = cls(*scale((alpha, beta)), q)
        predicted = t * model.expert_time(n)
        return CostModelFit(model, n.astype(np.int64), t.astype(np.int64), y, predicted)


def _refit(hidden: int, intermediate: int, p: float) -> CostModel:
    """The bundled measurements of the expert shape fitted with a fixed p."""
    for entry in load_calibration()["models"].values():
        if (entry["hidden"], entry["intermediate"]) == (hidden, intermediate):
            pts = entry["points"]
            return CostModel.fit(
                [q["tokens"] for q in pts], [q["us"] for q in pts], [q["experts"] for q in pts], p=p
            ).model
    raise ValueError(f"no measurement of the expert shape {hidden}x{intermediate}")


def _f(n: np.ndarray, a: float, b: float, p: float) -> np.ndarray:
    work = b * n
    if math.isinf(p):
        return np.maximum(a, work)
    # Scaled by the larger term: a**p alone overflows for p of a few hundred.
    big = np.maximum(a, work)
    with np.errstate(invalid="ignore", divide="ignore"):
        small = np.where(big > 0, np.minimum(a, work) / big, 0.0)
    return big * (1 + small**p) ** (1 / p)


def _sq_rel_err(n: np.ndarray, y: np.ndarray, a: float, b: float, p: float) -> float:
    return float(np.sum((_f(n, a, b, p) / y - 1) ** 2))


def _fit_alpha_beta(n: np.ndarray, y: np.ndarray, p: float) -> tuple[float, float]:
    """For a fixed p, f^p = alpha^p + beta^p n^p is linear in (alpha^p, beta^p): a
    weighted least-squares start (weights 1/y^p approximate relative errors), then a
    multiplicative coordinate search on the true relative errors."""
    q = 8.0 if math.isinf(p) else p
    design = np.stack([np.ones_like(n), n**q], axis=1) / (y**q)[:, None]
    coef, *_ = np.linalg.lstsq(design, np.ones_like(n), rcond=None)
    # The physical reading of the points is a second start: the fewest-token time is
    # about alpha, the most-token time per token about beta.
    starts = [(float(np.min(y)), float(y[np.argmax(n)] / np.max(n)))]
    if coef[0] > 0 and coef[1] > 0:
        starts.append((float(coef[0] ** (1 / q)), float(coef[1] ** (1 / q))))
    fits = []
    for a, b in starts:
        a, b = _descend(n, y, a, b, p)
        fits.append((_sq_rel_err(n, y, a, b, p), a, b))
    _, alpha, beta = min(fits, key=lambda fit: fit[0])  # the first of equals
    return alpha, beta


def _descend(n: np.ndarray, y: np.ndarray, a: float, b: float, p: float) -> tuple[float, float]:
    err = _sq_rel_err(n, y, a, b, p)
    step = 0.25
    # When the best fit has alpha or beta = 0 (flat or proportional times) the search
    # crawls towards 0 forever: improvements let the step grow back, and the rounds are
    # capped.
    for _ in range(_MAX_DESCENT_ROUNDS):
        if step <= 1e-7:
            break
        improved = False
        for da, db in ((1 + step, 1), (1 / (1 + step), 1), (1, 1 + step), (1, 1 / (1 + step))):
            e = _sq_rel_err(n, y, a * da, b * db, p)
            if e < err:
                a, b, err, improved = a * da, b * db, e, True
        step = min(2 * step, 0.25) if improved else step / 2
    return a, b


_MAX_DESCENT_ROUNDS = 5000


def check_cost_model(value: object) -> CostModel:
    """`value` itself, if it is a `moefast.CostModel`; TypeError if not."""
    if not isinstance(value, CostModel):
        raise TypeError(f"cost_model must be a moefast.CostModel, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class CostModelFit:
    """A fitted model with its measured points and the relative error at each."""

    model: CostModel
    tokens: np.ndarray
    experts: np.ndarray
    measured: np.ndarray
    predicted: np.ndarray

    @property
    def rel_errors(self) -> np.ndarray:
        """(predicted - measured) / measured per point."""
        return self.predicted / self.measured - 1

    @property
    def max_rel_err(self) -> float:
        return float(np.max(np.abs(self.rel_errors)))

    @property
    def mean_rel_err(self) -> float:
        return float(np.mean(np.abs(self.rel_errors)))

    def points_table(self) -> str:
        """Markdown table of the points: experts, tokens, measured, predicted, error."""
        rows = [
            "| experts | tokens | measured (us) | model (us) | error |",
            "| --- | --- | --- | --- | --- |",
        ]
        for t, n, y, f, e in zip(
            self.experts, self.tokens, self.measured, self.predicted, self.rel_errors, strict=True
        ):
            rows.append(f"| {t} | {n} | {y:.1f} | {f:.1f} | {e:+.1%} |")
        return "\n".join(rows)


def load_calibration(path: str | Path | None = None) -> dict:
    """The JSON written by scripts/gpu_calibrate.py (default: the bundled H100 CUDA-graph
    measurements)."""
    if path is None:
        text = resources.files("moefast").joinpath("data/h100_expert_ffn_graphs.json").read_text()
        return json.loads(text)
    return json.loads(Path(path).read_text())


def fit_calibration(
    path: str | Path | dict | None = None, p: float | None = None
) -> dict[str, CostModelFit]:
    """Fits every model of a calibration file ({"models": {name: {"points": [{"experts",
    "tokens", "us"}, ...]}}}): name -> CostModelFit."""
    data = path if isinstance(path, dict) else load_calibration(path)
    fits = {}
    for name, entry in data["models"].items():
        points: Iterable[dict] = entry["points"]
        pts = list(points)
        fits[name] = CostModel.fit(
            [q["tokens"] for q in pts], [q["us"] for q in pts], [q["experts"] for q in pts], p=p
        )
    return fits
