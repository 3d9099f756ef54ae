"""Shared fixtures: the built-in digits on disk and tiny trained bundles (session-scoped,
trained once per test run in a few seconds; under pytest-xdist, once for all workers)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

import pytest

if "PYTEST_XDIST_WORKER" in os.environ:
    # Several test processes share the cores (make test: 2): one intra-op thread each, for PyTorch
    # here and for every eirtrain/eirserve a test starts, instead of each spinning up one per core
    # (the tests' models are tiny; this sets no thread count a test checks). Before torch loads.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

from eir_core.cli.train import main as eirtrain  # after the thread settings above
from eir_core.data.builtin import make_digits, write_tutorial_layout
from tests.helpers import diffusion_configs, tutorial_configs


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Say so when the long end-to-end tests were left out (``make test``), and how to run them."""
    if "not long" in (config.option.markexpr or ""):
        terminalreporter.write_line(
            "the tests marked long (end-to-end runs: torchrun jobs, kill-and-resume cycles, wheel installs) "
            "were left out: `make test-long` runs them (CI runs both)"
        )


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], Path]) -> Path:
    """``make(folder)`` once per test run: under pytest-xdist the first worker to ask makes it
    (under a file lock, in the run's shared temporary folder) and the others use what it made.
    The things made this way are only read by the tests."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return make(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent  # pytest-N/: this run's, above each worker's own
    done = shared / f"{name}.path"
    with (shared / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if make() fails
        if done.is_file():
            return Path(done.read_text())
        folder = shared / f"shared-{name}"
        folder.mkdir()
        result = make(folder)
        done.write_text(str(result))
        return result


def _digits(d: Path) -> Path:
    images, labels = make_digits(8)
    write_tutorial_layout(d, images, labels, 10000)
    return d


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return once_per_run(tmp_path_factory, "digits8", _digits)


def _train(tmp: Path, data: Path, conditional: bool) -> Path:
    run = tmp / "run"
    assert eirtrain(tutorial_configs(tmp, data, run, conditional)) == 0
    bundles = sorted((run / "saved_models").glob("*.safetensors"))
    assert bundles, "training wrote no checkpoint"
    return max(bundles, key=lambda p: int(p.name.split("_checkpoint_")[1].split("_")[0]))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> Path:
    """The last checkpoint of a short run-1 (autoencoder) training on the 8x8 digits."""
    return once_per_run(tmp_path_factory, "ae", lambda d: _train(d, digits_dir, conditional=False))


@pytest.fixture(scope="session")
def tiny_conditional_bundle(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> Path:
    """Run-2 shape: image + label inputs, modality dropout 0.3 on the image."""
    return once_per_run(tmp_path_factory, "cond", lambda d: _train(d, digits_dir, conditional=True))


def _train_diffusion(tmp: Path, data: Path, *overrides: str) -> Path:
    run = tmp / "run"
    args = diffusion_configs(tmp / "cfg", data, run, sampling={"diffusion_guidance_scale": 2.0}, epochs=1)
    assert eirtrain([*args, *overrides]) == 0
    return run


@pytest.fixture(scope="session")
def tiny_diffusion_run(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> Path:
    """A run folder of a tiny label-conditioned diffusion model (20 time steps, 5 DDIM steps by
    default, guidance 2 by default, label dropout 0.2), with its ONNX graph."""
    return once_per_run(tmp_path_factory, "diffusion", lambda d: _train_diffusion(d, digits_dir))


@pytest.fixture(scope="session")
def long_diffusion_run(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> Path:
    """The same tiny model with 1000 time steps: a 1000-step sample takes long enough to leave."""
    overrides = ("--output.output_type_info.diffusion_time_steps=1000",)
    return once_per_run(tmp_path_factory, "diffusion1000", lambda d: _train_diffusion(d, digits_dir, *overrides))
