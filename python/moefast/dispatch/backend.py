"""The array operations the dispatch runs, on numpy arrays or torch tensors alike: the
dispatch takes the engine's own tensors (torch, on the GPU that holds them) and returns the
same kind, so it runs inside an engine's forward pass with no copy to the host on the
single-token path. torch is imported only when a torch tensor is passed."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

Array = Any


class Numpy:
    """numpy arrays (host memory)."""

    name = "numpy"

    def asarray(self, values: Any, dtype: str = "int64") -> np.ndarray:
        return np.asarray(values, dtype=np.dtype(dtype))

    def to_numpy(self, x: Array) -> np.ndarray:
        return np.asarray(x)

    def as_dtype(self, x: Array, like: Array) -> np.ndarray:
        return np.asarray(x).astype(like.dtype)

    def arange(self, n: int) -> np.ndarray:
        return np.arange(n, dtype=np.int64)

    def zeros(self, shape: tuple[int, ...], dtype: str = "int64") -> np.ndarray:
        return np.zeros(shape, dtype=np.dtype(dtype))

    def stable_argsort(self, x: Array, axis: int) -> np.ndarray:
        return np.argsort(x, axis=axis, kind="stable")

    def take_along(self, x: Array, idx: Array, axis: int) -> np.ndarray:
        return np.take_along_axis(x, idx, axis=axis)

    def amax(self, x: Array, axis: int) -> np.ndarray:
        return np.max(x, axis=axis)

    def nonzero(self, mask: Array) -> np.ndarray:
        return np.flatnonzero(mask)

    def cap(self, x: Array, high: int) -> np.ndarray:
        return np.minimum(x, high)

    def where(self, cond: Array, x: Array, y: Array) -> Any:
        return np.where(cond, x, y)

    def bincount(self, x: Array, length: int) -> np.ndarray:
        return np.bincount(x, minlength=length)

    def cumsum(self, x: Array) -> np.ndarray:
        return np.cumsum(x)

    def item(self, x: Array) -> int:
        return int(x)


class Torch(Numpy):
    """torch tensors, on the device of the tensor passed in."""

    name = "torch"

    def __init__(self, like: Any) -> None:
        import torch  # optional: only a caller that passes torch tensors reaches this

        self.torch = torch
        self.device = like.device

    def asarray(self, values: Any, dtype: str = "int64") -> Any:
        if isinstance(values, self.torch.Tensor):
            return values.to(device=self.device, dtype=getattr(self.torch, dtype))
        return self.torch.as_tensor(
            np.asarray(values), dtype=getattr(self.torch, dtype), device=self.device
        )

    def to_numpy(self, x: Array) -> np.ndarray:
        return np.asarray(x.detach().cpu().numpy())

    def as_dtype(self, x: Array, like: Array) -> Any:
        return x.to(like.dtype)

    def arange(self, n: int) -> Any:
        return self.torch.arange(n, dtype=self.torch.int64, device=self.device)

    def zeros(self, shape: tuple[int, ...], dtype: str = "int64") -> Any:
        return self.torch.zeros(shape, dtype=getattr(self.torch, dtype), device=self.device)

    def stable_argsort(self, x: Array, axis: int) -> Any:
        return self.torch.sort(x, dim=axis, stable=True).indices

    def take_along(self, x: Array, idx: Array, axis: int) -> Any:
        return self.torch.take_along_dim(x, idx, dim=axis)

    def amax(self, x: Array, axis: int) -> Any:
        return self.torch.amax(x, dim=axis)

    def nonzero(self, mask: Array) -> Any:
        return self.torch.nonzero(mask.reshape(-1)).reshape(-1)

    def cap(self, x: Array, high: int) -> Any:
        return x.clamp(max=high)

    def where(self, cond: Array, x: Array, y: Array) -> Any:
        return self.torch.where(cond, x, y)

    def bincount(self, x: Array, length: int) -> Any:
        return self.torch.bincount(x, minlength=length)

    def cumsum(self, x: Array) -> Any:
        return self.torch.cumsum(x, dim=0)

    def item(self, x: Array) -> int:
        return int(x.item())


def backend_of(x: Any) -> Numpy:
    """The operations for ``x``'s kind: torch for a torch tensor, else numpy."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return Torch(x)
    return Numpy()
