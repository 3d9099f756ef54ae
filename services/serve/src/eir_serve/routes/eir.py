"""EIR's own endpoints: POST /predict and GET /info (payloads as EIR's eirserve has them).

No ``from __future__ import annotations`` here: FastAPI reads the route parameters' annotations,
which name a local (the bundle's example) that a string annotation could not resolve."""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response

from eir_core.diffusion import SAMPLERS
from eir_core.errors import InputError
from eir_serve.auth import require_api_key
from eir_serve.body import JsonBodyRoute
from eir_serve.deps import ServiceDep
from eir_serve.errors import item_error
from eir_serve.schemas.eir import ErrorResponse, InfoResponse, PredictRequest, PredictResponse
from eir_serve.service import client_gone
from eir_serve.settings import MAX_NOISE_SCALE

PREDICT_DOC = """A JSON **list** of items, each an object keyed by input name (EIR's payload):

* array input: base64 of the raw C-order bytes in the training dtype and shape (see `/info`),
  e.g. `base64.b64encode(np.load("10001.npy").tobytes())`;
* tabular input: `{"CLASS": "5"}` (categories are strings; the integer a category spells, `5`, is
  accepted too).

Inputs trained with modality dropout (`"optional": true` in `/info`) may be left out: they are
imputed with noise, so a label alone generates a digit. `?seed=N` makes that noise
reproducible (item *i* uses seed N+i); without it every call draws new noise.
`?noise_scale=X` (0 to 10) scales that N(0, 1) noise for this request instead of the server's
`--noise-scale` (see `/info`, `model.noise_scale`); 1 is EIR's imputation.

A diffusion model (`/info`: `model.sampling`) samples each item from noise, as EIR does (an
array given for the output's own input is not used); `?steps=`, `?sampler=` (ddpm, ddim,
dpm_solver), `?eta=` and `?guidance_scale=` override the bundle's defaults for this request, and
`?seed=N` makes the sample reproducible: the same seed and parameters give the same array,
whatever else the server is sampling at the time.

Answer: `{"result": [{"<output>": "<base64 of raw float32 bytes>"}, ...]}` in request order,
un-normalized (pixel scale). Every problem is a 4xx with
`{"error": {"code", "message", "details": [{"item", "field", "message"}]}}`."""

ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorResponse, "description": "bad input: the message and details name the item and field"},
    413: {"model": ErrorResponse, "description": "body or item count too large"},
    503: {"model": ErrorResponse, "description": "queue full or not ready"},
    504: {"model": ErrorResponse, "description": "timeout"},
}


def build_router(example: list[dict[str, Any]] | None) -> APIRouter:
    """The routes, with ``example`` (a request the default model accepts) shown in /docs."""
    r = APIRouter(tags=["eir"], route_class=JsonBodyRoute)
    examples = {"this model": {"summary": "zeros / the first category of every input", "value": example}}
    if example is None:  # no bundle yet (a run folder waiting for its first checkpoint)
        examples = {}

    @r.post(
        "/predict",
        description=PREDICT_DOC,
        responses=ERRORS,
        dependencies=[Depends(require_api_key)],
        response_model=PredictResponse,
    )
    async def predict(
        items: Annotated[PredictRequest, Body(openapi_examples=examples or None)],
        service: ServiceDep,
        request: Request,
        seed: Annotated[int | None, Query(ge=0, le=2**62, description="noise seed")] = None,
        noise_scale: Annotated[
            float | None,
            Query(
                ge=0,
                le=MAX_NOISE_SCALE,
                allow_inf_nan=False,
                description="scale of the noise of left-out inputs (absent: the server's, see /info)",
            ),
        ] = None,
        steps: Annotated[int | None, Query(description="diffusion: sampler steps (default and bound: /info)")] = None,
        sampler: Annotated[str | None, Query(description=f"diffusion: one of {', '.join(SAMPLERS)}")] = None,
        eta: Annotated[float | None, Query(description="diffusion: DDIM noise, 0 to 1")] = None,
        guidance_scale: Annotated[
            float | None, Query(description="diffusion: classifier-free guidance scale (1: none)")
        ] = None,
    ) -> Response:
        try:
            sampling = service.sampling_params(steps, sampler, eta, guidance_scale)
        except InputError as e:
            raise item_error(None, e.field, e.message) from None
        decoded = service.decode_items(items.root)
        gone = client_gone(request) if service.diffusion is not None else None
        return service.encode(await service.run(decoded, seed, noise_scale, sampling, gone))

    @r.get("/info", description="Inputs and outputs: type, shape, dtype; categories of tabular inputs.")
    async def info(service: ServiceDep) -> InfoResponse:
        return service.info()

    return r
