"""Capture the outputs of chosen modules on the validation set (``latent_sampling``).

Saved per validation under ``latents/latent_outputs/<iter>/<layer>/`` as numpy structured
arrays (fields ``Latent`` float64 and ``ID``), in chunks of ``batch_size_for_saving`` rows.
"""

from __future__ import annotations

from eir_core import _require_torch  # noqa: F401  (first: without PyTorch, an error naming the extra)

# isort: split
import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from eir_core.config.schema import LatentSamplingConfig
from eir_core.errors import ConfigError


class LatentRecorder:
    def __init__(
        self, model: nn.Module, cfg: LatentSamplingConfig | None, run_dir: Path, record: Callable[[Path], None]
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.record = record  # the run's journal of the files it writes (RunFolder.record)
        self.modules: dict[str, nn.Module] = {}
        self.buffers: dict[str, list[np.ndarray]] = {}
        self.ids: list[str] = []
        self.handles: list[Any] = []
        self.last: dict[str, tuple[np.ndarray, list[str]]] = {}
        if cfg is None:
            return
        named = dict(model.named_modules())
        for layer in cfg.layers_to_sample:
            if layer not in named:
                near = difflib.get_close_matches(layer, list(named), n=5, cutoff=0.5)
                raise ConfigError(
                    f"globals: latent_sampling.layers_to_sample: no module named {layer!r}; "
                    f"nearest names: {', '.join(near) or '(none)'}"
                )
            self.modules[layer] = named[layer]

    @property
    def limit(self) -> int:
        return int(self.cfg.max_samples_for_viz or 10**12) if self.cfg else 0

    def start(self) -> None:
        if not self.modules:
            return
        self.buffers = {k: [] for k in self.modules}
        self.ids = []

        def hook(name: str) -> Any:
            def fn(module: nn.Module, args: Any, output: torch.Tensor) -> None:
                if sum(len(b) for b in self.buffers[name]) < self.limit:
                    self.buffers[name].append(output.detach().float().cpu().numpy())

            return fn

        self.handles = [m.register_forward_hook(hook(n)) for n, m in self.modules.items()]

    def collect(self, ids: list[str]) -> None:
        if self.modules and len(self.ids) < self.limit:
            self.ids.extend(ids)

    def stop(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def save(self, iteration: int) -> None:
        if not self.modules or self.cfg is None:
            return
        n = min(len(self.ids), self.limit)
        ids = self.ids[:n]
        for name, chunks in self.buffers.items():
            latent = np.concatenate(chunks)[:n].reshape(n, -1).astype(np.float64)
            out = self.run_dir / "latents" / "latent_outputs" / str(iteration) / name
            out.mkdir(parents=True, exist_ok=True)
            width = max((len(i) for i in ids), default=1)
            dtype = np.dtype([("Latent", np.float64, (latent.shape[1],)), ("ID", f"<U{width}")])
            step = self.cfg.batch_size_for_saving
            for k, s in enumerate(range(0, n, step)):
                rec = np.empty(min(step, n - s), dtype=dtype)
                rec["Latent"] = latent[s : s + step]
                rec["ID"] = ids[s : s + step]
                self.record(out / f"batch_{k:05d}.npy")
                np.save(out / f"batch_{k:05d}.npy", rec, allow_pickle=False)
            self.last[name] = (latent, ids)
