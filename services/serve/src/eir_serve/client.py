"""A Python client for eirserve: numpy arrays and label dicts in, numpy arrays out.

    from eir_serve.client import Client
    with Client("http://127.0.0.1:8000") as c:
        out = c.predict([{"mnist": image}, {"mnist_label": {"CLASS": "7"}}], seed=0)
        out[0]["mnist_output"]  # float32 array shaped as /info says

It reads ``/info`` once (first use), sends each array as base64 of its raw bytes in the
model's dtype, and raises ``EirServeError`` with the server's message and field for any 4xx/5xx.
``AsyncClient`` is the same with ``await``. Needs numpy and httpx only (not torch or eir_core).

A diffusion model (``info()["model"]["sampling"]``) takes sampling parameters per call, and
``stream`` yields its progress:

    out = c.predict([{"mnist_label": {"CLASS": "3"}}] * 8, seed=0, steps=50, sampler="ddim", guidance_scale=1.5)
    for event in c.stream({"mnist_label": {"CLASS": "3"}}, seed=0, steps=50, every=5):
        event.step, event.steps, event.done, event.arrays["mnist"]
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

Item = Mapping[str, Any]  # input name -> numpy array (array input) or {column: value} (tabular input)


class EirServeError(Exception):
    """The server answered with an error: ``status``, ``code``, ``message``, and the first problem's
    ``item`` and ``field`` (``details`` has them all)."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]]) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details
        first = details[0] if details else {}
        self.item: int | None = first.get("item")
        self.field: str | None = first.get("field")

    @classmethod
    def from_response(cls, r: httpx.Response) -> EirServeError:
        try:
            err = r.json()["error"]
            return cls(r.status_code, str(err["code"]), str(err["message"]), list(err.get("details") or []))
        except (ValueError, KeyError, TypeError):  # not eirserve's error shape (a proxy, say)
            return cls(r.status_code, "http_error", r.text[:500] or r.reason_phrase, [])


def _plain(value: Any) -> Any:
    """numpy scalars in a label dict -> Python values JSON can carry."""
    return value.item() if isinstance(value, np.generic) else value


class _Codec:
    """Items -> /predict body and answer -> arrays, for one model's /info."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.inputs: dict[str, Any] = info["inputs"]
        self.outputs: dict[str, Any] = info["outputs"]

    def encode_value(self, name: str, value: Any) -> Any:
        entry = self.inputs.get(name)
        if value is None:
            return None
        if entry is None:  # not this model's: sent as given, for the server to name
            return base64.b64encode(value.tobytes()).decode("ascii") if isinstance(value, np.ndarray) else value
        if entry["type"] == "array":
            arr = np.asarray(value)
            dtype = np.dtype(entry["dtype"])
            with np.errstate(invalid="ignore", over="ignore"):
                raw = np.ascontiguousarray(arr, dtype=dtype)
            if arr.dtype != dtype and not np.array_equal(raw, arr):
                raise ValueError(
                    f"input {name!r}: the model takes {dtype.name} and these {arr.dtype.name} values do not "
                    f"convert exactly (e.g. fractions or values out of range); convert them yourself"
                )
            return base64.b64encode(raw.tobytes()).decode("ascii")
        return {col: _plain(v) for col, v in value.items()}

    def body(self, items: Sequence[Item]) -> list[dict[str, Any]]:
        return [{name: self.encode_value(name, v) for name, v in item.items()} for item in items]

    def decode(self, answer: dict[str, Any]) -> list[dict[str, np.ndarray]]:
        out: list[dict[str, np.ndarray]] = []
        for result in answer["result"]:
            arrays = {}
            for name, b64 in result.items():
                e = self.outputs[name]
                raw = bytearray(base64.b64decode(b64))  # bytearray: the arrays are writable
                arrays[name] = np.frombuffer(raw, dtype=np.dtype(e["dtype"])).reshape(e["shape"])
            out.append(arrays)
        return out


def _checked(r: httpx.Response) -> dict[str, Any]:
    if r.status_code >= 400:
        raise EirServeError.from_response(r)
    body: dict[str, Any] = r.json()
    return body


def _params(seed: int | None, noise_scale: float | None = None, **sampling: Any) -> dict[str, Any]:
    """Query (/predict) or request (generate) parameters; None values are left out (the server's
    and the bundle's defaults)."""
    params: dict[str, Any] = {} if seed is None else {"seed": seed}
    if noise_scale is not None:
        params["noise_scale"] = noise_scale
    params.update({k: v for k, v in sampling.items() if v is not None})
    return params


@dataclass
class StreamEvent:
    """One event of ``stream``: the model's estimate of the finished sample after ``step`` of
    ``steps`` (the sample itself when ``done``), output name -> float32 array."""

    step: int
    steps: int
    done: bool
    arrays: dict[str, np.ndarray]


def _stream_request(codec: _Codec, item: Item, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    name = codec.info["model"]["name"]
    body = codec.body([item])[0]
    body["parameters"] = params
    return f"/v2/models/{name}/generate_stream", body


def _event(codec: _Codec, lines: list[str]) -> StreamEvent | None:
    data = next((line[6:] for line in lines if line.startswith("data: ")), None)
    if data is None:
        return None
    ev = json.loads(data)
    if "event: error" in lines:
        raise EirServeError(200, "stream_error", str(ev.get("error")), [])
    arrays = {k: np.asarray(ev[k], dtype=np.float32) for k in codec.outputs if k in ev}
    return StreamEvent(int(ev.get("step", 0)), int(ev.get("steps", 0)), bool(ev.get("done")), arrays)


def _stream_error(r: httpx.Response) -> EirServeError:
    try:  # the protocol's error shape: {"error": "..."}
        return EirServeError(r.status_code, "error", str(r.json()["error"]), [])
    except (ValueError, KeyError, TypeError):
        return EirServeError(r.status_code, "http_error", r.text[:500] or r.reason_phrase, [])


class Client:
    """Synchronous client. ``http``: an httpx.Client of your own (headers, transport, e.g. a
    FastAPI TestClient); it is then yours to close."""

    def __init__(self, url: str, *, timeout: float = 60.0, http: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self._own = http is None
        self._http = http if http is not None else httpx.Client(timeout=timeout)
        self._codec: _Codec | None = None

    def info(self) -> dict[str, Any]:
        """The model's /info (read once)."""
        return self._get_codec().info

    def _get_codec(self) -> _Codec:
        if self._codec is None:
            self._codec = _Codec(_checked(self._http.get(f"{self.url}/info")))
        return self._codec

    def predict(
        self,
        items: Sequence[Item],
        seed: int | None = None,
        noise_scale: float | None = None,
        *,
        steps: int | None = None,
        sampler: str | None = None,
        eta: float | None = None,
        guidance_scale: float | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """One dict of output arrays per item, in order. ``seed`` makes imputed inputs (and a
        diffusion model's samples) reproducible; ``noise_scale`` scales their noise for this call
        (None: the server's, see /info). A diffusion model's ``steps``, ``sampler``, ``eta`` and
        ``guidance_scale`` override the bundle's defaults (None: the default)."""
        codec = self._get_codec()
        params = _params(seed, noise_scale, steps=steps, sampler=sampler, eta=eta, guidance_scale=guidance_scale)
        r = self._http.post(f"{self.url}/predict", json=codec.body(items), params=params)
        return codec.decode(_checked(r))

    def stream(
        self,
        item: Item,
        seed: int | None = None,
        *,
        every: int = 1,
        steps: int | None = None,
        sampler: str | None = None,
        eta: float | None = None,
        guidance_scale: float | None = None,
    ) -> Iterator[StreamEvent]:
        """A diffusion sample of one item as it forms: an event after every ``every`` steps, the
        last one (``done``) holding the sample. Leaving the loop early stops the sampling."""
        codec = self._get_codec()
        params = _params(seed, None, every=every, steps=steps, sampler=sampler, eta=eta, guidance_scale=guidance_scale)
        path, body = _stream_request(codec, item, params)
        with self._http.stream("POST", self.url + path, json=body) as r:
            if r.status_code >= 400:
                r.read()
                raise _stream_error(r)
            lines: list[str] = []
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                    continue
                event = _event(codec, lines)
                lines = []
                if event is not None:
                    yield event

    def close(self) -> None:
        if self._own:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """``Client`` for asyncio: ``await client.predict(...)``."""

    def __init__(self, url: str, *, timeout: float = 60.0, http: httpx.AsyncClient | None = None) -> None:
        self.url = url.rstrip("/")
        self._own = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout)
        self._codec: _Codec | None = None

    async def info(self) -> dict[str, Any]:
        return (await self._get_codec()).info

    async def _get_codec(self) -> _Codec:
        if self._codec is None:
            self._codec = _Codec(_checked(await self._http.get(f"{self.url}/info")))
        return self._codec

    async def predict(
        self,
        items: Sequence[Item],
        seed: int | None = None,
        noise_scale: float | None = None,
        *,
        steps: int | None = None,
        sampler: str | None = None,
        eta: float | None = None,
        guidance_scale: float | None = None,
    ) -> list[dict[str, np.ndarray]]:
        codec = await self._get_codec()
        params = _params(seed, noise_scale, steps=steps, sampler=sampler, eta=eta, guidance_scale=guidance_scale)
        r = await self._http.post(f"{self.url}/predict", json=codec.body(items), params=params)
        return codec.decode(_checked(r))

    async def stream(
        self,
        item: Item,
        seed: int | None = None,
        *,
        every: int = 1,
        steps: int | None = None,
        sampler: str | None = None,
        eta: float | None = None,
        guidance_scale: float | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """``Client.stream`` with ``async for``."""
        codec = await self._get_codec()
        params = _params(seed, None, every=every, steps=steps, sampler=sampler, eta=eta, guidance_scale=guidance_scale)
        path, body = _stream_request(codec, item, params)
        async with self._http.stream("POST", self.url + path, json=body) as r:
            if r.status_code >= 400:
                await r.aread()
                raise _stream_error(r)
            lines: list[str] = []
            async for line in r.aiter_lines():
                if line:
                    lines.append(line)
                    continue
                event = _event(codec, lines)
                lines = []
                if event is not None:
                    yield event

    async def aclose(self) -> None:
        if self._own:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
