"""The training run: ``setup`` -> ``train`` (validate, sample, checkpoint) -> final bundle.

Reads like an outline on purpose; the pieces live in ``data/``, ``model/`` and the sibling
modules. Differences from EIR worth knowing (all deliberate):
* validation and a checkpoint always happen at the last iteration, so the end of training is
  evaluated and servable even when it falls between intervals;
* Ctrl-C / SIGTERM finish the current step, write a checkpoint and the resume state, then
  exit with 130 / 143;
* checkpoints are safetensors bundles, written atomically.

Under ``torchrun`` (see ``distributed.py``) every rank runs this same outline: ``batch_size``
stays the global batch of one optimizer step and each rank takes its share of it, rank 0
alone fits the statistics, validates and writes files, and the decisions that end a run
(last iteration, early stopping, a signal on any rank) are made from numbers all ranks share.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from eir_core.config.schema import ArrayInputConfig, ExperimentConfig
from eir_core.data.dataset import ArrayColumn, RunData, TabularColumn, build_run_data
from eir_core.errors import ConfigError, DataError, RunFolderError
from eir_core.imputation import impute_array_, impute_tabular_, modality_dropout, null_codes
from eir_core.model.meta import InputSpec, MetaModel, ModelSpec, OutputSpec
from eir_core.predict import resolve_device
from eir_core.train.checkpoint import (
    CheckpointKeeper,
    checkpoint_name,
    load_resume_state,
    read_resume_info,
    save_resume_state,
)
from eir_core.train.distributed import Dist, is_peer_failure
from eir_core.train.latents import LatentRecorder
from eir_core.train.optim import LRSchedule, build_optimizer
from eir_core.train.progress import Progress
from eir_core.train.render import Renderer
from eir_core.train.sampling import SampleWriter

log = logging.getLogger("eir_core.train")


@dataclass
class TrainOptions:
    resume: bool = False
    overwrite: bool = False
    seed: int = 0
    no_pbar: bool | None = None


def masked_mse(pred: torch.Tensor, target: torch.Tensor, has_nan: bool) -> torch.Tensor:
    if not has_nan:
        return torch.nn.functional.mse_loss(pred, target)
    mask = ~torch.isnan(target)
    return ((pred - torch.nan_to_num(target)) ** 2 * mask).sum() / mask.sum().clamp(min=1)


class Trainer:
    def __init__(self, cfg: ExperimentConfig, options: TrainOptions, dist: Dist | None = None) -> None:
        self.cfg = cfg
        self.opts = options
        self.dist = dist or Dist()
        g = cfg.global_config
        self.run_dir = Path(g.basic_experiment.output_folder)
        self.run_name = self.run_dir.name
        self.stop_signal: int | None = None

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        dist = self.dist
        g = self.cfg.global_config
        self.batch_size = g.basic_experiment.batch_size
        self._check_world_size()
        self.device = self._device()
        dist.init(self.device)
        self.opts.resume = bool(dist.from_main(self._prepare_run_folder))
        torch.manual_seed(self.opts.seed)
        self.rng = np.random.default_rng(self.opts.seed if not dist.enabled else [self.opts.seed, dist.rank])
        t0 = time.perf_counter()
        self.data: RunData = self._load_data()
        log.info(
            "data: %d train, %d valid samples (%.2fs)",
            len(self.data.train_idx),
            len(self.data.valid_idx),
            time.perf_counter() - t0,
        )
        self.spec = self._model_spec()
        self.model = MetaModel(self.spec).to(self.device)
        self.latents = LatentRecorder(self.model, self.cfg.global_config.latent_sampling, self.run_dir)
        n_train = len(self.data.train_idx)
        if n_train < dist.world_size:
            raise ConfigError(f"{n_train} training samples cannot be shared by {dist.world_size} processes")
        self.drop_last = n_train >= self.batch_size
        self.iters_per_epoch = n_train // self.batch_size if self.drop_last else 1
        self.total_iters = self.iters_per_epoch * g.basic_experiment.n_epochs
        self.optimizer = build_optimizer(self.model, g.optimization)
        self.schedule = LRSchedule(self.optimizer, g.lr_schedule, g.optimization, self.total_iters)
        self.keeper = CheckpointKeeper(
            self.run_dir / "saved_models", self.run_name, g.evaluation_checkpoint.n_saved_models
        )
        self.samples = SampleWriter(self, self.run_dir)
        self.renderer = Renderer()
        self.iteration = 0
        self._weights_at = 0  # the iteration the current weights belong to (one ahead mid-step)
        self.best_perf: float | None = None
        self.rounds_without_improvement = 0
        self.train_history: list[tuple[int, float]] = []
        self.valid_history: list[tuple[int, float, float]] = []
        self.output_history: dict[str, list[tuple[int, float, float | None]]] = {o: [] for o in self.data.outputs}
        self._has_nan = {n: not bool(c.present.all()) for n, c in self.data.outputs.items()}
        self._null_codes = {
            n: null_codes(c.encoding) for n, c in self.data.inputs.items() if isinstance(c, TabularColumn)
        }
        self._dropout = {ic.name: ic.input_type_info.modality_dropout_rate for ic in self.cfg.input_configs}
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
            self._write_configs()
            (self.run_dir / "model_architecture").mkdir(exist_ok=True)
            (self.run_dir / "model_architecture" / "model_info.txt").write_text(
                f"{self.model}\n\nparameters: {n_params}\n"
            )
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

    def _check_world_size(self) -> None:
        w = self.dist.world_size
        if self.batch_size % w:
            lo = self.batch_size - self.batch_size % w
            fits = " or ".join(str(b) for b in (lo, lo + w) if b > 0)
            raise ConfigError(
                f"globals: basic_experiment.batch_size={self.batch_size} is the global batch of one step and "
                f"must divide evenly among the {w} processes; use {fits}, or another --nproc-per-node"
            )

    def _load_data(self) -> RunData:
        """Rank 0 reads and fits; the other ranks read with rank 0's statistics and encodings,
        then every rank checks that it sees the same samples and split."""
        dist = self.dist
        if not dist.enabled:
            return build_run_data(self.cfg, self.opts.seed)
        box: dict[str, RunData] = {}

        def fit_on_main() -> dict[str, object]:
            box["data"] = build_run_data(self.cfg, self.opts.seed)
            return box["data"].fitted_state()

        fitted = dist.from_main(fit_on_main)
        data = dist.agree(lambda: box.get("data") or build_run_data(self.cfg, self.opts.seed, fitted))
        prints = dist.all_gather_json(data.fingerprint())

        def check() -> None:
            if prints[dist.rank] != prints[0]:
                raise DataError(
                    f"rank {dist.rank} sees different data than rank 0 ({prints[dist.rank]} vs {prints[0]}); "
                    "every machine needs the same files at the paths in the configs"
                )

        dist.agree(check)
        return data

    def _device(self) -> torch.device:
        acc = self.cfg.global_config.accelerator.hardware
        legacy = self.cfg.global_config.basic_experiment.device
        wanted = legacy if acc == "auto" and legacy not in ("cpu",) else acc
        try:
            device = resolve_device(wanted)
        except ValueError as e:
            raise ConfigError(f"globals: accelerator.hardware: {e}") from None
        if self.dist.enabled and device.type == "cuda":  # one GPU per process, chosen by torchrun's LOCAL_RANK
            if self.dist.local_rank >= torch.cuda.device_count():
                raise ConfigError(
                    f"LOCAL_RANK={self.dist.local_rank} but this machine has {torch.cuda.device_count()} GPU(s); "
                    "start at most that many processes per node (--nproc-per-node)"
                )
            device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(device)
        return device

    def _prepare_run_folder(self) -> bool:
        """Check (and with --overwrite clear) the run folder; returns whether to resume."""
        d = self.run_dir
        restart = self._restarted_job()
        if restart == "resume":
            self.opts.resume, self.opts.overwrite = True, False
        elif restart == "again":
            self.opts.resume, self.opts.overwrite = False, True
        used = d.exists() and any(d.iterdir())
        if used and self.opts.overwrite:
            shutil.rmtree(d)
        elif used and not self.opts.resume:
            raise RunFolderError(
                f"{d}: the run folder already has a run in it. Pass --resume to continue it, "
                "--overwrite to delete it and start over, or choose another "
                "basic_experiment.output_folder"
            )
        elif self.opts.resume and not (d / "resume" / "state.safetensors").is_file():
            raise RunFolderError(f"{d}: nothing to resume (no resume/state.safetensors); drop --resume")
        if self.opts.resume:  # temporary files of writes a crash interrupted: never complete, drop them
            for stale in [*d.glob("saved_models/.*.tmp"), *d.glob("resume/.*.tmp")]:
                stale.unlink(missing_ok=True)
        (d / "saved_models").mkdir(parents=True, exist_ok=True)
        if self.dist.job_id:  # which torchrun job this folder belongs to, for its restarts
            (d / "meta").mkdir(exist_ok=True)
            (d / "meta" / "torchrun_job_id.txt").write_text(self.dist.job_id + "\n")
        return self.opts.resume

    def _restarted_job(self) -> str | None:
        """After a failure torchrun (``--max-restarts``) starts the same job again. If this job
        wrote the resume state, continue from it ("resume"); if the folder is this job's but it
        failed before saving any state, start over in it ("again"). Anything else — another
        job's run, or the first attempt — follows the usual --resume/--overwrite rules."""
        dist = self.dist
        if not (dist.restart and dist.job_id):
            return None
        state = self.run_dir / "resume" / "state.safetensors"
        if state.is_file() and read_resume_info(state).get("job_id") == dist.job_id:
            log.warning("torchrun restart %d of job %s: continuing from the saved state", dist.restart, dist.job_id)
            return "resume"
        marker = self.run_dir / "meta" / "torchrun_job_id.txt"
        if not state.is_file() and marker.is_file() and marker.read_text().strip() == dist.job_id:
            log.warning("torchrun restart %d of job %s: nothing saved yet, starting over", dist.restart, dist.job_id)
            return "again"
        return None

    def _model_spec(self) -> ModelSpec:
        inputs = []
        for ic in self.cfg.input_configs:
            col = self.data.inputs[ic.name]
            if isinstance(ic, ArrayInputConfig):
                assert isinstance(col, ArrayColumn)
                inputs.append(
                    InputSpec(
                        name=ic.name, type="array", shape=col.source.shape, lcl=ic.model_config_.model_init_config
                    )
                )
            else:
                assert isinstance(col, TabularColumn)
                enc = col.encoding
                inputs.append(
                    InputSpec(
                        name=ic.name,
                        type="tabular",
                        cat_cardinalities={c: len(enc.categories[c]) for c in enc.cat_columns},
                        n_con=len(enc.con_columns),
                    )
                )
        outputs = [
            OutputSpec(
                name=oc.name, shape=self.data.outputs[oc.name].source.shape, lcl=oc.model_config_.model_init_config
            )
            for oc in self.cfg.output_configs
        ]
        return ModelSpec(inputs=inputs, outputs=outputs, fusion=self.cfg.fusion_config.model_config_)

    def _write_configs(self) -> None:
        d = self.run_dir / "configs"
        d.mkdir(exist_ok=True)
        dump = self.cfg.model_dump(mode="json", by_alias=True)
        for key, name in [
            ("global_config", "global_config"),
            ("input_configs", "input_configs"),
            ("output_configs", "output_configs"),
            ("fusion_config", "fusion_config"),
        ]:
            (d / f"{name}.yaml").write_text(yaml.safe_dump(dump[key], sort_keys=False))
        meta = self.run_dir / "meta"
        meta.mkdir(exist_ok=True)
        from eir_core import __version__

        (meta / "eir_core_version.txt").write_text(__version__ + "\n")

    # ------------------------------------------------------------------ manifest
    def manifest(self, iteration: int, perf: float, valid_loss: float) -> dict[str, Any]:
        inputs: list[dict[str, Any]] = []
        for ic in self.cfg.input_configs:
            col = self.data.inputs[ic.name]
            entry: dict[str, Any] = {"name": ic.name, "type": ic.type, "modality_dropout_rate": self._dropout[ic.name]}
            if isinstance(col, ArrayColumn):
                entry.update(
                    shape=list(col.source.shape),
                    dtype=col.source.dtype.str,
                    original_shape=list(col.source.original_shape),
                    normalization=col.stats.kind,
                )
            else:
                entry.update(col.encoding.to_json())
            inputs.append(entry)
        outputs = [
            {
                "name": n,
                "type": "array",
                "shape": list(c.source.shape),
                "dtype": "<f4",
                "source_dtype": c.source.dtype.str,
                "original_shape": list(c.source.original_shape),
                "normalization": c.stats.kind,
            }
            for n, c in self.data.outputs.items()
        ]
        return {
            "run_name": self.run_name,
            "model_spec": self.spec.model_dump(mode="json"),
            "configs": self.cfg.model_dump(mode="json", by_alias=True),
            "inputs": inputs,
            "outputs": outputs,
            "training": {
                "iteration": iteration,
                "perf_average": perf,
                "validation_loss": valid_loss,
                "elapsed_s": round(time.perf_counter() - self.t_start, 2),
                "world_size": self.dist.world_size,
                "batch_size": self.batch_size,
                "batch_size_per_process": self.batch_size // self.dist.world_size,
                "seed": self.opts.seed,
            },
        }

    # ------------------------------------------------------------------ loop
    def train(self) -> int:
        self.t_start = time.perf_counter()
        self._install_signal_handlers()
        dist = self.dist
        progress = Progress(self.total_iters, self.iteration, self.opts.no_pbar) if dist.is_main else None
        try:
            self._loop(progress)
            if progress is not None:
                progress.close()
            self.renderer.close()
            dist.barrier()  # rank 0's last checkpoint is on disk before any rank reports done
        except Exception as e:
            if dist.enabled and dist.is_main and is_peer_failure(e):
                self._save_after_peer_failure()
            raise
        elapsed = time.perf_counter() - self.t_start
        log.info(
            "done: %d iterations in %.1fs (%.0f samples/s)",
            self.iteration,
            elapsed,
            self.iteration * self.batch_size / max(elapsed, 1e-9),
        )
        if self.stop_signal is not None:
            if dist.is_main:
                log.warning(
                    "interrupted at iteration %d; state saved. Continue with the same command plus --resume",
                    self.iteration,
                )
            return 128 + self.stop_signal
        return 0

    def _loop(self, progress: Progress | None) -> None:
        dist = self.dist
        ec = self.cfg.global_config.evaluation_checkpoint
        start_iteration = self.iteration
        stopped_early = False
        # Whether to stop after this step, decided once per step from what every rank reported:
        # a signal that lands after that point counts at the next step, never in between (a
        # rank acting on it alone would run different collectives than the others).
        stop = False
        self.model.train()
        epoch = self.iteration // self.iters_per_epoch
        while self.iteration < self.total_iters and not stop and not stopped_early:
            order = self._epoch_order(epoch)
            start = (self.iteration % self.iters_per_epoch) * self.batch_size
            for b in range(
                start, self.iters_per_epoch * self.batch_size if self.drop_last else len(order), self.batch_size
            ):
                # DistributedSampler's sharding of one global batch: rank r takes every world_size-th sample.
                loss = self._step(order[b : b + self.batch_size][dist.rank :: dist.world_size])
                stop = self.stop_signal is not None
                if dist.enabled:  # the global batch's loss, and whether any rank was signalled
                    loss, n_stopping = dist.all_reduce_sum([loss / dist.world_size, float(stop)])
                    stop = n_stopping > 0
                    if stop and self.stop_signal is None:
                        self.stop_signal = signal.SIGTERM
                        log.warning("another rank was signalled: stopping after this step")
                self.iteration += 1
                self.train_history.append((self.iteration, loss))
                if progress is not None:
                    progress.update(self.iteration, loss)
                if self.iteration == start_iteration + 1:
                    log.info("first training step done, %.2fs after the process started", process_age_s())
                    if dist.is_main:
                        self.renderer.start()  # its imports overlap training instead of delaying the end
                last = self.iteration >= self.total_iters
                if self.iteration % ec.sample_interval == 0 or last or stop:
                    perf = self._evaluate(
                        checkpoint=last
                        or stop
                        or (ec.checkpoint_interval is not None and self.iteration % ec.checkpoint_interval == 0),
                        final=last or stop,
                    )
                    self.model.train()
                    stopped_early = self._early_stop(perf)
                if last or stop or stopped_early:
                    break
            epoch += 1
        if stopped_early and self.iteration < self.total_iters:
            log.info(
                "early stopping at iteration %d: no perf-average improvement in %d validations",
                self.iteration,
                self.cfg.global_config.training_control.early_stopping_patience,
            )
            self._evaluate(checkpoint=True, final=True, validated=True)

    def _save_after_peer_failure(self) -> None:
        """Another rank died: the weights here are whole (every rank held the same ones), so keep
        them as the resume state. A torchrun restart of the same job resumes from it."""
        it = self._weights_at
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

    def _epoch_order(self, epoch: int) -> np.ndarray:
        # Derived from (seed, epoch) alone, so a resumed run sees the same order.
        rng = np.random.default_rng([self.opts.seed, epoch])
        return self.data.train_idx[rng.permutation(len(self.data.train_idx))]

    def _prepare(
        self, idx: np.ndarray, train: bool, generator: torch.Generator | None = None
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        inputs, targets, present = self.data.batch(idx)
        for name, col in self.data.inputs.items():
            keep = present[name]
            if train:
                keep = modality_dropout(keep, self._dropout[name], self.rng)
            missing = ~keep
            if isinstance(col, ArrayColumn):
                impute_array_(inputs[name], missing, generator)  # type: ignore[arg-type]
            else:
                impute_tabular_(inputs[name], missing, self._null_codes[name])  # type: ignore[arg-type]
        dev = self.device
        inputs = {
            k: (
                {kk: vv.to(dev, non_blocking=True) for kk, vv in v.items()}
                if isinstance(v, dict)
                else v.to(dev, non_blocking=True)
            )
            for k, v in inputs.items()
        }  # type: ignore[union-attr]
        targets = {k: v.to(dev, non_blocking=True) for k, v in targets.items()}
        return inputs, targets

    def _step(self, idx: np.ndarray) -> float:
        g = self.cfg.global_config.optimization
        self.schedule.step(self.iteration)
        inputs, targets = self._prepare(idx, train=True)
        preds = self.train_model(inputs)
        loss = sum(masked_mse(preds[n], targets[n], self._has_nan[n]) for n in preds)
        assert isinstance(loss, torch.Tensor)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if g.gradient_clipping:
            nn.utils.clip_grad_norm_(self.model.parameters(), g.gradient_clipping, foreach=True)
        self.optimizer.step()
        self._weights_at = self.iteration + 1
        return float(loss.detach())

    @torch.inference_mode()
    def validate(self) -> dict[str, float]:
        """Mean squared error per output over the validation set (normalized space)."""
        self.model.eval()
        sums = {n: 0.0 for n in self.data.outputs}
        counts = {n: 0 for n in self.data.outputs}
        gen = torch.Generator().manual_seed(self.opts.seed)
        self.latents.start()
        for s in range(0, len(self.data.valid_idx), 1024):
            idx = self.data.valid_idx[s : s + 1024]
            inputs, targets = self._prepare(idx, train=False, generator=gen)
            preds = self.model(inputs)
            self.latents.collect([self.data.ids[i] for i in idx])
            for n, p in preds.items():
                t = targets[n]
                mask = ~torch.isnan(t)
                sums[n] += float((((p - torch.nan_to_num(t)) ** 2) * mask).sum())
                counts[n] += int(mask.sum())
        self.latents.stop()
        return {n: sums[n] / max(1, counts[n]) for n in sums}

    def _evaluate(self, checkpoint: bool, final: bool, validated: bool = False) -> float:
        """Validate (rank 0), share the result so every rank's schedule and early stopping move
        alike, then write samples, curves and the checkpoint (rank 0)."""
        it = self.iteration
        main = self.dist.is_main
        if validated and self.valid_history and self.valid_history[-1][0] == it:
            loss, perf = self.valid_history[-1][1], self.valid_history[-1][2]
        else:
            mse = self.validate() if main else {}
            loss, perf = self.dist.from_main(
                lambda: [sum(mse.values()), float(np.mean([1.0 - v for v in mse.values()]))]
            )
            self.valid_history.append((it, loss, perf))
            self.schedule.on_validation(it, perf)
            if main:
                for n, v in mse.items():
                    self.output_history[n].append((it, v, None))
                self.latents.save(it)
                for layer, (_, ids) in self.latents.last.items():
                    self._plot_latents(it, layer, ids)
                self.latents.last.clear()
                self.samples.write(it, self.model.state_dict())
                self._write_histories()
                log.info("iteration %d: validation loss %.5f, perf-average %.4f", it, loss, perf)
        if checkpoint:
            rng_by_rank = self.dist.all_gather_json(self._rng_state()) if self.dist.enabled else None
            if main:
                self._checkpoint(it, perf, loss, final, rng_by_rank)
        return perf

    def _rng_state(self) -> dict[str, Any]:
        return {
            "numpy": self.rng.bit_generator.state,
            "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        }

    def _early_stop(self, perf: float) -> bool:
        tc = self.cfg.global_config.training_control
        if self.best_perf is None or perf > self.best_perf:
            self.best_perf, self.rounds_without_improvement = perf, 0
            return False
        self.rounds_without_improvement += 1
        if tc.early_stopping_patience == 0:
            return False
        if tc.early_stopping_buffer is not None and self.iteration < tc.early_stopping_buffer:
            return False
        return self.rounds_without_improvement >= tc.early_stopping_patience

    def _checkpoint(self, it: int, perf: float, loss: float, final: bool, rng_by_rank: list[Any] | None = None) -> None:
        from eir_core.bundle import save_bundle

        if final or self.keeper.is_better(perf):
            path = self.run_dir / "saved_models" / checkpoint_name(self.run_name, it, perf)
            in_stats = {n: c.stats for n, c in self.data.inputs.items() if isinstance(c, ArrayColumn)}
            out_stats = {n: c.stats for n, c in self.data.outputs.items()}
            save_bundle(path, self.manifest(it, perf, loss), self.model.state_dict(), in_stats, out_stats)
            self.keeper.add(path, it, perf, protect=final)
            log.info("checkpoint: %s", path.name)
        self._save_resume(it, rng_by_rank)

    def _save_resume(self, it: int, rng_by_rank: list[Any] | None) -> None:
        info: dict[str, Any] = {
            "iteration": it,
            "best_perf": self.best_perf,
            "rounds": self.rounds_without_improvement,
            "schedule": self.schedule.state_dict(),
            "rng": self.rng.bit_generator.state,
            "valid_history": self.valid_history,
            "world_size": self.dist.world_size,
            "job_id": self.dist.job_id,
        }
        if rng_by_rank is not None:
            info["rng_by_rank"] = rng_by_rank
        save_resume_state(self.run_dir / "resume" / "state.safetensors", self.model, self.optimizer, info)

    def _resume(self) -> None:
        """Every rank loads the state rank 0 reads (the run folder need only exist where rank 0 runs)."""
        path = self.run_dir / "resume" / "state.safetensors"
        raw = self.dist.broadcast_bytes(path.read_bytes() if self.dist.is_main else None)
        info = load_resume_state(raw, self.model, self.optimizer, source=str(path))
        self.iteration = self._weights_at = int(info["iteration"])
        self.best_perf = info["best_perf"]
        self.rounds_without_improvement = int(info["rounds"])
        self.schedule.load_state_dict(info["schedule"])
        self.valid_history = [tuple(v) for v in info["valid_history"]]  # type: ignore[misc]
        saved_world = int(info.get("world_size", 1))
        by_rank = info.get("rng_by_rank")
        if not self.dist.enabled and saved_world == 1:
            self.rng.bit_generator.state = info["rng"]
        elif by_rank is not None and len(by_rank) == self.dist.world_size:
            mine = by_rank[self.dist.rank]
            self.rng.bit_generator.state = mine["numpy"]
            torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(mine["torch"])), dtype=torch.uint8))
        else:
            # Data order depends only on (seed, epoch), so it carries over; the random streams of
            # dropout and imputation cannot, and start afresh for this iteration and rank.
            why = (
                f"it was saved by {saved_world} process(es), this run has {self.dist.world_size}"
                if saved_world != self.dist.world_size
                else "it was saved after a process failed"
            )
            log.warning("the resume state has no random streams for this rank (%s): reseeded", why)
            self.rng = np.random.default_rng([self.opts.seed, self.dist.rank, self.iteration])
            torch.manual_seed(self.opts.seed * 1000 + 7919 * self.dist.rank + self.iteration)
        if self.dist.is_main:
            self.keeper.scan()
        log.info("resuming at iteration %d of %d", self.iteration, self.total_iters)

    def _latent_labels(self, ids: list[str]) -> tuple[list[str] | None, str]:
        """Colour t-SNE points by the first categorical column of a tabular input, if any."""
        pos = {sid: i for i, sid in enumerate(self.data.ids)}
        for name, col in self.data.inputs.items():
            if isinstance(col, TabularColumn) and col.encoding.cat_columns:
                c = col.encoding.cat_columns[0]
                vocab = col.encoding.categories[c]
                return [vocab[int(col.cat[pos[i], 0])] for i in ids], f"{name}.{c}"
        return None, ""

    def _plot_latents(self, iteration: int, layer: str, ids: list[str]) -> None:
        labels, by = self._latent_labels(ids)
        folder = self.run_dir / "latents" / "latent_outputs" / str(iteration) / layer
        title = f"t-SNE of {layer} at iteration {iteration} ({len(ids)} validation samples)"
        title += f", coloured by {by}" if by else ""
        self.renderer.submit(
            "tsne",
            batches=[str(p) for p in sorted(folder.glob("batch_*.npy"))],
            labels=labels,
            paths=[str(folder / "tsne.png"), str(self.run_dir / "latents_visualization_tsne.png")],
            title=title,
        )

    def _write_histories(self) -> None:
        def write(path: Path, header: str, rows: list[tuple[Any, ...]]) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            text = "".join(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in r) + "\n" for r in rows)
            path.write_text(header + "\n" + text)

        write(self.run_dir / "train_average_history.log", "iteration,loss-average", self.train_history)
        write(
            self.run_dir / "validation_average_history.log", "iteration,loss-average,perf-average", self.valid_history
        )
        for n, rows in self.output_history.items():
            d = self.run_dir / "results" / n / n
            write(d / f"validation_{n}_history.log", f"iteration,{n}_loss", [r[:2] for r in rows])
        self._plot()

    def _plot(self) -> None:
        skip = self.cfg.global_config.visualization_logging.plot_skip_steps
        # Every 5th training point is plenty for a curve and keeps the job line small.
        train = self.train_history[::5]
        curves = [
            (
                self.run_dir / "training_curve_LOSS_1.png",
                train,
                [(v[0], v[1]) for v in self.valid_history],
                "loss-average",
            ),
            (
                self.run_dir / "training_curve_PERF-AVERAGE_1.png",
                [],
                [(v[0], v[2]) for v in self.valid_history],
                "perf-average",
            ),
        ]
        for n, rows in self.output_history.items():
            curves.append(
                (
                    self.run_dir / "results" / n / n / "training_curve_LOSS.png",
                    [],
                    [(r[0], r[1]) for r in rows],
                    f"{n} validation MSE",
                )
            )
        for path, tr, va, title in curves:
            self.renderer.submit("curve", path=str(path), train=tr, valid=va, title=title, skip=skip)

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> None:
        distributed = self.dist.enabled

        def handler(signum: int, frame: FrameType | None) -> None:
            if self.stop_signal is not None:
                # Alone, a second signal aborts the save. Under torchrun, repeats are the
                # launcher's echo of a Ctrl-C or its SIGTERM once another rank has exited; they
                # must not cut rank 0's checkpoint short (torchrun SIGKILLs a rank that hangs).
                if distributed:
                    return
                raise KeyboardInterrupt
            self.stop_signal = signum
            again = "" if distributed else " (again to abort)"
            log.warning("signal %d: finishing this step, then saving a checkpoint%s", signum, again)

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def process_age_s() -> float:
    """Seconds since this process started (Linux /proc; elsewhere since import of this module)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED_AT


_IMPORTED_AT = time.perf_counter()


def run_seed() -> int:
    raw = os.environ.get("EIR_SEED", "0")
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"EIR_SEED={raw!r} is not an integer") from None
