"""The servable bundle: one ``.safetensors`` file with weights, statistics and a manifest.

* tensors: ``model.<state_dict key>`` and ``norm.<input|output>.<name>.<mean|std>``;
* header metadata ``eir_manifest``: JSON with the format version, package version, the
  model spec, resolved configs, inputs/outputs (shape, dtype, categories) and a training
  summary.

Writing is atomic (temporary file in the same folder, fsync, rename). Loading never unpickles:
safetensors holds raw tensors and JSON, and anything unexpected is a :class:`BundleError`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from eir_core import __version__
from eir_core.data.normalization import NormStats
from eir_core.errors import BundleError

FORMAT = "eir-bundle"
FORMAT_VERSION = 1
MANIFEST_KEY = "eir_manifest"
MAX_HEADER_BYTES = 50_000_000


@dataclass
class Bundle:
    manifest: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    input_stats: dict[str, NormStats]
    output_stats: dict[str, NormStats]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a server running as another user must read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _stats_tensors(prefix: str, stats: dict[str, NormStats]) -> dict[str, torch.Tensor]:
    out = {}
    for name, s in stats.items():
        out[f"{prefix}.{name}.mean"] = torch.tensor(np.asarray(s.mean, np.float32))
        out[f"{prefix}.{name}.std"] = torch.tensor(np.asarray(s.std, np.float32))
    return out


def bundle_bytes(
    manifest: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    input_stats: dict[str, NormStats],
    output_stats: dict[str, NormStats],
) -> bytes:
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__, **manifest}
    tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    tensors.update(_stats_tensors("norm.input", input_stats))
    tensors.update(_stats_tensors("norm.output", output_stats))
    return st_save(tensors, metadata={MANIFEST_KEY: json.dumps(manifest)})


def save_bundle(
    path: Path,
    manifest: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    input_stats: dict[str, NormStats],
    output_stats: dict[str, NormStats],
) -> None:
    atomic_write_bytes(path, bundle_bytes(manifest, state_dict, input_stats, output_stats))


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


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest alone (cheap: reads only the header)."""
    return _open(path)[0]


def _open(path: Path) -> tuple[dict[str, Any], list[str]]:
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: no such bundle file")
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
    try:
        manifest = json.loads(meta[MANIFEST_KEY])
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: the manifest is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: the manifest is not an {FORMAT} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {version!r}, this eir-core {__version__} reads "
            f"version {FORMAT_VERSION}; retrain or use a matching eir-core"
        )
    return manifest, keys


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

    def stats(prefix: str, entries: list[dict[str, Any]]) -> dict[str, NormStats]:
        out = {}
        for e in entries:
            name = e["name"]
            try:
                mean, std = tensors[f"{prefix}.{name}.mean"], tensors[f"{prefix}.{name}.std"]
            except KeyError:
                raise BundleError(f"{path}: normalization statistics for {name!r} are missing") from None
            c = int(e["shape"][0])
            if mean.shape[0] != c or std.shape != mean.shape:
                raise BundleError(f"{path}: statistics of {name!r} do not match its shape {e['shape']}")
            out[name] = NormStats(e.get("normalization"), mean.numpy(), std.numpy())
        return out

    try:
        arrays_in = [e for e in manifest["inputs"] if e["type"] == "array"]
        in_stats = stats("norm.input", arrays_in)
        out_stats = stats("norm.output", manifest["outputs"])
    except (KeyError, TypeError, IndexError) as e:
        raise BundleError(f"{path}: the manifest lacks a required field ({e})") from None
    return Bundle(manifest=manifest, state_dict=state, input_stats=in_stats, output_stats=out_stats)
