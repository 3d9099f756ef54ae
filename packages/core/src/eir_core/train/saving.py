"""Saving a run's weights: the bundle of a checkpoint (when it is among the best, and always at
the end) and the resume state beside it."""

from __future__ import annotations

from eir_core import _require_torch  # noqa: F401  (first: without PyTorch, an error naming the extra)

# isort: split
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from eir_core.bundle import Bundle, Graph, has_graph, save_bundle
from eir_core.config.schema import ExperimentConfig
from eir_core.data.dataset import ArrayColumn, RunData
from eir_core.errors import BundleError
from eir_core.manifest import Manifest, TrainingSummary, checkpoint_name
from eir_core.model.meta import ModelSpec
from eir_core.train import resume
from eir_core.train.checkpoint import CheckpointKeeper
from eir_core.train.distributed import Dist
from eir_core.train.optim import LRSchedule, Optimizer
from eir_core.train.run_folder import RunFolder
from eir_core.train.spec import build_manifest

log = logging.getLogger("eir_core.train")


@contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """PyTorch on one thread for the final bundle: training is over, so the thread count no longer
    touches the weights, and the ONNX export and check take as long on one thread (0.5-0.8 s)
    while a second, spinning one would take a core from the renderer's last plots."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@dataclass
class Saver:
    cfg: ExperimentConfig
    data: RunData
    spec: ModelSpec
    run: RunFolder
    keeper: CheckpointKeeper
    dist: Dist
    seed: int
    batch_size: int

    def manifest(self, iteration: int, perf: float, valid_loss: float, elapsed_s: float) -> Manifest:
        w = self.dist.world_size
        summary = TrainingSummary(
            iteration=iteration,
            perf_average=perf,
            validation_loss=valid_loss,
            elapsed_s=round(elapsed_s, 2),
            world_size=w,
            batch_size=self.batch_size,
            batch_size_per_process=self.batch_size // w,
            seed=self.seed,
        )
        return build_manifest(self.cfg, self.data, self.spec, self.run.path.name, summary)

    def bundle(self, model: torch.nn.Module, manifest: Manifest) -> Bundle:
        in_stats = {n: c.stats for n, c in self.data.inputs.items() if isinstance(c, ArrayColumn)}
        out_stats = {n: c.stats for n, c in self.data.outputs.items()}
        return Bundle(manifest, model.state_dict(), in_stats, out_stats)

    def checkpoint(self, model: torch.nn.Module, manifest: Manifest, final: bool) -> None:
        """Write the bundle if it is among the ``n_saved_models`` best (always when final).

        The final bundle, and the best one if that is another, also carry the model's ONNX
        graph (``eir_core.onnx_export``), which ``eirserve`` runs without PyTorch. Earlier
        checkpoints do not: the export costs about a second, and most of them are replaced."""
        t = manifest.training
        if final or self.keeper.is_better(t.perf_average):
            path = self.run.saved_models / checkpoint_name(manifest.run_name, t.iteration, t.perf_average)
            b = self.bundle(model, manifest)
            graph = self._graph(model, b) if final else None
            self.run.record(path)
            save_bundle(path, b.manifest, b.state_dict, b.input_stats, b.output_stats, graph)
            self.run.record_saved(path)
            self.keeper.add(path, t.iteration, t.perf_average, protect=final)
            log.info("checkpoint: %s", path.name)
            if final and graph is not None:
                best = max(self.keeper.kept)[2]
                if best != path and not has_graph(best):
                    self._add_graph(best)

    @staticmethod
    def _graph(model: torch.nn.Module, bundle: Bundle) -> Graph | None:
        from eir_core.onnx_export import bundle_graph

        t0 = time.perf_counter()
        graph, why = bundle_graph(bundle, model)
        if graph is None:
            log.info("no ONNX graph in the bundle (%s); eirserve will run it on PyTorch", why)
        else:
            log.info(
                "ONNX graph: checked against the model (max relative difference %.1e, %.1fs)",
                graph.meta.max_rel_diff,
                time.perf_counter() - t0,
            )
        return graph

    @staticmethod
    def _add_graph(path: Path) -> None:
        from eir_core.onnx_export import add_graph

        try:
            add_graph(path)
            log.info("ONNX graph added to the best checkpoint %s", path.name)
        except BundleError as e:
            log.info("%s", e)

    def resume_state(
        self,
        model: torch.nn.Module,
        optimizer: Optimizer,
        state: resume.TrainState,
        schedule: LRSchedule,
        rng: np.random.Generator,
        rng_by_rank: list[object] | None,
    ) -> None:
        self.run.record(self.run.resume_state)
        resume.save(self.run.resume_state, model, optimizer, state, schedule, rng, self.dist, rng_by_rank)
        self.run.record_saved(self.run.resume_state)
