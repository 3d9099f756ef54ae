"""Bounds on every HTTP connection, enforced in uvicorn's protocol before the app sees a request.

A connection is in one of three phases: ``HEAD`` (opened, or a request has begun, and its headers
are not complete), ``BODY`` (headers complete, body not yet all received) and ``IDLE`` (its last
request was received whole; uvicorn's keep-alive timer bounds the wait for the next one).

* Time: ``HEAD`` lasts at most ``body_timeout_s`` from the connection opening or the request's
  first byte (408 when some bytes came, then the close), ``BODY`` at most ``body_timeout_s``
  from the end of the headers, whether or not a route reads the body: a route that answers
  without reading it (a 401, a 404, ``GET /health`` with a ``Content-Length``) no longer leaves
  the connection to a client that trickles the rest. A route that is reading the body answers
  408 itself (``server.BodyTimeoutMiddleware``) a moment earlier.
* Bytes: the request line and headers may take ``max_header_bytes``; past it 431 and the close.
  The parser is fed at most that many bytes of them, so no header is buffered beyond it (either
  parser; httptools had no limit at all).
* Count: at most ``limit_concurrency`` connections. When a new one would go past it, the
  connection that has waited longest in ``HEAD`` or ``BODY`` is closed (a slow client cannot
  hold a slot against a new one); when every connection is busy in the app or idle between
  requests, the new one is answered 503 (``too_many_connections``) as soon as it sends a byte,
  and closed, and past ``OVER_CAP_SLACK`` more it is closed at once.

The same rules hold for httptools and h11 (``guarded_protocol``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    HAVE_HTTPTOOLS = True
except ImportError:  # httptools not installed: h11 only
    HAVE_HTTPTOOLS = False

from eir_serve.errors import error_body

HEAD, BODY, IDLE = "head", "body", "idle"
BODY_GRACE_S = 1.0  # the protocol closes a body this long after the route's own 408 would have gone
OVER_CAP_SLACK = 64  # connections past the cap that still get a 503 instead of a bare close


def _answer(status: int, reason: str, code: str, message: str, extra: str = "") -> bytes:
    raw = json.dumps(error_body(code, message, [])).encode()
    head = f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(raw)}\r\n{extra}"
    return head.encode() + b"connection: close\r\n\r\n" + raw


class ConnectionGuard:
    """What the connections of one server share: the limits, and which connections have not
    completed their request, oldest first (the ones a new connection may push out)."""

    def __init__(self, limit: int, timeout_s: float, max_header_bytes: int) -> None:
        self.limit = limit
        self.timeout_s = timeout_s
        self.max_header_bytes = max_header_bytes
        self.waiting: dict[Any, None] = {}  # insertion order = when the connection's phase began
        self.open = 0  # connections counted against the limit (an evicted one no longer is)
        self.evicted = 0  # connections closed to make room for a new one

    def late_headers(self) -> bytes:
        return _answer(
            408, "Request Timeout", "request_timeout", f"the request headers did not arrive within {self.timeout_s:g} s"
        )

    def too_large(self) -> bytes:
        return _answer(
            431,
            "Request Header Fields Too Large",
            "headers_too_large",
            f"the request line and headers are over the limit of {self.max_header_bytes} bytes",
        )

    def pushed_out(self) -> bytes:
        return _answer(
            503,
            "Service Unavailable",
            "too_many_connections",
            "the server is at its connection limit and this request was the slowest; retry",
            "retry-after: 1\r\n",
        )

    def full(self) -> bytes:
        return _answer(
            503,
            "Service Unavailable",
            "too_many_connections",
            f"the server is at its limit of {self.limit} connections, all busy; retry shortly",
            "retry-after: 1\r\n",
        )


class _Guarded:
    """The phase bookkeeping shared by both protocol classes (mixed in before uvicorn's class)."""

    guard: ConnectionGuard
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    connections: set[Any]

    def _guard_start(self) -> None:
        self._timer: asyncio.TimerHandle | None = None
        self._phase = IDLE
        self._head_bytes = 0
        self._got_bytes = False
        self._refused = False
        self._counted = True
        self.guard.open += 1
        self._begin(HEAD)
        if self.guard.open > self.guard.limit:
            self._make_room()

    def _make_room(self) -> None:
        g = self.guard
        victim = next((c for c in g.waiting if c is not self), None)
        if victim is not None:
            g.evicted += 1
            victim._evict()
        elif g.open > g.limit + OVER_CAP_SLACK:
            self.transport.close()
        else:
            self._refused = True  # answered 503 at its first byte

    def _evict(self) -> None:
        self._uncount()
        self._disarm()
        if self._phase == HEAD and self._got_bytes:
            self.transport.write(self.guard.pushed_out())
        self.transport.close()

    def _uncount(self) -> None:
        self.guard.waiting.pop(self, None)
        if self._counted:
            self._counted = False
            self.guard.open -= 1

    def _begin(self, phase: str) -> None:
        """Enter ``phase`` now: its deadline starts, and it waits at the back of the line."""
        self._disarm()
        self._phase = phase
        self.guard.waiting.pop(self, None)
        if phase == IDLE:
            self._head_bytes = 0
            return
        self.guard.waiting[self] = None
        if phase == HEAD:
            self._head_bytes, self._got_bytes = 0, False
            self._timer = self.loop.call_later(self.guard.timeout_s, self._late)
        else:
            self._timer = self.loop.call_later(self.guard.timeout_s + BODY_GRACE_S, self._late)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _late(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        cycle = getattr(self, "cycle", None)
        answering = cycle is not None and not cycle.response_complete  # a pipelined request's answer is under way
        if self._phase == HEAD and self._got_bytes and not answering:
            self.transport.write(self.guard.late_headers())
        self.transport.close()

    def _feed_bounded(self, data: bytes, feed: Any) -> None:
        """Feed ``data`` to the parser, at most ``max_header_bytes`` of a request's head: 431 past it."""
        limit = self.guard.max_header_bytes
        if self._refused and not self.transport.is_closing():
            self.transport.write(self.guard.full())
            self.transport.close()
            return
        while data:
            if self._phase == BODY:
                feed(data)
                return
            if self._phase == IDLE:
                self._begin(HEAD)
            self._got_bytes = True
            room = limit - self._head_bytes
            if room <= 0:
                self.transport.write(self.guard.too_large())
                self.transport.close()
                return
            piece, data = data[:room], data[room:]
            self._head_bytes += len(piece)
            feed(piece)
            if self.transport.is_closing():
                return
        if self._phase == HEAD and self._head_bytes >= limit:
            self.transport.write(self.guard.too_large())
            self.transport.close()

    def _guard_end(self) -> None:
        self._disarm()
        self._uncount()


def _guarded_h11(guard: ConnectionGuard) -> type[H11Protocol]:
    class GuardedH11Protocol(_Guarded, H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.guard = guard
            self._guard_start()

        def data_received(self, data: bytes) -> None:
            self._feed_bounded(data, super().data_received)

        def handle_events(self) -> None:
            super().handle_events()
            self._follow_state()

        def _follow_state(self) -> None:
            state = self.conn.their_state
            if self._phase == HEAD and state in (h11.SEND_BODY, h11.DONE, h11.MUST_CLOSE):
                self._begin(BODY)
            if self._phase == BODY and state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED):
                self._begin(IDLE)

        def connection_lost(self, exc: Exception | None) -> None:
            self._guard_end()
            super().connection_lost(exc)

    GuardedH11Protocol.guard = guard
    return GuardedH11Protocol


def _guarded_httptools(guard: ConnectionGuard) -> type[asyncio.Protocol]:
    class GuardedHttpToolsProtocol(_Guarded, HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.guard = guard
            self._guard_start()

        def data_received(self, data: bytes) -> None:
            self._feed_bounded(data, super().data_received)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._phase == IDLE:  # a pipelined request that came in the same read as the last one
                self._begin(HEAD)

        def on_headers_complete(self) -> None:
            self._begin(BODY)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._begin(IDLE)
            super().on_message_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._guard_end()
            super().connection_lost(exc)

    GuardedHttpToolsProtocol.guard = guard
    return GuardedHttpToolsProtocol


def guarded_protocol(guard: ConnectionGuard, http: str = "auto") -> type[asyncio.Protocol]:
    """The HTTP protocol class for ``http`` ("auto": httptools when installed, else h11)."""
    if http == "httptools" and not HAVE_HTTPTOOLS:
        raise ValueError("--http httptools: the httptools package is not installed (pip install httptools)")
    if http == "httptools" or (http == "auto" and HAVE_HTTPTOOLS):
        return _guarded_httptools(guard)
    return _guarded_h11(guard)
