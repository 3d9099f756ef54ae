"""The seam between HTTP and the model: decode -> check -> batch -> predict -> encode."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import Request
from starlette.requests import ClientDisconnect

from eir_core.data.tabular import NULL
from eir_core.errors import InputError
from eir_core.predict import Predictor
from eir_serve.batcher import Batcher, QueueFull
from eir_serve.codec import CodecError, decode_array, encode_array
from eir_serve.errors import ApiError, item_error
from eir_serve.metrics import Metrics
from eir_serve.settings import Settings


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refusing bodies over ``limit`` bytes (413)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
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


async def read_json_body(request: Request, limit: int) -> Any:
    """The request's JSON, refusing bodies over ``limit`` bytes (413) and non-JSON (422)."""
    body = await read_body(request, limit)
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise item_error(None, "body", f"not valid JSON ({e})") from None


class ModelService:
    def __init__(self, predictor: Predictor, settings: Settings, metrics: Metrics) -> None:
        self.predictor = predictor
        self.settings = settings
        self.metrics = metrics
        self.batcher = Batcher(
            self._predict,
            settings.max_batch_size,
            settings.batch_timeout_ms / 1000,
            settings.max_queue,
            on_batch=metrics.batch_size.observe,
        )
        self.metrics.queue_depth.set_function(lambda: self.batcher.queue_depth)
        self.inputs = predictor.inputs
        self.outputs = predictor.outputs

    def _predict(self, items: Sequence[Any], seeds: Sequence[int]) -> list[dict[str, np.ndarray]]:
        out = self.predictor.predict(items, seeds)
        self.metrics.items.inc(len(items))
        return out

    def warm_up(self) -> None:
        """One forward pass before the service reports ready (allocations, lazy init)."""
        item: dict[str, Any] = {}
        for name, e in self.inputs.items():
            if e["type"] == "array":
                item[name] = np.zeros(e["shape"], dtype=np.dtype(e["dtype"]))
            else:
                item[name] = {c: v[0] for c, v in e["categories"].items() if v and v[0] != NULL}
        self.predictor.predict([item], [0])

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
            if entry["type"] == "array":
                try:
                    item[name] = decode_array(value, entry["dtype"], tuple(entry["shape"]))
                except CodecError as e:
                    raise item_error(index, name, str(e)) from None
            else:
                if not isinstance(value, dict):
                    raise item_error(index, name, f"expected an object of column: value, got {type(value).__name__}")
                item[name] = value
        self.check(index, item)
        return item

    def check(self, index: int, item: dict[str, Any]) -> None:
        try:
            self.predictor.check_item(item)
        except InputError as e:
            raise item_error(index, None if e.field == "(item)" else e.field, e.message) from None

    async def run(self, items: list[dict[str, Any]], seed: int | None) -> list[dict[str, np.ndarray]]:
        if seed is None:
            seeds = [int(s) for s in np.random.SeedSequence().generate_state(len(items))]
        else:
            seeds = [seed + i for i in range(len(items))]
        try:
            return await asyncio.wait_for(self.batcher.submit(items, seeds), self.settings.request_timeout_s)
        except QueueFull as e:
            raise ApiError(
                503, "overloaded", f"server busy: {e}; retry shortly", headers={"Retry-After": "1"}
            ) from None
        except TimeoutError:
            raise ApiError(504, "timeout", f"no answer within {self.settings.request_timeout_s}s") from None

    @staticmethod
    def encode(results: list[dict[str, np.ndarray]]) -> dict[str, Any]:
        return {"result": [{name: encode_array(arr) for name, arr in r.items()} for r in results]}

    # -------------------------------------------------------------- /info
    def info(self) -> dict[str, Any]:
        optional = self.predictor.optional_inputs
        inputs: dict[str, Any] = {}
        for name, e in self.inputs.items():
            if e["type"] == "array":
                inputs[name] = {"type": "array", "shape": e["shape"], "dtype": e["dtype"]}
            else:
                inputs[name] = {
                    "type": "tabular",
                    "categorical_columns": {c: [v for v in e["categories"][c] if v != NULL] for c in e["cat_columns"]},
                    "continuous_columns": e["con_columns"],
                }
            inputs[name]["optional"] = name in optional
        outputs = {
            name: {"type": "array", "shape": e["shape"], "dtype": "<f4", "source_dtype": e.get("source_dtype")}
            for name, e in self.outputs.items()
        }
        m = self.predictor.manifest
        return {
            "inputs": inputs,
            "outputs": outputs,
            "model": {
                "name": m.get("run_name"),
                "training": m.get("training"),
                "device": str(self.predictor.device),
                "eir_core_version": m.get("package_version"),
            },
        }
