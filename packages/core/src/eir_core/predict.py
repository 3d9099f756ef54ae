"""Predictor: a bundle on a device; raw inputs in, un-normalized float32 arrays out.

Used by ``eirserve`` and by training's sample generation, so that both generate the same
way: normalize -> impute missing inputs (seeded noise, optionally scaled) -> forward -> un-normalize.
The batch is built in NumPy (``eir_core.inference``), as for the ONNX runtime; here the forward
pass runs the PyTorch module (or its TorchScript graph).
"""

from __future__ import annotations

from eir_core import _require_torch  # noqa: F401  (first: without PyTorch, an error naming the extra)

# isort: split
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eir_core.bundle import Bundle, load_bundle
from eir_core.device import resolve_device
from eir_core.errors import BundleError
from eir_core.graph import trace_for_inference
from eir_core.inference import ArrayBatch, BatchRunner, Item
from eir_core.model.meta import MetaModel

__all__ = ["GRAPHS", "Item", "Predictor"]

GRAPHS = ("eager", "torchscript", "auto")
log = logging.getLogger("eir_core.predict")


def _check_spec(spec: Any, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Build the manifest's network without memory (PyTorch's meta device) and compare its
    parameters with the bundle's weights, before a real one is allocated: a spec that cannot be
    built, or that asks for other (e.g. far larger) tensors than the file holds, is refused."""
    try:
        with torch.device("meta"):
            ghost = MetaModel(spec)
    except Exception as e:  # the spec came from a file: whatever it trips is the bundle's problem
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise BundleError(
            f"{source}: manifest field model_spec: cannot build the network ({type(e).__name__}: {first})"
        ) from None
    want = {k: tuple(v.shape) for k, v in ghost.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state_dict.items()}
    if want != have:
        diff = sorted(set(want.items()) ^ set(have.items()))[:3]
        raise BundleError(
            f"{source}: weights do not match the manifest's model (e.g. {', '.join(f'{k} {list(s)}' for k, s in diff)})"
        )


class Predictor(BatchRunner):
    """``graph``: how the forward pass runs. "eager" is the module itself; "torchscript" traces
    and freezes it (``eir_core.graph``; checked against eager, which stays in use if the check
    fails); "auto" is "torchscript" on the CPU and "eager" elsewhere. ``self.graph`` says which
    one runs."""

    def __init__(
        self, bundle: Bundle, device: str | torch.device = "auto", source: str = "bundle", graph: str = "eager"
    ) -> None:
        if graph not in GRAPHS:
            raise ValueError(f"graph must be one of {', '.join(GRAPHS)}, not {graph!r}")
        super().__init__(bundle.manifest, bundle.input_stats, bundle.output_stats)
        self.spec = bundle.manifest.model_spec
        _check_spec(self.spec, bundle.state_dict, source)
        model = MetaModel(self.spec)
        try:
            model.load_state_dict(bundle.state_dict, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[0:3]
            raise BundleError(f"{source}: weights do not match the manifest's model ({' '.join(first)})") from None
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.model = model.to(self.device).eval()
        self.forward: Callable[[dict[str, Any]], dict[str, torch.Tensor]] = self.model
        self.runtime = "torch"
        self.graph = "eager"
        if graph == "torchscript" or (graph == "auto" and self.device.type == "cpu"):
            dummy = self.manifest.dummy_item()
            traced, why = trace_for_inference(self.model, lambda n: self._batch([dummy] * n, range(n), [1.0] * n))
            if traced is None:
                log.warning("%s: running the model eagerly (TorchScript: %s)", source, why)
            else:
                self.forward, self.graph = traced, "torchscript"

    @classmethod
    def from_path(cls, path: Path | str, device: str = "auto", graph: str = "eager") -> Predictor:
        return cls(load_bundle(Path(path)), device=device, source=str(path), graph=graph)

    def _tensors(self, batch: ArrayBatch) -> dict[str, Any]:
        """A NumPy batch as tensors on the device."""

        def to_device(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a).to(self.device, non_blocking=True)

        return {
            name: {k: to_device(v) for k, v in x.items()} if isinstance(x, dict) else to_device(x)
            for name, x in batch.items()
        }

    def _batch(self, items: Sequence[Item], seeds: Sequence[int], scales: Sequence[float]) -> dict[str, Any]:
        """The model's input for ``items`` as tensors on the device."""
        return self._tensors(self.array_batch(items, seeds, scales))

    @torch.inference_mode()
    def run_batch(self, batch: ArrayBatch) -> dict[str, np.ndarray]:
        return {name: y.float().cpu().numpy() for name, y in self.forward(self._tensors(batch)).items()}
