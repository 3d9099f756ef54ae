"""The embedded data set: scikit-learn's handwritten digits (1797 real 8x8 images, 0..16),
written in EIR's tutorial layout, as 8x8 or resized (e.g. the MNIST-shaped 28x28 variant).

Layout: ``DIR/mnist_npy/<ID>.npy`` (uint8, 0..255) and ``DIR/mnist_labels.csv`` (ID,CLASS).
A resized variant (28x28, or any other side) is resampled bilinearly and, past the 1797
originals, adds copies shifted by up to 2 pixels (zero-filled) so that ``count`` samples exist.
IDs start at 10000 (8x8) or 20000 (other sizes).
"""

from __future__ import annotations

from eir_core import _require_torch  # noqa: F401  (first: without PyTorch, an error naming the extra)

# isort: split
import csv
import io
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from eir_core._fs import atomic_write_bytes


def load_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (1797, 8, 8) scaled 0..255, labels int64)."""
    from sklearn.datasets import load_digits  # training extra; ships the data, no download

    d = load_digits()
    images = np.clip(np.round(d.images * 255.0 / 16.0), 0, 255).astype(np.uint8)
    return images, d.target.astype(np.int64)


def upsample(images: np.ndarray, size: int) -> np.ndarray:
    x = torch.from_numpy(images.astype(np.float32))[:, None]
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return np.clip(np.round(y[:, 0].numpy()), 0, 255).astype(np.uint8)


def _shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(img)
    h, w = img.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def make_digits(size: int = 8, count: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_digits_uint8()
    if size != 8:
        images = upsample(images, size)
    n = count or len(images)
    if n <= len(images):
        return images[:n], labels[:n]
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size), np.uint8)
    out[: len(images)] = images
    lab = np.empty(n, np.int64)
    lab[: len(images)] = labels
    for k in range(len(images), n):
        j = k % len(images)
        dy, dx = rng.integers(-2, 3, size=2)
        out[k] = _shift(images[j], int(dy), int(dx))
        lab[k] = labels[j]
    return out, lab


def write_tutorial_layout(folder: Path, images: np.ndarray, labels: np.ndarray, id_start: int) -> None:
    """Write ``mnist_npy/<ID>.npy`` and ``mnist_labels.csv`` under ``folder``."""
    npy = folder / "mnist_npy"
    npy.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["ID", "CLASS"])
    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        sid = str(id_start + i)
        np.save(npy / f"{sid}.npy", np.ascontiguousarray(img))
        w.writerow([sid, int(lab)])
    atomic_write_bytes(folder / "mnist_labels.csv", buf.getvalue().encode())
