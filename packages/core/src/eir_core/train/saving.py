"""Saving a run's weights: the bundle of a checkpoint (when it is among the best, and always at
the end) and the resume state beside it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from eir_core.bundle import Bundle, save_bundle
from eir_core.config.schema import ExperimentConfig
from eir_core.data.dataset import ArrayColumn, RunData
from eir_core.manifest import Manifest, TrainingSummary, checkpoint_name
from eir_core.model.meta import ModelSpec
from eir_core.train import resume
from eir_core.train.checkpoint import CheckpointKeeper
from eir_core.train.distributed import Dist
from eir_core.train.optim import LRSchedule, Optimizer
from eir_core.train.run_folder import RunFolder
from eir_core.train.spec import build_manifest

log = logging.getLogger("eir_core.train")


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
        """Write the bundle if it is among the ``n_saved_models`` best (always when final)."""
        t = manifest.training
        if final or self.keeper.is_better(t.perf_average):
            path = self.run.saved_models / checkpoint_name(manifest.run_name, t.iteration, t.perf_average)
            b = self.bundle(model, manifest)
            save_bundle(path, b.manifest, b.state_dict, b.input_stats, b.output_stats)
            self.keeper.add(path, t.iteration, t.perf_average, protect=final)
            log.info("checkpoint: %s", path.name)

    def resume_state(
        self,
        model: torch.nn.Module,
        optimizer: Optimizer,
        state: resume.TrainState,
        schedule: LRSchedule,
        rng: np.random.Generator,
        rng_by_rank: list[object] | None,
    ) -> None:
        resume.save(self.run.resume_state, model, optimizer, state, schedule, rng, self.dist, rng_by_rank)
