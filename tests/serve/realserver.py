"""A real ``eirserve`` process for end-to-end tests: it binds port 0 itself (no port picked by the
test and closed again, which another process could take meanwhile), logs the port it got, and
the test reads it from the log; stderr is drained by a thread, so a chatty server never blocks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

EIRSERVE = [sys.executable, "-m", "eir_serve.cli"]
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


class RealServer:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._port: int | None = None
        self._have_port = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            m = LISTENING.search(line)
            if m and self._port is None:
                self._port = int(m.group(1))
                self._have_port.set()
        self._have_port.set()  # the process ended: wake a waiting test

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    @property
    def url(self) -> str:
        if not self._have_port.wait(60) or self._port is None:
            raise AssertionError(f"eirserve logged no port:\n{self.stderr}")
        return f"http://127.0.0.1:{self._port}"

    def wait_ready(self, deadline_s: float = 90) -> None:
        url, t0 = self.url, time.monotonic()
        while time.monotonic() - t0 < deadline_s:
            if self.proc.poll() is not None:
                raise AssertionError(f"eirserve exited early:\n{self.stderr}")
            try:
                if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)  # poll interval, not a wait for readiness
        raise AssertionError(f"eirserve did not become ready:\n{self.stderr}")

    def stop(self) -> int:
        """SIGTERM, wait for the graceful shutdown; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._reader.join(10)
        return code


@contextmanager
def eirserve(model: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[RealServer]:
    """A ready server for ``model`` on 127.0.0.1 and a port of its own choosing."""
    cmd: Sequence[str] = [*EIRSERVE, "--model-path", str(model), "--port", "0", "--log-level", "info", *args]
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "EIR_SERVE_DEVICE": "cpu", **(env or {})}
    )
    server = RealServer(proc)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
