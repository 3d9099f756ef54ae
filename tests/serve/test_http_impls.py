"""The header deadline holds with either HTTP parser (httptools, the default, and h11), and the
hot path never goes through a thread pool."""

from __future__ import annotations

import inspect
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from eir_serve import auth, deps
from tests.serve.realserver import EIRSERVE, RealServer

pytestmark = [pytest.mark.e2e]


def _read_until_closed(s: socket.socket, deadline_s: float) -> bytes:
    s.settimeout(deadline_s)
    got = b""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            return got
        got += chunk
    raise AssertionError(f"still open after {deadline_s} s; got {got!r}")


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_stalled_headers_get_408_with_either_parser(tiny_bundle: Path, http: str) -> None:
    flags = ["--port", "0", "--grpc-port", "0", "--http", http, "--body-timeout-s", "1", "--log-level", "info"]
    proc = subprocess.Popen(
        [*EIRSERVE, "--model-path", str(tiny_bundle), *flags],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "EIR_SERVE_DEVICE": "cpu"},
    )
    server = RealServer(proc)
    try:
        server.wait_ready()
        port = int(server.url.rsplit(":", 1)[1])
        stalled = socket.create_connection(("127.0.0.1", port), timeout=5)
        stalled.sendall(b"POST /predict HTTP/1.1\r\nhost: x\r\n")  # headers that never end
        kept = socket.create_connection(("127.0.0.1", port), timeout=5)
        kept.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        first = b""
        while not first.endswith(b'{"status":"ok"}'):
            chunk = kept.recv(65536)
            assert chunk, first
            first += chunk
        kept.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")  # the second request stalls
        silent = socket.create_connection(("127.0.0.1", port), timeout=5)  # sends nothing at all
        t0 = time.monotonic()
        answers = [_read_until_closed(s, 10) for s in (stalled, kept, silent)]
        took = time.monotonic() - t0
        for answer in answers[:2]:
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
        assert answers[2] == b""  # closed without an answer: it asked nothing
        assert took < 5, took
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200  # the server goes on
        assert f"HTTP: {http} parser" in server.stderr
        assert "uvicorn.access" not in server.stderr  # no line per request unless --access-log
    finally:
        server.stop()
    assert "Traceback" not in server.stderr, server.stderr[-2000:]


def test_request_dependencies_run_on_the_event_loop() -> None:
    # FastAPI runs a plain-def dependency in its thread pool: a thread hop on every request.
    assert inspect.iscoroutinefunction(deps.get_service)
    assert inspect.iscoroutinefunction(auth.require_api_key)


def test_a_parser_that_is_not_installed_is_a_cli_error(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from eir_serve import cli, server

    monkeypatch.setattr(server, "HAVE_HTTPTOOLS", False)
    assert cli.main(["--model-path", str(tiny_bundle), "--port", "0", "--grpc-port", "0", "--http", "httptools"]) == 2
    err = capsys.readouterr().err
    assert "eirserve: error: --http httptools: the httptools package is not installed" in err
    assert "Traceback" not in err
