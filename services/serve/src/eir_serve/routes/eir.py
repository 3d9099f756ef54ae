"""EIR's own endpoints: POST /predict and GET /info (payloads as EIR's eirserve has them)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from eir_serve.auth import require_api_key
from eir_serve.deps import ServiceDep
from eir_serve.service import read_json_body

PREDICT_DOC = """A JSON **list** of items, each an object keyed by input name (EIR's payload):

* array input: base64 of the raw C-order bytes in the training dtype and shape (see `/info`),
  e.g. `base64.b64encode(np.load("10001.npy").tobytes())`;
* tabular input: `{"CLASS": "5"}` (categories are strings).

Inputs trained with modality dropout (`"optional": true` in `/info`) may be left out: they are
imputed with noise, so a label alone generates a digit. `?seed=N` makes that noise
reproducible (item *i* uses seed N+i); without it every call draws new noise.

Answer: `{"result": [{"<output>": "<base64 of raw float32 bytes>"}, ...]}` in request order,
un-normalized (pixel scale). Every problem is a 4xx with
`{"error": {"code", "message", "details": [{"item", "field", "message"}]}}`."""


def _predict_openapi(example: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "object", "additionalProperties": True},
                    },
                    "example": example,
                }
            },
        }
    }


def build_router(example: list[dict[str, Any]]) -> APIRouter:
    r = APIRouter(tags=["eir"])

    @r.post(
        "/predict",
        description=PREDICT_DOC,
        openapi_extra=_predict_openapi(example),
        responses={
            422: {"description": "bad input"},
            413: {"description": "body or item count too large"},
            503: {"description": "queue full or not ready"},
            504: {"description": "timeout"},
        },
        dependencies=[Depends(require_api_key)],
    )
    async def predict(
        request: Request,
        service: ServiceDep,
        seed: Annotated[int | None, Query(ge=0, le=2**62, description="noise seed")] = None,
    ) -> dict[str, Any]:
        body = await read_json_body(request, service.settings.max_body_bytes)
        items = service.decode_items(body)
        return service.encode(await service.run(items, seed))

    @r.get("/info", description="Inputs and outputs: type, shape, dtype; categories of tabular inputs.")
    async def info(service: ServiceDep) -> dict[str, Any]:
        return service.info()

    return r
