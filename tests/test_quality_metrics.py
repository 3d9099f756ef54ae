"""The sample-quality measures of benchmarks/quality_metrics.py against cases with known answers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scipy")

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("quality_metrics", ROOT / "benchmarks" / "quality_metrics.py")
assert _spec is not None and _spec.loader is not None
qm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qm)


def test_frechet_of_a_set_with_itself_is_zero() -> None:
    x = np.random.default_rng(0).normal(size=(300, 8))
    assert qm.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_frechet_of_shifted_set_is_squared_shift() -> None:
    x = np.random.default_rng(1).normal(size=(400, 5)) @ np.diag([1.0, 2.0, 0.5, 3.0, 1.5])
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    # Same sample covariance, means differ by shift: the distance is exactly ||shift||^2.
    assert qm.frechet_distance(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_frechet_from_stats_matches_closed_form_for_diagonal_gaussians() -> None:
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum())  # = 10 + 6
    assert qm.frechet_from_stats(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(16.0)


def test_frechet_of_samples_approaches_the_population_value() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(20000, 3))
    b = rng.normal(size=(20000, 3)) * 2.0 + 1.0
    # N(0, I) vs N(1, 4I) in 3-d: 3 * 1^2 + 3 * (2 - 1)^2 = 6.
    assert qm.frechet_distance(a, b) == pytest.approx(6.0, rel=0.05)


def test_frechet_with_fewer_samples_than_dimensions_is_finite() -> None:
    rng = np.random.default_rng(3)
    value = qm.frechet_distance(rng.normal(size=(10, 32)), rng.normal(size=(10, 32)))
    assert np.isfinite(value) and value > 0


def test_frechet_rejects_mismatched_dimensions() -> None:
    with pytest.raises(ValueError, match="dimensions differ"):
        qm.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))


def test_diversity_of_identical_samples_is_zero() -> None:
    same = np.tile(np.array([[1.0, 2.0, 3.0]]), (20, 1))
    assert qm.mean_pairwise_distance(same) == 0.0
    spread = np.random.default_rng(4).normal(size=(50, 3))
    assert qm.mean_pairwise_distance(spread) > 1.0


def test_density_and_coverage() -> None:
    rng = np.random.default_rng(5)
    real = rng.normal(size=(500, 2))
    fake_same = rng.normal(size=(500, 2))
    d, c = qm.density_coverage(real, fake_same, k=5)
    assert 0.8 < d < 1.2 and c > 0.95
    # All fakes on one real point: coverage collapses to a handful of balls.
    collapsed = np.tile(real[:1], (500, 1))
    _, c_collapsed = qm.density_coverage(real, collapsed, k=5)
    assert c_collapsed < 0.05
    # Fakes far from every real sample: nothing is covered, density 0.
    d_far, c_far = qm.density_coverage(real, fake_same + 100.0, k=5)
    assert d_far == 0.0 and c_far == 0.0


def test_copy_check_flags_an_exact_copy_and_not_a_new_sample() -> None:
    rng = np.random.default_rng(6)
    train = rng.normal(size=(200, 16))
    queries = np.vstack([train[17], rng.normal(size=(5, 16))])
    nn1, nn2 = qm.nearest_neighbours(queries, train)
    assert nn1[0] == 0.0
    flags = qm.copy_flags(nn1, nn2)
    assert flags.tolist() == [True, False, False, False, False, False]


def test_copy_check_flags_a_near_copy_by_the_ratio_test() -> None:
    rng = np.random.default_rng(7)
    train = rng.normal(size=(200, 16))
    near = train[3] + 0.01 * rng.normal(size=16)
    nn1, nn2 = qm.nearest_neighbours(near[None, :].repeat(2, axis=0), train)
    assert qm.copy_flags(nn1, nn2).all()


def test_frechet_with_constant_features_is_finite_and_zero_for_the_same_set() -> None:
    # ReLU features often have units that are 0 for a whole digit: singular covariances.
    x = np.random.default_rng(8).normal(size=(25, 6))
    x[:, 2] = 0.0
    assert qm.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    shifted = x + np.array([0.0, 0.0, 2.0, 0.0, 0.0, 0.0])
    assert qm.frechet_distance(x, shifted) == pytest.approx(4.0, rel=1e-6)
