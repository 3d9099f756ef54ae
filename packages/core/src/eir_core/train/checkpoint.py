"""Checkpoints (bundles under ``saved_models/``) and the resume state beside them.

A checkpoint is a full bundle named as EIR names its checkpoints, with the
``.safetensors`` suffix: ``<run>_checkpoint_<iter>_perf-average=<x.xxxx>.safetensors``.
Only the ``n_saved_models`` best-scoring interval checkpoints are kept; the final one is
always written and kept. The resume state (weights, optimizer, schedule, RNG, iteration) is
``resume/state.safetensors``: tensors plus JSON, no pickle, written atomically.
"""

from __future__ import annotations

from eir_core import _require_torch  # noqa: F401  (first: without PyTorch, an error naming the extra)

# isort: split
import json
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from eir_core._fs import atomic_write_bytes
from eir_core.errors import RunFolderError
from eir_core.manifest import checkpoints_in
from eir_core.train.optim import Optimizer

log = logging.getLogger("eir_core.train")


@dataclass
class CheckpointKeeper:
    folder: Path
    run_name: str
    n_keep: int
    owns: Callable[[Path], bool]  # whether the run's journal records writing a file
    removed: Callable[[Path], None]  # records a removal in it
    kept: list[tuple[float, int, Path]] = field(default_factory=list)  # (perf, iter, path)

    def scan(self) -> None:
        """The checkpoints this run wrote (a file copied into ``saved_models/`` is not one)."""
        self.kept = [k for k in checkpoints_in(self.folder) if self.owns(k[2])]

    def is_better(self, perf: float) -> bool:
        if len(self.kept) < self.n_keep:
            return True
        return perf > min(k[0] for k in self.kept)

    def add(self, path: Path, iteration: int, perf: float, protect: bool = False) -> None:
        """Register a written checkpoint and delete those past ``n_keep`` (never ``path``)."""
        self.kept = [k for k in self.kept if k[2] != path]
        self.kept.append((perf, iteration, path))
        ranked = sorted(self.kept, key=lambda k: (k[0], k[1]), reverse=True)
        keep = ranked[: self.n_keep]
        if protect and all(k[2] != path for k in keep):
            keep.append((perf, iteration, path))
        for k in self.kept:
            if k not in keep:
                log.info(
                    "removed older checkpoint %s (n_saved_models=%d keeps the best by perf-average)",
                    k[2].name,
                    self.n_keep,
                )
                k[2].unlink(missing_ok=True)
                self.removed(k[2])
        self.kept = keep


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        for k, v in entry.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def save_resume_state(path: Path, model: torch.nn.Module, optimizer: Optimizer, info: dict[str, Any]) -> None:
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"info": json.dumps(info), "optimizer": json.dumps(opt_meta, default=_json_default)}
    atomic_write_bytes(path, st_save(tensors, metadata=meta))


def _json_default(o: Any) -> Any:
    if isinstance(o, tuple):
        return list(o)
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"cannot store {type(o).__name__} in the resume state")


def _header_metadata(raw: bytes) -> dict[str, str]:
    (header_len,) = struct.unpack("<Q", raw[:8])
    meta: dict[str, str] = json.loads(raw[8 : 8 + header_len]).get("__metadata__") or {}
    return meta


def read_resume_info(path: Path) -> dict[str, Any]:
    """The JSON ``info`` of a resume state (iteration, job id, ...) without loading its tensors;
    an empty dict when the file is not a readable resume state."""
    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {}).get("info", "{}"))
    except (SafetensorError, OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def load_resume_state(
    raw: bytes, model: torch.nn.Module, optimizer: Optimizer, source: str = "resume state"
) -> dict[str, Any]:
    """Restore weights, optimizer and torch RNG from the bytes of ``resume/state.safetensors``."""
    try:
        tensors = st_load(raw)
        meta = _header_metadata(raw)
    except (SafetensorError, struct.error, ValueError) as e:
        raise RunFolderError(f"{source}: unreadable resume state ({e}); use --overwrite to start over") from None
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    except RuntimeError:
        raise RunFolderError(
            f"{source}: the resume state holds a different network than these configs build (e.g. one saved "
            "before eir-lite built EIR 0.25.0's architecture); use --overwrite to start over"
        ) from None
    opt_meta = json.loads(meta["optimizer"])
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for idx, entries in opt_meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entries)
    groups = opt_meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch"])
    info: dict[str, Any] = json.loads(meta["info"])
    return info
