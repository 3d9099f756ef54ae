"""Running the app under uvicorn so that slow clients and restarts do not hurt it.

* HTTP parser and event loop: httptools and uvloop when installed (the default install has both;
  ``--http h11`` and ``--loop asyncio`` take the pure-Python ones). Measured in ``benchmarks/results/serve_load.md``.
* Headers: uvicorn waits for request headers forever; ``timed_protocol`` closes a connection
  whose headers are not complete ``body_timeout_s`` after their first byte (or after the
  connection opened), answering 408 when some bytes came; the same rule for either parser.
* Body: ``BodyTimeoutMiddleware`` gives the body ``body_timeout_s`` from the end of the headers; a
  route still reading it then gets 408 in the service's error shape, and the connection closes.
* Open connections: uvicorn's ``limit_concurrency`` (503 past it); idle keep-alive: ``keep_alive_s``.
* SIGTERM: ``DrainingServer`` first reports not ready for ``drain_s`` while still serving (load
  balancers take the replica out), then stops accepting and lets requests in flight finish
  (``graceful_timeout_s``). A second SIGTERM or a SIGINT stops at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from types import FrameType
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    HAVE_HTTPTOOLS = True
except ImportError:  # httptools not installed: h11 only
    HAVE_HTTPTOOLS = False

from eir_serve.errors import ApiError, error_body
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


def _late_headers_answer(header_timeout_s: float) -> bytes:
    msg = f"the request headers did not arrive within {header_timeout_s:g} s"
    raw = json.dumps(error_body("request_timeout", msg, [])).encode()
    head = f"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {len(raw)}"
    return head.encode() + b"\r\nconnection: close\r\n\r\n" + raw


def timed_h11_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline on each request's headers."""

    class TimedH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._header_timer: asyncio.TimerHandle | None = None
            self._arm()

        def _arm(self) -> None:
            # A new request's headers are awaited while self.cycle is still the previous request's.
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._armed_for = self.cycle
            self._got_bytes = False
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE and self._armed_for is not self.cycle:
                self._arm()
            if self.cycle is self._armed_for:
                self._got_bytes = True
            super().data_received(data)

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.cycle is not self._armed_for or self.transport.is_closing():
                return  # the headers came; the body has its own deadline, idle connections keep-alive's
            if self._got_bytes and self.conn.their_state is h11.IDLE:
                self.transport.write(_late_headers_answer(header_timeout_s))
            self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().connection_lost(exc)

    return TimedH11Protocol


def timed_httptools_protocol(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with the same deadline: armed when the connection opens and
    at each request's first byte (the parser's message begin), disarmed when its headers end."""

    class TimedHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._header_timer: asyncio.TimerHandle | None = None
            self._in_headers = False
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_headers = True
            self._arm()

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._disarm()
            super().on_headers_complete()

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self._in_headers:
                self.transport.write(_late_headers_answer(header_timeout_s))
            self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return TimedHttpToolsProtocol


def timed_protocol(header_timeout_s: float, http: str = "auto") -> type[asyncio.Protocol]:
    """The HTTP protocol class for ``http`` ("auto": httptools when installed, else h11)."""
    if http == "httptools" and not HAVE_HTTPTOOLS:
        raise ValueError("--http httptools: the httptools package is not installed (pip install httptools)")
    if http == "httptools" or (http == "auto" and HAVE_HTTPTOOLS):
        return timed_httptools_protocol(header_timeout_s)
    return timed_h11_protocol(header_timeout_s)


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
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port if port is None else port,
        log_config=None,
        log_level=settings.log_level,
        http=timed_protocol(settings.body_timeout_s, settings.http),
        loop=http_stack(settings)[1],
        access_log=settings.access_log,
        limit_concurrency=settings.limit_concurrency,
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=settings.graceful_timeout_s,
    )


def draining_server(app: FastAPI, settings: Settings, port: int | None = None) -> DrainingServer:
    """uvicorn with eirserve's header deadline, connection cap, keep-alive and drain on SIGTERM."""
    return DrainingServer(uvicorn_config(app, settings, port), app.state, settings.drain_s)
