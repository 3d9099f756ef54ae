"""Training curves and sample grids as PNG (matplotlib, imported lazily: training-only)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eir_core.bundle import atomic_write_bytes


def _figure(figsize: tuple[float, float]) -> Any:
    # The object API, not pyplot: no global state, so plots can be drawn on a worker thread.
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _save(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if len(y) < window or window < 2:
        return y
    kernel = np.ones(window) / window
    return np.convolve(y, kernel, mode="valid")


def plot_curve(
    path: Path, train: Sequence[tuple[int, float]], valid: Sequence[tuple[int, float]], title: str, skip: int = 0
) -> None:
    """Training (smoothed) and validation values against the iteration."""
    fig = _figure((7, 4))
    ax = fig.subplots()
    if train:
        it = np.array([t[0] for t in train])
        y = np.array([t[1] for t in train])
        keep = it > skip if (it > skip).sum() > 1 else slice(None)
        it, y = it[keep], y[keep]
        w = max(1, min(50, len(y) // 20))
        ax.plot(it[w - 1 :] if w > 1 else it, _smooth(y, w), label="train", lw=1.2)
    if valid:
        ax.plot([v[0] for v in valid], [v[1] for v in valid], "o-", label="validation", lw=1.5)
    ax.set_xlabel("iteration")
    ax.set_ylabel(title)
    ax.set_yscale("log") if all(v > 0 for _, v in [*train, *valid]) else None
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    _save(fig, path)


def plot_sample_grid(path: Path, rows: Sequence[tuple[str, Sequence[np.ndarray]]], col_titles: Sequence[str]) -> None:
    """One row per sample: (label, [arrays shaped (C,H,W) or (H,W)]) shown as grey images."""
    n_rows, n_cols = len(rows), len(col_titles)
    fig = _figure((1.6 * n_cols, 1.6 * n_rows))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, (label, arrays) in enumerate(rows):
        for c, arr in enumerate(arrays):
            img = np.asarray(arr, dtype=np.float32)
            img = img[0] if img.ndim == 3 and img.shape[0] == 1 else img
            if img.ndim == 3:
                img = np.moveaxis(img, 0, -1)
            ax = axes[r][c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=max(1.0, float(np.nanmax(arrays[0]))))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col_titles[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=7)
    _save(fig, path)
