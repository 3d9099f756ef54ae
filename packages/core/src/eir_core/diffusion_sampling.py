"""Generating a diffusion output: the sampler's step loop around a runtime's forward pass.

NumPy only (the schedule and samplers are ``eir_core.diffusion``), so the PyTorch Predictor, the
ONNX Runtime one and training's sample writer all sample the same way. As in EIR, sampling
starts from noise in place of the array the output denoises (an array given for it is not
used) and runs every timestep of the sampler with the conditioning inputs held fixed.

Randomness is per item: item i's generator is ``default_rng(seed_i)``; it draws the starting
noise, then the noise of every step that adds some, so an item's sample depends on its seed
and the sampling parameters alone, not on the other items of the batch.

Classifier-free guidance (beyond EIR): with a scale ``w`` the batch is doubled, the second half
without the conditioning inputs that were trained with dropout (imputed as at training), and
the prediction is ``v_uncond + w (v_cond - v_uncond)``; ``w = 1`` is the conditional model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from eir_core.errors import InputError
from eir_core.manifest import DiffusionInfo
from eir_core.model.spec import timestep_key

if TYPE_CHECKING:
    from eir_core.diffusion import Sampler
    from eir_core.inference import ArrayBatch, Item, ItemModel

Forward = Callable[["ArrayBatch"], dict[str, np.ndarray]]
_MAX_CACHED_SAMPLERS = 32
MAX_GUIDANCE_SCALE = 20.0  # a request's bound; past a few units samples only get worse


class SamplingError(InputError, ValueError):
    """A sampling parameter is out of bounds; ``field`` names it (steps, sampler, eta, guidance_scale)."""


@dataclass(frozen=True)
class SamplingParams:
    """What a request may choose; None takes the bundle's default (its training config)."""

    steps: int | None = None
    sampler: str | None = None
    eta: float | None = None
    guidance_scale: float | None = None


@dataclass(frozen=True)
class ResolvedParams:
    steps: int
    sampler: str
    eta: float
    guidance_scale: float | None


def resolve_params(info: DiffusionInfo, params: SamplingParams) -> ResolvedParams:
    """The parameters with the bundle's defaults filled in; SamplingError naming the bad one."""
    from eir_core.diffusion import SAMPLERS

    steps = info.inference_steps if params.steps is None else params.steps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= info.time_steps:
        raise SamplingError(
            "steps", f"must be a whole number from 1 to {info.time_steps} (the trained time steps), got {steps!r}"
        )
    sampler = info.sampler if params.sampler is None else params.sampler
    if sampler not in SAMPLERS:
        raise SamplingError("sampler", f"must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    eta = info.eta if params.eta is None else params.eta
    if isinstance(eta, bool) or not isinstance(eta, int | float) or not math.isfinite(eta) or eta < 0:
        raise SamplingError("eta", f"must be a finite number >= 0, got {eta!r}")
    if params.eta is not None and eta > 1:  # past 1 DDIM's noise outgrows its variance: NaN samples
        raise SamplingError("eta", f"must be from 0 to 1 (0: deterministic DDIM, 1: DDPM-like noise), got {eta!r}")
    scale = info.guidance_scale if params.guidance_scale is None else params.guidance_scale
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale < 0:
            raise SamplingError("guidance_scale", f"must be a finite number >= 0, got {scale!r}")
        if params.guidance_scale is not None and scale > MAX_GUIDANCE_SCALE:
            raise SamplingError(
                "guidance_scale", f"must be at most {MAX_GUIDANCE_SCALE:g} (1: no guidance), got {scale!r}"
            )
        if not info.guidable_inputs:
            raise SamplingError(
                "guidance_scale",
                "this model was trained without dropout on any conditioning input, "
                "so it has no unconditional branch to guide with",
            )
    return ResolvedParams(steps, sampler, float(eta), None if scale is None else float(scale))


class DiffusionSampling:
    """The sampling loop of a model's (single) diffusion output."""

    def __init__(self, items: ItemModel) -> None:
        from eir_core.diffusion import NoiseSchedule

        (name, info), *more = items.manifest.diffusion_outputs.items()
        if more:
            raise ValueError("one diffusion output per model is supported")
        self.items = items
        self.output = name
        self.info = info
        self.shape = tuple(items.outputs[name].shape)
        self.schedule = NoiseSchedule.build(info.time_steps, info.beta_schedule)
        self._samplers: dict[tuple[str, int, float], Sampler] = {}

    def sampler(self, p: ResolvedParams) -> Sampler:
        key = (p.sampler, p.steps, p.eta)
        found = self._samplers.get(key)
        if found is None:
            if len(self._samplers) >= _MAX_CACHED_SAMPLERS:
                self._samplers.pop(next(iter(self._samplers)))
            from eir_core.diffusion import Sampler

            found = self._samplers[key] = Sampler(self.schedule, p.sampler, p.steps, p.eta)
        return found

    def job(
        self, items: Sequence[Item], seeds: Sequence[int], scales: Sequence[float], params: SamplingParams
    ) -> SampleJob:
        """A sampling job for ``items`` (checked already); ValueError for bad parameters."""
        return SampleJob(self, items, seeds, scales, resolve_params(self.info, params))

    def step_jobs(self, forward: Forward, jobs: Sequence[SampleJob]) -> None:
        """One step of every job, in one forward pass: each job's rows at its own timestep."""
        if not jobs:
            return
        parts = [j.model_rows() for j in jobs]
        batch = {k: _concat_all([p[k] for p in parts]) for k in parts[0]}
        v = np.asarray(forward(batch)[self.output], dtype=np.float32)
        at = 0
        for j in jobs:
            rows = j.rows
            j.advance(v[at : at + rows])
            at += rows

    def run(
        self,
        forward: Forward,
        items: Sequence[Item],
        seeds: Sequence[int],
        scales: Sequence[float],
        params: SamplingParams,
    ) -> dict[str, np.ndarray]:
        """Normalized samples ``{output: (N, *shape)}`` for ``items`` (checked already)."""
        job = self.job(items, seeds, scales, params)
        while not job.done:
            self.step_jobs(forward, [job])
        return {self.output: job.x}


class SampleJob:
    """One call's sampling as a small state machine: the conditioning rows (doubled with the
    unconditional ones under guidance), the current sample, the sampler's state and each
    item's generator. ``model_rows`` gives this step's model input, ``advance`` takes the
    model's output for those rows; a server runs the steps of many jobs in one forward pass
    (``DiffusionSampling.step_jobs``), and a job's result does not depend on the others."""

    def __init__(
        self,
        sampling: DiffusionSampling,
        items: Sequence[Item],
        seeds: Sequence[int],
        scales: Sequence[float],
        params: ResolvedParams,
    ) -> None:
        self.params = params
        self.output = sampling.output
        self.sampler = sampling.sampler(params)
        self.state = self.sampler.new_state()
        self.n = len(items)
        self.guidance = params.guidance_scale if params.guidance_scale not in (None, 1.0) else None
        cond = sampling.items.array_batch(items, seeds, scales)
        if self.guidance is not None:
            drop = set(sampling.info.guidable_inputs)
            bare = [{k: v for k, v in item.items() if k not in drop} for item in items]
            uncond = sampling.items.array_batch(bare, seeds, scales)
            cond = {k: _concat_all([cond[k], uncond[k]]) for k in cond}
        self.conditioning = cond
        self.rows = 2 * self.n if self.guidance is not None else self.n
        self.rngs = [np.random.default_rng(int(s)) for s in seeds]
        self.shape = sampling.shape
        self._ac = sampling.schedule.alphas_cumprod
        # Set ``track_estimate`` to keep, after each step, the model's estimate of the finished
        # sample (x0 = sqrt(ac_t) x_t - sqrt(1 - ac_t) v, v-prediction) for progress displays.
        self.track_estimate = False
        self.estimate: np.ndarray | None = None
        self.x = np.stack([g.standard_normal(self.shape, dtype=np.float32) for g in self.rngs])
        self._t_key = timestep_key(self.output)

    @property
    def done(self) -> bool:
        return self.sampler.done(self.state)

    @property
    def step_index(self) -> int:
        return self.state.index

    @property
    def steps(self) -> int:
        return len(self.sampler.timesteps)

    def model_rows(self) -> ArrayBatch:
        """This step's model input: the conditioning, the current sample and its timestep."""
        t = int(self.sampler.timesteps[self.state.index])
        batch = dict(self.conditioning)
        batch[self.output] = np.concatenate([self.x, self.x]) if self.guidance is not None else self.x
        batch[self._t_key] = np.full(self.rows, t, dtype=np.int64)
        return batch

    def advance(self, v: np.ndarray) -> None:
        """One sampler step with the model's output ``v`` for this job's rows."""
        if self.guidance is not None:
            v_cond, v_uncond = v[: self.n], v[self.n :]
            v = v_uncond + np.float32(self.guidance) * (v_cond - v_uncond)
        i = self.state.index
        if self.track_estimate:
            ac = float(self._ac[int(self.sampler.timesteps[i])])
            self.estimate = (np.float32(math.sqrt(ac)) * self.x - np.float32(math.sqrt(1.0 - ac)) * v).astype(
                np.float32
            )
        noise = (
            np.stack([g.standard_normal(self.shape, dtype=np.float32) for g in self.rngs])
            if self.sampler.needs_noise(i)
            else None
        )
        self.x = self.sampler.step(self.state, v, self.x, noise)


def _concat_all(parts: Sequence[object]) -> object:
    first = parts[0]
    if isinstance(first, dict):
        return {k: np.concatenate([p[k] for p in parts]) for k in first}  # type: ignore[index]
    return np.concatenate(parts)  # type: ignore[arg-type]
