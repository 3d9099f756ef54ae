"""Slow clients cannot hold a real eirserve: header and body deadlines, the connection cap, and
the drain on SIGTERM (not ready, still serving, then a clean stop)."""

from __future__ import annotations

import base64
import json
import os
import select
import selectors
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serve.realserver import EIRSERVE, RealServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
N_SLOW = 2000  # half stop inside the headers, half inside the body


_servers: dict[int, RealServer] = {}


def start(bundle: Path, *flags: str) -> tuple[subprocess.Popen[str], str]:
    """A ready eirserve on a port it binds itself (read from its log)."""
    proc = subprocess.Popen(
        [*EIRSERVE, "--model-path", str(bundle), "--port", "0", "--log-level", "info", *flags],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "EIR_SERVE_DEVICE": "cpu"},
    )
    server = _servers[proc.pid] = RealServer(proc)
    server.wait_ready()
    return proc, server.url


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM (if still running), wait, and the server's whole stderr."""
    server = _servers.pop(proc.pid)
    server.stop()
    return server.stderr


@pytest.fixture()
def payload(digits_dir: Path) -> list[dict[str, str]]:
    img = np.load(digits_dir / "mnist_npy" / "10001.npy")
    return [{"mnist": base64.b64encode(img.tobytes()).decode()}]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_slow_connections_are_closed_while_normal_requests_go_on(tiny_bundle: Path, payload: list) -> None:
    timeout_s = 3.0
    proc, url = start(tiny_bundle, "--body-timeout-s", str(timeout_s), "--limit-concurrency", "5000")
    port = int(url.rsplit(":", 1)[1])
    socks: list[socket.socket] = []
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            assert c.post("/predict", json=payload).status_code == 200  # warm, keep-alive connection
            fds_before = open_fds(proc.pid)
            body = json.dumps(payload).encode()
            for i in range(N_SLOW):
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                if i % 2 == 0:  # headers that never end
                    s.sendall(b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n")
                else:  # complete headers, a tenth of the body
                    head = (
                        f"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                        f"content-length: {len(body)}\r\n\r\n"
                    )
                    s.sendall(head.encode() + body[: len(body) // 10])
                socks.append(s)
            # a kept-alive connection whose second request stalls inside its headers
            ka = socket.create_connection(("127.0.0.1", port), timeout=10)
            ka.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            first = b""
            while not first.endswith(b'{"status":"ok"}'):  # headers and body may come in two reads
                chunk = ka.recv(65536)
                assert chunk, first
                first += chunk
            assert first.startswith(b"HTTP/1.1 200 ")
            ka.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")
            socks.append(ka)
            t_opened = time.monotonic()
            for _ in range(10):  # normal requests are served while the slow ones are open
                r = c.post("/predict", json=payload)
                assert r.status_code == 200, r.text
            served_s = time.monotonic() - t_opened
            # ...before any slow connection had been answered or closed: they did not wait for a free slot
            poller = select.poll()
            for s in socks:
                poller.register(s, select.POLLIN)
            assert poller.poll(0) == [] and open_fds(proc.pid) >= fds_before + N_SLOW

            answers = collect_until_closed(socks, deadline_s=timeout_s * 2 + 30)
            closed_after = time.monotonic() - t_opened
            assert c.post("/predict", json=payload).status_code == 200
        assert all(a is not None for a in answers), f"{sum(a is None for a in answers)} connections still open"
        assert answers[-1].startswith(b"HTTP/1.1 408 ")  # type: ignore[union-attr]  # the kept-alive one
        header_answers, body_answers = answers[:N_SLOW:2], answers[1:N_SLOW:2]
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in header_answers), header_answers[:3]  # type: ignore[union-attr]
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in body_answers), body_answers[:3]  # type: ignore[union-attr]
        for a in (header_answers[0], body_answers[0]):
            assert json.loads(a.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"  # type: ignore[union-attr]
        assert open_fds(proc.pid) <= fds_before + 20
        print(
            f"\n{N_SLOW} slow connections held; 10 normal requests served meanwhile in {served_s:.2f} s; "
            f"all slow ones answered 408 and closed {closed_after:.1f} s after opening (deadline {timeout_s} s)"
        )
    finally:
        for s in socks:
            s.close()
        err = stop(proc)
    assert "Traceback" not in err, err[-2000:]


def collect_until_closed(socks: list[socket.socket], deadline_s: float) -> list[bytes | None]:
    """What each socket received until the server closed it (None: still open at the deadline)."""
    got = [b""] * len(socks)
    done: list[bool] = [False] * len(socks)
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    end = time.monotonic() + deadline_s
    left = len(socks)
    while left and time.monotonic() < end:
        for key, _ in sel.select(timeout=0.5):
            i = key.data
            try:
                chunk = socks[i].recv(65536)
            except ConnectionResetError:
                chunk = b""
            if chunk:
                got[i] += chunk
            else:
                done[i] = True
                sel.unregister(socks[i])
                left -= 1
    sel.close()
    return [g if d else None for g, d in zip(got, done)]


def test_connections_past_the_limit_get_503(tiny_bundle: Path, payload: list) -> None:
    """Connections kept alive between requests are not pushed out for a new one (slow ones are:
    tests/serve/test_bounds_connections.py): past the limit, the new one's request gets 503."""
    proc, url = start(tiny_bundle, "--limit-concurrency", "4", "--keep-alive-s", "60")
    port = int(url.rsplit(":", 1)[1])
    idle = []
    for _ in range(4):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        got = b""
        while not got.endswith(b'{"status":"ok"}'):
            chunk = s.recv(65536)
            assert chunk, got
            got += chunk
        idle.append(s)
    try:
        r = httpx.post(f"{url}/predict", json=payload, timeout=10)
        assert r.status_code == 503
        for s in idle:
            s.close()
        for _ in range(100):  # the server notices the closes on its next loop turn
            r = httpx.post(f"{url}/predict", json=payload, timeout=10)
            if r.status_code == 200:
                break
            time.sleep(0.05)
        assert r.status_code == 200
    finally:
        err = stop(proc)
    assert "Traceback" not in err, err[-2000:]


@pytest.fixture()
def draining_server(tiny_bundle: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    proc, url = start(tiny_bundle, "--drain-s", "2", "--log-level", "info")
    try:
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            stop(proc)


def test_sigterm_drains_not_ready_but_serving_then_stops(
    draining_server: tuple[subprocess.Popen[bytes], str], payload: list
) -> None:
    proc, url = draining_server
    with httpx.Client(base_url=url, timeout=10) as c:
        assert c.get("/v2/health/ready").status_code == 200
        proc.send_signal(signal.SIGTERM)
        for _ in range(100):
            if c.get("/v2/health/ready").status_code == 503:
                break
            time.sleep(0.02)
        assert c.get("/v2/health/ready").json() == {"ready": False}
        assert c.get("/ready").status_code == 503 and c.get("/v2/health/live").status_code == 200
        served = sum(c.post("/predict", json=payload).status_code == 200 for _ in range(5))
        assert served == 5 and proc.poll() is None  # still serving while load balancers take it out
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    err = stop(proc)
    assert "draining" in err and "Traceback" not in err, err[-2000:]
