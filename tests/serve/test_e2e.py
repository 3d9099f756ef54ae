"""A real `eirserve` process on a loopback port it picks itself, real concurrent clients."""

from __future__ import annotations

import base64
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serve.realserver import EIRSERVE, eirserve

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+ \S")


def test_real_server_batches_concurrent_clients_and_stops_on_sigterm(
    tiny_conditional_bundle: Path, digits_dir: Path
) -> None:
    # The access log is off by default (it costs throughput); on here, to check its format too.
    with eirserve(tiny_conditional_bundle, "--batch-timeout-ms", "5", "--access-log") as server:
        url = server.url
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
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status reports it.
        assert server.stop() in (0, -signal.SIGTERM)
    err = server.stderr
    assert "Traceback" not in err, err
    # One log format: ours and uvicorn's (startup, access, shutdown) lines alike.
    assert "uvicorn.access" in err and "Shutting down" in err and "eir_serve" in err
    odd = [line for line in err.splitlines() if not LOG_LINE.match(line)]
    assert odd == [], odd


def test_busy_port_is_refused_before_the_model_loads(tiny_bundle: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        r = subprocess.run([*EIRSERVE, "--model-path", str(tiny_bundle), "--port", port, "--log-level", "info"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2, r.stderr
    # One line, and nothing logged before it: not "serving ..." (after loading), not even "listening".
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("eirserve: error: --port "), r.stderr
    assert f"127.0.0.1:{port} is already in use" in r.stderr and "another --port" in r.stderr


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


EIR_REQUEST_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "client" / "eir_request_example.py"


def test_an_eir_tutorial_style_client_works_unchanged(tiny_bundle: Path, digits_dir: Path) -> None:
    """The request EIR's tutorial client makes (base64 of np.load(...).tobytes() in a JSON list,
    posted with requests; the answer read as base64 float32), run as a user runs it."""
    npy = digits_dir / "mnist_npy" / "10001.npy"
    with eirserve(tiny_bundle) as server:
        r = subprocess.run(
            [sys.executable, str(EIR_REQUEST_EXAMPLE), "--url", f"{server.url}/predict", "--npy", str(npy)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("mnist_output: 64 float32 values, mean "), r.stdout
        bad = subprocess.run(
            [sys.executable, str(EIR_REQUEST_EXAMPLE), "--url", f"{server.url}/predict", "--npy", str(npy),
             "--input-name", "mnist_typo"], capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert bad.returncode != 0 and "422" in bad.stderr  # raise_for_status sees the 4xx
