"""Request bodies: read under a size limit, parse as strict JSON at a bounded cost, hand to FastAPI.

The parser is jiter (pydantic's JSON parser, as a standalone package) because it is the one at
hand that refuses everything a hostile client can send to a Python JSON reader: deep nesting
(the standard library recurses into a RecursionError), duplicate keys (orjson and the standard
library keep the last one silently), lone surrogates and invalid UTF-8. Numbers are then held to
what a 64-bit integer or a finite double can carry: ``1e999`` parses as infinity and a
10 000-digit integer as a Python int, and neither means anything to a model.

The cost is bounded before parsing: a body may hold at most ``JsonLimits.values`` JSON values and
``JsonLimits.containers`` lists and objects (counted from its commas and brackets, in NumPy, which
leaves the interpreter free meanwhile), derived from the model and ``--max-items-per-request`` so
that every request the model can answer fits: 7.6 MB of ``[[0],[0],...]`` (1.5 million lists,
0.9 s in jiter) is refused in a few milliseconds. Nesting is refused past ``MAX_JSON_DEPTH``
levels. Bodies over ``INLINE_BYTES`` are parsed on a worker thread, so the event loop (health,
readiness, other requests) is never held for more than the few milliseconds that parsing the
largest allowed body takes.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

import jiter
import numpy as np
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from eir_serve.errors import ApiError, item_error
from eir_serve.gate import ascii_int

INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # int64 and uint64 together
MAX_JSON_DEPTH = 64  # a request nests 6 levels at most (V2 data of [N, C, H, W] inside the request)
INLINE_BYTES = 16 * 1024  # bodies up to this size are parsed (and a V2 one decoded) on the event loop: ~1 ms
T = TypeVar("T")


@dataclass(frozen=True)
class JsonLimits:
    """How much JSON a body may hold (``ModelService.json_limits`` derives them from the model)."""

    values: int = 10_000_000
    containers: int = 1_000_000


def check_cost(raw: bytes, limits: JsonLimits) -> None:
    """Refuse a body with more values or lists/objects than ``limits`` before it is parsed.
    Brackets and commas inside strings count too: an over-count, never an under-count."""
    if len(raw) < min(limits.containers, limits.values):  # each takes a byte at least: cannot be over
        return
    a = np.frombuffer(raw, dtype=np.uint8)
    containers = int(np.count_nonzero(a == ord("["))) + int(np.count_nonzero(a == ord("{")))
    if containers > limits.containers:
        raise item_error(
            None,
            "body",
            f"too large a JSON document ({containers} lists and objects; this model needs at most {limits.containers})",
            413,
        )
    values = int(np.count_nonzero(a == ord(","))) + containers + 1
    if values > limits.values:
        raise item_error(
            None, "body", f"too large a JSON document ({values} values; this model needs at most {limits.values})", 413
        )


async def off_loop(executor: Executor | None, size: int, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on ``executor`` when the body is over ``INLINE_BYTES``, else here."""
    if executor is None or size <= INLINE_BYTES:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than ``limit`` bytes (413) and a client that left mid-body (400)."""
    declared = ascii_int(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        raise ApiError(413, "body_too_large", f"request body of {declared} bytes is over the limit of {limit}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "body_too_large", f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:  # the client went away mid-body: nobody will read an answer
        raise ApiError(400, "client_disconnected", "the client closed the connection before the body ended") from None
    return b"".join(chunks)


def parse_json(raw: bytes, limits: JsonLimits = JsonLimits()) -> Any:
    """Strict JSON -> Python values, or a 4xx naming the problem (and where it is)."""
    check_cost(raw, limits)
    try:
        value = jiter.from_json(raw, allow_inf_nan=False, catch_duplicate_keys=True, cache_mode="keys")
    except ValueError as e:
        message = str(e)
        if "recursion limit" in message:  # jiter's own limit (200), past ours
            message = message.replace("recursion limit exceeded", _TOO_DEEP)
        elif "number out of range" in message:
            message = message.replace("number out of range", "number too large")
        raise item_error(None, "body", f"not valid JSON ({message})") from None
    _check_values(value)
    return value


_TOO_DEEP = f"nested too deeply: more than {MAX_JSON_DEPTH} levels"


def _check_values(value: Any) -> None:
    """Refuse nesting past ``MAX_JSON_DEPTH``, infinite floats and integers past 64 bits anywhere
    in a parsed document."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        t = type(v)
        if t is list or t is dict:
            if depth > MAX_JSON_DEPTH:
                raise item_error(None, "body", f"not valid JSON ({_TOO_DEEP})")
            if t is dict:
                stack.extend((x, depth + 1) for x in v.values())
            elif not _numbers_in_range(v):
                stack.extend((x, depth + 1) for x in v)
        elif t is float:
            if math.isinf(v):
                raise item_error(None, "body", "not valid JSON (a number is too large for a double)")
        elif t is int and not INT_MIN <= v <= INT_MAX:
            raise item_error(None, "body", "not valid JSON (an integer does not fit in 64 bits)")


def _numbers_in_range(values: list[Any]) -> bool:
    """True for a list of numbers all within the int64/uint64 range (so finite), found by min and
    max in C: V2's JSON tensors are long lists of numbers. False: look at each element."""
    if not values or type(values[0]) not in (int, float):
        return False
    try:
        lo, hi = min(values), max(values)
    except TypeError:  # not numbers only
        return False
    return type(lo) in (int, float) and type(hi) in (int, float) and INT_MIN <= lo and hi <= INT_MAX


async def read_json_body(request: Request, limit: int) -> Any:
    """The request's JSON, refusing bodies over ``limit`` bytes (413) and anything not strict JSON (422)."""
    return parse_json(await read_body(request, limit), _limits(request))


def _limits(request: Request) -> JsonLimits:
    service = getattr(request.app.state, "service", None)
    return service.json_limits if service is not None else JsonLimits()


class _ParsedRequest(Request):
    """A request whose body has already been read and parsed; FastAPI reads it from here."""

    def __init__(self, scope: Scope, receive: Receive, raw: bytes, parsed: Any) -> None:
        super().__init__(scope, receive)
        self._raw, self._parsed = raw, parsed

    async def body(self) -> bytes:
        return self._raw

    async def json(self) -> Any:
        return self._parsed


def parse_items(raw: bytes, limits: JsonLimits, max_items: int) -> Any:
    """``parse_json``, then a list of items is held to ``max_items`` before FastAPI validates it
    (on the event loop, one error per item: 20 000 strings took ~0.1 s to refuse)."""
    parsed = parse_json(raw, limits)
    if isinstance(parsed, list) and len(parsed) > max_items:
        raise ApiError(413, "too_many_items", f"{len(parsed)} items in one request; the limit is {max_items}")
    return parsed


class JsonBodyRoute(APIRoute):
    """A route whose declared body model is validated from ``read_json_body``'s result, not from
    FastAPI's own reading (no size limit, and the standard library's parser). Routes without a
    body are left as they are. Their bodies are lists of items (``/predict``, ``/echo``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        if self.body_field is None:
            return handle

        async def read_then_handle(request: Request) -> Response:
            settings = request.app.state.settings
            raw = await read_body(request, settings.max_body_bytes)
            limits, max_items = _limits(request), settings.max_items_per_request
            parsed = await off_loop(request.app.state.parse_pool, len(raw), parse_items, raw, limits, max_items)
            # The body is JSON whatever its declared type (curl -d says form-urlencoded), as it
            # always was here; tell FastAPI so, or it would validate the raw bytes instead.
            scope = request.scope
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope["headers"].append((b"content-type", b"application/json"))
            return await handle(_ParsedRequest(scope, request.receive, raw, parsed))

        return read_then_handle
