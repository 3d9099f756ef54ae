"""The diffusion noise schedule and samplers of EIR 0.25, in NumPy (no torch, no diffusers).

Training (EIR's ``step_modules/diffusion.py``): the betas of diffusers'
``DDPMScheduler(num_train_timesteps=T, beta_schedule=S, rescale_betas_zero_snr=True)``; x0 is
noised at an integer t uniform in [0, T) and the model predicts v (v-prediction).

Sampling (EIR's ``get_scheduler``): a diffusers scheduler built from those betas with
``prediction_type="v_prediction"``, ``timestep_spacing="trailing"`` and ``set_timesteps(steps)``.
Each step here is that scheduler's ``step`` in float64, precomputed as per-step coefficients:
``x_prev = cx x + cv v + cm m_prev + cn noise`` (``m_prev``: the data prediction a multistep
solver kept from the step before). Two places where diffusers' own output is unusable differ:

- DPM-Solver: built as EIR builds it, the first sigma is infinite (alphas_cumprod[T-1] == 0, zero
  terminal SNR) and every sample is NaN. Here alphas_cumprod[T-1] is 2**-24, as diffusers sets it
  when the scheduler itself is told ``rescale_betas_zero_snr=True``.
- Trailing timesteps: for some (T, steps) (T=500: steps 61, 103, 121, ...) diffusers' float
  ``arange`` yields one timestep too many, a -1 that indexes alphas_cumprod[-1]. Here there are
  always ``steps`` timesteps, the first ``steps`` of diffusers'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
SAMPLERS = ("ddpm", "ddim", "dpm_solver")
BETA_START, BETA_END = 0.0001, 0.02  # diffusers' defaults, which EIR keeps
DPM_TERMINAL_ALPHA_CUMPROD = 2.0**-24  # diffusers' stand-in for 0 (the smallest fp16 subnormal)


def _readonly(a: npt.NDArray[np.generic]) -> None:
    a.setflags(write=False)


def base_betas(time_steps: int, beta_schedule: str) -> F64:
    """A schedule's betas before the zero-terminal-SNR rescale (diffusers' formulas, in float64)."""
    if beta_schedule == "linear":
        return np.linspace(BETA_START, BETA_END, time_steps, dtype=np.float64)
    if beta_schedule == "scaled_linear":
        return np.linspace(BETA_START**0.5, BETA_END**0.5, time_steps, dtype=np.float64) ** 2
    if beta_schedule == "sigmoid":  # GeoDiff: a sigmoid over [-6, 6] mapped onto [start, end]
        s = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, time_steps, dtype=np.float64)))
        return s * (BETA_END - BETA_START) + BETA_START
    if beta_schedule == "squaredcos_cap_v2":  # GLIDE cosine: betas from alpha_bar(t), capped at 0.999
        edges = np.arange(time_steps + 1, dtype=np.float64) / time_steps
        alpha_bar = np.cos((edges + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.asarray(np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.999), dtype=np.float64)
    raise ValueError(f"beta_schedule: must be one of {', '.join(BETA_SCHEDULES)}, got {beta_schedule!r}")


def rescale_zero_terminal_snr(betas: F64) -> F64:
    """Lin et al. 2023, Algorithm 1: shift and scale sqrt(alphas_cumprod) so it ends at exactly 0
    (zero SNR at t = T-1) and keeps its first value; the last beta becomes 1."""
    root = np.sqrt(np.cumprod(1.0 - betas))
    first, last = root[0], root[-1]
    root = (root - last) * (first / (first - last))
    ac = root**2
    alphas = np.concatenate([ac[:1], ac[1:] / ac[:-1]])
    return np.asarray(1.0 - alphas, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """The training noise schedule: betas and alphas_cumprod (float64, read-only, length T)."""

    time_steps: int
    beta_schedule: str
    betas: F64
    alphas_cumprod: F64

    @classmethod
    def build(cls, time_steps: int, beta_schedule: str) -> NoiseSchedule:
        if isinstance(time_steps, bool) or not isinstance(time_steps, int | np.integer) or time_steps < 2:
            raise ValueError(f"time_steps: must be a whole number >= 2, got {time_steps!r}")
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule: must be one of {', '.join(BETA_SCHEDULES)}, got {beta_schedule!r}")
        betas = rescale_zero_terminal_snr(base_betas(int(time_steps), beta_schedule))
        ac = np.cumprod(1.0 - betas, dtype=np.float64)
        ac[-1] = 0.0  # exactly 0 already (the last beta is 1 - 0/x); stated, not left to rounding
        _readonly(betas)
        _readonly(ac)
        return cls(int(time_steps), beta_schedule, betas, ac)

    def coefficients(self) -> tuple[F32, F32]:
        """(sqrt(ac), sqrt(1 - ac)) as fresh float32 arrays, for indexing by t on a device."""
        return np.sqrt(self.alphas_cumprod).astype(np.float32), np.sqrt(1.0 - self.alphas_cumprod).astype(np.float32)

    def noise(self, x0: npt.NDArray[np.floating], eps: npt.NDArray[np.floating], t: npt.ArrayLike) -> tuple[F32, F32]:
        """(x_t, v) for a batch: x_t = sqrt(ac[t]) x0 + sqrt(1-ac[t]) eps, v = sqrt(ac[t]) eps - sqrt(1-ac[t]) x0."""
        t_arr = np.asarray(t)
        if t_arr.ndim != 1 or not np.issubdtype(t_arr.dtype, np.integer):
            raise ValueError(f"t: must be a 1-d integer array, got {t_arr.dtype} of shape {t_arr.shape}")
        if t_arr.size and (t_arr.min() < 0 or t_arr.max() >= self.time_steps):
            raise ValueError(f"t: must lie in [0, {self.time_steps}), got {t_arr.min()}..{t_arr.max()}")
        if x0.shape != eps.shape or x0.shape[:1] != t_arr.shape:
            raise ValueError(f"x0 {x0.shape}, eps {eps.shape} and t {t_arr.shape} must share the batch dimension")
        shape = (-1,) + (1,) * (x0.ndim - 1)
        a = np.sqrt(self.alphas_cumprod[t_arr]).reshape(shape)
        s = np.sqrt(1.0 - self.alphas_cumprod[t_arr]).reshape(shape)
        x = np.asarray(x0, dtype=np.float64)
        e = np.asarray(eps, dtype=np.float64)
        return (a * x + s * e).astype(np.float32), (a * e - s * x).astype(np.float32)


def trailing_timesteps(time_steps: int, steps: int) -> I64:
    """diffusers' ``timestep_spacing="trailing"``: round(T - k T/steps) - 1 for k in [0, steps)."""
    ts = np.round(np.arange(time_steps, 0, -time_steps / steps)).astype(np.int64)[:steps] - 1
    if len(ts) != steps or ts[-1] < 0 or np.any(np.diff(ts) >= 0):  # cannot happen: spacing >= 1
        raise RuntimeError(f"trailing timesteps for T={time_steps}, steps={steps} came out as {ts}")
    return ts


@dataclass
class SamplerState:
    """One request's progress through a Sampler: the next step's index, and (DPM-Solver) the data
    prediction of the step before."""

    index: int = 0
    prev_x0: F64 | None = field(default=None, repr=False)


class Sampler:
    """A sampler's per-step coefficients for (schedule, kind, steps, eta). Immutable: one instance
    serves any number of requests and threads, each with its own ``new_state()``."""

    def __init__(self, schedule: NoiseSchedule, kind: str, inference_steps: int, eta: float = 0.2) -> None:
        T = schedule.time_steps
        if kind not in SAMPLERS:
            raise ValueError(f"kind: must be one of {', '.join(SAMPLERS)} (diffusion_sampler), got {kind!r}")
        if isinstance(inference_steps, bool) or not isinstance(inference_steps, int | np.integer):
            raise ValueError(f"inference_steps: must be a whole number, got {inference_steps!r}")
        if not 1 <= inference_steps <= T:
            raise ValueError(f"inference_steps: must be from 1 to {T} (the trained time steps), got {inference_steps}")
        if isinstance(eta, bool) or not isinstance(eta, int | float) or not math.isfinite(eta) or eta < 0:
            raise ValueError(f"eta: must be a finite number >= 0 (diffusion_eta), got {eta!r}")
        if kind == "ddim" and eta > 1:
            # The first step has alphas_cumprod = 0, where diffusers takes sqrt(1 - a_prev - std^2) of
            # (1 - a_prev)(1 - eta^2) < 0: NaN.
            raise ValueError(f"eta: DDIM needs eta <= 1 on a zero-terminal-SNR schedule, got {eta}")
        self._kind, self._steps, self._eta = kind, int(inference_steps), float(eta)
        ts = trailing_timesteps(T, self._steps)
        _readonly(ts)
        self._timesteps = ts
        build = {"ddpm": self._ddpm, "ddim": self._ddim, "dpm_solver": self._dpm_solver}[kind]
        table = np.zeros((self._steps, 6), dtype=np.float64)  # cx, cv, cm, cn, x0 from x, x0 from v
        for i in range(self._steps):
            table[i] = build(schedule, i)
        _readonly(table)
        self._table = table

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def steps(self) -> int:
        return self._steps

    @property
    def eta(self) -> float:
        return self._eta

    @property
    def timesteps(self) -> I64:
        return self._timesteps

    def _ddpm(self, s: NoiseSchedule, i: int) -> tuple[float, ...]:
        # DDPMScheduler.step: the posterior mean of x_prev given x0 = sqrt(a) x - sqrt(1-a) v, where
        # prev is the next timestep of the schedule (alphas_cumprod 1 after the last), plus
        # sqrt(variance) noise when t > 0. At the last step the variance is 0 and diffusers adds
        # sqrt(1e-20) = 1e-10 times fresh noise (its clamp before a log); that is dropped here.
        ac = s.alphas_cumprod
        a = float(ac[self._timesteps[i]])
        a_prev = float(ac[self._timesteps[i + 1]]) if i + 1 < self._steps else 1.0
        alpha, beta = a / a_prev, 1.0 - a / a_prev
        c_x0 = math.sqrt(a_prev) * beta / (1.0 - a)
        c_xt = math.sqrt(alpha) * (1.0 - a_prev) / (1.0 - a)
        var = (1.0 - a_prev) / (1.0 - a) * beta if i + 1 < self._steps else 0.0
        ra, rs = math.sqrt(a), math.sqrt(1.0 - a)
        return c_x0 * ra + c_xt, -c_x0 * rs, 0.0, math.sqrt(var), ra, -rs

    def _ddim(self, s: NoiseSchedule, i: int) -> tuple[float, ...]:
        # DDIMScheduler.step: prev is t - T // steps (not the next timestep of the schedule) and
        # alphas_cumprod 1 below 0 (set_alpha_to_one); sigma = eta sqrt((1-a_p)/(1-a) (1 - a/a_p)).
        t = int(self._timesteps[i])
        prev = t - s.time_steps // self._steps
        a = float(s.alphas_cumprod[t])
        a_prev = float(s.alphas_cumprod[prev]) if prev >= 0 else 1.0
        sigma = self._eta * math.sqrt((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev))
        ra, rs, rp = math.sqrt(a), math.sqrt(1.0 - a), math.sqrt(a_prev)
        d = math.sqrt(max(1.0 - a_prev - sigma * sigma, 0.0))  # times eps = sqrt(a) v + sqrt(1-a) x
        return rp * ra + d * rs, -rp * rs + d * ra, 0.0, sigma, ra, -rs

    def _sigma(self, s: NoiseSchedule, i: int) -> float:
        # DPMSolverMultistepScheduler's sigma = sqrt((1-a)/a); 0 after the last step (final_sigmas_type="zero").
        if i >= self._steps:
            return 0.0
        a = max(float(s.alphas_cumprod[self._timesteps[i]]), DPM_TERMINAL_ALPHA_CUMPROD)
        return math.sqrt((1.0 - a) / a)

    def _dpm_solver(self, s: NoiseSchedule, i: int) -> tuple[float, ...]:
        # DPM-Solver++ (2M, midpoint), diffusers' defaults: first order at the first step (no history)
        # and at the last (final sigma 0, so the result is the data prediction m0); second order between.
        # alpha = 1/sqrt(1+sigma^2), sigma_t = sigma alpha, lambda = log(alpha/sigma_t) = -log(sigma).
        sig_s = self._sigma(s, i)
        alpha_s = 1.0 / math.sqrt(1.0 + sig_s * sig_s)
        m_x, m_v = alpha_s, -sig_s * alpha_s  # m0 = alpha_s x - sigma_s v
        sig_t = self._sigma(s, i + 1)
        if sig_t == 0.0:
            return m_x, m_v, 0.0, 0.0, m_x, m_v
        alpha_t = 1.0 / math.sqrt(1.0 + sig_t * sig_t)
        h = math.log(sig_s) - math.log(sig_t)
        ratio = (sig_t * alpha_t) / (sig_s * alpha_s)
        c = -alpha_t * math.expm1(-h)  # times the data term
        if i == 0:
            return ratio + c * m_x, c * m_v, 0.0, 0.0, m_x, m_v
        r0 = (math.log(self._sigma(s, i - 1)) - math.log(sig_s)) / h
        k = 1.0 + 0.5 / r0  # D0 + D1/2 = m0 + (m0 - m_prev) / (2 r0)
        return ratio + c * k * m_x, c * k * m_v, -c * 0.5 / r0, 0.0, m_x, m_v

    def new_state(self) -> SamplerState:
        return SamplerState()

    def needs_noise(self, i: int) -> bool:
        """Whether step i adds fresh noise (then ``step`` requires it): DDPM but its last step, DDIM
        with eta > 0 where the step has variance; never DPM-Solver."""
        return bool(self._table[i, 3] != 0.0)

    def done(self, state: SamplerState) -> bool:
        return state.index >= self._steps

    def step(
        self,
        state: SamplerState,
        v: npt.NDArray[np.floating],
        x: npt.NDArray[np.floating],
        noise: npt.NDArray[np.floating] | None,
    ) -> F32:
        """x at timesteps[state.index] and the model's v there -> x at the next; advances state.
        Elementwise, so a leading batch dimension (all at the same step) changes nothing."""
        i = state.index
        if i >= self._steps:
            raise ValueError(f"state: all {self._steps} steps of this sampler are done")
        if v.shape != x.shape:
            raise ValueError(f"v: shape {v.shape} differs from x's {x.shape}")
        cx, cv, cm, cn, mx, mv = (float(c) for c in self._table[i])
        xd = np.asarray(x, dtype=np.float64)
        vd = np.asarray(v, dtype=np.float64)
        out = cx * xd + cv * vd
        if cm != 0.0:
            if state.prev_x0 is None or state.prev_x0.shape != x.shape:
                raise ValueError("state: has no data prediction of x's shape from the step before")
            out += cm * state.prev_x0
        if cn != 0.0:
            if noise is None or noise.shape != x.shape:
                raise ValueError(f"noise: step {i} needs standard normal noise of shape {x.shape}")
            out += cn * np.asarray(noise, dtype=np.float64)
        state.prev_x0 = mx * xd + mv * vd if self._kind == "dpm_solver" else None
        state.index = i + 1
        return out.astype(np.float32)
