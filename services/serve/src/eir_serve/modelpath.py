"""Turn what the user passed to --model-path into one bundle file, with a clear error."""

from __future__ import annotations

import re
from pathlib import Path

from eir_core.errors import BundleError

_SCORE = re.compile(r"_checkpoint_(\d+)_perf-average=(-?[0-9.]+)\.safetensors$")


def resolve_model_path(path: Path) -> Path:
    """A bundle file as is; a run folder (or its saved_models/) -> its best checkpoint."""
    if path.is_file():
        if path.suffix == ".pt":
            raise BundleError(
                f"{path}: an EIR .pt checkpoint (pickle) is not loaded here; retrain with eirtrain and pass "
                "its saved_models/*.safetensors or the run folder"
            )
        return path
    if path.is_dir():
        folder = path / "saved_models" if (path / "saved_models").is_dir() else path
        found = []
        for p in folder.glob("*.safetensors"):
            m = _SCORE.search(p.name)
            if m:
                found.append((float(m.group(2)), int(m.group(1)), p))
        if not found:
            raise BundleError(
                f"{path}: no checkpoint (*_checkpoint_<iter>_perf-average=<x>.safetensors) found; "
                "pass a bundle file or a run folder written by eirtrain"
            )
        return max(found)[2]
    raise BundleError(f"{path}: no such file or folder; pass a .safetensors bundle or an eirtrain run folder")
