"""The seam between HTTP and the model: decode -> check -> batch -> predict -> encode."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from fastapi import Response

from eir_core.diffusion_sampling import SamplingParams, resolve_params
from eir_core.errors import InputError
from eir_core.inference import Runner
from eir_core.manifest import ArrayInput, Manifest, TabularInput
from eir_serve.batcher import Arrivals, Batcher, QueueFull
from eir_serve.body import JsonLimits
from eir_serve.body import read_json_body as read_json_body  # routes import it from here
from eir_serve.codec import CodecError, decode_array, encode_array
from eir_serve.errors import ApiError, item_error
from eir_serve.metrics import Metrics
from eir_serve.sampler import Request, StepBatcher
from eir_serve.schemas.eir import InfoResponse
from eir_serve.settings import Settings


async def client_gone(request: Any) -> None:
    """Completes when the client of ``request`` (whose body was read) disconnects. The server's
    later receive calls wait for exactly that (uvicorn; Starlette's and httpx's test transports
    answer it once the response is sent)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def example_payload(manifest: Manifest) -> list[dict[str, Any]]:
    """The manifest's dummy item (what the warm-up predicts) as a /predict request body, so the
    OpenAPI example and the warm-up cannot disagree."""
    item = manifest.dummy_item()
    return [{k: encode_array(v, v.dtype.str) if isinstance(v, np.ndarray) else v for k, v in item.items()}]


def json_limits(inputs: Mapping[str, ArrayInput | TabularInput], max_items: int) -> JsonLimits:
    """The most JSON that a request this model can answer needs, with room to spare: per item,
    an array input's values nested as deeply as its shape (V2's ``data`` of ``[N, *shape]``),
    a tabular column's name and value; then the request's own objects. /predict needs far less."""
    values = containers = 0
    for e in inputs.values():
        if isinstance(e, ArrayInput):
            values += math.prod(e.shape)
            containers += sum(math.prod(e.shape[:k]) for k in range(len(e.shape)))
        else:
            values += 2 * (len(e.cat_columns) + len(e.con_columns))
            containers += 2
    per_item_containers = containers + 4
    per_item_values = values + per_item_containers
    return JsonLimits(values=max_items * per_item_values + 4096, containers=max_items * per_item_containers + 1024)


class ModelService:
    def __init__(
        self,
        predictor: Runner,
        settings: Settings,
        metrics: Metrics,
        model: str = "",
        version: str = "1",
        arrivals: Arrivals | None = None,
    ) -> None:
        self.predictor = predictor
        self.checkpoint: str | None = None  # the bundle's file name, for /info
        self.model = model  # the name and version requests use (repository.py)
        self.version = version
        # Set by the registry when this version is stopped after it stopped serving: a request
        # that looked it up before that (its body still arriving or being decoded) goes on to
        # the version that serves now instead of failing.
        self.stopped = False
        self.protocol_specs: tuple[Any, Any] | None = None  # protocol.py's tensors of this model, made once
        self.successor: Callable[[], ModelService] | None = None
        self.settings = settings
        self.metrics = metrics.for_model(model, version)
        self.diffusion = predictor.diffusion
        self.batcher: Batcher | StepBatcher
        if self.diffusion is not None:  # sampled step by step, every request in flight in each forward pass
            items = predictor

            def finish(job: Any) -> list[dict[str, np.ndarray]]:
                return items.split_outputs({job.output: job.x}, job.n)

            self.batcher = StepBatcher(
                self.diffusion, predictor.run_batch, finish, settings.max_batch_size, settings.max_queue, self.metrics
            )
        else:
            self.batcher = Batcher(
                self._predict,
                settings.max_batch_size,
                settings.batch_timeout_ms / 1000,
                settings.max_queue,
                on_batch=self.metrics.batch_size.observe,
                on_depth=self.metrics.queue_depth.set,
                arrivals=arrivals,
                batch_wait_s=settings.batch_wait_ms / 1000,
            )
        self.inputs = predictor.inputs
        self.outputs = predictor.outputs
        self.json_limits = json_limits(self.inputs, settings.max_items_per_request)
        # Seeds of fresh noise: a generator seeded once from the OS. Python's, not NumPy's: NumPy's
        # integers() lets go of the interpreter lock and must win it back from the batcher's
        # thread, which stalled the event loop up to a switch interval (5 ms) per request at C=32.
        self._entropy = random.Random(os.urandom(32))

    def _predict(
        self, items: Sequence[Any], seeds: Sequence[int], noise_scales: Sequence[float]
    ) -> list[dict[str, np.ndarray]]:
        out = self.predictor.predict(items, seeds, noise_scale=noise_scales)
        self.metrics.items.inc(len(items))
        return out

    def warm_up(self) -> None:
        """One forward pass before the service reports ready (allocations, lazy init)."""
        self.predictor.predict([self.predictor.manifest.dummy_item()], [0], noise_scale=self.settings.noise_scale)

    # -------------------------------------------------------------- EIR payload
    def decode_items(self, body: Any) -> list[dict[str, Any]]:
        if not isinstance(body, list):
            raise item_error(None, "body", f"expected a JSON list of items, got {type(body).__name__}")
        if not body:
            raise item_error(None, "body", "the list of items is empty")
        if len(body) > self.settings.max_items_per_request:
            raise ApiError(
                413,
                "too_many_items",
                f"{len(body)} items in one request; the limit is {self.settings.max_items_per_request}",
            )
        return [self.decode_item(i, raw) for i, raw in enumerate(body)]

    def decode_item(self, index: int, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise item_error(index, None, f"expected an object keyed by input name, got {type(raw).__name__}")
        item: dict[str, Any] = {}
        for name, value in raw.items():
            entry = self.inputs.get(name)
            if entry is None:
                raise item_error(index, name, f"unknown input; this model's inputs are: {', '.join(self.inputs)}")
            if value is None:
                continue
            if isinstance(entry, ArrayInput):
                try:
                    item[name] = decode_array(value, entry.dtype, entry.shape)
                except CodecError as e:
                    raise item_error(index, name, str(e)) from None
            else:
                if not isinstance(value, dict):
                    raise item_error(index, name, f"expected an object of column: value, got {type(value).__name__}")
                item[name] = value
        self.check(index, item)
        return item

    def check(self, index: int, item: dict[str, Any]) -> None:
        """Raise a 422 naming item and field for the first problem in ``item``. A category given as
        the integer it spells (EIR clients send ``{"CLASS": 3}``) is turned into its string first."""
        for name, value in list(item.items()):
            entry = self.inputs.get(name)
            if isinstance(entry, TabularInput) and isinstance(value, dict):
                item[name] = self._categories_as_strings(index, name, value, entry)
        try:
            self.predictor.check_item(item)
        except InputError as e:
            raise item_error(index, None if e.field == "(item)" else e.field, e.message) from None
        self._no_missing_columns(index, item)

    def _no_missing_columns(self, index: int, item: dict[str, Any]) -> None:
        """A tabular input that is given has a value in every column: never imputed without a word."""
        for name, value in item.items():
            entry = self.inputs.get(name)
            if isinstance(entry, TabularInput) and isinstance(value, dict):
                columns = [*entry.cat_columns, *entry.con_columns]
                for col in (c for c in columns if value.get(c) is None):
                    optional = name in self.predictor.optional_inputs
                    raise item_error(
                        index,
                        f"{name}.{col}",
                        f"missing: give a value for every column of {name} ({', '.join(columns)})"
                        + (f", or leave {name} out (it is optional)" if optional else ""),
                    )

    @staticmethod
    def _categories_as_strings(index: int, name: str, row: dict[str, Any], entry: TabularInput) -> dict[str, Any]:
        out = dict(row)
        for col in entry.cat_columns:
            v = row.get(col)
            if isinstance(v, int) and not isinstance(v, bool):
                out[col] = str(v)
            elif v is not None and not isinstance(v, str):
                known = entry.offered(col)
                eg = f", e.g. {known[0]!r}" if known else ""
                raise item_error(index, f"{name}.{col}", f"expected a category string{eg}; got {v!r}")
        return out

    # -------------------------------------------------------------- sampling parameters
    def sampling_params(
        self,
        steps: Any = None,
        sampler: Any = None,
        eta: Any = None,
        guidance_scale: Any = None,
    ) -> SamplingParams | None:
        """A request's sampling parameters, checked against the bundle (None: none were given).
        An InputError names the parameter; each route turns it into its own error shape."""
        given = {"steps": steps, "sampler": sampler, "eta": eta, "guidance_scale": guidance_scale}
        given = {k: v for k, v in given.items() if v is not None}
        if self.diffusion is None:
            if given:
                name = next(iter(given))
                raise InputError(name, "sampling parameters are for diffusion models; this model answers in one pass")
            return None
        params = SamplingParams(**given)
        resolve_params(self.diffusion.info, params)  # SamplingError (an InputError) naming the parameter
        return params

    def sampling_info(self) -> dict[str, Any] | None:
        """What a sampler request may set, with this bundle's defaults and bounds (for /info, V2 metadata)."""
        if self.diffusion is None:
            return None
        from eir_core.diffusion import SAMPLERS
        from eir_core.diffusion_sampling import MAX_GUIDANCE_SCALE

        d = self.diffusion.info
        return {
            "output": self.diffusion.output,
            "steps": {"default": d.inference_steps, "min": 1, "max": d.time_steps},
            "sampler": {"default": d.sampler, "choices": list(SAMPLERS)},
            "eta": {"default": d.eta, "min": 0.0, "max": 1.0},
            "guidance_scale": (
                {"default": d.guidance_scale, "min": 0.0, "max": MAX_GUIDANCE_SCALE, "inputs": list(d.guidable_inputs)}
                if d.guidable_inputs
                else None
            ),
        }

    def _seeds(self, n: int, seed: int | None) -> list[int]:
        if seed is None:  # fresh noise
            return [self._entropy.getrandbits(62) for _ in range(n)]
        return [seed + i for i in range(n)]

    def stream(
        self,
        items: list[dict[str, Any]],
        seed: int | None,
        sampling: SamplingParams | None,
        progress: Any,
        every: int,
        noise_scale: float | None = None,
    ) -> Request:
        """Start a diffusion request whose progress is reported (``progress(Progress)`` on this loop)."""
        if self.stopped and self.successor is not None:
            return self.successor().stream(items, seed, sampling, progress, every, noise_scale)
        assert isinstance(self.batcher, StepBatcher)
        scales = [self.settings.noise_scale if noise_scale is None else noise_scale] * len(items)
        try:
            return self.batcher.submit_nowait(
                items, self._seeds(len(items), seed), scales, sampling or SamplingParams(), progress, every
            )
        except QueueFull as e:
            raise ApiError(
                503, "overloaded", f"server busy: {e}; retry shortly", headers={"Retry-After": "1"}
            ) from None

    async def run(
        self,
        items: list[dict[str, Any]],
        seed: int | None,
        noise_scale: float | None = None,
        sampling: SamplingParams | None = None,
        disconnected: Any = None,
    ) -> list[dict[str, np.ndarray]]:
        """``noise_scale`` and ``sampling`` (already checked by the route) override the server's and
        the bundle's for this request. ``disconnected``: an awaitable that completes when the client
        goes away; a diffusion request then leaves the step loop at its next step."""
        if self.stopped and self.successor is not None:
            return await self.successor().run(items, seed, noise_scale, sampling, disconnected)
        seeds = self._seeds(len(items), seed)
        scales = [self.settings.noise_scale if noise_scale is None else noise_scale] * len(items)
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):  # no extra task, unlike wait_for
                if isinstance(self.batcher, StepBatcher):
                    return await self._sample(items, seeds, scales, sampling or SamplingParams(), disconnected)
                return await self.batcher.submit(items, seeds, scales)
        except QueueFull as e:
            raise ApiError(
                503, "overloaded", f"server busy: {e}; retry shortly", headers={"Retry-After": "1"}
            ) from None
        except TimeoutError:
            raise ApiError(504, "timeout", f"no answer within {self.settings.request_timeout_s}s") from None

    async def _sample(
        self,
        items: list[dict[str, Any]],
        seeds: list[int],
        scales: list[float],
        params: SamplingParams,
        disconnected: Any,
    ) -> list[dict[str, np.ndarray]]:
        assert isinstance(self.batcher, StepBatcher)
        try:
            req = self.batcher.submit_nowait(items, seeds, scales, params)
        except BaseException:
            if disconnected is not None:
                disconnected.close()  # never awaited: the request did not start
            raise
        watcher = asyncio.ensure_future(disconnected) if disconnected is not None else None
        try:
            if watcher is not None:
                await asyncio.wait((req.future, watcher), return_when=asyncio.FIRST_COMPLETED)
                if not req.future.done():
                    raise ApiError(499, "client_closed", "the client closed the connection before the answer")
            return await req.future
        finally:
            req.cancel()  # a no-op when it finished; else the step loop drops it at its next step
            if watcher is not None:
                watcher.cancel()

    @staticmethod
    def encode(results: list[dict[str, np.ndarray]]) -> Response:
        """``PredictResponse`` rendered at once: the strings are base64, so nothing needs escaping,
        and FastAPI's validation of a model the service built itself would be pure overhead."""
        body = {"result": [{name: encode_array(arr) for name, arr in r.items()} for r in results]}
        return Response(json.dumps(body, separators=(",", ":")).encode(), media_type="application/json")

    # -------------------------------------------------------------- /info
    def info(self) -> InfoResponse:
        info = self.predictor.manifest.info(str(self.predictor.device))
        info["model"]["noise_scale"] = self.settings.noise_scale  # the server's, not the bundle's
        info["model"]["runtime"] = self.predictor.runtime
        info["model"]["sampling"] = self.sampling_info()
        info["model"]["checkpoint"] = self.checkpoint
        return InfoResponse.model_validate(info)
