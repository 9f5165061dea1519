"""Record routing traces from Hugging Face transformers MoE models.

`RoutingRecorder` puts forward hooks on the router ("gate") modules of every MoE layer and
keeps each call's top-k expert ids while the user runs the model on their own inputs:

    with RoutingRecorder(model) as recorder:
        for batch in batches:
            model(**batch)
    trace = recorder.trace()

Routers differ between models: Mixtral, Qwen-MoE and OLMoE gates are Linear layers returning
logits [tokens, E] (top-k taken here); DeepSeek-style gates and gpt-oss routers return tuples
holding the chosen ids (used as they are). `trace_from_router_logits` does the same from the
``router_logits`` a model returns with ``output_router_logits=True``.

Every token the model sees is recorded, padding included: run unpadded inputs (or batch size 1)
to keep padding out of the trace. Checked with transformers 5.x on small randomly initialized
Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, gpt-oss and DeepSeek-V3 models (the recorded ids equal the
top-k of the model's own ``router_logits``); not yet on released weights.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from moefast.io.readers._errors import require
from moefast.trace import Trace

_LAYER_NUMBER = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")
ROUTER_NAMES = ("gate", "router")


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach()
        if getattr(value, "dtype", None) is not None and "bfloat16" in str(value.dtype):
            value = value.float()  # numpy has no bfloat16
        value = value.cpu().numpy()
    return np.asarray(value)


def topk_from_router_output(output: Any, k: int, num_experts: int) -> np.ndarray:
    """int [tokens, k] from what a router module returned.

    A float array [..., E] is router logits (or probabilities): its k largest per token are
    the choice. A tuple/list is searched for an integer array [..., k] of chosen ids; failing
    that, for a float array [..., E].
    """
    if isinstance(output, (tuple, list)):
        arrays = [_as_numpy(x) for x in output if hasattr(x, "shape") or isinstance(x, np.ndarray)]
        for arr in arrays:
            if arr.dtype.kind in "iu" and arr.ndim >= 1 and arr.shape[-1] == k:
                return arr.reshape(-1, k).astype(np.int64)
        for arr in arrays:
            if arr.dtype.kind == "f" and arr.ndim >= 1 and arr.shape[-1] == num_experts:
                return topk_from_router_output(arr, k, num_experts)
        shapes = [(a.dtype.name, a.shape) for a in arrays]
        raise ValueError(
            f"router output holds no integer ids [..., {k}] nor logits [..., {num_experts}]:"
            f" {shapes}"
        )
    logits = _as_numpy(output)
    if logits.dtype.kind != "f" or logits.ndim < 1 or logits.shape[-1] != num_experts:
        raise ValueError(
            f"router output must be logits [..., {num_experts}], got {logits.dtype} {logits.shape}"
        )
    flat = logits.reshape(-1, num_experts)
    top = np.argpartition(-flat, k - 1, axis=1)[:, :k]
    # Order each row by logit so the first id is the top choice, as routers report it.
    order = np.argsort(-np.take_along_axis(flat, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1).astype(np.int64)


def trace_from_router_logits(
    router_logits: Sequence[Any],
    k: int,
    num_experts: int | None = None,
    layer_ids: Sequence[int] | None = None,
) -> Trace:
    """A trace from per-layer router logits [tokens, E] (``output_router_logits=True``)."""
    if not router_logits:
        raise ValueError("router_logits is empty")
    if num_experts is None:
        num_experts = int(_as_numpy(router_logits[0]).shape[-1])
    per_layer = [topk_from_router_output(x, k, num_experts) for x in router_logits]
    tokens = {a.shape[0] for a in per_layer}
    if len(tokens) != 1:
        raise ValueError(f"layers saw different token counts {sorted(tokens)}")
    return Trace(np.stack(per_layer, axis=1), num_experts, list(layer_ids or range(len(per_layer))))


def find_routers(
    named_modules: Iterable[tuple[str, Any]], names: Sequence[str] = ROUTER_NAMES
) -> list[tuple[int, str, Any]]:
    """(layer number, module name, module) of each router, by layer number.

    A router is a module whose own name is one of ``names`` inside a numbered layer
    (``model.layers.7.mlp.gate``); shared-expert gates (``shared_expert_gate``) do not match.
    """
    found: dict[int, tuple[str, Any]] = {}
    for name, module in named_modules:
        last = name.rsplit(".", 1)[-1]
        match = _LAYER_NUMBER.search(name)
        if last in names and match:
            layer = int(match.group(1))
            if layer in found:
                raise ValueError(f"two routers in layer {layer}: {found[layer][0]} and {name}")
            found[layer] = (name, module)
    return [(layer, *found[layer]) for layer in sorted(found)]


class HookRecorder:
    """The recording logic, for any module tree with ``named_modules`` and
    ``register_forward_hook`` (torch's interface); `RoutingRecorder` is the public face."""

    def __init__(
        self, model: Any, k: int, num_experts: int, router_names: Sequence[str] = ROUTER_NAMES
    ):
        if k < 1 or num_experts < k:
            raise ValueError(
                f"need 1 <= k <= num_experts, got k = {k}, num_experts = {num_experts}"
            )
        self.k, self.num_experts = k, num_experts
        self.routers = find_routers(model.named_modules(), router_names)
        if not self.routers:
            raise ValueError(
                f"no router module found: looked for modules named {list(router_names)} inside"
                " numbered layers; pass router_names= for this model"
            )
        self._chunks: dict[int, list[np.ndarray]] = {layer: [] for layer, _, _ in self.routers}
        self._handles: list[Any] = []
        self._warned_bias = False

    def _hook(self, layer: int) -> Callable:
        def record(module, inputs, output):
            if (
                not isinstance(output, (tuple, list))
                and hasattr(module, "e_score_correction_bias")
                and not self._warned_bias
            ):
                # DeepSeek-V3-style routing adds this bias (and group limits) after the gate:
                # the top-k of bare logits is then not what the model chose.
                self._warned_bias = True
                warnings.warn(
                    f"the router of layer {layer} returns only logits but routes with a correction"
                    " bias: the recorded top-k of logits may differ from the model's choice; use a"
                    " transformers version whose router returns the chosen ids",
                    stacklevel=2,
                )
            self._chunks[layer].append(topk_from_router_output(output, self.k, self.num_experts))

        return record

    def start(self) -> None:
        if self._handles:
            raise RuntimeError("the recorder is already recording")
        self._handles = [m.register_forward_hook(self._hook(layer)) for layer, _, m in self.routers]

    def stop(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def clear(self) -> None:
        for chunks in self._chunks.values():
            chunks.clear()

    def trace(self) -> Trace:
        """The tokens recorded so far, int [tokens, layers, k] in call order."""
        per_layer = {}
        for layer, chunks in self._chunks.items():
            per_layer[layer] = np.concatenate(chunks) if chunks else np.empty((0, self.k), np.int64)
        counts = {layer: a.shape[0] for layer, a in per_layer.items()}
        if len(set(counts.values())) != 1:
            raise ValueError(f"layers recorded different token counts: {counts}")
        if next(iter(counts.values())) == 0:
            raise ValueError("nothing recorded: run the model inside the recorder's `with` block")
        layers = sorted(per_layer)
        return Trace(
            np.stack([per_layer[layer] for layer in layers], axis=1), self.num_experts, layers
        )


def _config_value(config: Any, names: Sequence[str]) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


class RoutingRecorder(HookRecorder):
    """Records the top-k expert ids of a transformers MoE model's routers (needs torch).

    ``k`` and ``num_experts`` default to the model config's ``num_experts_per_tok`` and
    ``num_local_experts`` / ``num_experts`` / ``n_routed_experts``.
    """

    def __init__(
        self,
        model: Any,
        k: int | None = None,
        num_experts: int | None = None,
        router_names: Sequence[str] = ROUTER_NAMES,
    ):
        require("torch", "recording transformers models")
        config = getattr(model, "config", None)
        k = k or _config_value(config, ("num_experts_per_tok", "moe_topk", "top_k"))
        num_experts = num_experts or _config_value(
            config, ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
        )
        if k is None or num_experts is None:
            raise ValueError(
                "cannot read k and num_experts from the model config: pass k= and num_experts="
            )
        super().__init__(model, k, num_experts, router_names)
