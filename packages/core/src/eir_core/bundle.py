"""The servable bundle: one ``.safetensors`` file with weights, statistics and a manifest.

* tensors: ``model.<state_dict key>`` and ``norm.<input|output>.<name>.<mean|std>``;
* header metadata ``eir_manifest``: the :class:`~eir_core.manifest.Manifest` as JSON;
* optionally the model's inference graph in ONNX (``graph.onnx``, uint8 bytes), described by
  the header metadata ``eir_graph`` (:class:`GraphMeta`). ``eirserve`` runs it on ONNX Runtime,
  which neither imports PyTorch nor needs the weights as tensors. Older readers ignore both.

Reading the manifest, the statistics and the graph needs NumPy only; the weights need PyTorch.

Writing is atomic (temporary file in the same folder, fsync, rename). Loading never unpickles:
safetensors holds raw tensors and JSON, and anything unexpected is a :class:`BundleError`.

Every read checks the manifest before anything is allocated from it (``check_manifest``): at
least one input and output, unique names, channel-first shapes of at most ``MAX_ELEMENTS``
elements per item, numeric input dtypes a request can carry, float32 outputs, tabular
vocabularies and statistics that are complete and finite. The statistics tensors are checked
from the file's header (dtype, shape) before they are read, then for finite values.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import SafetensorError, safe_open

from eir_core import __version__
from eir_core._fs import atomic_write_bytes
from eir_core.data.normalization import NormStats
from eir_core.errors import BundleError
from eir_core.manifest import FORMAT, FORMAT_VERSION, ArrayInput, Manifest, check_manifest, checkpoints_in

if TYPE_CHECKING:
    import torch

MANIFEST_KEY = "eir_manifest"
GRAPH_KEY = "graph.onnx"
GRAPH_META_KEY = "eir_graph"
MAX_HEADER_BYTES = 50_000_000


class GraphInput(BaseModel):
    """One input of the ONNX graph: ``name`` in the graph, fed from the item's ``input`` (an
    array input) or from one ``part`` ("cat" codes or "con" values) of a tabular input."""

    model_config = ConfigDict(extra="forbid")
    name: str
    input: str
    part: Literal["cat", "con"] | None = None


class GraphMeta(BaseModel):
    """What the bundle's ONNX graph takes and gives, and how it was checked when exported."""

    model_config = ConfigDict(extra="ignore")  # a later writer may add fields
    format: Literal["onnx"] = "onnx"
    opset: int
    inputs: list[GraphInput]
    outputs: list[str]  # model output names, in the graph's output order
    max_rel_diff: float  # against the PyTorch module, relative to each output's scale
    checked_batch_sizes: list[int]
    exporter: str


@dataclass(frozen=True)
class Graph:
    onnx: bytes
    meta: GraphMeta


@dataclass(frozen=True)
class Bundle:
    manifest: Manifest
    state_dict: dict[str, torch.Tensor]
    input_stats: dict[str, NormStats]
    output_stats: dict[str, NormStats]


@dataclass(frozen=True)
class ArrayBundle:
    """What serving on ONNX Runtime needs (read without PyTorch): no weights, the graph instead."""

    manifest: Manifest
    input_stats: dict[str, NormStats]
    output_stats: dict[str, NormStats]
    graph: Graph


def _stats_tensors(prefix: str, stats: dict[str, NormStats]) -> dict[str, torch.Tensor]:
    import torch

    out = {}
    for name, s in stats.items():
        out[f"{prefix}.{name}.mean"] = torch.tensor(np.asarray(s.mean, np.float32))
        out[f"{prefix}.{name}.std"] = torch.tensor(np.asarray(s.std, np.float32))
    return out


def bundle_bytes(
    manifest: Manifest,
    state_dict: dict[str, torch.Tensor],
    input_stats: dict[str, NormStats],
    output_stats: dict[str, NormStats],
    graph: Graph | None = None,
) -> bytes:
    import torch
    from safetensors.torch import save as st_save

    stamped = manifest.model_copy(
        update={"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__}
    )
    tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    tensors.update(_stats_tensors("norm.input", input_stats))
    tensors.update(_stats_tensors("norm.output", output_stats))
    metadata = {MANIFEST_KEY: stamped.model_dump_json()}
    if graph is not None:
        tensors[GRAPH_KEY] = torch.frombuffer(bytearray(graph.onnx), dtype=torch.uint8)
        metadata[GRAPH_META_KEY] = graph.meta.model_dump_json()
    return st_save(tensors, metadata=metadata)


def save_bundle(
    path: Path,
    manifest: Manifest,
    state_dict: dict[str, torch.Tensor],
    input_stats: dict[str, NormStats],
    output_stats: dict[str, NormStats],
    graph: Graph | None = None,
) -> None:
    atomic_write_bytes(path, bundle_bytes(manifest, state_dict, input_stats, output_stats, graph))


def resolve_bundle_path(path: Path) -> Path:
    """What a user passes for a model: a bundle file as is; a run folder (or its
    ``saved_models/``) -> its best checkpoint (highest perf-average, then latest)."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".pt":
            raise BundleError(
                f"{path}: an EIR .pt checkpoint (pickle) is not loaded here; retrain with eirtrain and pass "
                "its saved_models/*.safetensors or the run folder"
            )
        return path
    if path.is_dir():
        folder = path / "saved_models" if (path / "saved_models").is_dir() else path
        found = checkpoints_in(folder)
        if not found:
            raise BundleError(
                f"{path}: no checkpoint (*_checkpoint_<iter>_perf-average=<x>.safetensors) found; "
                "pass a bundle file or a run folder written by eirtrain"
            )
        return max(found)[2]
    raise BundleError(f"{path}: no such file or folder; pass a .safetensors bundle or an eirtrain run folder")


def _check_header(path: Path) -> None:
    with path.open("rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise BundleError(f"{path}: too short to be a bundle ({len(head)} bytes)")
    n = int.from_bytes(head, "little")
    if n > MAX_HEADER_BYTES or n > path.stat().st_size - 8:
        raise BundleError(
            f"{path}: not a safetensors bundle (header length {n} is impossible for a "
            f"{path.stat().st_size}-byte file). Pass a .safetensors file written by eirtrain"
        )


def read_manifest(path: Path) -> Manifest:
    """The manifest alone (cheap: reads only the header)."""
    return _open(path)[0]


def has_graph(path: Path) -> bool:
    """Whether the bundle carries an ONNX graph (reads only the header)."""
    return GRAPH_KEY in _open(path)[1]


def _parse_manifest(path: Path, text: str) -> Manifest:
    try:
        raw: Any = json.loads(text)
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: the manifest is not valid JSON ({e})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BundleError(f"{path}: the manifest is not an {FORMAT} manifest")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {version!r}, this eir-core {__version__} reads "
            f"version {FORMAT_VERSION}; retrain or use a matching eir-core"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise BundleError(
            f"{path}: the manifest is invalid at {where}: {first['msg']} ({e.error_count()} problem(s))"
        ) from None


def _open(path: Path) -> tuple[Manifest, list[str], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        hint = "; for a run folder pass the folder itself" if path.suffix == ".safetensors" else ""
        raise BundleError(f"{path}: no such bundle file{hint}")
    _check_header(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"{path}: not a readable safetensors bundle ({e})") from None
    if MANIFEST_KEY not in meta:
        raise BundleError(
            f"{path}: a safetensors file without an EIR manifest; pass a bundle written by eirtrain "
            "(saved_models/*.safetensors)"
        )
    manifest = _parse_manifest(path, meta[MANIFEST_KEY])
    check_manifest(path, manifest)
    return manifest, keys, meta


def stats_keys(manifest: Manifest) -> dict[str, tuple[int, ...]]:
    """Each statistics tensor a bundle must hold, with the shape of its entry."""
    keys: dict[str, tuple[int, ...]] = {}
    shapes = [("norm.input", e.name, e.shape) for e in manifest.inputs if isinstance(e, ArrayInput)]
    shapes += [("norm.output", o.name, o.shape) for o in manifest.outputs]
    for prefix, name, shape in shapes:
        keys[f"{prefix}.{name}.mean"] = keys[f"{prefix}.{name}.std"] = tuple(shape)
    return keys


def check_stats_header(path: Path, manifest: Manifest, shapes: dict[str, tuple[str, list[int]]]) -> None:
    """The statistics tensors' dtypes and shapes, as the file's header declares them, before any
    is read: float32, (C, 1, 1) or the entry's (C, H, W)."""
    for key, entry in stats_keys(manifest).items():
        if key not in shapes:
            raise BundleError(f"{path}: tensor {key}: missing (normalization statistics)")
        dtype, shape = shapes[key]
        if dtype != "F32" or tuple(shape) not in ((entry[0], 1, 1), entry):
            raise BundleError(
                f"{path}: tensor {key}: {dtype} {shape}, expected F32 {[entry[0], 1, 1]} or {list(entry)}"
            )


def _header_shapes(f: Any, keys: list[str]) -> dict[str, tuple[str, list[int]]]:
    out = {}
    for k in keys:
        s = f.get_slice(k)
        out[k] = (str(s.get_dtype()), list(s.get_shape()))
    return out


def _stats(
    path: Path, manifest: Manifest, get: Callable[[str], np.ndarray]
) -> tuple[dict[str, NormStats], dict[str, NormStats]]:
    """The input and output statistics (their shapes checked from the header): finite values,
    no negative spread."""

    def one(prefix: str, name: str, shape: tuple[int, ...], kind: str | None) -> NormStats:
        mean, std = get(f"{prefix}.{name}.mean"), get(f"{prefix}.{name}.std")
        for part, values in (("mean", mean), ("std", std)):
            if not np.isfinite(values).all():
                raise BundleError(f"{path}: tensor {prefix}.{name}.{part}: holds NaN or infinite values")
        if (std < 0).any():
            raise BundleError(f"{path}: tensor {prefix}.{name}.std: holds negative values")
        return NormStats(kind, mean, std)

    ins = {
        e.name: one("norm.input", e.name, e.shape, e.normalization)
        for e in manifest.inputs
        if isinstance(e, ArrayInput)
    }
    outs = {o.name: one("norm.output", o.name, o.shape, o.normalization) for o in manifest.outputs}
    return ins, outs


def load_bundle(path: Path) -> Bundle:
    """Manifest, weights (PyTorch tensors) and statistics; the graph, if any, is not read."""
    manifest, keys, _ = _open(path)
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as f:  # the weights: PyTorch tensors
            check_stats_header(path, manifest, _header_shapes(f, [k for k in keys if k.startswith("norm.")]))
            for k in keys:
                if k != GRAPH_KEY:
                    tensors[k] = f.get_tensor(k)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise BundleError(f"{path}: tensor data is unreadable or truncated ({e})") from None
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    in_stats, out_stats = _stats(path, manifest, lambda k: tensors[k].numpy())
    return Bundle(manifest=manifest, state_dict=state, input_stats=in_stats, output_stats=out_stats)


def _graph_meta(path: Path, text: str | None) -> GraphMeta:
    if text is None:
        raise BundleError(f"{path}: the bundle has a graph but no {GRAPH_META_KEY!r} metadata describing it")
    try:
        return GraphMeta.model_validate_json(text)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise BundleError(f"{path}: the graph's description is invalid at {where}: {first['msg']}") from None


def load_array_bundle(path: Path) -> ArrayBundle:
    """Manifest, statistics and ONNX graph, without PyTorch. A bundle without a graph is a
    BundleError naming the fix (``eir-bundle add-graph``)."""
    manifest, keys, meta = _open(path)
    if GRAPH_KEY not in keys:
        raise BundleError(
            f"{path}: this bundle has no ONNX graph (written by an older eir-core, or where the onnx "
            "package was missing); add one with `eir-bundle add-graph BUNDLE`, or serve it with --runtime torch"
        )
    graph_meta = _graph_meta(path, meta.get(GRAPH_META_KEY))
    arrays: dict[str, np.ndarray] = {}
    try:
        with safe_open(str(path), framework="numpy") as f:
            check_stats_header(path, manifest, _header_shapes(f, [k for k in keys if k.startswith("norm.")]))
            for k in keys:
                if k == GRAPH_KEY or k.startswith("norm."):
                    arrays[k] = f.get_tensor(k)
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"{path}: tensor data is unreadable or truncated ({e})") from None
    raw = arrays.pop(GRAPH_KEY)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise BundleError(f"{path}: {GRAPH_KEY!r} must be a 1-D uint8 tensor, not {raw.dtype} {list(raw.shape)}")
    in_stats, out_stats = _stats(path, manifest, lambda k: arrays[k])
    return ArrayBundle(manifest, in_stats, out_stats, Graph(raw.tobytes(), graph_meta))
