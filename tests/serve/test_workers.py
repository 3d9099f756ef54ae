"""``eirserve --workers N``: processes sharing one port, metrics summed over them, a killed worker
replaced, a clean stop, and no worker outliving its supervisor."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serve.realserver import EIRSERVE, RealServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _listeners(port: int) -> int:
    """Listening TCP sockets on 127.0.0.1:port (state 0A in /proc/net/tcp)."""
    want = f"0100007F:{port:04X}"
    return sum(1 for line in Path("/proc/net/tcp").read_text().splitlines()[1:] if line.split()[1] == want
               and line.split()[3] == "0A")  # fmt: skip


def _children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _until(what: str, check: object, deadline_s: float = 90) -> None:
    t0 = time.monotonic()
    while not check():  # type: ignore[operator]
        assert time.monotonic() - t0 < deadline_s, f"timed out waiting for {what}"
        time.sleep(0.05)  # poll interval


@pytest.fixture()
def payload(digits_dir: Path) -> list[dict[str, str]]:
    img = np.load(digits_dir / "mnist_npy" / "10001.npy")
    return [{"mnist": base64.b64encode(img.tobytes()).decode()}]


def _start(bundle: Path) -> tuple[RealServer, int]:
    proc = subprocess.Popen(
        [*EIRSERVE, "--model-path", str(bundle), "--port", "0", "--grpc-port", "0", "--workers", "2"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "EIR_SERVE_DEVICE": "cpu"},
    )
    server = RealServer(proc)
    port = int(server.url.rsplit(":", 1)[1])
    _until("both workers listening", lambda: _listeners(port) == 2 or proc.poll() is not None)
    assert proc.poll() is None, server.stderr
    return server, port


def _fresh_connection_posts(url: str, payload: list, n: int) -> list[int]:
    codes = []
    for _ in range(n):  # a new connection each: the kernel picks a worker per connection
        try:
            codes.append(httpx.post(f"{url}/predict", json=payload, timeout=10).status_code)
        except httpx.TransportError:
            codes.append(-1)
    return codes


def test_workers_share_the_port_and_metrics_add_up(tiny_bundle: Path, payload: list) -> None:
    server, _ = _start(tiny_bundle)
    try:
        workers = _children(server.proc.pid)
        assert len(workers) == 2
        metrics_dir = Path(
            next(v for v in Path(f"/proc/{min(workers)}/environ").read_bytes().split(b"\0")
                 if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")).split(b"=", 1)[1].decode()
        )  # fmt: skip
        assert _fresh_connection_posts(server.url, payload, 60) == [200] * 60
        # Both workers answered some of them (each writes its own file), and /metrics from either
        # worker counts all 60.
        served_by = {int(m.group(1)) for f in metrics_dir.iterdir() if (m := re.match(r"counter_(\d+)\.db", f.name))}
        assert served_by == workers, (served_by, workers)
        for _ in range(6):
            text = httpx.get(f"{server.url}/metrics", timeout=10).text
            line = next(
                x for x in text.splitlines() if x.startswith('eir_requests_total{route="/predict",status="200"}')
            )
            assert float(line.split()[-1]) == 60.0, line
            assert re.search(r"^eir_predicted_items_total\{[^}]*\} 60\.0$", text, re.M), text[:500]
    finally:
        code = server.stop()
    assert code == 0, server.stderr
    assert not metrics_dir.exists()  # the run's own metrics folder is removed
    assert "Traceback" not in server.stderr, server.stderr[-3000:]


def test_a_killed_worker_is_replaced_and_a_stop_is_clean(tiny_bundle: Path, payload: list) -> None:
    server, port = _start(tiny_bundle)
    try:
        before = _children(server.proc.pid)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        _until("a replacement worker", lambda: len(_children(server.proc.pid) - before) == 1)
        _until("two listeners again", lambda: _listeners(port) == 2)
        assert victim not in _children(server.proc.pid)
        assert _fresh_connection_posts(server.url, payload, 20) == [200] * 20
        assert re.search(rf"worker \d \(pid {victim}\) ended \(signal SIGKILL\); starting another", server.stderr)
    finally:
        code = server.stop()
    assert code == 0, server.stderr
    assert _listeners(port) == 0


def test_workers_stop_when_their_supervisor_is_killed(tiny_bundle: Path) -> None:
    server, port = _start(tiny_bundle)
    workers = _children(server.proc.pid)
    server.proc.kill()  # SIGKILL: the supervisor cannot pass anything on
    server.proc.wait(10)
    _until("the orphaned workers to stop", lambda: not any(Path(f"/proc/{p}").exists() for p in workers), 60)
    assert _listeners(port) == 0
