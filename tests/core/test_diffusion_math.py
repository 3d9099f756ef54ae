"""eir_core.diffusion (NumPy) against diffusers 0.42.1, the version EIR 0.25 trains and samples with.

diffusers is a test-only reference (requirements-dev.txt). Its schedulers are built as EIR 0.25
builds them: ``initialize_diffusion_config`` (step_modules/diffusion.py) for training and
``get_scheduler`` (evaluation_modules/train_handlers_array_output.py) for sampling, with one
deliberate difference for DPM-Solver (see test_eir_dpm_solver_is_nan_at_zero_terminal_snr).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr as diffusers_rescale

from eir_core.diffusion import (
    BETA_SCHEDULES,
    SAMPLERS,
    NoiseSchedule,
    Sampler,
    base_betas,
    rescale_zero_terminal_snr,
)

SHAPE = (2, 3, 4)  # a batch of 2
# diffusers 0.42.1's DPMSolverMultistepScheduler.set_timesteps calls np.array() on a tensor
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def eir_training_scheduler(T: int, schedule: str) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=T, beta_schedule=schedule, prediction_type="v_prediction", rescale_betas_zero_snr=True
    )


def eir_sampling_scheduler(kind: str, T: int, schedule: str, steps: int, eir_exact: bool = False):
    """EIR's get_scheduler. For dpm_solver the scheduler is also told rescale_betas_zero_snr=True
    (a no-op rescale of betas that already end at zero SNR, then alphas_cumprod[-1] = 2**-24):
    EIR's exact construction (eir_exact) samples NaN."""
    betas = eir_training_scheduler(T, schedule).betas.numpy()
    common = dict(
        num_train_timesteps=T, trained_betas=betas, prediction_type="v_prediction", timestep_spacing="trailing"
    )
    if kind == "ddpm":
        s = DDPMScheduler(**common, clip_sample=False)
    elif kind == "ddim":
        s = DDIMScheduler(**common, clip_sample=False)
    else:
        s = DPMSolverMultistepScheduler(**common, **({} if eir_exact else {"rescale_betas_zero_snr": True}))
    s.set_timesteps(steps)
    return s


def fake_v(x: np.ndarray, t: int, T: int) -> np.ndarray:
    """A deterministic stand-in for the model: depends on x and on t."""
    base = np.linspace(-1.0, 1.0, int(np.prod(SHAPE[1:]))).reshape(SHAPE[1:])
    return (0.3 * x + 0.5 * np.sin(3.0 * base + 4.0 * t / T)).astype(np.float32)


def run_ours(sampler: Sampler, T: int, x: np.ndarray, noises: np.ndarray) -> np.ndarray:
    state = sampler.new_state()
    for i, t in enumerate(sampler.timesteps):
        x = sampler.step(state, fake_v(x, int(t), T), x, noises[i] if sampler.needs_noise(i) else None)
    return x


def run_diffusers(sched, kind: str, eta: float, T: int, x: np.ndarray, noises: np.ndarray, monkeypatch) -> np.ndarray:
    # The same noise for both sides: DDIM takes it as variance_noise; DDPM draws it inside step()
    # with diffusers.utils.torch_utils.randn_tensor, imported by name into scheduling_ddpm, so that
    # name is patched to hand over step i's array. (DDPM also draws at its last step, t > 0 when
    # steps < T, and scales it by sqrt(1e-20) = 1e-10; eir_core adds no noise there.)
    current: list[torch.Tensor] = []
    monkeypatch.setattr("diffusers.schedulers.scheduling_ddpm.randn_tensor", lambda shape, **kw: current[0].clone())
    dtype = sched.alphas_cumprod.dtype
    xt = torch.from_numpy(x).to(dtype)
    for i, t in enumerate(sched.timesteps):
        v = torch.from_numpy(fake_v(xt.numpy(), int(t), T)).to(dtype)
        current[:] = [torch.from_numpy(noises[i]).to(dtype)]
        if kind == "ddim":
            xt = sched.step(v, t, xt, eta=eta, variance_noise=current[0]).prev_sample
        else:
            xt = sched.step(v, t, xt).prev_sample
    return xt.numpy()


def in_float64(sched, schedule: NoiseSchedule):
    """diffusers' step code on float64 schedule values (schedule's, checked against diffusers'
    float64 rescale below): the formulas without float32 rounding. DDPM and DDIM then run wholly
    in float64; DPM-Solver casts the sample to float32 inside step(), once per step."""
    ac = torch.from_numpy(schedule.alphas_cumprod.copy())
    if isinstance(sched, DPMSolverMultistepScheduler):
        ac[-1] = 2.0**-24  # as the scheduler sets it for zero terminal SNR
        sigmas = ((1 - ac) / ac).sqrt()[sched.timesteps]  # set_timesteps' interp at whole timesteps
        sched.sigmas = torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])
    sched.alphas_cumprod = ac
    sched.one = sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return sched


# -- the noise schedule ----------------------------------------------------------------------


@pytest.mark.parametrize("T", [500, 10])
@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
def test_base_betas_match_diffusers(schedule: str, T: int) -> None:
    # Before the rescale diffusers' betas are float32 roundings of the same formulas.
    want = DDPMScheduler(num_train_timesteps=T, beta_schedule=schedule).betas.double().numpy()
    np.testing.assert_allclose(base_betas(T, schedule), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("T", [500, 10])
@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
def test_rescale_matches_diffusers_in_float64(schedule: str, T: int) -> None:
    base = base_betas(T, schedule)
    want = diffusers_rescale(torch.from_numpy(base)).numpy()
    got = rescale_zero_terminal_snr(base)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=0)
    np.testing.assert_allclose(
        np.cumprod(1 - got), torch.cumprod(1 - torch.from_numpy(want), 0).numpy(), rtol=1e-9, atol=1e-15
    )


@pytest.mark.parametrize("T", [500, 10])
@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
def test_schedule_matches_eirs_float32_schedule(schedule: str, T: int) -> None:
    # EIR's schedule is diffusers' float32 one. Its float32 rounding is amplified twice: betas near
    # 1e-4 are 1 - alpha with alpha near 1 (an ulp of 1 is 6e-8, so ~1e-3 relative), and the tail
    # of alphas_cumprod is sqrt(ac) - sqrt(ac[T-1]) squared (up to ~2e-5 relative on values ~1e-6).
    # So: float64 here, compared with float32 tolerances; what the model uses are the coefficients.
    ref = eir_training_scheduler(T, schedule)
    s = NoiseSchedule.build(T, schedule)
    assert s.betas.dtype == s.alphas_cumprod.dtype == np.float64 and s.betas.shape == (T,)
    assert s.alphas_cumprod[-1] == 0.0 and s.betas[-1] == 1.0  # zero terminal SNR
    np.testing.assert_allclose(s.betas, ref.betas.double().numpy(), rtol=0, atol=1e-5)
    ac = ref.alphas_cumprod.double().numpy()
    np.testing.assert_allclose(s.alphas_cumprod, ac, rtol=0, atol=5e-6)
    big = ac > 1e-3
    np.testing.assert_allclose(s.alphas_cumprod[big], ac[big], rtol=1e-5)
    a, b = s.coefficients()
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_allclose(a, np.sqrt(ac), rtol=0, atol=3e-6)
    np.testing.assert_allclose(b, np.sqrt(1 - ac), rtol=0, atol=2e-5)  # 1-ac: a third cancellation


@pytest.mark.parametrize("schedule", BETA_SCHEDULES)
def test_noise_is_eirs_q_sample_and_v_target(schedule: str) -> None:
    T = 500
    ref = eir_training_scheduler(T, schedule)
    sqrt_ac, sqrt_1m = ref.alphas_cumprod.sqrt(), (1.0 - ref.alphas_cumprod).sqrt()
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((6, 3, 5)).astype(np.float32)
    eps = rng.standard_normal((6, 3, 5)).astype(np.float32)
    t = np.array([0, 1, 250, 498, 499, 37], dtype=np.int64)
    # EIR: q_sample and v_target, with extract() = gather at t and reshape to (B, 1, 1)
    a = sqrt_ac.gather(-1, torch.from_numpy(t)).reshape(6, 1, 1)
    b = sqrt_1m.gather(-1, torch.from_numpy(t)).reshape(6, 1, 1)
    want_x = (a * torch.from_numpy(x0) + b * torch.from_numpy(eps)).numpy()
    want_v = (a * torch.from_numpy(eps) - b * torch.from_numpy(x0)).numpy()
    got_x, got_v = NoiseSchedule.build(T, schedule).noise(x0, eps, t)
    assert got_x.dtype == got_v.dtype == np.float32 and got_x.shape == x0.shape
    np.testing.assert_allclose(got_x, want_x, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got_v, want_v, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got_x[4], eps[4])  # t = T-1: pure noise
    np.testing.assert_array_equal(got_v[4], -x0[4])


# -- the samplers ----------------------------------------------------------------------------

CASES = [(T, steps) for T in (500, 10) for steps in (1, 7, 50, T) if steps <= T]
KINDS = [("ddpm", 0.2), ("ddim", 0.0), ("ddim", 0.2), ("dpm_solver", 0.2)]


@pytest.mark.parametrize(("T", "steps"), CASES)
@pytest.mark.parametrize("kind", SAMPLERS)
def test_timesteps_match_diffusers(kind: str, T: int, steps: int) -> None:
    want = eir_sampling_scheduler(kind, T, "linear", steps).timesteps.numpy()
    got = Sampler(NoiseSchedule.build(T, "linear"), kind, steps).timesteps
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)


def test_trailing_timesteps_drop_diffusers_spurious_minus_one() -> None:
    # diffusers' np.arange(T, 0, -T/steps) overshoots for some pairs and the extra step is -1
    # (alphas_cumprod[-1] in indexing); eir_core keeps exactly `steps`, the first of diffusers'.
    for kind in SAMPLERS:
        want = eir_sampling_scheduler(kind, 500, "linear", 61).timesteps.numpy()
        assert len(want) == 62 and want[-1] == -1
        got = Sampler(NoiseSchedule.build(500, "linear"), kind, 61).timesteps
        np.testing.assert_array_equal(got, want[:61])


def loop_case(kind: str, eta: float, T: int, steps: int, schedule: str):
    rng = np.random.default_rng(steps * 7 + T)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    noises = rng.standard_normal((steps, *SHAPE)).astype(np.float32)
    return Sampler(NoiseSchedule.build(T, schedule), kind, steps, eta), x, noises


# Every schedule at a few step counts; every step count (all T = 500 timesteps too) on "linear".
SCHEDULE_CASES = [
    (s, T, n) for s in BETA_SCHEDULES for T, n in CASES if s == "linear" or (n in (1, 7, 50) and T == 500)
]


@pytest.mark.parametrize(("schedule", "T", "steps"), SCHEDULE_CASES)
@pytest.mark.parametrize(("kind", "eta"), KINDS)
def test_every_step_is_diffusers_step_in_float64(
    kind: str, eta: float, T: int, steps: int, schedule: str, monkeypatch
) -> None:
    # Teacher-forced: at every step both are given the same x (eir_core's float32 trajectory), v and
    # noise, and diffusers' step runs in float64, so what differs is eir_core's float32 result.
    sampler, x, noises = loop_case(kind, eta, T, steps, schedule)
    sched = in_float64(eir_sampling_scheduler(kind, T, schedule, steps), NoiseSchedule.build(T, schedule))
    current: list[torch.Tensor] = []
    monkeypatch.setattr("diffusers.schedulers.scheduling_ddpm.randn_tensor", lambda shape, **kw: current[0].clone())
    state = sampler.new_state()
    for i, t in enumerate(sampler.timesteps):
        v = fake_v(x, int(t), T)
        current[:] = [torch.from_numpy(noises[i]).double()]
        x64, v64 = torch.from_numpy(x).double(), torch.from_numpy(v).double()
        if kind == "ddim":
            want = sched.step(v64, sched.timesteps[i], x64, eta=eta, variance_noise=current[0]).prev_sample.numpy()
        else:
            want = sched.step(v64, sched.timesteps[i], x64).prev_sample.numpy()
        x = sampler.step(state, v, x, noises[i] if sampler.needs_noise(i) else None)
        np.testing.assert_allclose(x, want, rtol=2e-7, atol=2e-7, err_msg=f"step {i}, t={t}")


@pytest.mark.parametrize(("schedule", "T", "steps"), SCHEDULE_CASES)
@pytest.mark.parametrize(("kind", "eta"), KINDS)
def test_sampling_loop_matches_eirs(kind: str, eta: float, T: int, steps: int, schedule: str, monkeypatch) -> None:
    # The whole loop against diffusers in float32 as EIR runs it. Where DDPM takes every timestep,
    # its float32 coefficients near t = 0 (1 - a with a within 1e-4 of 1) are off by ~1e-3
    # relative, and the loop by up to ~3e-4: the float64 test above shows the formulas agree.
    sampler, x, noises = loop_case(kind, eta, T, steps, schedule)
    got = run_ours(sampler, T, x, noises)
    want = run_diffusers(eir_sampling_scheduler(kind, T, schedule, steps), kind, eta, T, x, noises, monkeypatch)
    assert got.dtype == np.float32 and np.all(np.isfinite(got))
    assert np.abs(want).max() > 0.5
    atol = 5e-4 if kind == "ddpm" and steps == T == 500 else 1e-4
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)


def test_eir_dpm_solver_is_nan_at_zero_terminal_snr() -> None:
    # EIR passes the rescaled betas as trained_betas without rescale_betas_zero_snr: alphas_cumprod
    # ends at 0, the first sigma is inf, alpha_t * sigma = 0 * inf, and every sample is NaN.
    sched = eir_sampling_scheduler("dpm_solver", 500, "linear", 7, eir_exact=True)
    assert np.isinf(sched.sigmas[0].item())
    x = torch.from_numpy(np.ones(SHAPE, dtype=np.float32))
    assert torch.isnan(sched.step(0.3 * x, sched.timesteps[0], x).prev_sample).all()


def test_needs_noise() -> None:
    s = NoiseSchedule.build(500, "linear")
    assert [Sampler(s, "ddpm", 7).needs_noise(i) for i in range(7)] == [True] * 6 + [False]
    assert not any(Sampler(s, "ddim", 7, 0.0).needs_noise(i) for i in range(7))
    # DDIM's step goes to t - T//steps: from 70 to -1 (alphas_cumprod 1, variance 0) at T=500 ...
    assert [Sampler(s, "ddim", 7, 0.2).needs_noise(i) for i in range(7)] == [True] * 6 + [False]
    # ... but at T=10, steps=6 the last step goes from t=1 to t=0, which has variance.
    assert Sampler(NoiseSchedule.build(10, "linear"), "ddim", 6, 0.2).needs_noise(5)
    assert not any(Sampler(s, "dpm_solver", 50).needs_noise(i) for i in range(50))


@pytest.mark.parametrize(("kind", "eta"), KINDS)
def test_batch_and_interleaved_states_match_one_by_one(kind: str, eta: float) -> None:
    T, steps = 500, 12
    sampler = Sampler(NoiseSchedule.build(T, "squaredcos_cap_v2"), kind, steps, eta)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    noises = rng.standard_normal((steps, *SHAPE)).astype(np.float32)
    batched = run_ours(sampler, T, x, noises)
    alone = [run_ours(sampler, T, x[k : k + 1], noises[:, k : k + 1]) for k in range(SHAPE[0])]
    np.testing.assert_array_equal(batched, np.concatenate(alone))
    # unbatched items (no leading dimension) as well
    single = sampler.new_state()
    xs = x[1]
    for i, t in enumerate(sampler.timesteps):
        xs = sampler.step(single, fake_v(xs, int(t), T), xs, noises[i, 1] if sampler.needs_noise(i) else None)
    np.testing.assert_array_equal(xs, alone[1][0])
    # two requests, the second starting when the first is 5 steps in, their steps interleaved
    states, xs2 = [sampler.new_state(), sampler.new_state()], [x[0:1], x[1:2]]
    for tick in range(steps + 5):
        for k, start in ((0, 0), (1, 5)):
            i = tick - start
            if 0 <= i < steps:
                assert states[k].index == i
                t = int(sampler.timesteps[i])
                nz = noises[i, k : k + 1] if sampler.needs_noise(i) else None
                xs2[k] = sampler.step(states[k], fake_v(xs2[k], t, T), xs2[k], nz)
    np.testing.assert_array_equal(np.concatenate(xs2), batched)
    assert sampler.done(states[0]) and sampler.done(states[1])
    with pytest.raises(ValueError, match="state"):
        sampler.step(states[0], xs2[0], xs2[0], xs2[0])


def test_sampler_is_immutable() -> None:
    sampler = Sampler(NoiseSchedule.build(10, "linear"), "ddim", 5)
    with pytest.raises(ValueError):
        sampler.timesteps[0] = 3
    with pytest.raises(AttributeError):
        sampler.kind = "ddpm"  # type: ignore[misc]
    schedule = NoiseSchedule.build(10, "linear")
    with pytest.raises(ValueError):
        schedule.betas[0] = 0.5


def test_errors_name_the_parameter() -> None:
    s = NoiseSchedule.build(50, "linear")
    with pytest.raises(ValueError, match="inference_steps"):
        Sampler(s, "ddim", 51)
    with pytest.raises(ValueError, match="inference_steps"):
        Sampler(s, "ddim", 0)
    with pytest.raises(ValueError, match="beta_schedule.*'cosine'"):
        NoiseSchedule.build(50, "cosine")
    with pytest.raises(ValueError, match="time_steps"):
        NoiseSchedule.build(1, "linear")
    with pytest.raises(ValueError, match="kind.*'euler'"):
        Sampler(s, "euler", 10)
    for eta in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eta"):
            Sampler(s, "ddim", 10, eta)
    with pytest.raises(ValueError, match="eta"):
        Sampler(s, "ddim", 10, 1.5)  # NaN in diffusers at zero terminal SNR
    Sampler(s, "ddpm", 10, 1.5)  # eta is not used by DDPM: accepted as EIR accepts it
    ddpm = Sampler(s, "ddpm", 10)
    x = np.zeros(SHAPE, dtype=np.float32)
    with pytest.raises(ValueError, match="noise"):
        ddpm.step(ddpm.new_state(), x, x, None)
    with pytest.raises(ValueError, match="t:"):
        s.noise(x, x, np.array([0, 50]))
