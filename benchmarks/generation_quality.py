"""Label-only generation by diffusion next to the MSE model, scored in two feature spaces.

    python benchmarks/generation_quality.py [--per-label 60] [--seeds 3] [--diffusion-epochs N]
                                            [--mse-epochs N] [--guidance 1,2,3] [--samplers ddim:50,ddpm:500]
                                            [--set FILE.KEY=VALUE ...] [--name RESULTS_STEM]

The data split, judge and measures are conditional_quality.py's (1300 of scikit-learn's 8x8
digits train the generators, 497 held-out digits train the judge and the feature spaces and
are the reference). Two generators are trained with `eirtrain` on the same 1300 digits:
* MSE: the tutorial's run 2 (examples/tutorial/digits8), label-only generation with the image
  imputed as noise at scale 1 (EIR's) and 3 (this project's default for that model);
* diffusion: examples/diffusion (EIR's diffusion keys; CNN, v-prediction), generated from the
  label alone with the bundle's sampler and with each `--guidance` scale / `--samplers` choice.

Feature spaces, both fitted on the held-out digits only:
* MLP: the 16 penultimate activations of conditional_quality's MLP (64-64-16) — a classifier's
  features, which hide much of the variety within a class;
* PCA: the first 16 principal components of the raw pixels — variety in pixel space.
For each: Fréchet distance (FD) of generations vs held-out half B beside the floor (half A vs
B); also judged right, pairwise pixel distance within a digit over the real digits', copies.
Writes benchmarks/results/generation_quality.{json,md}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DIFFUSION = ROOT / "examples" / "diffusion"


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cq = _load("conditional_quality")
qm = cq.qm
LABEL = "mnist_label"


def train_diffusion(data: Path, run: Path, epochs: int | None, overrides: list[str]) -> float:
    args = [
        "--global_configs", str(DIFFUSION / "globals.yaml"),
        "--input_configs", str(DIFFUSION / "input_mnist_array.yaml"), str(DIFFUSION / "input_mnist_label.yaml"),
        "--output_configs", str(DIFFUSION / "output.yaml"),
        f"--globals.basic_experiment.output_folder={run}",
        f"--input_mnist_array.input_info.input_source={data / 'mnist_npy'}",
        f"--input_mnist_label.input_info.input_source={data / 'mnist_labels.csv'}",
        f"--output.output_info.output_source={data / 'mnist_npy'}",
        "--no-pbar",
    ]  # fmt: skip
    if epochs:
        args.append(f"--globals.basic_experiment.n_epochs={epochs}")
    args += [f"--{o}" for o in overrides]
    from eir_core.cli.train import main as eirtrain

    t0 = time.perf_counter()
    if eirtrain(args) != 0:
        sys.exit("diffusion training failed")
    return time.perf_counter() - t0


def latest_checkpoint(run: Path) -> Path:
    return max(
        (run / "saved_models").glob("*.safetensors"), key=lambda p: int(p.name.split("_checkpoint_")[1].split("_")[0])
    )


def generate(predictor: Any, output: str, digit: int, seeds: list[int], **kw: Any) -> np.ndarray:
    """Flattened 0..255 generations for ``digit`` from the label alone."""
    items = [{LABEL: {"CLASS": str(digit)}} for _ in seeds]
    out = predictor.predict(items, seeds=seeds, **kw)
    flat: np.ndarray = np.stack([o[output].reshape(-1) for o in out])
    return np.clip(flat, 0, 255).astype(np.float64)


def _env_prefix() -> str:
    """Thread settings the run was started with (they change its speed), as a shell prefix."""
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    return "".join(f"{k}={os.environ[k]} " for k in keys if k in os.environ)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-label", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--diffusion-epochs", type=int, default=None, help="override examples/diffusion's n_epochs")
    ap.add_argument("--mse-epochs", type=int, default=None, help="override the tutorial's n_epochs")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FILE.KEY=VALUE",
        help="an eirtrain override for the diffusion run, e.g. globals.optimization.lr=0.001 (repeatable)",
    )
    ap.add_argument("--name", default="generation_quality", help="results file stem in benchmarks/results")
    ap.add_argument("--guidance", default="", help="comma-separated guidance scales to add (needs label dropout)")
    ap.add_argument("--samplers", default="", help="comma-separated sampler:steps to add, e.g. ddpm:500,dpm_solver:20")
    a = ap.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    started = time.strftime("%Y-%m-%d %H:%M")
    if a.per_label < 2 or a.seeds < 1:
        sys.exit("--per-label must be >= 2 and --seeds >= 1")
    try:
        guidance = [float(g) for g in a.guidance.split(",") if g]
        samplers = [(s.split(":")[0], int(s.split(":")[1])) for s in a.samplers.split(",") if s]
    except (ValueError, IndexError):
        sys.exit("--guidance takes numbers, --samplers sampler:steps pairs (e.g. ddim:50)")

    from sklearn.decomposition import PCA
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import SVC

    from eir_core.data.builtin import load_digits_uint8, write_tutorial_layout
    from eir_core.diffusion_sampling import SamplingParams
    from eir_core.predict import Predictor

    images, labels = load_digits_uint8()
    perm = np.random.default_rng(0).permutation(len(images))
    gen_idx, clf_idx = perm[:1300], perm[1300:]
    train_px = images[gen_idx].reshape(len(gen_idx), -1).astype(np.float64)
    held_px = images[clf_idx].reshape(len(clf_idx), -1).astype(np.float64)
    held_y, train_y = labels[clf_idx], labels[gen_idx]
    judge = SVC(gamma=0.02 * 255 / 16, C=10).fit(held_px[:400] / 255.0, held_y[:400])
    judge_acc = float((judge.predict(held_px[400:] / 255.0) == held_y[400:]).mean())
    mlp = MLPClassifier(hidden_layer_sizes=(64, 64, 16), alpha=1e-3, max_iter=3000, random_state=0)
    mlp.fit(held_px / 255.0, held_y)
    pca = PCA(n_components=16, random_state=0).fit(held_px / 255.0)
    spaces = {
        "mlp": lambda x01: cq.mlp_features(mlp, x01),
        "pca": lambda x01: pca.transform(x01),
    }
    held: dict[str, dict[str, Any]] = {}
    for space, feat in spaces.items():
        rng = np.random.default_rng(2)  # the same halves in every space
        h: dict[str, Any] = {"A": {}, "B": {}, "T": {}, "pairwise_px": {}}
        for d in range(10):
            idx = rng.permutation(np.nonzero(held_y == d)[0])
            half = len(idx) // 2
            h["A"][d], h["B"][d] = feat(held_px[idx[:half]] / 255.0), feat(held_px[idx[half:]] / 255.0)
            h["T"][d] = feat(train_px[rng.permutation(np.nonzero(train_y == d)[0])] / 255.0)
            h["pairwise_px"][d] = qm.mean_pairwise_distance(held_px[idx])
        h["A_all"] = np.concatenate([h["A"][d] for d in range(10)])
        h["B_all"] = np.concatenate([h["B"][d] for d in range(10)])
        h["T_all"] = feat(train_px[rng.permutation(len(train_px))] / 255.0)
        held[space] = h

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_tutorial_layout(data, images[gen_idx], train_y, 10000)
        t_mse = cq.train_generator(data, Path(tmp) / "mse", a.mse_epochs, 1)
        t_diff = train_diffusion(data, Path(tmp) / "diffusion", a.diffusion_epochs, a.set)
        mse_p = Predictor.from_path(latest_checkpoint(Path(tmp) / "mse"), device="cpu")
        diff_p = Predictor.from_path(latest_checkpoint(Path(tmp) / "diffusion"), device="cpu")
        diff_valid = (Path(tmp) / "diffusion" / "validation_average_history.log").read_text().strip().splitlines()[-1]

    n_per_seed = int(np.ceil(a.per_label / a.seeds))
    seeds = {d: [10_000 * s + 100 * d + k for s in range(a.seeds) for k in range(n_per_seed)][: a.per_label]
             for d in range(10)}  # fmt: skip
    info = diff_p.manifest.diffusion_outputs["mnist"]
    variants: dict[str, tuple[Any, str, dict[str, Any]]] = {
        "mse, noise scale 1": (mse_p, cq.OUTPUT, {"noise_scale": 1.0}),
        "mse, noise scale 3": (mse_p, cq.OUTPUT, {"noise_scale": 3.0}),
        f"diffusion, {info.sampler} {info.inference_steps} steps (bundle default)": (diff_p, "mnist", {}),
    }
    for g in guidance:
        variants[f"diffusion, {info.sampler} {info.inference_steps} steps, guidance {g:g}"] = (
            diff_p, "mnist", {"sampling": SamplingParams(guidance_scale=g)},
        )  # fmt: skip
    for kind, steps in samplers:
        variants[f"diffusion, {kind} {steps} steps"] = (
            diff_p,
            "mnist",
            {"sampling": SamplingParams(sampler=kind, steps=steps)},
        )
    scored: dict[str, Any] = {}
    for name, (pred, output, kw) in variants.items():
        t0 = time.perf_counter()
        gens = {d: generate(pred, output, d, seeds[d], **kw) for d in range(10)}
        gen_s = time.perf_counter() - t0
        scored[name] = {space: cq.score(gens, spaces[space], judge, held[space], train_px) for space in spaces}
        scored[name]["generation_seconds"] = round(gen_s, 2)
        m, pc = scored[name]["mlp"]["overall"], scored[name]["pca"]["overall"]
        print(
            f"{name}: judged {m['judged_right']:.3f}  FD mlp {m['fd_generated']:.2f}  FD pca {pc['fd_generated']:.2f}"
            f"  pairwise {m['pairwise_px_generated_over_real']:.2f}  ({gen_s:.1f}s)",
            flush=True,
        )
    result = {
        "command": _env_prefix() + "python benchmarks/generation_quality.py " + " ".join(sys.argv[1:]),
        "commit": commit or "unknown",  # the checkout the run started from (HEAD may move meanwhile)
        "date": started,
        "generations_per_label": a.per_label,
        "judge_accuracy_on_97_unseen_real_digits": round(judge_acc, 4),
        "training_seconds": {"mse": round(t_mse, 1), "diffusion": round(t_diff, 1)},
        "diffusion_last_validation": diff_valid,
        "diffusion_parameters": sum(int(np.prod(v.shape)) for v in diff_p.model.state_dict().values()),
        "floors": {s: float(qm.frechet_distance(held[s]["A_all"], held[s]["B_all"])) for s in spaces},
        "variants": scored,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{a.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = render_md(result)
    (RESULTS / f"{a.name}.md").write_text(md)
    print(md)


def render_md(r: dict[str, Any]) -> str:
    f = r["floors"]
    lines = [
        f"# Label-only generation: diffusion vs MSE ({r['date']})",
        "",
        f"Command: `{r['command']}` at commit `{r['commit']}`, {r['date']} UTC. Both generators trained on the same "
        f"1300 of the 8x8 digits (MSE {r['training_seconds']['mse']:.0f} s, diffusion "
        f"{r['training_seconds']['diffusion']:.0f} s, {r['diffusion_parameters']:,} parameters; last diffusion "
        f"validation `{r['diffusion_last_validation']}`). {r['generations_per_label']} generations per digit; judge "
        f"accuracy on 97 unseen real digits {r['judge_accuracy_on_97_unseen_real_digits']:.3f}.",
        "",
        "FD = Fréchet distance to held-out half B, in two feature spaces fitted on held-out digits only: **MLP** "
        f"(a classifier's 16 penultimate activations; floor A vs B = {f['mlp']:.2f}) and **PCA** (16 principal "
        f"components of the raw pixels; floor {f['pca']:.2f}). Pairwise = mean pixel distance between generations "
        "of one digit over the real digits' (1 = as varied as real digits). Copies: nearest training image < 1/3 "
        "of the second nearest, or identical.",
        "",
        "| generator | judged right | FD MLP (× floor) | FD PCA (× floor) | pairwise px gen / real | copies "
        "| seconds for all |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in r["variants"].items():
        m, p = v["mlp"]["overall"], v["pca"]["overall"]
        lines.append(
            f"| {name} | {m['judged_right']:.3f} | {m['fd_generated']:.2f} ({m['fd_generated'] / f['mlp']:.1f}×) "
            f"| {p['fd_generated']:.2f} ({p['fd_generated'] / f['pca']:.1f}×) "
            f"| {m['pairwise_px_generated_over_real']:.2f} | {m['copies_flagged']} of {m['generations']} "
            f"| {v['generation_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
