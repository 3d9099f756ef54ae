"""The Open Inference Protocol's generate extension (``/v2/models/{name}/generate`` and
``/generate_stream``), for one item; registered on the V2 router in ``v2.py``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from eir_core.diffusion_sampling import SamplingParams
from eir_serve import protocol
from eir_serve.body import parse_json, read_body
from eir_serve.errors import ApiError
from eir_serve.protocol import bad
from eir_serve.sampler import Progress
from eir_serve.service import ModelService, client_gone

GENERATE_DOC = """The protocol's generate extension, for one item: the body is an object whose keys are this
model's inputs, valued as in `/predict` (a tabular input `{"CLASS": "3"}`, an array input base64 of
its raw bytes; inputs trained with dropout may be left out), plus `"parameters"`: `seed`,
`noise_scale`, and for a diffusion model `steps`, `sampler`, `eta`, `guidance_scale` (`/info`:
`model.sampling`). The answer: `{"model_name", "model_version", "<output>": nested list}`, the
output un-normalized (pixel scale) without the batch dimension."""

STREAM_DOC = """As `generate`, answered as Server-Sent Events: a diffusion model sends, after every `every`
steps (a parameter; default 1), an event whose data is `{"model_name", "model_version", "step",
"steps", "done": false, "<output>": nested list}` holding the model's current estimate of the
finished sample, then one with `"done": true` holding the sample itself (the same array
`generate`, `/predict` and `infer` give for the same seed and parameters). A model without a
sampler sends the one final event. A failure after the stream started is an `event: error` whose
data is `{"error": message}`. Closing the connection stops the sampling at its next step."""


@dataclass(frozen=True)
class _Generate:
    item: dict[str, Any]
    seed: int | None
    noise_scale: float | None
    sampling: SamplingParams | None
    every: int


async def _read_generate(service: ModelService, request: Request) -> _Generate:
    body = await read_body(request, service.settings.max_body_bytes)
    raw = parse_json(body, service.json_limits)
    if not isinstance(raw, dict):
        raise bad(f"body: expected a JSON object of input name: value, got {type(raw).__name__}")
    params = raw.pop("parameters", None) or {}
    if not isinstance(params, dict):
        raise bad(f"parameters: expected an object, got {type(params).__name__}")
    known = {"seed", "noise_scale", "every", *protocol.SAMPLING_PARAMETERS}
    for key in params:
        if key not in known:
            raise bad(f"parameter {key!r}: unknown; this route takes {', '.join(sorted(known))}")
    every = params.get("every", 1)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise bad(f"parameter 'every': expected a whole number >= 1 (steps between events), got {every!r}")
    seed = protocol.parse_seed(params.get("seed"))
    noise_scale = protocol.parse_noise_scale(params.get("noise_scale"))
    sampling = protocol.parse_sampling(service, params.get)
    try:
        item = service.decode_item(0, raw)
    except ApiError as e:
        raise bad(e.message.removeprefix("item 0, ")) from None
    return _Generate(item, seed, noise_scale, sampling, every)


def _generated(name: str, version: str, result: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {"model_name": name, "model_version": version}
    for key, arr in result.items():
        out[key] = arr.tolist()
    return out


async def _generate(service: ModelService, name: str, version: str | None, request: Request) -> Response:
    g = await _read_generate(service, request)
    gone = client_gone(request) if service.diffusion is not None else None
    results = await service.run([g.item], g.seed, g.noise_scale, g.sampling, gone)
    return JSONResponse(_generated(name, service.version, results[0]))


def _event(data: dict[str, Any], kind: str | None = None) -> bytes:
    head = f"event: {kind}\n" if kind else ""
    return (head + "data: " + json.dumps(data, separators=(",", ":")) + "\n\n").encode()


async def _generate_stream(service: ModelService, name: str, version: str | None, request: Request) -> Response:
    g = await _read_generate(service, request)

    async def one_pass() -> AsyncIterator[bytes]:
        try:
            results = await service.run([g.item], g.seed, g.noise_scale, g.sampling)
        except ApiError as e:
            yield _event({"error": e.message}, "error")
            return
        yield _event({**_generated(name, service.version, results[0]), "done": True})

    if service.diffusion is None:
        return StreamingResponse(one_pass(), media_type="text/event-stream", headers=_SSE_HEADERS)

    events: asyncio.Queue[Progress] = asyncio.Queue()
    sample = service.stream([g.item], g.seed, g.sampling, events.put_nowait, g.every, g.noise_scale)

    async def stream() -> AsyncIterator[bytes]:
        try:
            async with asyncio.timeout(service.settings.request_timeout_s):
                while True:
                    getter = asyncio.ensure_future(events.get())
                    await asyncio.wait((getter, sample.future), return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():
                        getter.cancel()
                        if sample.future.exception() is not None:
                            raise sample.future.exception()  # type: ignore[misc]
                        continue  # finished: its last event is already queued
                    p = getter.result()
                    step = {"step": p.step, "steps": p.steps, "done": p.done}
                    yield _event({**_generated(name, service.version, p.arrays[0]), **step})
                    if p.done:
                        return
        except TimeoutError:
            yield _event({"error": f"no answer within {service.settings.request_timeout_s}s"}, "error")
        except Exception as e:  # the step loop failed: the stream says so, the server keeps going
            yield _event({"error": f"sampling failed ({type(e).__name__})"}, "error")
        finally:
            sample.cancel()  # the client left or it finished: either way it leaves the step loop

    return StreamingResponse(stream(), media_type="text/event-stream", headers=_SSE_HEADERS)


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
