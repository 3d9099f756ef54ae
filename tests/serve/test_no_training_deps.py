"""Serving must not need the training-only libraries, nor PyTorch.

* In this venv: the serving path imports none of the training extra's libraries.
* In a fresh venv: the two packages built (`python -m build`: sdist, then the wheel from it),
  installed with plain `pip install` (no PyTorch, no extras), serve the tutorial bundles
  (autoencoder, label-conditioned, diffusion) over real HTTP and answer what the PyTorch runtime
  answers (to float tolerance); the commands that need PyTorch say which extra to install instead
  of failing with a traceback.

The fresh venv's packages come from the package index pip is set up with (the same one
`make setup` installs from; pip's cache makes a repeat run local). Building and installing takes
about 30-60 s here.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from eir_core.bundle import load_bundle, save_bundle
from tests.serve.realserver import RealServer, eirserve

ROOT = Path(__file__).resolve().parents[2]

CODE = """
import base64, sys
# As if the training-only libraries were not installed: importing any of them fails.
for name in ("matplotlib", "sklearn", "tqdm", "pytorch_optimizer"):
    sys.modules[name] = None
from fastapi.testclient import TestClient
from eir_serve.app import create_app
from eir_serve.settings import Settings
with TestClient(create_app(Settings(model_path=sys.argv[1], device="cpu"))) as c:
    assert c.get("/ready").status_code == 200
    r = c.post("/predict", json=[{"mnist": base64.b64encode(bytes(64)).decode()}])  # an all-black 8x8 image
    assert r.status_code == 200, r.text
    assert len(base64.b64decode(r.json()["result"][0]["mnist_output"])) == 64 * 4
print("SERVED")
"""


def test_serving_imports_no_training_only_library(tiny_bundle: Path) -> None:
    r = subprocess.run([sys.executable, "-c", CODE, str(tiny_bundle)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "SERVED", r.stdout


# --- the built wheels in a fresh venv without PyTorch ----------------------------------------


def _run(cmd: list[str], timeout: float = 600, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with nothing but the two wheels (and what they depend on) installed."""
    tmp = tmp_path_factory.mktemp("release")
    dist = tmp / "dist"
    for pkg in ("packages/core", "services/serve"):
        r = _run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT / pkg)])
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wheels = sorted(dist.glob("*.whl"))
    assert [w.name.split("-")[0] for w in wheels] == ["eir_core", "eir_serve"], wheels
    venv = tmp / "venv"
    r = _run([sys.executable, "-m", "venv", str(venv)])
    assert r.returncode == 0, r.stderr
    r = _run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", *map(str, wheels)])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return venv


def _bin(venv: Path, name: str) -> str:
    return str(venv / "bin" / name)


@pytest.mark.long
def test_the_wheels_install_without_pytorch_or_the_training_libraries(fresh_venv: Path) -> None:
    probe = (
        "import importlib.util, eir_core, eir_serve; "
        "print(eir_core.__version__, eir_serve.__version__, "
        "[m for m in ('torch', 'matplotlib', 'sklearn', 'tqdm', 'onnx') if importlib.util.find_spec(m)])"
    )
    r = _run([_bin(fresh_venv, "python"), "-c", probe])
    assert r.returncode == 0, r.stderr
    version = (ROOT / "VERSION").read_text().strip()
    assert r.stdout.split(maxsplit=2) == [version, version, "[]\n"], r.stdout
    for cli in ("eirserve", "eirtrain", "eir-bundle", "eir-data"):
        r = _run([_bin(fresh_venv, cli), "--help"])
        assert r.returncode == 0 and "usage:" in r.stdout, (cli, r.stderr)


@pytest.mark.long
def test_commands_that_need_pytorch_name_the_extra(
    fresh_venv: Path, tiny_bundle: Path, tmp_path: Path, graphless: Path
) -> None:
    """One line naming what to install, exit code 2: no traceback."""
    cases = [
        ([_bin(fresh_venv, "eirtrain"), "--global_configs", "g.yaml", "--output_configs", "o.yaml"], "eir-core[train]"),
        ([_bin(fresh_venv, "eir-data"), "digits", "--output-folder", str(tmp_path / "d")], "eir-core[train]"),
        ([_bin(fresh_venv, "eir-bundle"), "add-graph", str(graphless)], "eir-core[train]"),
        ([_bin(fresh_venv, "eirserve"), "--model-path", str(tiny_bundle), "--runtime", "torch"], "eir-serve[torch]"),
        ([_bin(fresh_venv, "eirserve"), "--model-path", str(graphless)], "eir-serve[torch]"),
        ([_bin(fresh_venv, "eirserve"), "--model-path", str(tiny_bundle), "--device", "cuda"], "eir-serve[torch]"),
        ([_bin(fresh_venv, "python"), "-c", "import eir_core.predict"], "eir-core[torch]"),
    ]
    for cmd, extra in cases:
        r = _run(cmd, timeout=120, cwd=tmp_path, env={**os.environ, "EIR_SERVE_GRPC_PORT": "0"})
        if cmd[-1] == "import eir_core.predict":  # a library import: the exception, for the caller to catch
            assert r.returncode == 1 and "MissingExtraError" in r.stderr and extra in r.stderr, r.stderr
            continue
        assert r.returncode == 2, (cmd, r.returncode, r.stderr)
        assert extra in r.stderr and "Traceback" not in r.stderr, (cmd, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = _run([_bin(fresh_venv, "eir-bundle"), "inspect", str(tiny_bundle)])  # reading a bundle needs NumPy only
    assert r.returncode == 0 and "graph     ONNX" in r.stdout, r.stderr


@pytest.fixture(scope="module")
def graphless(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle without its ONNX graph (as an older eir-core wrote it)."""
    b = load_bundle(tiny_bundle)
    path = tmp_path_factory.mktemp("graphless") / "old.safetensors"
    save_bundle(path, b.manifest, b.state_dict, b.input_stats, b.output_stats)
    return path


@contextmanager
def _fresh_eirserve(venv: Path, model: Path) -> Iterator[RealServer]:
    cmd = [_bin(venv, "eirserve"), "--model-path", str(model), "--port", "0", "--log-level", "info", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "EIR_SERVE_GRPC_PORT": "0"})
    server = RealServer(proc)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _outputs(url: str, body: list[dict[str, object]], seed: int, output: str) -> list[np.ndarray]:
    r = httpx.post(f"{url}/predict", params={"seed": seed}, json=body, timeout=60)
    assert r.status_code == 200, r.text
    return [np.frombuffer(base64.b64decode(x[output]), np.float32) for x in r.json()["result"]]


@pytest.mark.long
def test_the_wheels_serve_tutorial_bundles_as_the_pytorch_runtime_does(
    fresh_venv: Path, tiny_bundle: Path, tiny_conditional_bundle: Path, tiny_diffusion_run: Path, digits_dir: Path
) -> None:
    image = base64.b64encode(np.load(digits_dir / "mnist_npy" / "10005.npy").tobytes()).decode()
    label_only = [{"mnist_label": {"CLASS": "3"}}, {"mnist_label": {"CLASS": "8"}}]
    cases = [  # (model, items, output, absolute tolerance)
        (tiny_bundle, [{"mnist": image}, {"mnist": base64.b64encode(bytes(range(64))).decode()}], "mnist_output", 1e-3),
        # the label alone: the image is imputed with seeded noise, the same on both runtimes
        (
            tiny_conditional_bundle,
            [label_only[0], {"mnist": image, "mnist_label": {"CLASS": "5"}}],
            "mnist_output",
            1e-3,
        ),
        # diffusion: the sampling loop in NumPy around the graph, from seeded noise (pixel scale 0..255;
        # the runtimes' rounding grows over the steps, as in tests/serve/test_diffusion_serving.py)
        (tiny_diffusion_run, label_only, "mnist", 0.05),
    ]
    for model, body, output, atol in cases:
        with _fresh_eirserve(fresh_venv, model) as served:  # this venv's eirserve: no PyTorch installed
            info = httpx.get(f"{served.url}/info", timeout=10).json()
            assert info["model"]["runtime"] == "onnxruntime", info["model"]
            got = _outputs(served.url, body, 21, output)
        with eirserve(model, "--runtime", "torch") as reference:  # the test venv's, on PyTorch
            assert httpx.get(f"{reference.url}/info", timeout=10).json()["model"]["runtime"] == "torch"
            want = _outputs(reference.url, body, 21, output)
        assert len(got) == len(want) == len(body)
        for g, w in zip(got, want, strict=True):
            assert g.shape == (64,) and np.isfinite(g).all()
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=atol)
        assert not np.array_equal(got[0], got[1])  # two different answers: not a constant
