"""``loss: diffusion`` from config to samples: EIR's rules, its training target, the bundle's
sampling record, and generation by the sampler on both runtimes (tiny models, few steps)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from eir_core.cli.train import main as eirtrain
from eir_core.config.load import build_experiment_config
from eir_core.diffusion import NoiseSchedule
from eir_core.diffusion_sampling import SamplingParams
from eir_core.errors import ConfigError
from eir_core.model.spec import timestep_key
from eir_core.predict import Predictor
from eir_core.train.steps import Noiser
from tests.helpers import diffusion_configs

ROOT = Path(__file__).resolve().parents[2]
LABEL = "mnist_label"


def _files(args: list[str]) -> tuple[list[Path], list[Path], list[Path]]:
    i, o = args.index("--input_configs"), args.index("--output_configs")
    return [Path(args[1])], [Path(a) for a in args[i + 1 : o]], [Path(args[o + 1])]


def _build(tmp: Path, digits: Path, overrides: list[str] | None = None, **kw: Any) -> Any:
    g, i, o = _files(diffusion_configs(tmp, digits, tmp / "run", **kw))
    return build_experiment_config(g, i, o, override_tokens=overrides or [])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--output.model_config.model_type=lcl"], "loss=diffusion needs model_config.model_type: cnn"),
        (
            ["--output.sampling_config.diffusion_inference_steps=21"],
            r"diffusion_inference_steps \(21\) must be <= output_type_info.diffusion_time_steps \(20\)",
        ),
        (["--input_mnist_array.input_type_info.modality_dropout_rate=0.1"], "must be 0 for the array a diffusion"),
        (["--output.output_info.output_name=other"], "needs an input config with input_name 'other'"),
    ],
)
def test_eir_rules_are_one_line_errors_naming_the_file(
    tmp_path: Path, digits_dir: Path, overrides: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        _build(tmp_path, digits_dir, overrides)
    assert "\n" not in str(e.value)
    if "output." in overrides[0]:
        assert str(tmp_path / "output.yaml") in str(e.value)


def test_same_name_but_other_source_and_guidance_without_dropout(tmp_path: Path, digits_dir: Path) -> None:
    with pytest.raises(ConfigError, match="for diffusion both must be the same source"):
        _build(tmp_path, digits_dir, [f"--input_mnist_array.input_info.input_source={tmp_path}"])
    with pytest.raises(ConfigError, match="diffusion_guidance_scale needs a conditioning input.*'mnist_label'"):
        _build(tmp_path, digits_dir, label_dropout=0.0, sampling={"diffusion_guidance_scale": 2.0})
    cfg = _build(tmp_path, digits_dir, sampling={"diffusion_guidance_scale": 2.0})
    assert cfg.output_configs[0].sampling_config.diffusion_guidance_scale == 2.0
    with pytest.raises(ConfigError, match="diffusion_sampler"):
        _build(tmp_path, digits_dir, ["--output.sampling_config.diffusion_sampler=euler"])


def test_example_configs_validate(tmp_path: Path, digits_dir: Path) -> None:
    ex = ROOT / "examples" / "diffusion"
    src = [
        f"--input_mnist_array.input_info.input_source={digits_dir / 'mnist_npy'}",
        f"--input_mnist_label.input_info.input_source={digits_dir / 'mnist_labels.csv'}",
        f"--output.output_info.output_source={digits_dir / 'mnist_npy'}",
    ]
    cfg = build_experiment_config(
        [ex / "globals.yaml"],
        [ex / "input_mnist_array.yaml", ex / "input_mnist_label.yaml"],
        [ex / "output.yaml"],
        override_tokens=src,
    )
    ti = cfg.output_configs[0].output_type_info
    assert (ti.loss, ti.diffusion_time_steps, ti.diffusion_beta_schedule) == ("diffusion", 500, "linear")


def test_training_target_is_eirs_v_prediction() -> None:
    """The trainer's noised input and target equal the schedule's (EIR's) formulas for the
    timesteps and noise the generator draws."""
    schedule = NoiseSchedule.build(50, "linear")
    noiser = Noiser({"x": schedule}, torch.device("cpu"))
    x0 = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    inputs: dict[str, Any] = {"x": x0.clone()}
    targets: dict[str, torch.Tensor] = {}
    noiser.apply_(inputs, targets, {"x": np.ones(6, bool)}, torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    t = torch.randint(0, 50, (6,), generator=gen)
    eps = torch.randn((6, 1, 8, 8), generator=gen)
    want_x, want_v = schedule.noise(x0.numpy(), eps.numpy(), t.numpy())
    assert torch.equal(inputs[timestep_key("x")], t)
    np.testing.assert_allclose(inputs["x"].numpy(), want_x, atol=1e-6)
    np.testing.assert_allclose(targets["x"].numpy(), want_v, atol=1e-6)
    # a row without its image has no target
    inputs, targets = {"x": x0.clone()}, {}
    noiser.apply_(inputs, targets, {"x": np.array([True, False, True, True, True, True])}, None)
    assert torch.isnan(targets["x"][1]).all() and not torch.isnan(targets["x"][0]).any()


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("diffusion")
    args = diffusion_configs(
        tmp / "cfg",
        digits_dir,
        tmp / "run",
        sampling={"diffusion_guidance_scale": 2.0},
        epochs=1,
        latent_layers=["input_modules.mnist"],
    )
    assert eirtrain(args) == 0
    return tmp / "run"


def _latest(run: Path) -> Path:
    return max(
        (run / "saved_models").glob("*.safetensors"), key=lambda p: int(p.name.split("_checkpoint_")[1].split("_")[0])
    )


def test_run_writes_samples_curves_and_a_bundle_that_records_the_sampler(diffusion_run: Path) -> None:
    bundle = _latest(diffusion_run)
    p = Predictor.from_path(bundle, device="cpu")
    info = p.manifest.diffusion_outputs["mnist"]
    assert (info.time_steps, info.inference_steps, info.sampler, info.beta_schedule) == (20, 5, "ddim", "linear")
    assert info.guidance_scale == 2.0 and info.guidable_inputs == [LABEL]
    assert p.optional_inputs == {"mnist", LABEL}
    assert p.manifest.info("cpu")["outputs"]["mnist"]["diffusion"]["sampler"] == "ddim"
    history = (diffusion_run / "validation_average_history.log").read_text().strip().splitlines()
    assert len(history) >= 3 and all(np.isfinite(float(r.split(",")[1])) for r in history[1:])
    manual = sorted((diffusion_run / "results" / "mnist" / "mnist" / "samples").glob("*/manual"))
    assert manual, "no manual samples"
    meta = json.loads((manual[-1] / "meta.json").read_text())
    assert len(meta) == 2
    arr = np.load(manual[-1] / f"{meta['manual_0']['generated']}")
    assert arr.shape == (1, 8, 8) and np.isfinite(arr).all()
    assert (manual[-1] / "grid.png").exists()
    # curves and latents as for an MSE output
    assert (diffusion_run / "training_curve_LOSS_1.png").exists()
    latents = sorted((diffusion_run / "latents" / "latent_outputs").glob("*/input_modules.mnist/batch_*.npy"))
    assert latents and np.load(latents[-1])["Latent"].shape[1] > 0


def test_label_only_generation_is_seeded_per_item_and_same_on_onnx(diffusion_run: Path) -> None:
    from eir_core.onnx_runtime import OnnxPredictor

    bundle = _latest(diffusion_run)
    torch_p = Predictor.from_path(bundle, device="cpu")
    onnx_p = OnnxPredictor.from_path(bundle)
    items = [{LABEL: {"CLASS": "3"}}, {LABEL: {"CLASS": "7"}}, {LABEL: {"CLASS": "3"}}]
    a = torch_p.predict(items, seeds=[1, 2, 3])
    alone = torch_p.predict(items[1:2], seeds=[2])
    np.testing.assert_allclose(a[1]["mnist"], alone[0]["mnist"], atol=1e-3)
    assert not np.allclose(a[0]["mnist"], a[2]["mnist"])  # same label, other seed: another digit
    b = onnx_p.predict(items, seeds=[1, 2, 3])
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x["mnist"], y["mnist"], atol=1e-2)
    # an image given for the denoised input is not used (EIR samples from noise in its place)
    with_image = torch_p.predict([{LABEL: {"CLASS": "3"}, "mnist": np.full((8, 8), 255, np.uint8)}], seeds=[1])
    np.testing.assert_allclose(with_image[0]["mnist"], a[0]["mnist"], atol=1e-3)


def test_sampling_parameters_change_the_sample_and_are_checked(diffusion_run: Path) -> None:
    p = Predictor.from_path(_latest(diffusion_run), device="cpu")
    item = [{LABEL: {"CLASS": "4"}}]
    base = p.predict(item, seeds=[5])[0]["mnist"]
    no_guidance = p.predict(item, seeds=[5], sampling=SamplingParams(guidance_scale=1.0))[0]["mnist"]
    assert not np.allclose(base, no_guidance)
    for sampler in ("ddpm", "ddim", "dpm_solver"):
        out = p.predict(item, seeds=[5], sampling=SamplingParams(sampler=sampler, steps=20))[0]["mnist"]
        assert out.shape == (1, 8, 8) and np.isfinite(out).all()
    for bad, msg in [
        (SamplingParams(steps=21), "steps: must be a whole number from 1 to 20"),
        (SamplingParams(steps=0), "steps"),
        (SamplingParams(sampler="euler"), "sampler: must be one of ddpm, ddim, dpm_solver"),
        (SamplingParams(eta=float("nan")), "eta"),
        (SamplingParams(guidance_scale=-1.0), "guidance_scale"),
    ]:
        with pytest.raises(ValueError, match=msg):
            p.predict(item, seeds=[5], sampling=bad)


@pytest.mark.long
def test_resume_continues_a_diffusion_run(tmp_path: Path, digits_dir: Path) -> None:
    args = diffusion_configs(tmp_path / "cfg", digits_dir, tmp_path / "run", epochs=1)
    assert eirtrain(args) == 0
    history = tmp_path / "run" / "validation_average_history.log"
    first = [int(r.split(",")[0]) for r in history.read_text().strip().splitlines()[1:]]
    assert eirtrain([*args, "--globals.basic_experiment.n_epochs=2", "--resume"]) == 0
    after = [int(r.split(",")[0]) for r in history.read_text().strip().splitlines()[1:]]
    assert after[: len(first)] == first and after[-1] == 2 * first[-1]


def test_jobs_stepped_together_give_each_its_own_samples(diffusion_run: Path) -> None:
    """The server's unit of work: one step of every job in one forward pass. Jobs at different
    steps, with different samplers and step counts, guided or not, joining late, each give the
    samples they give alone."""
    p = Predictor.from_path(_latest(diffusion_run), device="cpu")
    sampling = p.diffusion
    assert sampling is not None
    calls = [
        ([{LABEL: {"CLASS": "1"}}, {LABEL: {"CLASS": "2"}}], [11, 12], SamplingParams()),
        ([{LABEL: {"CLASS": "6"}}], [13], SamplingParams(sampler="ddpm", steps=20, guidance_scale=1.0)),
        ([{LABEL: {"CLASS": "9"}}], [14], SamplingParams(sampler="dpm_solver", steps=7)),
    ]
    alone = [p.predict(items, seeds=seeds, sampling=sp) for items, seeds, sp in calls]
    jobs = [sampling.job(items, seeds, [1.0] * len(items), sp) for items, seeds, sp in calls]
    sampling.step_jobs(p.run_batch, jobs[:1])  # the first job is a step ahead when the others join
    active = list(jobs)
    steps = 0
    while active:
        sampling.step_jobs(p.run_batch, active)
        active = [j for j in active if not j.done]
        steps += 1
    assert steps == 20  # the longest job's steps, not the sum
    for job, want in zip(jobs, alone, strict=True):
        got = p.split_outputs({"mnist": job.x}, job.n)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g["mnist"], w["mnist"], atol=1e-3)


@pytest.mark.timeout(300)
@pytest.mark.long
def test_two_processes_under_torchrun_train_a_diffusion_model(tmp_path: Path, digits_dir: Path) -> None:
    """DistributedDataParallel with the pass-through fusion and the timestep embedding: every
    parameter takes part on every rank, and rank 0's bundle samples."""
    import os
    import subprocess
    import sys

    args = diffusion_configs(tmp_path / "cfg", digits_dir, tmp_path / "run", epochs=1)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    r = subprocess.run([*cmd, "-m", "eir_core.cli.train", *args], capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "distributed: 2 processes" in r.stderr
    p = Predictor.from_path(_latest(tmp_path / "run"), device="cpu")
    assert p.manifest.training.world_size == 2
    out = p.predict([{LABEL: {"CLASS": "2"}}], seeds=[0])[0]["mnist"]
    assert out.shape == (1, 8, 8) and np.isfinite(out).all()
