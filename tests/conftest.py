"""Shared fixtures: the built-in digits on disk and tiny trained bundles (session-scoped,
trained once per test run in a few seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eir_core.cli.train import main as eirtrain
from eir_core.data.builtin import make_digits, write_tutorial_layout
from tests.helpers import diffusion_configs, tutorial_configs


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("digits8")
    images, labels = make_digits(8)
    write_tutorial_layout(d, images, labels, 10000)
    return d


def _train(tmp: Path, data: Path, conditional: bool) -> Path:
    run = tmp / "run"
    assert eirtrain(tutorial_configs(tmp, data, run, conditional)) == 0
    bundles = sorted((run / "saved_models").glob("*.safetensors"))
    assert bundles, "training wrote no checkpoint"
    return max(bundles, key=lambda p: int(p.name.split("_checkpoint_")[1].split("_")[0]))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> Path:
    """The last checkpoint of a short run-1 (autoencoder) training on the 8x8 digits."""
    return _train(tmp_path_factory.mktemp("ae"), digits_dir, conditional=False)


@pytest.fixture(scope="session")
def tiny_conditional_bundle(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> Path:
    """Run-2 shape: image + label inputs, modality dropout 0.3 on the image."""
    return _train(tmp_path_factory.mktemp("cond"), digits_dir, conditional=True)


def _train_diffusion(tmp: Path, data: Path, *overrides: str) -> Path:
    run = tmp / "run"
    args = diffusion_configs(tmp / "cfg", data, run, sampling={"diffusion_guidance_scale": 2.0}, epochs=1)
    assert eirtrain([*args, *overrides]) == 0
    return run


@pytest.fixture(scope="session")
def tiny_diffusion_run(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> Path:
    """A run folder of a tiny label-conditioned diffusion model (20 time steps, 5 DDIM steps by
    default, guidance 2 by default, label dropout 0.2), with its ONNX graph."""
    return _train_diffusion(tmp_path_factory.mktemp("diffusion"), digits_dir)


@pytest.fixture(scope="session")
def long_diffusion_run(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> Path:
    """The same tiny model with 1000 time steps: a 1000-step sample takes long enough to leave."""
    return _train_diffusion(
        tmp_path_factory.mktemp("diffusion1000"), digits_dir, "--output.output_type_info.diffusion_time_steps=1000"
    )
