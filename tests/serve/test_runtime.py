"""eirserve's runtime: ONNX Runtime by default on the CPU when the bundle has a graph (no PyTorch in
the process), PyTorch otherwise or when asked; both answer the same."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import eir_serve.cli as cli
from eir_core.bundle import load_bundle, save_bundle
from eir_serve import runtime
from eir_serve.app import create_app
from eir_serve.runtime import gpu_visible, resolve_runtime
from eir_serve.settings import Settings


@pytest.fixture(scope="module")
def graphless(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle as an older eir-core wrote it: no ONNX graph."""
    b = load_bundle(tiny_bundle)
    path = tmp_path_factory.mktemp("old") / "old.safetensors"
    save_bundle(path, b.manifest, b.state_dict, b.input_stats, b.output_stats)
    return path


@pytest.fixture()
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "gpu_visible", lambda: False)


def test_auto_is_onnx_on_the_cpu_when_the_bundle_has_a_graph(tiny_bundle: Path, graphless: Path, no_gpu: None) -> None:
    assert resolve_runtime(Settings(model_path=tiny_bundle), tiny_bundle) == "onnx"
    assert resolve_runtime(Settings(model_path=tiny_bundle, device="cpu"), tiny_bundle) == "onnx"
    assert resolve_runtime(Settings(model_path=graphless), graphless) == "torch"  # nothing to run on ORT
    assert resolve_runtime(Settings(model_path=tiny_bundle, runtime="torch"), tiny_bundle) == "torch"


def test_auto_is_torch_where_a_gpu_is_visible(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "gpu_visible", lambda: True)
    assert resolve_runtime(Settings(model_path=tiny_bundle), tiny_bundle) == "torch"
    assert resolve_runtime(Settings(model_path=tiny_bundle, device="cpu"), tiny_bundle) == "onnx"
    with pytest.raises(ValueError, match="--runtime onnx runs on the CPU.*--device cpu"):
        resolve_runtime(Settings(model_path=tiny_bundle, runtime="onnx"), tiny_bundle)


def test_cuda_visible_devices_can_hide_every_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert gpu_visible() is False


def test_asking_for_onnx_where_it_cannot_run_names_the_fix(
    tiny_bundle: Path, graphless: Path, no_gpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="has no ONNX graph; add one with `eir-bundle add-graph"):
        resolve_runtime(Settings(model_path=graphless, runtime="onnx"), graphless)
    with pytest.raises(ValueError, match="runs on the CPU, but --device is 'cuda'"):
        resolve_runtime(Settings(model_path=tiny_bundle, runtime="onnx", device="cuda"), tiny_bundle)
    monkeypatch.setattr(runtime, "onnxruntime_installed", lambda: False)
    with pytest.raises(ValueError, match="onnxruntime package is not installed"):
        resolve_runtime(Settings(model_path=tiny_bundle, runtime="onnx"), tiny_bundle)
    assert resolve_runtime(Settings(model_path=tiny_bundle), tiny_bundle) == "torch"  # auto falls back


def test_the_cli_refuses_onnx_for_a_bundle_without_a_graph(graphless: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["--model-path", str(graphless), "--runtime", "onnx", "--device", "cpu", "--port", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("eirserve: error: --runtime onnx:") and "Traceback" not in err


@pytest.fixture(scope="module")
def both(tiny_conditional_bundle: Path) -> Iterator[tuple[TestClient, TestClient]]:
    def app(rt: str) -> TestClient:
        return TestClient(create_app(Settings(model_path=tiny_conditional_bundle, device="cpu", runtime=rt)))

    with app("onnx") as onnx_client, app("torch") as torch_client:
        yield onnx_client, torch_client


def _decode(r: object) -> np.ndarray:
    return np.frombuffer(base64.b64decode(r), dtype=np.float32)  # type: ignore[arg-type]


def test_both_runtimes_answer_the_same_over_http(both: tuple[TestClient, TestClient]) -> None:
    onnx_client, torch_client = both
    assert onnx_client.get("/info").json()["model"]["runtime"] == "onnxruntime"
    assert torch_client.get("/info").json()["model"]["runtime"] == "torch"
    image = base64.b64encode(np.arange(64, dtype=np.uint8).tobytes()).decode()
    body = [{"mnist": image, "mnist_label": {"CLASS": "2"}}, {"mnist_label": {"CLASS": "7"}}]
    a = onnx_client.post("/predict?seed=11&noise_scale=2", json=body)
    b = torch_client.post("/predict?seed=11&noise_scale=2", json=body)
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    for x, y in zip(a.json()["result"], b.json()["result"], strict=True):
        np.testing.assert_allclose(_decode(x["mnist_output"]), _decode(y["mnist_output"]), rtol=1e-4, atol=1e-3)
    name = onnx_client.get("/info").json()["model"]["name"]
    v2 = {
        "inputs": [{"name": "mnist_label.CLASS", "shape": [2], "datatype": "BYTES", "data": ["2", "9"]}],
        "parameters": {"seed": 5},
    }
    ra = onnx_client.post(f"/v2/models/{name}/infer", json=v2)
    rb = torch_client.post(f"/v2/models/{name}/infer", json=v2)
    assert ra.status_code == rb.status_code == 200, (ra.text, rb.text)
    out_a, out_b = ra.json()["outputs"][0], rb.json()["outputs"][0]
    assert out_a["shape"] == out_b["shape"] == [2, 1, 8, 8]
    np.testing.assert_allclose(out_a["data"], out_b["data"], rtol=1e-4, atol=1e-3)


SERVE_WITHOUT_TORCH = """
import base64, sys
sys.modules["torch"] = None  # importing PyTorch anywhere on this path fails
from fastapi.testclient import TestClient
from eir_serve.app import create_app
from eir_serve.settings import Settings
with TestClient(create_app(Settings(model_path=sys.argv[1], device="cpu", grpc_port=0))) as c:
    assert c.get("/ready").status_code == 200
    assert c.get("/info").json()["model"]["runtime"] == "onnxruntime"
    r = c.post("/predict?seed=1", json=[{"mnist_label": {"CLASS": "5"}}])
    assert r.status_code == 200, r.text
    assert len(base64.b64decode(r.json()["result"][0]["mnist_output"])) == 64 * 4
    bad = c.post("/predict", json=[{"mnist_label": {"CLASS": "11"}}])
    assert bad.status_code == 422 and "mnist_label.CLASS" in bad.text, bad.text
print("SERVED")
"""


def test_serving_on_onnx_runtime_never_imports_torch(tiny_conditional_bundle: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-c", SERVE_WITHOUT_TORCH, str(tiny_conditional_bundle)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "SERVED"


# --- eir-serve installed without PyTorch (its [torch] extra not taken) ----------------------


@pytest.fixture()
def no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "torch_installed", lambda: False)


def test_without_pytorch_auto_serves_a_graph_on_the_cpu_even_where_a_gpu_is_visible(
    tiny_bundle: Path, no_torch: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "gpu_visible", lambda: True)
    assert resolve_runtime(Settings(model_path=tiny_bundle), tiny_bundle) == "onnx"


def test_without_pytorch_what_needs_it_names_the_extra(tiny_bundle: Path, graphless: Path, no_torch: None) -> None:
    for settings, path, why in (
        (Settings(model_path=tiny_bundle, runtime="torch"), tiny_bundle, "--runtime torch"),
        (Settings(model_path=tiny_bundle, device="cuda"), tiny_bundle, "--device cuda"),
        (Settings(model_path=graphless), graphless, "has no ONNX graph"),
    ):
        with pytest.raises(ValueError, match=rf"{why}.*needs PyTorch.*pip install 'eir-serve\[torch\]'"):
            resolve_runtime(settings, path)
