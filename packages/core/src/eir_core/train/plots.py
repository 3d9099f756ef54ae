"""Training curves, sample grids and t-SNE pictures as PNG bytes (matplotlib, imported lazily:
training-only). Where the bytes go is the renderer's business (``render.py``)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _figure(figsize: tuple[float, float]) -> Any:
    # The object API, not pyplot: no global state, so plots can be drawn on a worker thread.
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if len(y) < window or window < 2:
        return y
    kernel = np.ones(window) / window
    return np.convolve(y, kernel, mode="valid")


def _plain_log_labels(ax: Any) -> None:
    """Log-axis tick labels as plain numbers (0.1, 0.05) instead of matplotlib's 10^x, which it
    typesets with mathtext: half of a curve's drawing time. Minor ticks at 2 and 5 times a power
    of ten are labelled when the axis spans at most two decades, as matplotlib's own rule does."""
    from matplotlib.ticker import FuncFormatter

    def major(v: float, _pos: int) -> str:
        return f"{v:g}"

    def minor(v: float, _pos: int) -> str:
        lo, hi = ax.get_ylim()
        if v <= 0 or lo <= 0 or math.log10(hi / lo) > 2:
            return ""
        mantissa = v / 10 ** math.floor(math.log10(v) + 1e-9)
        return f"{v:g}" if round(mantissa) in (2, 5) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(major))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def plot_curve(
    train: Sequence[tuple[int, float]], valid: Sequence[tuple[int, float]], title: str, skip: int = 0
) -> bytes:
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
    if all(v > 0 for _, v in [*train, *valid]):
        ax.set_yscale("log")
        _plain_log_labels(ax)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return _png(fig)


def plot_sample_grid(rows: Sequence[tuple[str, Sequence[np.ndarray]]], col_titles: Sequence[str]) -> bytes:
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
    return _png(fig)


def plot_tsne(latent: np.ndarray, labels: Sequence[str] | None, title: str, seed: int = 42) -> bytes | None:
    """2-D t-SNE of ``latent`` (N, D), coloured by ``labels`` when given (None: too few points)."""
    from sklearn.decomposition import PCA  # training extra
    from sklearn.manifold import TSNE

    n = latent.shape[0]
    if n < 5:
        return None
    # PCA to 30 dimensions first and 500 iterations: the usual recipe, ~4x cheaper than the
    # defaults on 1000 points, and the picture is the same at this size.
    x = latent.astype(np.float32)
    if x.shape[1] > 30 and n > 30:
        x = PCA(30, random_state=seed).fit_transform(x)
    tsne = TSNE(
        n_components=2, perplexity=min(30.0, (n - 1) / 3), random_state=seed, init="pca", max_iter=500, n_jobs=1
    )
    emb = tsne.fit_transform(x)
    fig = _figure((6.5, 5.5))
    ax = fig.subplots()
    if labels is None:
        ax.scatter(emb[:, 0], emb[:, 1], s=6, alpha=0.7)
    else:
        lab = np.asarray(labels)
        for k, value in enumerate(sorted(set(lab), key=lambda v: (len(v), v))):
            pick = lab == value
            ax.scatter(emb[pick, 0], emb[pick, 1], s=6, alpha=0.8, label=value, color=f"C{k % 10}")
        ax.legend(markerscale=3, fontsize=8, loc="best", title=None)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    return _png(fig)
