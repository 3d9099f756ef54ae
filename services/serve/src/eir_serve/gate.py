"""What a request to a route that reads a body must pass, from its headers alone, before a byte
of the body is read (pure ASGI, in front of everything that reads one).

In order: the API key when one is set (401), a browser's cross-origin request (403: a page on
another site must not make its visitors' browsers run inference), the media type (415), the
content coding (415, ``/v2`` infer only), the declared length (413), and a share of the bytes
that request bodies in progress may hold together (503 with ``Retry-After``). A refused request
is answered at once; the body the client goes on sending is discarded by uvicorn, and the
connection's body deadline (``connections.py``) bounds how long that may take.

Media types (parameters such as ``charset`` allowed, case-insensitive):

* ``POST /predict`` (and ``/echo``): ``application/json``;
* ``POST /v2/.../infer``: ``application/json``, ``application/octet-stream`` (the binary tensor
  extension), or none at all, as Triton's own clients send it; ``POST /v2/repository/...``
  (model control): ``application/json`` or none. A browser cannot send a
  request without one to another site unnoticed: it adds ``Sec-Fetch-Site`` or ``Origin``,
  which the cross-origin check reads.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eir_serve.auth import CHALLENGE, check_bearer
from eir_serve.batcher import Arrivals
from eir_serve.errors import ApiError, error_body

INFER_PATH = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")
JSON_ONLY = ("application/json",)
V2_TYPES = ("application/json", "application/octet-stream", "")
REPOSITORY_PATH = re.compile(r"^/v2/repository/(index|models/[^/]+/(load|unload))$")
CONTROL_TYPES = ("application/json", "")  # tritonclient sends the index request without a body
CODINGS = ("identity", "gzip", "deflate")
SMALL_BODY = 64 * 1024  # bodies up to this size may use the whole pool; larger ones 3/4 of it
MAX_DIGITS = 19  # a length that does not fit in 63 bits is not a length


def ascii_int(text: str | None) -> int | None:
    """A header integer: ASCII digits only (``str.isdigit`` also takes '²' and '٣'), else None."""
    if text is None:
        return None
    text = text.strip()
    if not text or len(text) > MAX_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def coding_of(header: str | None) -> str:
    """The body's one content coding, lower-cased ("identity" when none); ValueError otherwise.
    Codings are case-insensitive (RFC 9110 8.4.1); a list of several is refused."""
    value = (header or "").strip().lower()
    if not value:
        return "identity"
    codings = [c.strip() for c in value.split(",") if c.strip() and c.strip() != "identity"]
    if not codings:
        return "identity"
    if len(codings) > 1 or codings[0] not in CODINGS:
        raise ValueError(f"Content-Encoding {header!r}: use one of gzip, deflate or none")
    return codings[0]


class BodyPool:
    """The bytes that request bodies in progress may hold together. Only the event loop touches it."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.large_share = total * 3 // 4
        self.used = 0

    def take(self, n: int, large: bool) -> bool:
        if self.used + n > (self.large_share if large else self.total):
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


@dataclass(frozen=True)
class GateConfig:
    api_key: str | None
    max_body_bytes: int
    pool: BodyPool
    arrivals: Arrivals | None = None  # requests admitted on the inference routes, until they queue


def body_route(scope: Scope) -> tuple[str, ...] | None:
    """The media types a body route takes, or None for a route that reads no body."""
    if scope.get("method") != "POST":
        return None
    path = scope.get("path", "")
    if path in ("/predict", "/echo"):
        return JSON_ONLY
    if INFER_PATH.match(path):
        return V2_TYPES
    if REPOSITORY_PATH.match(path):
        return CONTROL_TYPES
    return None


def cross_origin(headers: Headers) -> str | None:
    """Why this is a browser's request from another site, or None. Browsers say where a request
    comes from in ``Sec-Fetch-Site`` (and, older ones, ``Origin``); other clients send neither."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        return None if site.strip().lower() in ("same-origin", "none") else f"Sec-Fetch-Site: {site}"
    origin = headers.get("origin")
    if origin is None:
        return None
    if origin.strip().lower() == "null" or urlsplit(origin.strip()).netloc.lower() != headers.get("host", "").lower():
        return f"Origin: {origin}"
    return None


class RequestGate:
    """ASGI middleware: refuse from the headers what must not cost a body read (module doc)."""

    def __init__(self, app: ASGIApp, config: GateConfig) -> None:
        self.app, self.config = app, config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        types = body_route(scope) if scope["type"] == "http" else None
        if types is None:
            await self.app(scope, receive, send)
            return
        try:
            reserved, counted = self._admit(scope, types)
        except ApiError as e:
            await _refuse(scope, send, e)
            return
        pool, extra = self.config.pool, 0

        async def counted_receive() -> Message:
            """Chunked bodies (no Content-Length) take their share as their bytes arrive."""
            nonlocal extra
            message = await receive()
            if not counted and message["type"] == "http.request":
                n = len(message.get("body", b""))
                if n and not pool.take(n, large=extra + n > SMALL_BODY):
                    raise _busy(pool)
                extra += n
            return message

        arriving = self.config.arrivals.arriving() if self.config.arrivals and types is not CONTROL_TYPES else None
        try:
            with arriving or contextlib.nullcontext():
                await self.app(scope, counted_receive, send)
        finally:
            pool.give(reserved + extra)

    def _admit(self, scope: Scope, types: tuple[str, ...]) -> tuple[int, bool]:
        """The bytes reserved for the body, and whether that is all of it (a Content-Length)."""
        c = self.config
        headers = Headers(scope=scope)
        if not check_bearer(headers.get("authorization"), c.api_key):
            raise ApiError(
                401,
                "unauthorized",
                "this server needs an API key: send the header 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": CHALLENGE},
            )
        why = cross_origin(headers)
        if why is not None:
            raise ApiError(403, "cross_origin", f"requests from another site's page are refused ({why})")
        media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media not in types:
            allowed = " or ".join(t or "none" for t in types)
            raise ApiError(415, "unsupported_media_type", f"Content-Type {media or 'none'!r}: send {allowed}")
        if types is V2_TYPES:
            try:
                coding_of(headers.get("content-encoding"))
            except ValueError as e:
                raise ApiError(415, "unsupported_encoding", str(e)) from None
        declared = headers.get("content-length")
        if declared is None:
            return 0, False
        n = ascii_int(declared)
        if n is None:
            raise ApiError(400, "invalid_input", f"Content-Length {declared!r} is not a number of bytes")
        if n > c.max_body_bytes:
            raise ApiError(413, "body_too_large", f"request body of {n} bytes is over the limit of {c.max_body_bytes}")
        if not c.pool.take(n, large=n > SMALL_BODY):
            raise _busy(c.pool)
        return n, True


def _busy(pool: BodyPool) -> ApiError:
    return ApiError(
        503,
        "busy",
        f"request bodies in progress hold the server's {pool.total} bytes for them; retry shortly",
        headers={"Retry-After": "1"},
    )


async def _refuse(scope: Scope, send: Send, e: ApiError) -> None:
    """The answer in the route's error shape (the protocol's ``{"error": ...}`` under /v2)."""
    body: Any = {"error": e.message} if scope.get("path", "").startswith("/v2/") else error_body(e.code, e.message, [])
    raw = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (e.headers or {}).items()]
    await send({"type": "http.response.start", "status": e.status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})
