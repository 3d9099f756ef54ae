"""Normalization statistics of array sources: channel (C,1,1) or element (C,H,W) mean/std.

Applied as ``(x - mean) / (std + 1e-10)`` to inputs and targets; inverted on outputs.
Unlike EIR, statistics come from the training split only (no validation leakage), from the
first ``max_samples`` training IDs in sorted order (no off-by-one), in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the tensor methods import PyTorch when called: the array ones never need it
    import torch

EPS = 1e-10


@dataclass
class NormStats:
    kind: str | None  # "channel", "element" or None (identity)
    mean: np.ndarray  # float32, broadcastable to (C, H, W)
    std: np.ndarray

    @classmethod
    def identity(cls, shape: tuple[int, int, int]) -> NormStats:
        return cls(None, np.zeros((shape[0], 1, 1), np.float32), np.ones((shape[0], 1, 1), np.float32))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / (std + EPS)``, NaNs taken as the mean; float32 (or x's wider float)."""
        import torch

        wide = x.is_floating_point() and torch.promote_types(x.dtype, torch.float32) != torch.float32
        out = torch.empty(x.shape, dtype=x.dtype if wide else torch.float32, device=x.device)
        self.normalize_into(x, out)
        return out

    def normalize_into(self, raw: torch.Tensor, out: torch.Tensor) -> None:
        """``out[...] = normalize(raw)`` for raw arrays of any numeric dtype and a float ``out`` of
        their shape, without temporaries of the batch's size; the NaN check only where a NaN can
        be (float data)."""
        import torch

        mean = torch.as_tensor(self.mean, device=out.device)
        out.copy_(raw)
        if raw.is_floating_point():
            torch.where(torch.isnan(out), mean, out, out=out)
        out.sub_(mean).div_(torch.as_tensor(self.std, device=out.device) + EPS)

    def denormalize(self, y: torch.Tensor) -> torch.Tensor:
        import torch

        mean = torch.as_tensor(self.mean, device=y.device)
        std = torch.as_tensor(self.std, device=y.device)
        return y * (std + EPS) + mean

    def normalize_array(self, x: np.ndarray) -> np.ndarray:
        """``normalize`` for float32 NumPy arrays (N, C, H, W): the same arithmetic in float32."""
        x = np.where(np.isnan(x), self.mean, x) if np.isnan(x).any() else x
        out: np.ndarray = (x - self.mean) / (self.std + np.float32(EPS))
        return out.astype(np.float32, copy=False)

    def denormalize_array(self, y: np.ndarray) -> np.ndarray:
        out: np.ndarray = y * (self.std + np.float32(EPS)) + self.mean
        return out.astype(np.float32, copy=False)


STATS_CHUNK = 512  # rows per float64 temporary in _mean_std


def _mean_std(x: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) standard deviation over ``axes`` (which include 0), in float64, two
    passes over ``STATS_CHUNK`` rows at a time: the float64 copy of the whole set that
    ``ndarray.std`` makes (56 MB for 9 000 28x28 images, fresh pages each run) never exists.
    Agrees with ``x.std(dtype=float64)`` to float64 rounding."""
    n = x.shape[0]
    count = float(np.prod([x.shape[a] for a in axes]))
    total = np.zeros([1 if a in axes else d for a, d in enumerate(x.shape)], dtype=np.float64)
    for s in range(0, n, STATS_CHUNK):
        total += x[s : s + STATS_CHUNK].sum(axis=axes, keepdims=True, dtype=np.float64)
    mean = total / count
    squares = np.zeros_like(total)
    for s in range(0, n, STATS_CHUNK):
        d = x[s : s + STATS_CHUNK] - mean  # float64
        squares += np.square(d, out=d).sum(axis=axes, keepdims=True)
    return mean[0], np.sqrt(squares / count)[0]


def compute_stats(arrays: np.ndarray, kind: str | None) -> NormStats:
    """Statistics of ``arrays`` shaped (N, C, H, W); NaNs are ignored."""
    c = arrays.shape[1]
    if kind is None:
        c_, h, w = arrays.shape[1:]
        return NormStats.identity((c_, h, w))
    x = arrays
    if kind == "channel":
        axes: tuple[int, ...] = (0, 2, 3)
    elif kind == "element":
        axes = (0,)
    else:
        raise ValueError(f"unknown normalization {kind!r}")
    if x.dtype.kind == "f" and np.isnan(x).any():
        mean = np.nanmean(x, axis=axes, keepdims=True)[0]
        std = np.nanstd(x, axis=axes, keepdims=True)[0]
    else:  # the common case, without nan* copies
        mean, std = _mean_std(x, axes)
    std = np.nan_to_num(std, nan=1.0)
    mean = np.nan_to_num(mean, nan=0.0)
    if kind == "channel":
        mean, std = mean.reshape(c, 1, 1), std.reshape(c, 1, 1)
    return NormStats(kind, mean.astype(np.float32), std.astype(np.float32))
