"""The noise scale of imputed inputs: the same seeded N(0, 1) draw times the scale, in the imputation
and through the Predictor (training keeps N(0, 1): its calls leave the scale at 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eir_core.imputation import impute_array_, noise_array
from eir_core.inference import Runner
from eir_core.onnx_runtime import OnnxPredictor
from eir_core.predict import Predictor

LABEL = {"mnist_label": {"CLASS": "7"}}


def imputed(scale: float | None, seed: int = 3) -> torch.Tensor:
    x = torch.full((3, 1, 8, 8), 42.0)
    missing = np.array([True, False, True])
    gen = torch.Generator().manual_seed(seed)
    if scale is None:
        impute_array_(x, missing, gen)
    else:
        impute_array_(x, missing, gen, scale=scale)
    return x


def test_default_is_standard_normal_and_scale_multiplies_the_same_draw() -> None:
    want = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(3))
    one = imputed(None)
    assert torch.equal(one[[0, 2]], want)  # the default: N(0, 1), what training imputes
    assert torch.equal(one[1], torch.full((1, 8, 8), 42.0))  # a present row is left alone
    assert torch.equal(imputed(1.0), one)
    assert torch.equal(imputed(2.0)[[0, 2]], 2.0 * want)  # exactly twice the scale-1 noise
    assert torch.equal(imputed(0.5)[[0, 2]], 0.5 * want)
    zero = imputed(0.0)
    assert torch.equal(zero[[0, 2]], torch.zeros((2, 1, 8, 8)))  # the normalized mean
    assert torch.equal(zero[1], torch.full((1, 8, 8), 42.0))


@pytest.mark.parametrize("bad", [-1.0, -1e-9, float("nan"), float("inf")])
def test_a_negative_or_non_finite_scale_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="noise scale"):
        imputed(bad)


@pytest.fixture(scope="module", params=["torch", "onnxruntime"])
def predictor(request: pytest.FixtureRequest, tiny_conditional_bundle: Path) -> Runner:
    """The same seams on both runtimes."""
    if request.param == "onnxruntime":
        return OnnxPredictor.from_path(tiny_conditional_bundle)
    return Predictor.from_path(tiny_conditional_bundle, device="cpu")


def explicit(p: Runner, seed: int, scale: float) -> dict[str, np.ndarray]:
    """The image input given as the seed's scale-1 draw times ``scale``, in raw units."""
    z = noise_array(p.inputs["mnist"].shape, seed)  # type: ignore[union-attr]  # an array input
    image = p.input_stats["mnist"].denormalize_array(scale * z)  # type: ignore[attr-defined]
    return p.predict([{**LABEL, "mnist": image}], seeds=[seed])[0]


def test_predictor_scale_s_is_s_times_the_scale_1_noise_of_the_same_seed(predictor: Runner) -> None:
    at1 = predictor.predict([LABEL], seeds=[7])[0]["mnist_output"]
    np.testing.assert_array_equal(predictor.predict([LABEL], seeds=[7], noise_scale=1.0)[0]["mnist_output"], at1)
    np.testing.assert_allclose(explicit(predictor, 7, 1.0)["mnist_output"], at1, rtol=1e-5, atol=1e-3)
    at25 = predictor.predict([LABEL], seeds=[7], noise_scale=2.5)[0]["mnist_output"]
    np.testing.assert_allclose(explicit(predictor, 7, 2.5)["mnist_output"], at25, rtol=1e-5, atol=1e-3)
    assert np.abs(at25 - at1).mean() > 0.01  # the scale reaches the model


def test_predictor_scale_0_is_the_mean_image(predictor: Runner) -> None:
    mean = np.broadcast_to(predictor.input_stats["mnist"].mean, (1, 8, 8)).astype(np.float32)
    want = predictor.predict([{**LABEL, "mnist": mean}], seeds=[0])[0]["mnist_output"]
    for seed in (1, 2):  # no randomness left
        got = predictor.predict([LABEL], seeds=[seed], noise_scale=0.0)[0]["mnist_output"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_per_item_scales_match_each_item_alone(predictor: Runner) -> None:
    both = predictor.predict([LABEL, LABEL], seeds=[5, 5], noise_scale=[0.5, 2.0])
    for got, scale in zip(both, [0.5, 2.0], strict=True):
        alone = predictor.predict([LABEL], seeds=[5], noise_scale=scale)[0]
        np.testing.assert_allclose(got["mnist_output"], alone["mnist_output"], rtol=1e-5, atol=1e-3)
    assert np.abs(both[0]["mnist_output"] - both[1]["mnist_output"]).mean() > 0.01
    with pytest.raises(ValueError, match="2 noise scales for 1 items"):
        predictor.predict([LABEL], seeds=[5], noise_scale=[1.0, 2.0])
    with pytest.raises(ValueError, match="noise scale"):
        predictor.predict([LABEL], seeds=[5], noise_scale=-1.0)
