"""Training throughput of `eirtrain` vs a bare PyTorch loop of the same model, in one run.

    python benchmarks/train_throughput.py [--size 28] [--count 10000] [--epochs 10] [--nproc 2] [--with-eir]

1. Writes the built-in digits (28x28 variant, 10 000 images by default) to a temp folder.
2. Runs `eirtrain` on the tutorial's run-1 YAMLs (examples/tutorial/) as a subprocess:
   wall time start-to-exit, time to the first training step, the training loop's own time,
   peak RSS, and the final validation MSE.
3. Runs a bare loop in this process: the same MetaModel, batch size, optimizer (AdaBelief) and
   number of iterations over a preloaded normalized tensor, with no validation, no sampling,
   no checkpoints: the floor that the trainer's loop is compared with.
4. Runs the same configs under torchrun with --nproc processes (gloo, same global batch 64, so
   32 per process; torchrun gives each process one intra-op thread). 0 skips it.
5. With --with-eir and the anchor installed (../shared/anchors/eir.sh install), runs the
   original EIR on the same data and configs for a side-by-side figure.

Prints a table and writes benchmarks/results/train_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "examples" / "tutorial"
RESULTS = ROOT / "benchmarks" / "results"


def make_data(folder: Path, size: int, count: int) -> Path:
    from eir_core.data.builtin import make_digits, write_tutorial_layout

    images, labels = make_digits(size, count)
    write_tutorial_layout(folder, images, labels, 20000)
    return folder


def run_eirtrain(data: Path, run: Path, epochs: int, nproc: int = 1) -> dict[str, float]:
    src = str(data / "mnist_npy")
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd = [
        *launcher, "-m", "eir_core.cli.train",
        "--global_configs", str(TUTORIAL / "globals.yaml"),
        "--input_configs", str(TUTORIAL / "input_mnist_array.yaml"),
        "--output_configs", str(TUTORIAL / "output.yaml"),
        f"--globals.basic_experiment.output_folder={run}",
        f"--globals.basic_experiment.n_epochs={epochs}",
        f"--input_mnist_array.input_info.input_source={src}",
        f"--output.output_info.output_source={src}",
        "--no-pbar",
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        sys.exit(f"eirtrain failed:\n{proc.stderr[-3000:]}")
    log = proc.stderr
    first = float(re.search(r"first training step done, ([0-9.]+)s", log).group(1))  # type: ignore[union-attr]
    done = re.search(r"done: (\d+) iterations in ([0-9.]+)s", log)
    assert done is not None
    iters, loop_s = int(done.group(1)), float(done.group(2))
    last_valid = (run / "validation_average_history.log").read_text().strip().splitlines()[-1].split(",")
    batch = 64
    return {
        "wall_s": round(wall, 2),
        "first_step_s": first,
        "loop_s": loop_s,
        "iterations": iters,
        "samples_per_s_whole_process": round(iters * batch / wall, 1),
        "samples_per_s_loop": round(iters * batch / loop_s, 1),
        "peak_rss_mb": round(max(peak_kb, before) / 1024, 1),  # the largest single process
        "final_validation_mse": float(last_valid[1]),
        "final_iteration": int(last_valid[0]),
    }


def bare_loop(data: Path, iterations: int, batch: int = 64) -> dict[str, float]:
    """The same model and optimizer with nothing around it."""
    from eir_core.config.load import build_experiment_config
    from eir_core.data.arrays import open_array_source
    from eir_core.data.normalization import compute_stats
    from eir_core.model.meta import InputSpec, MetaModel, ModelSpec, OutputSpec
    from eir_core.train.optim import build_optimizer

    cfg = build_experiment_config(
        [TUTORIAL / "globals.yaml"], [TUTORIAL / "input_mnist_array.yaml"], [TUTORIAL / "output.yaml"]
    )
    src = open_array_source(data / "mnist_npy")
    raw = src.read()
    stats = compute_stats(raw, "channel")
    x = stats.normalize(torch.from_numpy(raw.astype(np.float32)))
    ic, oc = cfg.input_configs[0], cfg.output_configs[0]
    spec = ModelSpec(
        inputs=[InputSpec(name="mnist", type="array", shape=src.shape, lcl=ic.model_config_.model_init_config)],
        outputs=[OutputSpec(name="mnist_output", shape=src.shape, lcl=oc.model_config_.model_init_config)],
    )
    torch.manual_seed(0)
    model = MetaModel(spec)
    opt = build_optimizer(model, cfg.global_config.optimization)
    gen = torch.Generator().manual_seed(0)
    n = x.shape[0] - 1000
    model.train()
    t0 = time.perf_counter()
    done = 0
    while done < iterations:
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n - batch + 1, batch):
            xb = x[perm[s : s + batch]]
            loss = torch.nn.functional.mse_loss(model({"mnist": xb})["mnist_output"], xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
            opt.step()
            done += 1
            if done >= iterations:
                break
    elapsed = time.perf_counter() - t0
    return {"loop_s": round(elapsed, 2), "samples_per_s": round(iterations * batch / elapsed, 1)}


def run_eir_anchor(data_root: Path, epochs: int) -> dict[str, float] | None:
    """The original EIR via shared/anchors/eir.sh, if it is installed on this machine."""
    script = ROOT.parent / "shared" / "anchors" / "eir.sh"
    anchor = Path(os.environ.get("EIR_ANCHOR_DIR", Path.home() / ".cache" / "eir-anchor"))
    if not script.is_file() or not (anchor / "eir-venv" / "bin" / "eirtrain").exists():
        print("EIR anchor not installed (bash ../shared/anchors/eir.sh install); skipping it")
        return None
    if not (anchor / "data28").exists():
        subprocess.run(["bash", str(script), "data"], check=True, capture_output=True)
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["bash", str(script), "train", "bench28", "a", "28", f"--globals.basic_experiment.n_epochs={epochs}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    log = (anchor / "runs" / "bench28.log").read_text() if (anchor / "runs" / "bench28.log").exists() else ""
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", log)
    hist = anchor / "runs" / "bench28" / "validation_average_history.log"
    mse = None
    if hist.exists():
        last = hist.read_text().strip().splitlines()[-1].split(",")
        mse = float(last[1])
    if proc.returncode != 0:
        print("EIR anchor run failed:", proc.stdout[-500:], proc.stderr[-500:])
    return {
        "wall_s": round(wall, 2),
        "samples_per_s_whole_process": round(epochs * 140 * 64 / wall, 1),
        "peak_rss_mb": round(int(rss.group(1)) / 1024, 1) if rss else None,  # type: ignore[dict-item]
        "validation_mse_last": mse,  # type: ignore[dict-item]
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=28, choices=(8, 28))
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--nproc", type=int, default=2, help="processes for the torchrun figure (0: skip it)")
    ap.add_argument("--with-eir", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "data", a.size, a.count)
        ours = run_eirtrain(data, Path(tmp) / "run", a.epochs)
        bare = bare_loop(data, int(ours["iterations"]))
        ddp = run_eirtrain(data, Path(tmp) / "run_ddp", a.epochs, a.nproc) if a.nproc > 1 else None
        eir = run_eir_anchor(Path(tmp), a.epochs) if a.with_eir else None
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "workload": {"size": a.size, "count": a.count, "epochs": a.epochs, "batch_size": 64},
        "eirtrain": ours,
        "bare_loop": bare,
        "ratio_trainer_loop_over_bare_loop": round(ours["loop_s"] / bare["loop_s"], 3),
        "eirtrain_torchrun": ddp,
        "eir_0_25": eir,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    if ddp:
        ratio = ddp["samples_per_s_loop"] / ours["samples_per_s_loop"]
        result["ratio_torchrun_over_one_process_loop"] = round(ratio, 2)
    if eir:
        result["ratio_whole_process_ours_over_eir"] = round(
            ours["samples_per_s_whole_process"] / eir["samples_per_s_whole_process"], 2
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Training throughput ({result['date']}, {os.cpu_count()} CPUs, torch {torch.__version__})",
        "",
        f"Workload: tutorial run 1, {a.size}x{a.size}, {a.count} images, {a.epochs} epochs, batch 64.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| eirtrain wall time, start to exit | {ours['wall_s']} s |",
        f"| eirtrain whole-process throughput | {ours['samples_per_s_whole_process']} samples/s |",
        f"| first training step after process start | {ours['first_step_s']} s |",
        f"| eirtrain training loop (incl. validation, samples, checkpoints) | {ours['loop_s']} s |",
        f"| bare PyTorch loop, same model/optimizer/iterations | {bare['loop_s']} s "
        f"({bare['samples_per_s']} samples/s) |",
        f"| ratio trainer loop / bare loop | {result['ratio_trainer_loop_over_bare_loop']} |",
        f"| peak RSS of eirtrain | {ours['peak_rss_mb']} MB |",
        f"| final validation MSE (iteration {ours['final_iteration']}) | {ours['final_validation_mse']:.4f} |",
    ]
    if ddp:
        lines += [
            f"| torchrun, {a.nproc} processes (gloo, 32 samples each per step): whole process "
            f"| {ddp['samples_per_s_whole_process']} samples/s ({ddp['wall_s']} s) |",
            f"| torchrun training loop | {ddp['loop_s']} s ({ddp['samples_per_s_loop']} samples/s) |",
            f"| ratio torchrun loop / one-process loop (samples/s) | {round(ratio, 2)} |",
            f"| torchrun peak RSS, largest process | {ddp['peak_rss_mb']} MB |",
            f"| torchrun final validation MSE (iteration {ddp['final_iteration']}) "
            f"| {ddp['final_validation_mse']:.4f} |",
        ]
    if eir:
        lines += [
            f"| EIR 0.25 wall time (same data and YAMLs) | {eir['wall_s']} s |",
            f"| EIR whole-process throughput | {eir['samples_per_s_whole_process']} samples/s |",
            f"| EIR peak RSS | {eir['peak_rss_mb']} MB |",
            f"| EIR last validation MSE | {eir['validation_mse_last']} |",
            f"| ratio ours / EIR, whole process | {result['ratio_whole_process_ours_over_eir']} |",
        ]
    (RESULTS / "train_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
