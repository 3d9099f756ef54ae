"""Filling in missing inputs, the same way in training (modality dropout) and at generation.

A missing array input becomes standard-normal noise in normalized space; a missing tabular
input becomes the ``__NULL__`` category for every categorical column and 0 (the training
mean) for every continuous one. The noise is the only randomness of generation.
"""

from __future__ import annotations

import numpy as np
import torch

from eir_core.data.tabular import NULL, TabularEncoding


def null_codes(enc: TabularEncoding) -> torch.Tensor:
    return torch.tensor([enc.categories[c].index(NULL) for c in enc.cat_columns], dtype=torch.int64)


def impute_array_(x: torch.Tensor, missing: np.ndarray, generator: torch.Generator | None = None) -> None:
    """Replace rows of ``x`` where ``missing`` with N(0, 1) noise, in place."""
    if missing.any():
        rows = torch.from_numpy(np.nonzero(missing)[0])
        x[rows] = torch.randn((len(rows), *x.shape[1:]), generator=generator).to(x.device, x.dtype)


def impute_tabular_(x: dict[str, torch.Tensor], missing: np.ndarray, codes: torch.Tensor) -> None:
    if missing.any():
        rows = torch.from_numpy(np.nonzero(missing)[0]).to(x["cat"].device)
        x["cat"][rows] = codes.to(x["cat"].device)
        x["con"][rows] = 0.0


def modality_dropout(present: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Presence after dropping each (present) sample's input with probability ``rate``."""
    if rate <= 0:
        return present
    return present & (rng.random(present.shape[0]) >= rate)
