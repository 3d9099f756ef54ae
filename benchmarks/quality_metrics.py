"""Sample-quality measures for generated images, in plain numpy/scipy (used by conditional_quality.py).

- ``frechet_distance``: the Fréchet distance between Gaussians fitted to two feature sets
  (the FID formula, here on features of a small classifier rather than Inception).
- ``density_coverage``: Naeem et al. (2020) density and coverage of generated samples against
  real ones, from k-nearest-neighbour balls around the real samples.
- ``mean_pairwise_distance``: average Euclidean distance between distinct members of a set
  (0 for identical samples), compared against the real digits' own within-class value.
- ``nearest_neighbours`` / ``copy_flags``: each generation's two closest training images; a
  generation is flagged as a copy when its nearest training image is much closer than the
  second-nearest (ratio test) or it lies within ``abs_tol`` of a training image.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg
from scipy.spatial.distance import cdist, pdist


def _as_2d(x: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"{what}: expected a (n >= 2, d) array, got shape {a.shape}")
    return a


def frechet_from_stats(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2))."""
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    with warnings.catch_warnings():
        # Few samples for the dimension (or constant features) make the product singular; its
        # square root is still defined. Fall back to slightly offset diagonals only if not finite.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov1 @ cov2)
        if not np.isfinite(covmean).all():
            off = np.eye(cov1.shape[0]) * 1e-6
            covmean = linalg.sqrtm((cov1 + off) @ (cov2 + off))
    covmean = np.real(covmean)
    value = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``a`` and of ``b``."""
    a, b = _as_2d(a, "a"), _as_2d(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    return frechet_from_stats(a.mean(0), np.atleast_2d(np.cov(a, rowvar=False)), b.mean(0),
                              np.atleast_2d(np.cov(b, rowvar=False)))  # fmt: skip


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> tuple[float, float]:
    """(density, coverage) of ``fake`` against ``real`` with k-NN balls around each real sample.

    Density ~1 when fakes are distributed like the reals (more = piled on dense regions);
    coverage is the fraction of real samples whose ball holds at least one fake (1 = all
    modes reached, low = fakes collapse onto a few of them).
    """
    real, fake = _as_2d(real, "real"), _as_2d(fake, "fake")
    if k >= real.shape[0]:
        raise ValueError(f"k={k} needs more than {k} real samples, got {real.shape[0]}")
    d_rr = cdist(real, real)
    radii = np.sort(d_rr, axis=1)[:, k]  # column 0 is the sample itself
    inside = cdist(real, fake) <= radii[:, None]  # (n_real, n_fake)
    density = float(inside.sum() / (k * fake.shape[0]))
    coverage = float(inside.any(axis=1).mean())
    return density, coverage


def mean_pairwise_distance(x: np.ndarray) -> float:
    """Mean Euclidean distance over distinct pairs of rows."""
    return float(pdist(_as_2d(x, "x")).mean())


def nearest_neighbours(queries: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances from each query to its nearest and second-nearest reference rows."""
    q, r = _as_2d(queries, "queries"), _as_2d(reference, "reference")
    d = np.sort(cdist(q, r), axis=1)
    return d[:, 0], d[:, 1]


def copy_flags(nn1: np.ndarray, nn2: np.ndarray, ratio: float = 1 / 3, abs_tol: float = 1e-6) -> np.ndarray:
    """True where a generation looks copied: nn1 < ratio * nn2, or nn1 <= abs_tol."""
    nn1, nn2 = np.asarray(nn1, np.float64), np.asarray(nn2, np.float64)
    return (nn1 <= abs_tol) | (nn1 < ratio * nn2)
