"""Layer layouts of common MoE models: which decoder layers have routed experts.

Engines index placement rows by the model's own layer numbers (SGLang: one row per
``num_hidden_layers``; TensorRT-LLM: decoder-layer keys) or by MoE-layer position
(vLLM-Ascend), so a placement file is right only when moefast knows which layers are MoE.
Numbers come from each model's Hugging Face ``config.json`` (``num_hidden_layers``,
``first_k_dense_replace`` / ``decoder_sparse_step`` / ``mlp_only_layers``, the expert count
and top-k keys named per entry); ``mtp_layers`` are the decoder-layer indices engines give
multi-token-prediction (NextN) layers, which follow the main layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from moefast._util.checks import MAX_LAYERS, check_int, check_layer_ids
from moefast.trace import Trace


@dataclass(frozen=True)
class ModelLayout:
    """``num_layers`` decoder layers, of which ``moe_layers`` (ascending) have routed experts."""

    name: str
    num_layers: int
    moe_layers: tuple[int, ...]
    num_experts: int | None = None
    k: int | None = None
    num_groups: int | None = None
    mtp_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # Exact ints only: 61.9 layers or layer 3.7 are refused, not truncated, and
        # num_layers is bounded as layer ids are (a writer lays out one row per layer).
        num_layers = check_int("num_layers", self.num_layers, 1, MAX_LAYERS)
        object.__setattr__(self, "num_layers", num_layers)
        layers = tuple(check_layer_ids(_sequence(self.moe_layers, "moe_layers"), "moe_layers"))
        mtp = tuple(check_layer_ids(_sequence(self.mtp_layers, "mtp_layers"), "mtp_layers"))
        object.__setattr__(self, "mtp_layers", mtp)
        for name in ("num_experts", "k", "num_groups"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_int(name, value, 1))
        if not layers or list(layers) != sorted(set(layers)):
            raise ValueError(f"moe_layers must be distinct ascending layer ids, got {layers}")
        if layers[0] < 0 or layers[-1] >= self.num_layers:
            raise ValueError(
                f"moe_layers {layers[0]}..{layers[-1]} do not fit num_layers = {self.num_layers}"
            )
        object.__setattr__(self, "moe_layers", layers)

    def describe(self) -> str:
        dense = [x for x in range(self.num_layers) if x not in set(self.moe_layers)]
        dense_text = f"; dense: {_ranges(dense)}" if dense else ""
        return (
            f"{self.name}: {self.num_layers} layers, MoE layers {_ranges(self.moe_layers)}"
            f"{dense_text}"
        )

    def check_layers(self, layer_ids: Sequence[int], num_experts: int | None = None) -> None:
        """ValueError unless ``layer_ids`` are MoE layers of this model (and the experts match)."""
        if None not in (num_experts, self.num_experts) and num_experts != self.num_experts:
            raise ValueError(
                f"the placement has {num_experts} experts per layer; {self.name} has"
                f" {self.num_experts}"
            )
        allowed = set(self.moe_layers) | set(self.mtp_layers)
        wrong = [x for x in layer_ids if x not in allowed]
        if not wrong:
            return
        hint = ""
        if len(layer_ids) <= len(self.moe_layers) and list(layer_ids) == list(
            range(len(layer_ids))
        ):
            hint = (
                f" They look like positions 0..{len(layer_ids) - 1}: if they are the model's"
                f" first {len(layer_ids)} MoE layers, map them with"
                " `moefast.io.layouts.map_positions(trace, model)` (CLI: --layers-are-positions)"
            )
        raise ValueError(
            f"layer ids {_ranges(wrong)} are not MoE layers of {self.describe()}.{hint}"
        )


def _sequence(values: object, name: str) -> Sequence:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise TypeError(f"{name} must be a sequence of layer ids, got {type(values).__name__}")
    return values  # type: ignore[return-value]


def _ranges(ids: Sequence[int]) -> str:
    ids = list(ids)
    parts, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[i - 1] + 1:
            a, b = ids[start], ids[i - 1]
            parts.append(str(a) if a == b else f"{a}-{b}")
            start = i
    return ", ".join(parts)


def _every(num_layers: int, first_dense: int = 0) -> tuple[int, ...]:
    return tuple(range(first_dense, num_layers))


#: Presets by name. Sources (huggingface.co/<repo>/blob/main/config.json):
#: deepseek-ai/DeepSeek-V3 and DeepSeek-R1: num_hidden_layers 61, first_k_dense_replace 3,
#:   n_routed_experts 256, num_experts_per_tok 8, n_group 8, num_nextn_predict_layers 1;
#: deepseek-ai/DeepSeek-V2: 60 layers, first_k_dense_replace 1, 160 experts, top-6, n_group 8;
#: deepseek-ai/DeepSeek-V2-Lite: 27 layers, first_k_dense_replace 1, 64 experts, top-6;
#: Qwen/Qwen1.5-MoE-A2.7B: 24 layers, decoder_sparse_step 1, 60 experts, top-4;
#: Qwen/Qwen2-57B-A14B: 28 layers, decoder_sparse_step 1, 64 experts, top-8;
#: Qwen/Qwen3-30B-A3B: 48 layers, 128 experts, top-8; Qwen/Qwen3-235B-A22B: 94 layers, 128, top-8;
#: mistralai/Mixtral-8x7B-v0.1: 32 layers, num_local_experts 8, top-2; Mixtral-8x22B: 56 layers;
#: databricks/dbrx-base: n_layers 40, ffn_config.moe_num_experts 16, moe_top_k 4;
#: allenai/OLMoE-1B-7B-0924: 16 layers, 64 experts, top-8;
#: openai/gpt-oss-20b: 24 layers, num_local_experts 32, experts_per_token 4; gpt-oss-120b: 36, 128.
PRESETS: dict[str, ModelLayout] = {
    p.name: p
    for p in (
        ModelLayout("deepseek-v3", 61, _every(61, 3), 256, 8, 8, (61,)),
        ModelLayout("deepseek-r1", 61, _every(61, 3), 256, 8, 8, (61,)),
        ModelLayout("deepseek-v2", 60, _every(60, 1), 160, 6, 8),
        ModelLayout("deepseek-v2-lite", 27, _every(27, 1), 64, 6, 1),
        ModelLayout("qwen1.5-moe-a2.7b", 24, _every(24), 60, 4),
        ModelLayout("qwen2-moe-57b-a14b", 28, _every(28), 64, 8),
        ModelLayout("qwen3-30b-a3b", 48, _every(48), 128, 8),
        ModelLayout("qwen3-235b-a22b", 94, _every(94), 128, 8),
        ModelLayout("mixtral-8x7b", 32, _every(32), 8, 2),
        ModelLayout("mixtral-8x22b", 56, _every(56), 8, 2),
        ModelLayout("dbrx", 40, _every(40), 16, 4),
        ModelLayout("olmoe-1b-7b", 16, _every(16), 64, 8),
        ModelLayout("gpt-oss-20b", 24, _every(24), 32, 4),
        ModelLayout("gpt-oss-120b", 36, _every(36), 128, 4),
    )
}
_ALIASES = {
    "qwen2-moe": "qwen2-moe-57b-a14b",
    "qwen3-moe": "qwen3-30b-a3b",
    "mixtral": "mixtral-8x7b",
    "olmoe": "olmoe-1b-7b",
    "gpt-oss": "gpt-oss-20b",
}


def get_model(name: str) -> ModelLayout:
    """The preset called ``name`` (case-insensitive; see `PRESETS`)."""
    key = str(name).lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in PRESETS:
        raise ValueError(
            f"unknown model {name!r}; presets: {', '.join(sorted(PRESETS) + sorted(_ALIASES))},"
            " or give num_layers= and moe_layers="
        )
    return PRESETS[key]


def model_layout(
    model: str | ModelLayout | None = None,
    num_layers: int | None = None,
    moe_layers: Sequence[int] | None = None,
) -> ModelLayout | None:
    """The layout named by ``model``, or built from ``num_layers``/``moe_layers``, or None.

    ``moe_layers`` alone means ``num_layers = max + 1``; ``num_layers`` alone means every
    layer is MoE. Explicit values override the preset's.
    """
    if model is not None:
        base = model if isinstance(model, ModelLayout) else get_model(model)
        if num_layers is None and moe_layers is None:
            return base
        return ModelLayout(
            base.name,
            base.num_layers if num_layers is None else num_layers,
            base.moe_layers if moe_layers is None else tuple(moe_layers),
            base.num_experts,
            base.k,
            base.num_groups,
            base.mtp_layers,
        )
    if num_layers is None and moe_layers is None:
        return None
    if moe_layers is None:
        total = check_int("num_layers", num_layers, 1, MAX_LAYERS)
        return ModelLayout("the model", total, _every(total))
    layers = tuple(check_layer_ids(_sequence(moe_layers, "moe_layers"), "moe_layers"))
    if not layers:
        raise ValueError("moe_layers is empty")
    total = max(layers) + 1 if num_layers is None else num_layers
    return ModelLayout("the model", total, layers)


def map_positions(trace, model: str | ModelLayout):
    """A copy of ``trace`` whose layer ids 0..L-1 (positions) become the model's first L MoE
    layers (DeepSeek-V3: 0 -> 3, ..., 57 -> 60)."""

    layout = model if isinstance(model, ModelLayout) else get_model(model)
    if trace.num_layers > len(layout.moe_layers):
        raise ValueError(
            f"the trace has {trace.num_layers} layers; {layout.name} has"
            f" {len(layout.moe_layers)} MoE layers"
        )
    return Trace(
        trace.topk,
        trace.num_experts,
        list(layout.moe_layers[: trace.num_layers]),
        trace.weights,
        trace.request_ids,
    )
