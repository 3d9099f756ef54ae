"""Open Inference Protocol (KServe V2), JSON form, so KServe and Triton-style clients work.

Array inputs are tensors named as the input, shape ``[N, *shape]``, datatype of the training
dtype (FP32 is accepted too) and ``data`` flat or nested. A tabular column is a BYTES tensor
named ``<input>.<column>`` of shape ``[N]``. Outputs are FP32 tensors ``[N, *shape]``.
``parameters.seed`` seeds the noise of imputed inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request

from eir_serve.auth import require_api_key
from eir_serve.deps import ServiceDep
from eir_serve.errors import ApiError, item_error
from eir_serve.service import ModelService, read_json_body

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])

DTYPES = {
    "|u1": "UINT8",
    "|i1": "INT8",
    "<u2": "UINT16",
    "<i2": "INT16",
    "<i4": "INT32",
    "<i8": "INT64",
    "<f2": "FP16",
    "<f4": "FP32",
    "<f8": "FP64",
    "|b1": "BOOL",
}
NUMPY = {v: np.dtype(k) for k, v in DTYPES.items()}


def _model(service: ModelService, name: str) -> None:
    if name != service.predictor.manifest.get("run_name"):
        raise ApiError(
            404, "not_found", f"no model {name!r}; this server has {service.predictor.manifest.get('run_name')!r}"
        )


@router.get("")
async def server_metadata(request: Request) -> dict[str, Any]:
    from eir_serve import __version__

    return {"name": "eirserve", "version": __version__, "extensions": []}


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
async def v2_ready(request: Request) -> Any:
    from fastapi.responses import JSONResponse

    ok = bool(getattr(request.app.state, "ready", False))
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get("/models/{name}")
async def model_metadata(name: str, service: ServiceDep) -> dict[str, Any]:
    _model(service, name)
    inputs = []
    for n, e in service.inputs.items():
        if e["type"] == "array":
            inputs.append({"name": n, "datatype": DTYPES.get(e["dtype"], "FP32"), "shape": [-1, *e["shape"]]})
        else:
            inputs += [{"name": f"{n}.{c}", "datatype": "BYTES", "shape": [-1]} for c in e["cat_columns"]]
            inputs += [{"name": f"{n}.{c}", "datatype": "FP32", "shape": [-1]} for c in e["con_columns"]]
    outputs = [{"name": n, "datatype": "FP32", "shape": [-1, *e["shape"]]} for n, e in service.outputs.items()]
    return {"name": name, "versions": ["1"], "platform": "pytorch_eir", "inputs": inputs, "outputs": outputs}


@router.get("/models/{name}/ready")
async def model_ready(name: str, service: ServiceDep) -> dict[str, bool]:
    _model(service, name)
    return {"ready": True}


@router.post("/models/{name}/infer", dependencies=[Depends(require_api_key)])
async def infer(name: str, request: Request, service: ServiceDep) -> dict[str, Any]:
    _model(service, name)
    body = await read_json_body(request, service.settings.max_body_bytes)
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise item_error(None, "inputs", "expected an object with a non-empty 'inputs' list of tensors")
    items, n = _items_from_tensors(service, body["inputs"])
    for i, item in enumerate(items):
        service.check(i, item)
    params = body.get("parameters") or {}
    seed = params.get("seed") if isinstance(params, dict) else None
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise item_error(None, "parameters.seed", "expected a non-negative integer")
    results = await service.run(items, seed)
    outputs = []
    for out_name, e in service.outputs.items():
        data = np.stack([r[out_name] for r in results]).astype(np.float32)
        outputs.append(
            {"name": out_name, "datatype": "FP32", "shape": [n, *e["shape"]], "data": data.reshape(-1).tolist()}
        )
    resp: dict[str, Any] = {"model_name": name, "model_version": "1", "outputs": outputs}
    if isinstance(body.get("id"), str):
        resp["id"] = body["id"]
    return resp


def _items_from_tensors(service: ModelService, tensors: list[Any]) -> tuple[list[dict[str, Any]], int]:
    n: int | None = None
    columns: dict[str, dict[str, list[Any]]] = {}
    arrays: dict[str, np.ndarray] = {}
    for k, t in enumerate(tensors):
        field = f"inputs[{k}]"
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise item_error(None, field, "each tensor needs a name, shape, datatype and data")
        tname, shape, dtype, data = t["name"], t.get("shape"), t.get("datatype"), t.get("data")
        if not isinstance(shape, list) or not shape or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise item_error(None, f"{tname}.shape", "expected a list of non-negative integers")
        if n is None:
            n = shape[0]
        elif shape[0] != n:
            raise item_error(None, f"{tname}.shape", f"batch size {shape[0]} differs from {n}")
        base, _, col = tname.partition(".")
        entry = service.inputs.get(base)
        if entry is None:
            raise item_error(None, tname, f"unknown input; inputs are: {', '.join(service.inputs)}")
        flat = np.asarray(data, dtype=object).reshape(-1) if isinstance(data, list) else None
        if flat is None:
            raise item_error(None, f"{tname}.data", "expected a list")
        if entry["type"] == "array":
            want = int(np.prod(shape))
            if shape[1:] != entry["shape"] and int(np.prod(shape[1:])) != int(np.prod(entry["shape"])):
                raise item_error(None, f"{tname}.shape", f"expected [N, {', '.join(map(str, entry['shape']))}]")
            if dtype not in NUMPY:
                raise item_error(None, f"{tname}.datatype", f"unknown datatype {dtype!r}")
            if flat.size != want:
                raise item_error(None, f"{tname}.data", f"expected {want} values for shape {shape}, got {flat.size}")
            try:
                arr = np.asarray(flat.tolist(), dtype=NUMPY[dtype])
            except (TypeError, ValueError, OverflowError):
                raise item_error(None, f"{tname}.data", f"values are not {dtype}") from None
            arrays[base] = arr.reshape(shape[0], *entry["shape"])
        else:
            if col not in [*entry["cat_columns"], *entry["con_columns"]]:
                raise item_error(
                    None,
                    tname,
                    f"name a column as {base}.<column>; columns: "
                    f"{', '.join([*entry['cat_columns'], *entry['con_columns']])}",
                )
            if flat.size != shape[0]:
                raise item_error(None, f"{tname}.data", f"expected {shape[0]} values")
            columns.setdefault(base, {})[col] = flat.tolist()
    assert n is not None
    if n < 1 or n > service.settings.max_items_per_request:
        raise ApiError(
            413 if n else 422,
            "too_many_items" if n else "invalid_input",
            f"batch size {n}; allowed 1..{service.settings.max_items_per_request}",
        )
    items: list[dict[str, Any]] = [{} for _ in range(n)]
    for base, arr in arrays.items():
        for i in range(n):
            items[i][base] = arr[i]
    for base, cols in columns.items():
        for i in range(n):
            items[i][base] = {c: v[i] for c, v in cols.items()}
    return items, n
