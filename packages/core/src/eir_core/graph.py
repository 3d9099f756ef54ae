"""An inference graph of a model: the eager module traced and frozen with TorchScript.

The tutorial models are many small layers (about 90 module calls per forward pass), so at the
batch sizes a server sees, Python's per-call overhead is most of the time on a CPU. Tracing the
module once and freezing it (weights folded in as constants, then TorchScript's inference
passes) runs the same operations without that overhead: about half the time per pass for the
8x8 model at batch 1 (``benchmarks/serve_load.py`` prints both).

The trace is checked against the eager module on batches of other sizes before it is used; any
failure (an operation that cannot be traced, a difference past the tolerance, a PyTorch without
TorchScript) keeps the eager module and says why. TorchScript is deprecated in recent PyTorch
releases but still shipped; when it goes, this falls back to eager by the same path.
"""

from __future__ import annotations

from eir_core import _require_torch  # noqa: F401  (first: without PyTorch, an error naming the extra)

# isort: split
import logging
import warnings
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger("eir_core.graph")

# The traced module must reproduce the eager one this closely, relative to the output's scale.
RTOL = 1e-4


SEP = "\x1f"  # joins an input's name and a part's ("mnist_label" + "cat") in the flat batch


def flatten(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """``{"img": T, "label": {"cat": C, "con": X}}`` -> ``{"img": T, "label<SEP>cat": C, ...}``:
    TorchScript takes a dict of tensors, not a dict of tensors and dicts."""
    flat: dict[str, torch.Tensor] = {}
    for name, value in batch.items():
        if isinstance(value, dict):
            flat.update({f"{name}{SEP}{part}": t for part, t in value.items()})
        else:
            flat[name] = value
    return flat


class _FromFlat(torch.nn.Module):
    """The model, called with a flat batch (rebuilt into the nested one while tracing)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, flat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch: dict[str, Any] = {}
        for key, t in flat.items():
            name, _, part = key.partition(SEP)
            if part:
                batch.setdefault(name, {})[part] = t
            else:
                batch[name] = t
        out: dict[str, torch.Tensor] = self.model(batch)
        return out


class TracedGraph:
    """Called like the model (nested batch in, dict of outputs out), runs the frozen graph."""

    def __init__(self, script: torch.nn.Module) -> None:
        self.script = script

    def __call__(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = self.script(flatten(batch))
        return out


def _max_rel_diff(eager: dict[str, torch.Tensor], traced: dict[str, torch.Tensor]) -> float:
    worst = 0.0
    for name, a in eager.items():
        b = traced[name]
        if a.shape != b.shape:
            return float("inf")
        scale = float(a.abs().max()) + 1e-6
        worst = max(worst, float((a - b).abs().max()) / scale)
    return worst


def trace_for_inference(
    model: torch.nn.Module, make_batch: Callable[[int], Any], trace_size: int = 2, check_sizes: tuple[int, ...] = (1, 5)
) -> tuple[TracedGraph | None, str]:
    """``(graph, "")`` with a frozen TorchScript graph of ``model`` (in eval mode), or
    ``(None, reason)`` when it cannot be used. ``make_batch(n)`` builds a model input of ``n``
    items; the trace uses ``trace_size`` items and is checked on each of ``check_sizes``."""
    model.eval()
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation notices and tracer hints
            traced = torch.jit.trace(  # type: ignore[no-untyped-call]  # torch.jit.trace is unannotated
                _FromFlat(model), (flatten(make_batch(trace_size)),), strict=False, check_trace=False
            )
            frozen = torch.jit.freeze(traced.eval())
            device = next(model.parameters()).device
            graph = TracedGraph(torch.jit.optimize_for_inference(frozen) if device.type == "cpu" else frozen)
            for n in check_sizes:
                batch = make_batch(n)
                diff = _max_rel_diff(model(batch), graph(batch))
                if not diff <= RTOL:
                    return None, f"the traced graph differs from the model by {diff:.2g} (relative) at batch {n}"
    except Exception as e:  # anything TorchScript cannot do: keep the eager module
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return None, f"{type(e).__name__}: {first[:200]}"
    return graph, ""
