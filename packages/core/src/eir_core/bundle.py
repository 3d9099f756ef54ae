"""The servable bundle: one ``.safetensors`` file with weights, statistics and a manifest.

* tensors: ``model.<state_dict key>`` and ``norm.<input|output>.<name>.<mean|std>``;
* header metadata ``eir_manifest``: the :class:`~eir_core.manifest.Manifest` as JSON.

Writing is atomic (temporary file in the same folder, fsync, rename). Loading never unpickles:
safetensors holds raw tensors and JSON, and anything unexpected is a :class:`BundleError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from eir_core import __version__
from eir_core._fs import atomic_write_bytes
from eir_core.data.normalization import NormStats
from eir_core.errors import BundleError
from eir_core.manifest import FORMAT, FORMAT_VERSION, ArrayInput, Manifest, checkpoints_in

MANIFEST_KEY = "eir_manifest"
MAX_HEADER_BYTES = 50_000_000


@dataclass(frozen=True)
class Bundle:
    manifest: Manifest
    state_dict: dict[str, torch.Tensor]
    input_stats: dict[str, NormStats]
    output_stats: dict[str, NormStats]


def _stats_tensors(prefix: str, stats: dict[str, NormStats]) -> dict[str, torch.Tensor]:
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
) -> bytes:
    stamped = manifest.model_copy(
        update={"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__}
    )
    tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    tensors.update(_stats_tensors("norm.input", input_stats))
    tensors.update(_stats_tensors("norm.output", output_stats))
    return st_save(tensors, metadata={MANIFEST_KEY: stamped.model_dump_json()})


def save_bundle(
    path: Path,
    manifest: Manifest,
    state_dict: dict[str, torch.Tensor],
    input_stats: dict[str, NormStats],
    output_stats: dict[str, NormStats],
) -> None:
    atomic_write_bytes(path, bundle_bytes(manifest, state_dict, input_stats, output_stats))


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


def _open(path: Path) -> tuple[Manifest, list[str]]:
    path = Path(path)
    if not path.is_file():
        hint = "; for a run folder pass the folder itself" if path.suffix == ".safetensors" else ""
        raise BundleError(f"{path}: no such bundle file{hint}")
    _check_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"{path}: not a readable safetensors bundle ({e})") from None
    if MANIFEST_KEY not in meta:
        raise BundleError(
            f"{path}: a safetensors file without an EIR manifest; pass a bundle written by eirtrain "
            "(saved_models/*.safetensors)"
        )
    return _parse_manifest(path, meta[MANIFEST_KEY]), keys


def load_bundle(path: Path) -> Bundle:
    manifest, keys = _open(path)
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for k in keys:
                tensors[k] = f.get_tensor(k)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise BundleError(f"{path}: tensor data is unreadable or truncated ({e})") from None
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}

    def stats(prefix: str, name: str, shape: tuple[int, ...], kind: str | None) -> NormStats:
        try:
            mean, std = tensors[f"{prefix}.{name}.mean"], tensors[f"{prefix}.{name}.std"]
        except KeyError:
            raise BundleError(f"{path}: normalization statistics for {name!r} are missing") from None
        if mean.shape[0] != shape[0] or std.shape != mean.shape:
            raise BundleError(f"{path}: statistics of {name!r} do not match its shape {list(shape)}")
        return NormStats(kind, mean.numpy(), std.numpy())

    in_stats = {
        e.name: stats("norm.input", e.name, e.shape, e.normalization)
        for e in manifest.inputs
        if isinstance(e, ArrayInput)
    }
    out_stats = {o.name: stats("norm.output", o.name, o.shape, o.normalization) for o in manifest.outputs}
    return Bundle(manifest=manifest, state_dict=state, input_stats=in_stats, output_stats=out_stats)
