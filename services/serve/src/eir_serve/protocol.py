"""The model as the Open Inference Protocol (KServe V2) sees it; shared by HTTP (routes/v2.py)
and gRPC (grpc/server.py), so both check, decode and answer alike.

Tensors: an array input is a tensor named as the input, shape ``[N, *shape]``, datatype of its
training dtype (``UINT8`` for images). A tabular column is a tensor ``<input>.<column>`` of shape
``[N]``: ``BYTES`` for a categorical column, ``FP32`` for a continuous one. Outputs are ``FP32``
``[N, *shape]``. A request must use exactly these datatypes and shapes; anything else is a 400
that names the tensor. Errors are ``ApiError``: 400 bad request, 404 unknown model or version,
413 too many items, 503 not ready or overloaded, 504 timeout.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eir_core.diffusion_sampling import SamplingParams
from eir_core.errors import InputError
from eir_core.manifest import ArrayInput
from eir_serve.errors import ApiError
from eir_serve.service import ModelService
from eir_serve.settings import MAX_NOISE_SCALE

PLATFORM = "pytorch_eir"
EXTENSIONS = ["binary_tensor_data"]
MAX_SEED = 2**62

# Protocol datatype -> numpy dtype (the protocol's raw bytes are little-endian, row-major).
NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("|b1"),
    "UINT8": np.dtype("|u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("|i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPES = [*NUMPY, "BYTES"]
_JSON_TYPES: dict[str, tuple[type, ...]] = {"b": (bool,), "u": (int,), "i": (int,), "f": (int, float)}


def bad(message: str) -> ApiError:
    return ApiError(400, "invalid_input", message)


def datatype_of(dtype: str) -> str:
    """The protocol's name of a manifest dtype such as ``|u1`` or ``<f4``."""
    dt = np.dtype(dtype)
    for name, candidate in NUMPY.items():
        if (candidate.kind, candidate.itemsize) == (dt.kind, dt.itemsize):
            return name
    raise ValueError(f"no protocol datatype for numpy dtype {dtype!r}")


@dataclass(frozen=True)
class TensorSpec:
    """A tensor of the model: ``input``/``column`` say where a request tensor goes."""

    name: str
    datatype: str
    shape: tuple[int, ...]  # without the batch dimension
    input: str = ""
    column: str | None = None

    @property
    def metadata_shape(self) -> list[int]:
        return [-1, *self.shape]


def input_specs(service: ModelService) -> dict[str, TensorSpec]:
    """The model's input tensors (made once per loaded version; callers do not change them)."""
    return _specs(service)[0]


def output_specs(service: ModelService) -> dict[str, TensorSpec]:
    return _specs(service)[1]


def _specs(service: ModelService) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    specs: tuple[dict[str, TensorSpec], dict[str, TensorSpec]] | None = service.protocol_specs
    if specs is None:
        specs = service.protocol_specs = (_input_specs(service), _output_specs(service))
    return specs


def _input_specs(service: ModelService) -> dict[str, TensorSpec]:
    specs: dict[str, TensorSpec] = {}
    for name, e in service.inputs.items():
        if isinstance(e, ArrayInput):
            specs[name] = TensorSpec(name, datatype_of(e.dtype), e.shape, name)
        else:
            for c in e.cat_columns:
                specs[f"{name}.{c}"] = TensorSpec(f"{name}.{c}", "BYTES", (), name, c)
            for c in e.con_columns:
                specs[f"{name}.{c}"] = TensorSpec(f"{name}.{c}", "FP32", (), name, c)
    return specs


def _output_specs(service: ModelService) -> dict[str, TensorSpec]:
    return {n: TensorSpec(n, "FP32", o.shape, n) for n, o in service.outputs.items()}


def registry(state: Any) -> Any:
    """The app's models (repository.Registry); 503 while the server starts."""
    models = getattr(state, "models", None)
    if models is None or not state.ready:
        raise ApiError(503, "not_ready", "the server is loading its models; retry", headers={"Retry-After": "1"})
    return models


def model_service(state: Any, name: str, version: str | None) -> ModelService:
    """The service of model ``name`` at ``version`` (empty or None: its newest; repository.py):
    404 for an unknown model or version, 503 while the server or the model is loading."""
    service: ModelService = registry(state).lookup(name, version)
    return service


def model_versions(state: Any, name: str) -> list[str]:
    return state.models.versions(name)  # type: ignore[no-any-return]


def check_header(specs: dict[str, TensorSpec], name: str, datatype: str, shape: Sequence[int]) -> TensorSpec:
    """The model's tensor for this request tensor, after checking its datatype and shape."""
    spec = specs.get(name)
    if spec is None:
        raise bad(f"input {name!r}: unknown input; this model's inputs are: {', '.join(specs)}")
    if datatype != spec.datatype:
        known = "" if datatype in DATATYPES else " (not a protocol datatype)"
        raise bad(f"input {name!r}: datatype {datatype!r}{known} does not match the model's {spec.datatype}")
    if any(s < 0 for s in shape):
        raise bad(f"input {name!r}: shape {list(shape)} has a negative dimension")
    if len(shape) != 1 + len(spec.shape) or tuple(shape[1:]) != spec.shape:
        want = ", ".join(["N", *map(str, spec.shape)])
        raise bad(f"input {name!r}: shape {list(shape)} does not match the model's [{want}]")
    return spec


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def from_json(spec: TensorSpec, shape: Sequence[int], data: Any) -> np.ndarray:
    """JSON ``data`` (flat or nested, row-major) -> array of ``shape`` in the spec's dtype."""
    if not isinstance(data, list):
        raise bad(f"input {spec.name!r}: 'data' must be a list (or use the binary extension)")
    flat = _flatten(data, spec.name)
    want = element_count(shape)
    if len(flat) != want:
        raise bad(f"input {spec.name!r}: shape {list(shape)} needs {want} values, 'data' has {len(flat)}")
    if spec.datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise bad(f"input {spec.name!r}: BYTES values in JSON are strings")
        return np.array(flat, dtype=object).reshape(shape)
    dt = NUMPY[spec.datatype]
    allowed = _JSON_TYPES[dt.kind]
    if not all(type(v) in allowed for v in flat):  # bool is not an int here, a float is not an integer
        kind = {"b": "true/false", "u": "integers", "i": "integers", "f": "numbers"}[dt.kind]
        raise bad(f"input {spec.name!r}: {spec.datatype} values are {kind}")
    if dt.kind in "ui" and flat:
        info = np.iinfo(dt)
        lo, hi = min(flat), max(flat)
        if lo < info.min or hi > info.max:
            raise bad(f"input {spec.name!r}: values must lie in {info.min}..{info.max} for {spec.datatype}")
    try:
        arr = np.array(flat, dtype=dt)
    except OverflowError:
        raise bad(f"input {spec.name!r}: values do not fit {spec.datatype}") from None
    return _finite(spec, arr.reshape(shape))


def _flatten(data: list[Any], name: str) -> list[Any]:
    if not any(isinstance(v, list) for v in data):
        return data
    out: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:  # iterative: a deeply nested body must not blow the recursion limit
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    if len(out) == 0 and data:
        raise bad(f"input {name!r}: 'data' holds empty lists")
    return out


def from_raw(spec: TensorSpec, shape: Sequence[int], raw: bytes) -> np.ndarray:
    """Raw little-endian bytes (binary extension, gRPC raw_input_contents) -> array of ``shape``."""
    n = element_count(shape)
    if spec.datatype == "BYTES":
        return np.array([_utf8(spec, b) for b in split_bytes(spec.name, raw, n)], dtype=object).reshape(shape)
    dt = NUMPY[spec.datatype]
    if len(raw) != n * dt.itemsize:
        raise bad(
            f"input {spec.name!r}: shape {list(shape)} of {spec.datatype} needs {n * dt.itemsize} bytes, got {len(raw)}"
        )
    return _finite(spec, np.frombuffer(raw, dtype=dt).reshape(shape))


def split_bytes(name: str, raw: bytes, count: int) -> list[bytes]:
    """BYTES elements: each a 4-byte little-endian length, then that many bytes."""
    if count * 4 > len(raw):
        raise bad(f"input {name!r}: {count} BYTES elements need at least {count * 4} bytes, got {len(raw)}")
    out, off = [], 0
    for i in range(count):
        if off + 4 > len(raw):
            raise bad(f"input {name!r}: element {i} has no 4-byte length prefix")
        (size,) = struct.unpack_from("<I", raw, off)
        off += 4
        if off + size > len(raw):
            raise bad(f"input {name!r}: element {i} declares {size} bytes, only {len(raw) - off} remain")
        out.append(raw[off : off + size])
        off += size
    if off != len(raw):
        raise bad(f"input {name!r}: {len(raw) - off} bytes left over after {count} BYTES elements")
    return out


def join_bytes(values: Sequence[bytes | str]) -> bytes:
    """The inverse of ``split_bytes`` (str values are UTF-8 encoded)."""
    parts = []
    for v in values:
        b = v.encode() if isinstance(v, str) else bytes(v)
        parts += [struct.pack("<I", len(b)), b]
    return b"".join(parts)


def to_raw(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return join_bytes(list(arr.reshape(-1)))
    return np.ascontiguousarray(arr, dtype=NUMPY[datatype]).tobytes()


def _utf8(spec: TensorSpec, b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        raise bad(f"input {spec.name!r}: a BYTES element is not UTF-8 text") from None


def _finite(spec: TensorSpec, arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise bad(f"input {spec.name!r}: contains NaN or infinite values")
    return arr


def batch_size(service: ModelService, shapes: dict[str, Sequence[int]]) -> int:
    sizes = {name: shape[0] for name, shape in shapes.items()}
    n = next(iter(sizes.values()))
    for name, s in sizes.items():
        if s != n:
            raise bad(f"input {name!r}: batch size {s} differs from {n} of input {next(iter(sizes))!r}")
    limit = service.settings.max_items_per_request
    if n > limit:
        raise ApiError(413, "too_many_items", f"batch size {n} is over the limit of {limit} items per request")
    if n < 1:
        raise bad("batch size 0: send at least one item")
    return n


Decode = Callable[[TensorSpec, Sequence[int], Any], np.ndarray]


@dataclass(frozen=True)
class RequestTensor:
    """A request's input tensor from either transport: ``decode(spec, shape, payload)`` makes its array
    (``from_json`` for JSON data, ``from_raw`` for bytes, the gRPC servicer's ``from_contents``)."""

    name: str
    datatype: str
    shape: Sequence[int]
    payload: Any
    decode: Decode


def decode_inputs(service: ModelService, tensors: Sequence[RequestTensor]) -> list[dict[str, Any]]:
    """Checked items from request tensors: names, datatypes and shapes first (cheap), then data."""
    if not tensors:
        raise bad("'inputs' is empty: send at least one tensor")
    specs = input_specs(service)
    checked: dict[str, tuple[TensorSpec, RequestTensor]] = {}
    for t in tensors:
        if t.name in checked:
            raise bad(f"input {t.name!r} is given twice")
        checked[t.name] = (check_header(specs, t.name, t.datatype, t.shape), t)
    n = batch_size(service, {name: t.shape for name, (_, t) in checked.items()})
    arrays = {name: t.decode(spec, t.shape, t.payload) for name, (spec, t) in checked.items()}
    return items_from_tensors(service, specs, arrays, n)


def items_from_tensors(
    service: ModelService, specs: dict[str, TensorSpec], arrays: dict[str, np.ndarray], n: int
) -> list[dict[str, Any]]:
    """Per-item EIR payloads (what /predict decodes to), checked by the predictor like /predict's."""
    items: list[dict[str, Any]] = [{} for _ in range(n)]
    for name, arr in arrays.items():
        spec = specs[name]
        if spec.column is None:
            for i in range(n):
                items[i][spec.input] = arr[i]
        else:
            values = [str(v) for v in arr] if spec.datatype == "BYTES" else [float(v) for v in arr]
            for i in range(n):
                items[i].setdefault(spec.input, {})[spec.column] = values[i]
    for i, item in enumerate(items):
        try:
            service.check(i, item)
        except ApiError as e:
            raise bad(e.message) from None
    return items


def parse_seed(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise bad(f"parameter 'seed': expected an integer in 0..{MAX_SEED}, got {value!r}")
    return value


def parse_noise_scale(value: Any) -> float | None:
    """The request parameter ``noise_scale`` (absent: the server's ``--noise-scale``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_NOISE_SCALE:
        raise bad(f"parameter 'noise_scale': expected a number in 0..{MAX_NOISE_SCALE:g}, got {value!r}")
    return float(value)


SAMPLING_PARAMETERS = ("steps", "sampler", "eta", "guidance_scale")


def parse_sampling(service: ModelService, get: Callable[[str], Any]) -> SamplingParams | None:
    """A diffusion model's request parameters ``steps``, ``sampler``, ``eta``, ``guidance_scale``
    (absent: the bundle's defaults), checked; a 400 names the parameter."""
    values = {k: get(k) for k in SAMPLING_PARAMETERS}
    try:
        return service.sampling_params(**values)
    except InputError as e:
        raise bad(f"parameter '{e.field}': {e.message}") from None


def requested_outputs(service: ModelService, names: Sequence[str]) -> list[TensorSpec]:
    specs = output_specs(service)
    if not names:
        return list(specs.values())
    for name in names:
        if name not in specs:
            raise bad(f"output {name!r}: unknown output; this model's outputs are: {', '.join(specs)}")
    if len(set(names)) != len(names):
        raise bad("an output is requested twice")
    return [specs[n] for n in names]


async def infer(
    service: ModelService,
    items: list[dict[str, Any]],
    seed: int | None,
    outputs: list[TensorSpec],
    noise_scale: float | None = None,
    sampling: SamplingParams | None = None,
    disconnected: Any = None,
) -> dict[str, np.ndarray]:
    """Run the items through the shared batcher (a diffusion model: its step loop); each requested
    output as FP32 ``[N, *shape]``."""
    results = await service.run(items, seed, noise_scale, sampling, disconnected)
    return {o.name: np.stack([r[o.name] for r in results]).astype(np.float32, copy=False) for o in outputs}
