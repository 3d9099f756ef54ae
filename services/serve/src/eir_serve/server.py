"""Running the app under uvicorn so that slow clients and restarts do not hurt it.

* HTTP parser and event loop: httptools and uvloop when installed (the default install has both;
  ``--http h11`` and ``--loop asyncio`` take the pure-Python ones). Measured in ``benchmarks/results/serve_load.md``.
* Connections: ``connections.py`` bounds each one before the app sees it: time to send the
  headers and then the body (``body_timeout_s``, whether or not a route reads the body), header
  bytes (``max_header_bytes``, 431), and how many are open (``limit_concurrency``; the slowest
  incomplete request makes room for a new connection). Idle keep-alive: ``keep_alive_s``.
* Body: ``BodyTimeoutMiddleware`` gives the body ``body_timeout_s`` from the end of the headers; a
  route still reading it then gets 408 in the service's error shape, and the connection closes.
* SIGTERM: ``DrainingServer`` first reports not ready for ``drain_s`` while still serving (load
  balancers take the replica out), then stops accepting and lets requests in flight finish
  (``graceful_timeout_s``). A second SIGTERM or a SIGINT stops at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import signal
import time
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eir_serve.connections import HAVE_HTTPTOOLS, OVER_CAP_SLACK, ConnectionGuard, guarded_protocol
from eir_serve.errors import ApiError
from eir_serve.settings import Settings
from eir_serve.workers import supervisor_gone

log = logging.getLogger("eir_serve")
READY_PATHS = {"/ready": {"status": "draining"}, "/v2/health/ready": {"ready": False}}


class BodyTimeout(ApiError):
    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            408,
            "request_timeout",
            f"the request body did not arrive within {timeout_s:g} s; send it at once",
            headers={"Connection": "close"},
        )


class BodyTimeoutMiddleware:
    """Bounds the time from the end of the request headers to the end of its body."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app, self.timeout_s = app, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:  # later calls wait for the disconnect: not the client's upload any more
                return await receive()
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                async with asyncio.timeout(remaining):  # no task per receive, unlike wait_for
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(self.timeout_s) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, timed_receive, send)


class DrainingMiddleware:
    """While the server drains (``app.state.draining``), the readiness routes answer 503."""

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = READY_PATHS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if body is None or not getattr(self.state, "draining", False):
            await self.app(scope, receive, send)
            return
        raw = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": raw})


class DrainingServer(uvicorn.Server):
    """On the first SIGTERM: not ready for ``drain_s`` (still serving), then uvicorn's graceful stop."""

    def __init__(self, config: uvicorn.Config, app_state: Any, drain_s: float) -> None:
        super().__init__(config)
        self.app_state, self.drain_s = app_state, drain_s
        self.drain_until: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self.drain_s > 0 and self.drain_until is None and not self.should_exit:
            self.app_state.draining = True
            self.drain_until = time.monotonic() + self.drain_s
            log.info("SIGTERM: draining for %.1f s (not ready, still serving), then stopping", self.drain_s)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_until is not None and time.monotonic() >= self.drain_until:
            self.should_exit = True
        if counter % 10 == 0 and not self.should_exit and supervisor_gone():  # a worker whose supervisor died
            log.warning("the supervisor of --workers is gone: stopping")
            self.handle_exit(signal.SIGTERM, None)
        return await super().on_tick(counter)


def http_stack(settings: Settings) -> tuple[str, str]:
    """(parser, event loop) that ``settings`` give: what "auto" resolves to here; ValueError
    names the flag when the package asked for is not installed."""
    if settings.http == "httptools" and not HAVE_HTTPTOOLS:
        raise ValueError("--http httptools: the httptools package is not installed (pip install httptools)")
    parser = "httptools" if settings.http == "httptools" or (settings.http == "auto" and HAVE_HTTPTOOLS) else "h11"
    loop = settings.loop
    if loop != "asyncio":
        try:
            import uvloop  # noqa: F401

            loop = "uvloop"
        except ImportError:
            if loop == "uvloop":
                raise ValueError("--loop uvloop: the uvloop package is not installed (pip install uvloop)") from None
            loop = "asyncio"
    return parser, loop


def uvicorn_config(app: FastAPI, settings: Settings, port: int | None = None) -> uvicorn.Config:
    # log_config=None: uvicorn's loggers go through the root handler eirserve set up, in one format.
    guard = ConnectionGuard(settings.limit_concurrency, settings.body_timeout_s, settings.max_header_bytes)
    app.state.connections = guard
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port if port is None else port,
        log_config=None,
        log_level=settings.log_level,
        http=guarded_protocol(guard, settings.http),
        ws="none",
        loop=http_stack(settings)[1],
        access_log=settings.access_log,
        limit_concurrency=None,  # the guard's: a connection count that slow clients cannot fill
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=settings.graceful_timeout_s,
        h11_max_incomplete_event_size=settings.max_header_bytes + 4096,  # the guard's 431 comes first
    )


FILES_BESIDE_CONNECTIONS = 256  # the model, libraries, gRPC, logs


def raise_file_limit(settings: Settings) -> str | None:
    """Lift the soft limit on open files to what ``limit_concurrency`` needs (the hard limit
    allows it in containers; a shell's default soft limit is often 1024). A warning, if it cannot."""
    need = settings.limit_concurrency + OVER_CAP_SLACK + FILES_BESIDE_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return None
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < need:
        return (
            f"the open-file limit is {target} (hard limit), below the {need} that --limit-concurrency "
            f"{settings.limit_concurrency} needs: connections past it cannot be accepted; raise `ulimit -Hn`"
        )
    return None


def draining_server(app: FastAPI, settings: Settings, port: int | None = None) -> DrainingServer:
    """uvicorn with eirserve's header deadline, connection cap, keep-alive and drain on SIGTERM."""
    return DrainingServer(uvicorn_config(app, settings, port), app.state, settings.drain_s)
