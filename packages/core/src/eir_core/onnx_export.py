"""Export a bundle's model to ONNX, checked against the PyTorch module, for ``eirserve``'s
ONNX Runtime path (no PyTorch import at serving: start-up and memory of a process that only
has to run a small graph).

The export is PyTorch's TorchScript-based exporter at opset 17, with the batch axis dynamic.
``nn.RMSNorm`` has no symbolic in that exporter, so for the export only each one is replaced
by the same arithmetic written out (``x * rsqrt(mean(x²) + eps) * weight``). The graph is then
run on ONNX Runtime at several batch sizes, on the dummy item and on random items, and must
match the module to ``RTOL`` (relative to each output's scale); otherwise there is no graph,
and the reason is returned. Needs the ``onnx`` and ``onnxruntime`` packages (the ``train``
extra); without them there is no graph either, and serving uses PyTorch.
"""

from __future__ import annotations

from eir_core import _require_torch  # noqa: F401  (first: without PyTorch, an error naming the extra)

# isort: split
import contextlib
import copy
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from eir_core._fs import atomic_write_bytes
from eir_core.bundle import GRAPH_KEY, Bundle, Graph, GraphInput, GraphMeta, bundle_bytes, load_bundle
from eir_core.errors import BundleError
from eir_core.inference import ArrayBatch, ItemModel
from eir_core.model.spec import timestep_key
from eir_core.onnx_runtime import flat_arrays

log = logging.getLogger("eir_core.onnx")

OPSET = 17
RTOL = 1e-4
CHECK_SIZES = (1, 5, 17)


class _RMSNorm(nn.Module):
    """``nn.RMSNorm`` over the last dimension, in exportable operations."""

    def __init__(self, norm: nn.RMSNorm) -> None:
        super().__init__()
        if len(norm.normalized_shape) != 1:
            raise ValueError(f"RMSNorm over {len(norm.normalized_shape)} dimensions is not exported")
        self.weight = norm.weight
        self.eps = norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        return y * self.weight if self.weight is not None else y


def _exportable(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model).eval()
    for module in list(twin.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.RMSNorm):
                setattr(module, name, _RMSNorm(child))
    return twin


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter prints the whole graph to stdout or stderr when it fails; the reason is
    returned instead, so both are silenced for its duration (at the file-descriptor level,
    where its C++ side writes)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def graph_inputs(items: ItemModel) -> list[GraphInput]:
    """The graph's inputs, in order: each array input, then each tabular input's parts."""
    out: list[GraphInput] = []
    for name, entry in items.inputs.items():
        if entry.type == "array":
            out.append(GraphInput(name=f"in{len(out)}", input=name))
        else:
            for part in ("cat", "con"):
                out.append(GraphInput(name=f"in{len(out)}", input=name, part=part))
    for name in items.manifest.diffusion_outputs:  # the timestep of each diffusion output
        out.append(GraphInput(name=f"in{len(out)}", input=timestep_key(name)))
    return out


class _Positional(nn.Module):
    """The model called with the graph's inputs, positionally; outputs in ``names`` order."""

    def __init__(self, model: nn.Module, inputs: list[GraphInput], names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.inputs = inputs
        self.names = names

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch: dict[str, Any] = {}
        for g, x in zip(self.inputs, xs, strict=True):
            if g.part is None:
                batch[g.input] = x
            else:
                batch.setdefault(g.input, {})[g.part] = x
        out = self.model(batch)
        return tuple(out[n] for n in self.names)


def _random_items(items: ItemModel, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Items with random arrays and categories (and left-out optional inputs), for the check."""
    out = []
    for i in range(n):
        item: dict[str, Any] = {}
        for name, entry in items.inputs.items():
            if name in items.optional_inputs and i % 3 == 2:
                continue  # imputed
            if entry.type == "array":
                item[name] = rng.integers(0, 256, entry.shape).astype(np.float32)
            else:
                enc = items.encodings[name]
                item[name] = {
                    c: str(rng.choice([v for v in enc.categories[c] if v != "__NULL__"])) for c in enc.cat_columns
                }
                item[name].update({c: float(rng.normal()) for c in enc.con_columns})
        out.append(item)
    return out


def export_graph(model: nn.Module, items: ItemModel) -> tuple[Graph | None, str]:
    """``(graph, "")``, or ``(None, why)`` when the model cannot be exported or the graph does
    not match it. ``model`` is on any device (the export runs on a CPU copy) and is left in the
    mode it was in."""
    training = model.training
    try:
        return _export(model, items)
    finally:
        model.train(training)


def _export(model: nn.Module, items: ItemModel) -> tuple[Graph | None, str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "onnxruntime is not installed (pip install 'eir-core[train]')"
    names = list(items.outputs)
    inputs = graph_inputs(items)
    cpu = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).to("cpu")
    cpu.eval()
    torch_in = items.array_batch([items.manifest.dummy_item()] * 2, [0, 1], [1.0, 1.0])

    def tensors(batch: ArrayBatch) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(a) for a in flat_arrays(batch, inputs).values())

    try:
        wrapped = _Positional(_exportable(cpu), inputs, names).eval()
        axes = {g.name: {0: "batch"} for g in inputs} | {f"out{k}": {0: "batch"} for k in range(len(names))}
        # Not under no_grad: there, nn.MultiheadAttention in eval mode takes its fused fast path,
        # which has no ONNX symbolic; with autograd on, it is traced as ordinary operations.
        with (
            tempfile.TemporaryDirectory(prefix="eir-onnx-") as tmp,
            torch.inference_mode(False),
            torch.enable_grad(),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")  # the exporter's deprecation notices
            target = Path(tmp) / "model.onnx"
            with _quiet():
                torch.onnx.export(
                    wrapped,
                    tensors(torch_in),
                    target,
                    input_names=[g.name for g in inputs],
                    output_names=[f"out{k}" for k in range(len(names))],
                    dynamic_axes=axes,
                    opset_version=OPSET,
                    dynamo=False,
                )
            onnx_bytes = target.read_bytes()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
        fed = {i.name for i in session.get_inputs()}
    except Exception as e:  # anything the exporter or the runtime refuses: no graph, and why
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return None, f"{type(e).__name__}: {first[:200]}"
    rng = np.random.default_rng(0)
    worst = 0.0
    with torch.no_grad():
        for n in CHECK_SIZES:
            for batch_items in ([items.manifest.dummy_item()] * n, _random_items(items, n, rng)):
                batch = items.array_batch(batch_items, list(range(n)), [1.0] * n)
                want = _Positional(cpu, inputs, names)(*tensors(batch))
                got = session.run(None, flat_arrays(batch, [g for g in inputs if g.name in fed]))
                for a, b in zip(want, got, strict=True):
                    a_np = a.numpy()
                    if a_np.shape != b.shape:
                        return (
                            None,
                            f"the graph's output has shape {list(b.shape)} at batch {n}, not {list(a_np.shape)}",
                        )
                    diff = float(np.abs(a_np - b).max()) / (float(np.abs(a_np).max()) + 1e-6)
                    worst = max(worst, diff)
                    if not diff <= RTOL:
                        return None, f"the graph differs from the model by {diff:.2g} (relative) at batch {n}"
    meta = GraphMeta(
        opset=OPSET,
        inputs=[g for g in inputs if g.name in fed],  # the exporter drops inputs the model does not read
        outputs=names,
        max_rel_diff=worst,
        checked_batch_sizes=list(CHECK_SIZES),
        exporter=f"torch {torch.__version__}, checked on onnxruntime {ort.__version__}",
    )
    return Graph(onnx_bytes, meta), ""


def bundle_graph(bundle: Bundle, model: nn.Module | None = None) -> tuple[Graph | None, str]:
    """The graph of a bundle's model (``model`` when given: the same weights, already built)."""
    if model is None:
        from eir_core.model.meta import MetaModel

        model = MetaModel(bundle.manifest.model_spec)
        model.load_state_dict(bundle.state_dict, strict=True)
    return export_graph(model, ItemModel(bundle.manifest, bundle.input_stats, bundle.output_stats))


def add_graph(path: Path, log_fn: Callable[[str], None] | None = None) -> Graph:
    """Add (or replace) the ONNX graph of the bundle at ``path``, atomically: the file is the
    old bundle or the new one, never a mix. BundleError when the model cannot be exported."""
    bundle = load_bundle(path)
    graph, why = bundle_graph(bundle)
    if graph is None:
        raise BundleError(f"{path}: no ONNX graph: {why}")
    data = bundle_bytes(bundle.manifest, bundle.state_dict, bundle.input_stats, bundle.output_stats, graph)
    atomic_write_bytes(path, data)
    if log_fn:
        log_fn(
            f"{path}: ONNX graph added ({len(graph.onnx)} bytes, max relative difference {graph.meta.max_rel_diff:.1e})"
        )
    return graph


__all__ = ["GRAPH_KEY", "OPSET", "RTOL", "add_graph", "bundle_graph", "export_graph", "flat_arrays", "graph_inputs"]
