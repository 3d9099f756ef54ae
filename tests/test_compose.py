"""compose.yaml and the Dockerfiles, checked structurally (no Docker engine needed).
`scripts/docker_smoke.sh` builds and runs them for real where an engine is available."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_trains_once_then_serves_with_healthcheck() -> None:
    c = yaml.safe_load((ROOT / "compose.yaml").read_text())
    train, serve = c["services"]["train"], c["services"]["serve"]
    assert train["build"]["dockerfile"] == "docker/train.Dockerfile"
    assert serve["build"]["dockerfile"] == "docker/serve.Dockerfile"
    assert serve["depends_on"]["train"]["condition"] == "service_completed_successfully"
    assert serve["restart"] == "on-failure"
    assert "/ready" in " ".join(serve["healthcheck"]["test"])
    assert any(str(p).endswith(":8000") for p in serve["ports"])
    assert any(str(p).endswith(":8001") for p in serve["ports"])  # gRPC
    assert any(str(p).endswith(":8001") for p in c["services"]["serve-gpu"]["ports"])
    assert "models:/models" in train["volumes"] and "models:/models:ro" in serve["volumes"]
    assert serve["read_only"] is True
    assert "models" in c["volumes"]
    gpu = c["services"]["serve-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_serve_image_is_non_root_with_healthcheck_and_no_training_extra() -> None:
    text = (ROOT / "docker" / "serve.Dockerfile").read_text()
    assert text.startswith("#") and "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert "USER eir" in text and "HEALTHCHECK" in text and 'ENTRYPOINT ["eirserve"]' in text
    assert "EXPOSE 8000 8001" in text and "EIR_SERVE_GRPC_PORT=8001" in text
    assert "[train]" not in text and "matplotlib" not in text and "scikit-learn" not in text
    assert text.index('pip install "$TORCH_SPEC"') < text.index("COPY packages/core /src")  # deps cached first


def test_images_are_two_stages_and_the_cpu_serve_image_has_no_pytorch() -> None:
    """The default serve image runs ONNX Runtime: PyTorch only when TORCH_SPEC is given (the CUDA
    variant). Both images keep the built environment and leave the installer behind."""
    for name in ("serve.Dockerfile", "train.Dockerfile"):
        text = (ROOT / "docker" / name).read_text()
        froms = [line for line in text.splitlines() if line.startswith("FROM ")]
        assert froms == ["FROM ${PYTHON_IMAGE} AS build", "FROM ${PYTHON_IMAGE}"], name
        final = text[text.index("FROM ${PYTHON_IMAGE}\n") :]
        assert "COPY --from=build /opt/eir /opt/eir" in final and "pip install" not in final, name
        assert "pip uninstall -y -q pip setuptools" in text, name
    serve = (ROOT / "docker" / "serve.Dockerfile").read_text()
    assert "ARG TORCH_SPEC=\n" in serve and 'if [ -n "$TORCH_SPEC" ]' in serve
    assert "ARG TORCH_SPEC=torch==2.13.0" in (ROOT / "docker" / "train.Dockerfile").read_text()
    gpu = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["serve-gpu"]["build"]["args"]
    assert gpu["TORCH_SPEC"].startswith("torch==") and "/whl/cu" in gpu["TORCH_INDEX_URL"]  # the CUDA variant


def test_images_take_their_dependencies_from_the_pyproject_files() -> None:
    """No dependency list by hand in a Dockerfile: one that drifted from pyproject.toml shipped an
    image without jiter, whose server could not start."""
    for name, wanted in (
        ("serve.Dockerfile", "/src/packages/core/pyproject.toml /src/services/serve/pyproject.toml"),
        ("train.Dockerfile", "/src/packages/core/pyproject.toml:train"),
    ):
        text = (ROOT / "docker" / name).read_text()
        assert f"python /src/deps.py {wanted}" in text and "pip install -r /src/deps.txt" in text
        assert ">=" not in text, f"{name} pins a dependency by hand"
    out = subprocess.run(
        [sys.executable, str(ROOT / "docker" / "deps.py"), str(ROOT / "packages/core/pyproject.toml"),
         str(ROOT / "services/serve/pyproject.toml")], capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    names = {re.split(r"[<>=!~\[]", d)[0] for d in out}
    assert {"jiter", "httpx", "grpcio", "fastapi", "safetensors"} <= names and not {"torch", "eir-core"} & names
    assert "USER eir" in (ROOT / "docker" / "train.Dockerfile").read_text()


def test_compose_never_serves_stale_code_or_another_runs_model() -> None:
    c = yaml.safe_load((ROOT / "compose.yaml").read_text())
    for name, svc in c["services"].items():
        if "build" in svc:
            assert svc.get("pull_policy") == "build", f"{name} could run an image built from older code"
    folder = "/models/tutorial_${TUTORIAL_RUN:-autoencoder}_${SIZE:-8}"
    assert c["services"]["train"]["environment"]["MODELS_DIR"] == folder  # each run trains into its own folder
    for name in ("serve", "serve-gpu"):
        assert c["services"][name]["environment"]["EIR_SERVE_MODEL_PATH"] == folder  # and is served from it


def _train_once(models: Path, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        ["bash", str(ROOT / "docker" / "train_once.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "MODELS_DIR": str(models), **env},
    )


def test_train_once_skips_its_own_bundle_and_refuses_another_runs(tmp_path: Path) -> None:
    saved = tmp_path / "saved_models"
    saved.mkdir()
    (saved / "tutorial_conditional_8_checkpoint_1440_perf-average=0.9100.safetensors").write_bytes(b"x")
    r = _train_once(tmp_path, TUTORIAL_RUN="conditional")
    assert r.returncode == 0 and "bundle of tutorial_conditional_8 already" in r.stdout
    r = _train_once(tmp_path, TUTORIAL_RUN="autoencoder")
    assert r.returncode == 2 and "another run" in r.stderr and "tutorial_autoencoder_8" in r.stderr
    r = _train_once(tmp_path, TUTORIAL_RUN="vae")
    assert r.returncode == 2 and "use autoencoder, conditional or diffusion" in r.stderr


@pytest.mark.slow
@pytest.mark.long
def test_train_once_trains_the_diffusion_example(tmp_path: Path) -> None:
    """TUTORIAL_RUN=diffusion: examples/diffusion trained into the folder compose serves from."""
    import os

    from eir_core.bundle import read_manifest

    env = {**os.environ, "MODELS_DIR": str(tmp_path), "TUTORIAL_RUN": "diffusion", "N_EPOCHS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # eirtrain, eir-data
    env["TMPDIR"] = str(tmp_path)
    r = subprocess.run(
        ["bash", str(ROOT / "docker" / "train_once.sh")], capture_output=True, text=True, timeout=900, cwd=ROOT, env=env
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (bundle,) = (tmp_path / "saved_models").glob("tutorial_diffusion_8_checkpoint_*.safetensors")
    manifest = read_manifest(bundle)
    assert manifest.diffusion_outputs["mnist"].inference_steps == 50
