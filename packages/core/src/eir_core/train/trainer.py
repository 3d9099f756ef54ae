"""The training run as an outline: ``setup`` -> ``train`` (step, ``evaluate``, ``save_checkpoint``) -> ``cleanup``.

The pieces live beside this file and take explicit arguments: ``run_folder`` (may a run start, resume or start over
here), ``steps`` (batches, loss, validation), ``artifacts`` (histories, curves, t-SNE), ``sampling`` (generated
samples), ``resume`` (the resume state), ``distributed`` (torchrun policy), ``signals`` (Ctrl-C / SIGTERM), ``spec``
(model spec and manifest). Differences from EIR worth knowing (all deliberate):
* validation and a checkpoint always happen at the last iteration, so the end of training is evaluated and servable
  even when it falls between intervals;
* Ctrl-C / SIGTERM finish the current step, write a checkpoint and the resume state, then exit with 130 / 143;
* checkpoints are safetensors bundles, written atomically.

Under ``torchrun`` every rank runs this same outline: ``batch_size`` stays the global batch of
one optimizer step and each rank takes its share of it, rank 0 alone fits the statistics,
validates and writes files, and the decisions that end a run (last iteration, early stopping, a
signal on any rank) are made from numbers all ranks share.
"""

from __future__ import annotations

from eir_core import _require_torch  # noqa: F401  (first: without PyTorch, an error naming the extra)

# isort: split
import logging
import signal
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from eir_core.config.diffusion_rules import noise_schedules
from eir_core.config.schema import ExperimentConfig
from eir_core.data.dataset import RunData
from eir_core.errors import ConfigError, RunFolderError
from eir_core.manifest import Manifest
from eir_core.model.meta import MetaModel
from eir_core.predict import Predictor
from eir_core.train import resume
from eir_core.train.artifacts import Artifacts, Histories, array_sources, labels_beside
from eir_core.train.checkpoint import CheckpointKeeper
from eir_core.train.distributed import Dist, check_batch_division, choose_device, is_peer_failure, load_run_data
from eir_core.train.latents import LatentRecorder
from eir_core.train.optim import LRSchedule, build_optimizer
from eir_core.train.progress import Progress
from eir_core.train.render import Renderer
from eir_core.train.run_folder import Plan, RunFolder
from eir_core.train.sampling import SampleWriter
from eir_core.train.saving import Saver, one_intra_op_thread
from eir_core.train.signals import StopRequest, process_age_s, run_seed
from eir_core.train.spec import build_model_spec, write_run_description
from eir_core.train.steps import BatchMaker, validate

__all__ = ["TrainOptions", "Trainer", "run_seed"]

log = logging.getLogger("eir_core.train")


@dataclass
class TrainOptions:
    resume: bool = False
    overwrite: bool = False
    seed: int = 0
    no_pbar: bool | None = None


class Trainer:
    def __init__(self, cfg: ExperimentConfig, options: TrainOptions, dist: Dist | None = None) -> None:
        self.cfg = cfg
        self.opts = options
        self.dist = dist or Dist()
        self.run = RunFolder(Path(cfg.global_config.basic_experiment.output_folder))
        self.run_dir = self.run.path
        self.run_name = self.run_dir.name
        self.stop = StopRequest()
        self.state = resume.TrainState()
        self.histories = Histories()
        self.t_start = time.perf_counter()
        self.train_elapsed_s = 0.0

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Everything that can fail on the user's configs and data happens before the run
        folder is touched: a mistake leaves no folder behind and no run damaged."""
        cfg, dist, g = self.cfg, self.dist, self.cfg.global_config
        self.batch_size = g.basic_experiment.batch_size
        check_batch_division(self.batch_size, dist.world_size)
        self.device = choose_device(self._wanted_device(), dist)
        dist.init(self.device)
        plan = Plan(
            dist.from_main(
                lambda: self.run.plan(self.opts.resume, self.opts.overwrite, dist.job_id, dist.restart).value
            )
        )
        self.opts.resume = plan is Plan.RESUME
        torch.manual_seed(self.opts.seed)
        rng = np.random.default_rng(self.opts.seed if not dist.enabled else [self.opts.seed, dist.rank])
        t0 = time.perf_counter()
        self.data: RunData = load_run_data(cfg, self.opts.seed, dist)
        n_train = len(self.data.train_idx)
        log.info(
            "data: %d train, %d valid samples (%.2fs)", n_train, len(self.data.valid_idx), time.perf_counter() - t0
        )
        if n_train < dist.world_size:
            raise ConfigError(f"{n_train} training samples cannot be shared by {dist.world_size} processes")

        self.spec = build_model_spec(cfg, self.data)
        self.model = MetaModel(self.spec).to(self.device)
        record = self.run.record
        self.latents = LatentRecorder(self.model, g.latent_sampling, self.run_dir, record)
        self.drop_last = n_train >= self.batch_size
        self.iters_per_epoch = n_train // self.batch_size if self.drop_last else 1
        self.total_iters = self.iters_per_epoch * g.basic_experiment.n_epochs
        self.optimizer = build_optimizer(self.model, g.optimization)
        self.schedule = LRSchedule(self.optimizer, g.lr_schedule, g.optimization, self.total_iters)
        self.renderer = Renderer()
        self.artifacts = Artifacts(self.run_dir, self.renderer, record, g.visualization_logging.plot_skip_steps)
        self.artifacts.label_table = labels_beside(array_sources(cfg)) if g.latent_sampling and dist.is_main else None
        ec = g.evaluation_checkpoint
        self.samples = SampleWriter(
            self.data,
            cfg.output_configs,
            ec.saved_result_detail_level,
            self.opts.seed,
            self.run_dir,
            self.renderer,
            record,
        )
        keeper = CheckpointKeeper(
            self.run.saved_models, self.run_name, ec.n_saved_models, self.run.owns, self.run.record_removed
        )
        self.saver = Saver(cfg, self.data, self.spec, self.run, keeper, dist, self.opts.seed, self.batch_size)
        dropout = {ic.name: ic.input_type_info.modality_dropout_rate for ic in cfg.input_configs}
        self.batches = BatchMaker(self.data, self.device, dropout, rng, noise_schedules(cfg))
        self.histories = Histories(outputs={o: [] for o in self.data.outputs})

        if dist.is_main:
            self.run.make(plan, dist.job_id)
        if self.opts.resume:
            self._resume()
        self.train_model: nn.Module = self.model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
            if not self.opts.resume:  # dropout masks differ between ranks (all ranks built the same weights)
                torch.manual_seed(self.opts.seed * 1000 + 7919 * dist.rank)
        n_params = sum(p.numel() for p in self.model.parameters())
        if dist.is_main:
            write_run_description(cfg, self.run_dir, str(self.model), n_params, record)
        log.info(
            "model: %d parameters on %s; %d iterations (%d per epoch)",
            n_params,
            self.device,
            self.total_iters,
            self.iters_per_epoch,
        )
        if dist.enabled:
            log.info(
                "distributed: %d processes, global batch %d = %d per process; validation and files on rank 0",
                dist.world_size,
                self.batch_size,
                self.batch_size // dist.world_size,
            )

    def _wanted_device(self) -> str:
        acc = self.cfg.global_config.accelerator.hardware
        legacy = self.cfg.global_config.basic_experiment.device
        return legacy if acc == "auto" and legacy not in ("cpu",) else acc

    def _resume(self) -> None:
        """Every rank loads the state rank 0 reads (the run folder need only exist where rank 0 runs)."""
        path = self.run.resume_state
        raw = self.dist.broadcast_bytes(path.read_bytes() if self.dist.is_main else None)
        self.state, self.batches.rng = resume.restore(
            raw,
            str(path),
            self.model,
            self.optimizer,
            self.schedule,
            self.dist,
            self.opts.seed,
            self.batches.rng,
        )
        self._weights_at = self.state.iteration
        if self.dist.is_main:
            self.saver.keeper.scan()
            self.artifacts.past_histories(self.histories, self.state.iteration)  # the histories go on
        if self.state.iteration >= self.total_iters and not self.dist.restart:
            raise RunFolderError(
                f"{self.run_dir}: this run already finished (iteration {self.state.iteration} of "
                f"{self.total_iters}). To train it further, raise basic_experiment.n_epochs and pass --resume "
                "(e.g. --globals.basic_experiment.n_epochs=20); to start over, pass --overwrite"
            )
        log.info("resuming at iteration %d of %d", self.state.iteration, self.total_iters)

    # ------------------------------------------------------------------ train
    def train(self) -> int:
        """Run to the end (or early stop, or a signal); returns the process exit code."""
        self.t_start = time.perf_counter()
        self.stop.install(distributed=self.dist.enabled)
        start = self.state.iteration
        progress = Progress(self.total_iters, start, self.opts.no_pbar) if self.dist.is_main else None
        try:
            with _logging_beside(progress):
                self._loop(progress)
            self.cleanup(progress)
        except Exception as e:
            if self.dist.enabled and self.dist.is_main and is_peer_failure(e):
                self._save_after_peer_failure()
            raise
        done = self.state.iteration - start
        log.info(
            "done: %d iterations in %.1fs (%.0f samples/s)",
            done,
            self.train_elapsed_s,
            done * self.batch_size / max(self.train_elapsed_s, 1e-9),
        )
        if self.stop.signal is not None:
            if self.dist.is_main:
                log.warning(
                    "interrupted at iteration %d; state saved. Continue with the same command plus --resume",
                    self.state.iteration,
                )
            return 128 + self.stop.signal
        return 0

    def _loop(self, progress: Progress | None) -> None:
        dist, ec = self.dist, self.cfg.global_config.evaluation_checkpoint
        first = self.state.iteration + 1
        stopped_early = False
        # Whether to stop after this step, decided once per step from what every rank reported:
        # a signal that lands after that point counts at the next step, never in between (a
        # rank acting on it alone would run different collectives than the others).
        stop = False
        self.model.train()
        epoch = self.state.iteration // self.iters_per_epoch
        while self.state.iteration < self.total_iters and not stop and not stopped_early:
            order = self._epoch_order(epoch)
            start = (self.state.iteration % self.iters_per_epoch) * self.batch_size
            end = self.iters_per_epoch * self.batch_size if self.drop_last else len(order)
            for b in range(start, end, self.batch_size):
                # DistributedSampler's sharding of one global batch: rank r takes every world_size-th sample.
                loss = self._step(order[b : b + self.batch_size][dist.rank :: dist.world_size])
                stop = self.stop.signal is not None
                if dist.enabled:  # the global batch's loss, and whether any rank was signalled
                    loss, n_stopping = dist.all_reduce_sum([loss / dist.world_size, float(stop)])
                    stop = n_stopping > 0
                    if stop and self.stop.signal is None:
                        self.stop.signal = signal.SIGTERM
                        log.warning("another rank was signalled: stopping after this step")
                self.state.iteration += 1
                it = self.state.iteration
                self.histories.train.append((it, loss))
                if progress is not None:
                    progress.update(it, loss)
                if it == first:
                    log.info("first training step done, %.2fs after the process started", process_age_s())
                    if dist.is_main:
                        self.renderer.start()  # its imports overlap training instead of delaying the end
                last = it >= self.total_iters
                if it % ec.sample_interval == 0 or last or stop:
                    interval = ec.checkpoint_interval is not None and it % ec.checkpoint_interval == 0
                    perf = self.evaluate(checkpoint=last or stop or interval, final=last or stop)
                    self.model.train()
                    stopped_early = self._early_stop(perf)
                if last or stop or stopped_early:
                    break
            epoch += 1
        if stopped_early and self.state.iteration < self.total_iters:
            log.info(
                "early stopping at iteration %d: no perf-average improvement in %d validations",
                self.state.iteration,
                self.cfg.global_config.training_control.early_stopping_patience,
            )
            self.evaluate(checkpoint=True, final=True, validated=True)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        # Derived from (seed, epoch) alone, so a resumed run sees the same order.
        rng = np.random.default_rng([self.opts.seed, epoch])
        return self.data.train_idx[rng.permutation(len(self.data.train_idx))]

    def _step(self, idx: np.ndarray) -> float:
        clip = self.cfg.global_config.optimization.gradient_clipping
        self.schedule.step(self.state.iteration)
        inputs, targets = self.batches.prepare(idx, train=True)
        loss = self.batches.loss(self.train_model(inputs), targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # torch's stubs leave Tensor.backward untyped
        if clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), clip, foreach=True)
        self.optimizer.step()
        self._weights_at = self.state.iteration + 1  # the iteration these weights belong to
        return float(loss.detach())

    def _early_stop(self, perf: float) -> bool:
        tc = self.cfg.global_config.training_control
        return self.state.no_improvement_for(perf, tc.early_stopping_patience, tc.early_stopping_buffer)

    # ------------------------------------------------------------------ evaluate
    def evaluate(self, checkpoint: bool, final: bool, validated: bool = False) -> float:
        """Validate (rank 0), share the result so every rank's schedule and early stopping move
        alike, then write samples, curves and the checkpoint (rank 0)."""
        it, main, history = self.state.iteration, self.dist.is_main, self.state.valid_history
        if validated and history and history[-1][0] == it:
            loss, perf = history[-1][1], history[-1][2]
        else:
            mse = validate(self.model, self.batches, self.latents, self.opts.seed) if main else {}
            loss, perf = self.dist.from_main(lambda: [sum(mse.values()), float(np.mean([1 - v for v in mse.values()]))])
            history.append((it, loss, perf))
            self.schedule.on_validation(it, perf)
            if main:
                self._write_artifacts(it, mse)
                log.info("iteration %d: validation loss %.5f, perf-average %.4f", it, loss, perf)
        if checkpoint:
            rng_by_rank = self.dist.all_gather_json(resume.rng_state(self.batches.rng)) if self.dist.enabled else None
            if main:
                if final:  # the last plots draw (on every core) while the final bundle is written
                    self.renderer.finish()
                with one_intra_op_thread() if final else nullcontext():
                    self.save_checkpoint(perf, loss, final, rng_by_rank)
        return perf

    def _write_artifacts(self, it: int, mse: dict[str, float]) -> None:
        for n, v in mse.items():
            self.histories.outputs[n].append((it, v))
        self.latents.save(it)
        for layer, (_, ids) in self.latents.last.items():
            self.artifacts.plot_latents(self.data, it, layer, ids)
        self.latents.last.clear()
        if self.samples.enabled:
            bundle = self.saver.bundle(self.model, self.manifest(float("nan"), float("nan")))
            self.samples.write(it, Predictor(bundle, device=self.device))
        self.histories.valid = self.state.valid_history  # the resume state's list: a resumed run keeps its past
        self.artifacts.write_histories(self.histories)

    # ------------------------------------------------------------------ save_checkpoint
    def manifest(self, perf: float, valid_loss: float) -> Manifest:
        elapsed = time.perf_counter() - self.t_start
        return self.saver.manifest(self.state.iteration, perf, valid_loss, elapsed)

    def save_checkpoint(self, perf: float, loss: float, final: bool, rng_by_rank: list[object] | None) -> None:
        """The bundle (when it is among the best, and always at the end), then the resume state."""
        manifest = self.manifest(perf, loss)
        self.saver.checkpoint(self.model, manifest, final)
        if final:
            self.train_elapsed_s = manifest.training.elapsed_s
        self._save_resume(self.state.iteration, rng_by_rank)

    def _save_resume(self, iteration: int, rng_by_rank: list[object] | None) -> None:
        st = self.state
        state = resume.TrainState(iteration, st.best_perf, st.rounds_without_improvement, st.valid_history)
        self.saver.resume_state(self.model, self.optimizer, state, self.schedule, self.batches.rng, rng_by_rank)

    def _save_after_peer_failure(self) -> None:
        """Another rank died: the weights here are whole (every rank held the same ones), so keep
        them as the resume state. A torchrun restart of the same job resumes from it."""
        it = getattr(self, "_weights_at", self.state.iteration)
        try:
            self._save_resume(it, None)
        except Exception as e:  # reporting the peer failure matters more than this error
            log.error("could not save the resume state after losing a peer: %s", e)
            return
        log.warning(
            "lost another rank: saved the resume state at iteration %d (a torchrun restart continues from it; "
            "otherwise run again with --resume)",
            it,
        )

    # ------------------------------------------------------------------ cleanup
    def cleanup(self, progress: Progress | None) -> None:
        """Close the progress bar, wait for the last plots, and let every rank leave together."""
        if progress is not None:
            progress.close()
        if not self.train_elapsed_s:
            self.train_elapsed_s = round(time.perf_counter() - self.t_start, 2)
        drawing = self.dist.is_main and self.renderer.proc is not None
        if drawing:
            log.info("drawing the last plots and t-SNE (the renderer process) ...")
        t0 = time.perf_counter()
        self.renderer.close()
        if drawing:
            log.info("plots done in %.1fs", time.perf_counter() - t0)
        self.dist.barrier()  # rank 0's last checkpoint is on disk before any rank reports done
        self.run.release()


def _logging_beside(progress: Progress | None) -> AbstractContextManager[object]:
    """Log lines printed above the progress bar instead of through it."""
    if progress is None or progress.bar is None:
        return nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    redirect: AbstractContextManager[object] = logging_redirect_tqdm(loggers=[logging.getLogger()])
    return redirect
