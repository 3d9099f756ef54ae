"""A real uvicorn server (and the gRPC server its lifespan starts) in a thread of the test process,
on loopback ephemeral ports, for clients that need sockets (tritonclient, grpc)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from eir_serve.app import create_app
from eir_serve.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Live:
    http: str  # "127.0.0.1:PORT" (tritonclient's url form)
    grpc: str
    app: Any
    server: uvicorn.Server  # set .should_exit to shut down as on SIGTERM


@contextmanager
def serve_in_thread(settings: Settings, deadline_s: float = 60) -> Iterator[Live]:
    """Serve ``settings`` (its port and grpc_port are replaced by free ones) until the block ends."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    http_port = sock.getsockname()[1]
    grpc_port = free_port()
    settings = settings.model_copy(update={"host": "127.0.0.1", "port": http_port, "grpc_port": grpc_port})
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    t0 = time.monotonic()
    while not getattr(app.state, "ready", False):
        assert thread.is_alive(), "the server thread died during startup"
        assert time.monotonic() - t0 < deadline_s, "the server did not become ready"
        time.sleep(0.02)  # poll interval, not a wait for readiness
    try:
        yield Live(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", app, server)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
