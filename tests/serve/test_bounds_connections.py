"""Connection-level bounds on a real eirserve (either HTTP parser), before anything is
authenticated: header bytes (431), the body deadline whether or not a route reads the body, and a
connection count that slow clients cannot fill. Loopback only; every wait has a deadline."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serve.realserver import EIRSERVE, RealServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
DEADLINE_S = 2.0


@pytest.fixture(params=["httptools", "h11"])
def server(request: pytest.FixtureRequest, tiny_bundle: Path) -> Iterator[tuple[RealServer, int]]:
    flags = ["--port", "0", "--grpc-port", "0", "--http", request.param, "--body-timeout-s", str(DEADLINE_S)]
    flags += ["--limit-concurrency", "40", "--max-header-bytes", "8192", "--api-key", "k3y", "--keep-alive-s", "30"]
    proc = subprocess.Popen(
        [*EIRSERVE, "--model-path", str(tiny_bundle), *flags],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "EIR_SERVE_DEVICE": "cpu"},
    )
    srv = RealServer(proc)
    try:
        srv.wait_ready()
        yield srv, int(srv.url.rsplit(":", 1)[1])
    finally:
        srv.stop()
    assert "Traceback" not in srv.stderr, srv.stderr[-3000:]


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _answer_then_close(s: socket.socket, within_s: float, trickle: bool = False) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed; with
    ``trickle``, one byte of body every 0.2 s meanwhile (a client that never finishes)."""
    t0, got = time.monotonic(), b""
    s.settimeout(0.2)
    while time.monotonic() - t0 < within_s:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            if trickle:
                try:
                    s.sendall(b"x")
                except OSError:
                    return got, time.monotonic() - t0
            continue
        except ConnectionResetError:
            return got, time.monotonic() - t0
        if not chunk:
            return got, time.monotonic() - t0
        got += chunk
    raise AssertionError(f"still open after {within_s} s; got {got[:200]!r}")


def test_oversized_headers_get_431_and_the_close(server: tuple[RealServer, int]) -> None:
    srv, port = server
    for head in (b"x-big: " + b"a" * 20_000 + b"\r\n", b"".join(b"x-%d: v\r\n" % i for i in range(3000))):
        s = _connect(port)
        try:
            s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n" + head + b"\r\n")
        except OSError:
            pass  # the server may close while the rest is on its way; its answer is what counts
        answer, _ = _answer_then_close(s, 10)
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "headers_too_large"
    long_url = b"GET /health?" + b"q" * 9000 + b" HTTP/1.1\r\nhost: x\r\n\r\n"
    s = _connect(port)
    s.sendall(long_url)
    assert _answer_then_close(s, 10)[0].startswith(b"HTTP/1.1 431 ")
    assert httpx.get(f"{srv.url}/health", headers={"x-fits": "a" * 4000}, timeout=10).status_code == 200


@pytest.mark.parametrize(
    "head",
    [
        b"GET /health HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n\r\n",  # a route that reads no body
        b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 7900000\r\n\r\n",  # 401
        b"POST /nowhere HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n\r\n",  # 404
    ],
    ids=["health", "unauthorized", "not found"],
)
def test_an_answered_request_whose_body_trickles_is_closed_at_the_deadline(
    server: tuple[RealServer, int], head: bytes
) -> None:
    _, port = server
    s = _connect(port)
    s.sendall(head + b"[")
    answer, closed_after = _answer_then_close(s, DEADLINE_S + 10, trickle=True)
    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    assert DEADLINE_S - 0.5 <= closed_after <= DEADLINE_S + 5, closed_after


def test_slow_connections_make_room_for_a_new_one(server: tuple[RealServer, int]) -> None:
    """40 connections allowed; 60 that stall in their headers or bodies (unauthenticated): a new
    client is still served at once, and the slowest ones were closed to make room for it."""
    srv, port = server
    slow = []
    for i in range(60):
        s = _connect(port)
        if i % 2:
            s.sendall(b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n[")
        else:
            s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        slow.append(s)
    try:
        t0 = time.monotonic()
        r = httpx.get(f"{srv.url}/ready", timeout=10)
        assert r.status_code == 200 and time.monotonic() - t0 < DEADLINE_S, (r.status_code, r.text)
        closed = sum(_closed(s) for s in slow)
        assert closed >= 20, closed
    finally:
        for s in slow:
            s.close()


def _closed(s: socket.socket) -> bool:
    """Whether the server closed ``s`` (after whatever it answered)."""
    s.settimeout(0.05)
    try:
        while s.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def test_when_every_connection_is_busy_a_new_one_gets_503(server: tuple[RealServer, int]) -> None:
    """Connections between requests (keep-alive) are not pushed out: past the limit, a new
    client's request is answered 503, and served again once they close."""
    srv, port = server
    kept = []
    for _ in range(40):
        s = _connect(port)
        s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        got = b""
        while not got.endswith(b'{"status":"ok"}'):
            chunk = s.recv(65536)
            assert chunk, got
            got += chunk
        kept.append(s)
    r = httpx.get(f"{srv.url}/ready", timeout=10)
    assert r.status_code == 503 and r.json()["error"]["code"] == "too_many_connections"
    assert r.headers["retry-after"] == "1"
    for s in kept:
        s.close()
    for _ in range(100):  # the server sees the closes on its next loop turns
        if httpx.get(f"{srv.url}/ready", timeout=10).status_code == 200:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("still 503 after the connections closed")


def test_an_idle_keep_alive_connection_is_closed(tiny_bundle: Path) -> None:
    proc = subprocess.Popen(
        [*EIRSERVE, "--model-path", str(tiny_bundle), "--port", "0", "--grpc-port", "0", "--keep-alive-s", "1"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "EIR_SERVE_DEVICE": "cpu"},
    )
    srv = RealServer(proc)
    try:
        srv.wait_ready()
        s = _connect(int(srv.url.rsplit(":", 1)[1]))
        s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        answer, closed_after = _answer_then_close(s, 10)
        assert answer.startswith(b"HTTP/1.1 200 ") and 0.5 <= closed_after <= 5, closed_after
    finally:
        srv.stop()
