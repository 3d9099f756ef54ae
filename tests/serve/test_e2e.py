"""A real `eirserve` process on a loopback ephemeral port, real concurrent clients."""

from __future__ import annotations

import base64
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
EIRSERVE = [sys.executable, "-m", "eir_serve.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], deadline_s: float = 60) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s:
        if proc.poll() is not None:
            raise AssertionError(f"eirserve exited early: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return time.monotonic() - t0
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # poll interval, not a wait for readiness
    raise AssertionError("eirserve did not become ready")


def test_real_server_batches_concurrent_clients_and_stops_on_sigterm(
    tiny_conditional_bundle: Path, digits_dir: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            *EIRSERVE,
            "--model-path",
            str(tiny_conditional_bundle),
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--batch-timeout-ms",
            "5",
        ],
        stderr=subprocess.PIPE,
        env={**os.environ, "EIR_SERVE_DEVICE": "cpu"},
    )
    try:
        wait_ready(url, proc)
        img = np.load(digits_dir / "mnist_npy" / "10003.npy")
        payload = [{"mnist": base64.b64encode(img.tobytes()).decode(), "mnist_label": {"CLASS": "3"}}]

        def call(i: int) -> np.ndarray:
            with httpx.Client(base_url=url, timeout=30) as c:
                r = c.post("/predict", json=payload if i % 2 else [{"mnist_label": {"CLASS": "3"}}], params={"seed": i})
                r.raise_for_status()
                return np.frombuffer(base64.b64decode(r.json()["result"][0]["mnist_output"]), "<f4")

        with ThreadPoolExecutor(16) as pool:
            outs = list(pool.map(call, range(64)))
        assert all(o.shape == (64,) and np.isfinite(o).all() for o in outs)
        metrics = httpx.get(f"{url}/metrics").text
        count = float(next(x for x in metrics.splitlines() if x.startswith("eir_batch_size_count")).split()[-1])
        assert count < 64  # fewer forward passes than requests: batching happened
        assert 'eir_requests_total{route="/predict",status="200"} 64.0' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status reports it.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        err = proc.stderr.read().decode() if proc.stderr else ""
        assert "Traceback" not in err, err


def test_cli_refuses_bad_model_paths(tmp_path: Path) -> None:
    pt = tmp_path / "model.pt"
    pt.write_bytes(pickle.dumps({"w": 1}))
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(pickle.dumps({"w": 1}))
    for path, text in [
        (tmp_path / "missing.safetensors", "no such file"),
        (pt, "EIR .pt checkpoint"),
        (fake, "not a safetensors bundle"),
        (tmp_path, "no checkpoint"),
    ]:
        r = subprocess.run([*EIRSERVE, "--model-path", str(path)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        assert text in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run(
        EIRSERVE,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("EIR_SERVE_")},
    )
    assert r.returncode == 2 and "EIR_SERVE_MODEL_PATH" in r.stderr


EIR_EXAMPLE = (
    Path(__file__).resolve().parents[3] / "shared" / "anchors" / "eir_tutorial" / "python_request_example_module.py"
)


def test_eirs_own_request_example_works_unchanged_but_paths(
    tiny_bundle: Path, digits_dir: Path, tmp_path: Path
) -> None:
    """EIR's tutorial client (from ../shared, not copied here), with only its data path and URL changed."""
    assert EIR_EXAMPLE.is_file(), f"{EIR_EXAMPLE} is missing: CI runs with ../shared beside the repository"
    port = free_port()
    source = EIR_EXAMPLE.read_text()
    assert (
        "localhost:8000" in source and "eir_tutorials/d_array_output/01_array_mnist_generation/data/mnist_npy" in source
    )
    script = tmp_path / "client.py"
    script.write_text(
        source.replace("localhost:8000", f"127.0.0.1:{port}").replace(
            "eir_tutorials/d_array_output/01_array_mnist_generation/data/mnist_npy", str(digits_dir / "mnist_npy")
        )
    )
    proc = subprocess.Popen(
        [*EIRSERVE, "--model-path", str(tiny_bundle), "--port", str(port), "--log-level", "warning"],
        stderr=subprocess.PIPE,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("{'result': [{'mnist_output': '")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
