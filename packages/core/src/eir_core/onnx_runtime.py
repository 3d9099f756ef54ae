"""OnnxPredictor: a bundle's ONNX graph on ONNX Runtime, without PyTorch.

The same items, seeds and noise scales give the same answers as ``eir_core.predict.Predictor``
(to float rounding): the batch is built by the same NumPy code (``eir_core.inference``) and the
graph was checked against the PyTorch module when it was exported (``eir_core.onnx_export``).
This module imports neither PyTorch nor anything that does, so a server on this path starts in
a fraction of the time and memory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eir_core.bundle import ArrayBundle, GraphInput, load_array_bundle
from eir_core.errors import BundleError
from eir_core.inference import ArrayBatch, BatchRunner
from eir_core.manifest import ArrayInput
from eir_core.model.spec import timestep_key

log = logging.getLogger("eir_core.onnx")


def flat_arrays(batch: ArrayBatch, inputs: Sequence[GraphInput]) -> dict[str, np.ndarray]:
    """A NumPy batch as the graph's named inputs."""
    return {g.name: batch[g.input] if g.part is None else batch[g.input][g.part] for g in inputs}


def _check_tensor(source: str, what: str, arg: Any, want: list[int], kind: str) -> None:
    """An ONNX Runtime input or output against ``[batch, *want]`` of element type ``kind``."""
    shape = list(arg.shape)
    fixed = [d for d in shape[1:]]
    if (
        arg.type != kind
        or len(shape) != 1 + len(want)
        or any(isinstance(d, int) and d != w for d, w in zip(fixed, want))
    ):
        raise BundleError(
            f"{source}: the ONNX graph's {what} is {arg.type} {shape}; the manifest says {kind} [batch, "
            f"{', '.join(map(str, want))}]"
        )


class OnnxPredictor(BatchRunner):
    """Runs on the CPU with ``threads`` intra-op threads (1: a server's batches of small items
    gain nothing from more, and the HTTP side needs the other cores)."""

    runtime = "onnxruntime"
    graph = "onnx"
    device = "cpu"

    def __init__(self, bundle: ArrayBundle, source: str = "bundle", threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BundleError(
                "the ONNX runtime needs the onnxruntime package (pip install onnxruntime); or use --runtime torch"
            ) from None
        super().__init__(bundle.manifest, bundle.input_stats, bundle.output_stats)
        meta = bundle.graph.meta
        fed_from = set(self.inputs) | {timestep_key(n) for n in self.manifest.diffusion_outputs}
        missing = [n for n in self.outputs if n not in meta.outputs] + [
            g.input for g in meta.inputs if g.input not in fed_from
        ]
        if missing:
            raise BundleError(f"{source}: the ONNX graph does not match the manifest ({', '.join(missing)})")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3  # errors only: ORT's warnings are not the user's to act on
        # Idle pool threads sleep instead of spinning: with more than one thread, spinning ones
        # would take the cores the event loop and the other workers need between batches.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(bundle.graph.onnx, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # a corrupt or foreign graph is the bundle's problem, said as such
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BundleError(f"{source}: the bundle's ONNX graph cannot be loaded ({first[:300]})") from None
        fed = {i.name for i in self.session.get_inputs()}
        self._inputs = [g for g in meta.inputs if g.name in fed]  # the exporter drops unused inputs
        self._output_names = list(meta.outputs)
        self.threads = opts.intra_op_num_threads
        self._check_graph(source)

    def _check_graph(self, source: str) -> None:
        """The graph's own inputs and outputs (names, element types, shapes after the batch
        dimension) must be what its description and the manifest say, or a request that passed
        the manifest's checks could fail inside ONNX Runtime."""
        described = {g.name: g for g in self._inputs}
        for i in self.session.get_inputs():
            g = described.get(i.name)
            if g is None:
                raise BundleError(f"{source}: the ONNX graph's input {i.name!r} is not in its description (eir_graph)")
            if g.input not in self.inputs:  # a diffusion output's timestep: int64, one per item
                _check_tensor(source, f"input {i.name!r} (from {g.input!r})", i, [], "tensor(int64)")
                continue
            entry = self.inputs[g.input]
            if isinstance(entry, ArrayInput):
                want, kind = list(entry.shape), "tensor(float)"
            else:
                columns = entry.cat_columns if g.part == "cat" else entry.con_columns
                want, kind = [len(columns)], "tensor(int64)" if g.part == "cat" else "tensor(float)"
            _check_tensor(source, f"input {i.name!r} (from {g.input!r})", i, want, kind)
        outputs = self.session.get_outputs()
        if len(outputs) != len(self._output_names):
            raise BundleError(
                f"{source}: the ONNX graph has {len(outputs)} outputs, its description names "
                f"{len(self._output_names)} ({', '.join(self._output_names)})"
            )
        for o, name in zip(outputs, self._output_names, strict=True):
            _check_tensor(
                source, f"output {o.name!r} (for {name!r})", o, list(self.outputs[name].shape), "tensor(float)"
            )

    @classmethod
    def from_path(cls, path: Path | str, threads: int = 1) -> OnnxPredictor:
        return cls(load_array_bundle(Path(path)), source=str(path), threads=threads)

    def run_batch(self, batch: ArrayBatch) -> dict[str, np.ndarray]:
        got: list[Any] = self.session.run(None, flat_arrays(batch, self._inputs))
        return dict(zip(self._output_names, got, strict=True))
