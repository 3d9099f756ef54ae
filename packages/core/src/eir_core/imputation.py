"""Filling in missing inputs, the same way in training (modality dropout) and at generation.

A missing array input becomes standard-normal noise in normalized space (training always uses
N(0, 1); generation may scale it, ``scale`` × the same seeded draw); a missing tabular
input becomes the ``__NULL__`` category for every categorical column and 0 (the training
mean) for every continuous one. The noise is the only randomness of generation.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from eir_core.data.tabular import NULL, TabularEncoding

if TYPE_CHECKING:  # imported where used: generation on the ONNX runtime never imports PyTorch
    import torch


def null_codes_array(enc: TabularEncoding) -> np.ndarray:
    """Each categorical column's code of the ``__NULL__`` category, as int64."""
    return np.array([enc.categories[c].index(NULL) for c in enc.cat_columns], dtype=np.int64)


def noise_array(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> np.ndarray:
    """The generation noise of one item: N(0, 1) float32 from NumPy's default generator seeded
    with ``seed``, times ``scale`` (the draw itself does not depend on the scale). Both runtimes
    of the Predictor use it, so a seed gives the same digit on PyTorch and on ONNX Runtime."""
    noise = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    if scale != 1.0:
        noise *= np.float32(scale)
    return noise


def null_codes(enc: TabularEncoding) -> torch.Tensor:
    import torch

    return torch.from_numpy(null_codes_array(enc))


def check_noise_scale(scale: float) -> float:
    """``scale`` as a float, or ValueError unless it is finite and >= 0."""
    s = float(scale)
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"noise scale must be a finite number >= 0, got {scale!r}")
    return s


def impute_array_(
    x: torch.Tensor, missing: np.ndarray, generator: torch.Generator | None = None, scale: float = 1.0
) -> None:
    """Replace rows of ``x`` where ``missing`` with N(0, 1) noise times ``scale``, in place.

    The draw does not depend on ``scale``: the same generator state gives ``scale`` × the
    scale-1 noise (0 gives zeros, the normalized mean)."""
    import torch

    scale = check_noise_scale(scale)
    if missing.any():
        rows = torch.from_numpy(np.nonzero(missing)[0])
        noise = torch.randn((len(rows), *x.shape[1:]), generator=generator)
        if scale != 1.0:
            noise.mul_(scale)
        x[rows] = noise.to(x.device, x.dtype)


def impute_tabular_(x: dict[str, torch.Tensor], missing: np.ndarray, codes: torch.Tensor) -> None:
    import torch

    if missing.any():
        rows = torch.from_numpy(np.nonzero(missing)[0]).to(x["cat"].device)
        x["cat"][rows] = codes.to(x["cat"].device)
        x["con"][rows] = 0.0


def modality_dropout(present: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Presence after dropping each (present) sample's input with probability ``rate``."""
    if rate <= 0:
        return present
    return present & (rng.random(present.shape[0]) >= rate)
