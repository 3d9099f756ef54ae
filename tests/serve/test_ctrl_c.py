"""Ctrl-C stops eirserve as the docs say to stop it: a clean shutdown, exit status 130, and no
traceback (uvicorn re-raises the interrupt once it has shut down)."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.serve.realserver import eirserve

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_ctrl_c_stops_the_server_without_a_traceback(tiny_bundle: Path) -> None:
    with eirserve(tiny_bundle, "--grpc-port", "0") as s:
        assert httpx.get(f"{s.url}/ready", timeout=10).status_code == 200
        s.proc.send_signal(signal.SIGINT)
        code = s.proc.wait(timeout=60)
        s._reader.join(10)
        assert code == 130, s.stderr
        assert "Traceback" not in s.stderr and "KeyboardInterrupt" not in s.stderr, s.stderr
        assert "Application shutdown complete" in s.stderr
