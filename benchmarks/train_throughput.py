"""Training throughput of `eirtrain` vs a bare PyTorch loop of the same model, in one run.

    python benchmarks/train_throughput.py [--size 28] [--count 10000] [--epochs 10] [--nproc 2] [--with-eir]
                                          [--repeats N]

1. Writes the built-in digits (28x28 variant, 10 000 images by default) to a temp folder with
   `eir-data digits`.
2. Runs `eirtrain` on the tutorial's run-1 YAMLs (examples/tutorial/) as a subprocess:
   wall time start-to-exit, time to the first training step, the training loop's own time,
   peak RSS, and the final validation MSE.
3. Runs a bare loop in this process: the same MetaModel, batch size, optimizer (AdaBelief) and
   number of iterations over a preloaded normalized tensor, with no validation, no sampling,
   no checkpoints: the floor that the trainer's loop is compared with.
4. Runs the same configs under torchrun with --nproc processes (gloo, same global batch 64, so
   32 per process; torchrun gives each process one intra-op thread). 0 skips it. Peak RSS is
   reported per process (launcher and each worker).
5. With --with-eir (after `bash benchmarks/eir_reference.sh install`), runs the original EIR
   0.25.0 through benchmarks/eir_reference.sh on the very same data files and tutorial YAMLs.
   Iterations are read from EIR's own history logs; validation MSE is compared at the last
   iteration both runs evaluated (the tutorial evaluates every 1 000 iterations).

With --repeats N, steps 2, 3 and 5 run N rounds, one after the other (eirtrain, bare loop, EIR;
torchrun once): each ratio compares runs of the same round, since this machine's speed drifts by
tens of percent over minutes, and the table gives medians with every round's value.

Peak RSS of every process is its kernel-recorded high-water mark (VmHWM), read from /proc
while it runs (Linux).

Prints a table and writes benchmarks/results/train_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from proctree import children  # benchmarks/proctree.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "examples" / "tutorial"
RESULTS = ROOT / "benchmarks" / "results"


def make_data(folder: Path, size: int, count: int) -> Path:
    cmd = [sys.executable, "-m", "eir_core.cli.data", "digits", "--size", str(size), "--count", str(count)]
    subprocess.run([*cmd, "--output-folder", str(folder)], check=True, capture_output=True)
    return folder


def run_measured(
    cmd: list[str], **kw: Any
) -> tuple[subprocess.CompletedProcess[str], float, dict[int, dict[str, Any]]]:
    """Run ``cmd``; wall time and, per process of its tree, the command line and peak RSS (MB)."""
    seen: dict[int, dict[str, Any]] = {}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True),  # type: ignore[union-attr]
        threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True),  # type: ignore[union-attr]
    ]
    for r in readers:
        r.start()
    while proc.poll() is None:
        todo: list[tuple[int, int | None]] = [(proc.pid, None)]
        while todo:
            pid, parent = todo.pop()
            todo += [(c, pid) for c in children(pid)]
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                hwm = re.search(r"VmHWM:\s+(\d+) kB", status)
                if pid not in seen:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    cmd_line = " ".join(a.decode(errors="replace") for a in argv[:6]).strip()
                    seen[pid] = {"cmd": cmd_line, "mb": 0.0, "parent": parent}
                if hwm:
                    seen[pid]["mb"] = max(seen[pid]["mb"], round(int(hwm.group(1)) / 1024, 1))
            except OSError:
                continue
        time.sleep(0.25)  # VmHWM is the kernel's high-water mark: a poll only has to see each process once
    wall = time.perf_counter() - t0
    for r in readers:
        r.join()
    done = subprocess.CompletedProcess(cmd, proc.returncode, "".join(out), "".join(err))
    return done, wall, seen


def read_history(path: Path, column: str = "loss-average") -> dict[int, float]:
    """iteration -> ``column`` of an EIR-style history log, found by its header (EIR writes
    "iteration" then its metrics sorted by name; eirtrain iteration,loss-average,perf-average)."""
    lines = path.read_text().strip().splitlines() if path.exists() else []
    if not lines:
        return {}
    header = lines[0].split(",")
    at = header.index(column)
    return {int(r.split(",")[0]): float(r.split(",")[at]) for r in lines[1:] if r.strip()}


def run_eirtrain(data: Path, run: Path, epochs: int, nproc: int = 1, extra: list[str] | None = None) -> dict[str, Any]:
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
        *(extra or []),
        f"--input_mnist_array.input_info.input_source={src}",
        f"--output.output_info.output_source={src}",
        "--no-pbar",
    ]  # fmt: skip
    proc, wall, procs = run_measured(cmd)
    if proc.returncode != 0:
        sys.exit(f"eirtrain failed:\n{proc.stderr[-3000:]}")
    log = proc.stderr
    first = float(re.search(r"first training step done, ([0-9.]+)s", log).group(1))  # type: ignore[union-attr]
    done = re.search(r"done: (\d+) iterations in ([0-9.]+)s", log)
    assert done is not None
    iters, loop_s = int(done.group(1)), float(done.group(2))
    valid = read_history(run / "validation_average_history.log")
    last = max(valid)

    def trainer(p: dict[str, Any] | None) -> bool:
        return p is not None and "eir_core.cli.train" in p["cmd"]

    # A trainer's forked read-ahead child has its command line: it is no worker of its own.
    workers = [p["mb"] for p in procs.values() if trainer(p) and not trainer(procs.get(p["parent"]))]
    launchers = [p["mb"] for p in procs.values() if "torch.distributed.run" in p["cmd"]]
    renderers = [p["mb"] for p in procs.values() if "eir_core.train.render" in p["cmd"]]
    batch = 64
    params = re.search(r"model: (\d+) parameters", log)
    return {
        "parameters": int(params.group(1)) if params else None,
        "wall_s": round(wall, 2),
        "first_step_s": first,
        "loop_s": loop_s,
        "iterations": iters,
        "samples_per_s_whole_process": round(iters * batch / wall, 1),
        "samples_per_s_loop": round(iters * batch / loop_s, 1),
        "peak_rss_mb": max(p["mb"] for p in procs.values()),  # the largest single process
        "peak_rss_mb_workers": workers,
        "peak_rss_mb_launcher": launchers[0] if launchers else None,
        "peak_rss_mb_renderer": max(renderers) if renderers else None,  # the plot process
        "final_validation_mse": valid[last],
        "final_iteration": last,
        "validation_mse": valid,
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
    opt = build_optimizer(model, cfg.global_config.optimization)  # the trainer's, from the same config
    clip = cfg.global_config.optimization.gradient_clipping
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
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=True)
            opt.step()
            done += 1
            if done >= iterations:
                break
    elapsed = time.perf_counter() - t0
    return {
        "loop_s": round(elapsed, 2),
        "samples_per_s": round(iterations * batch / elapsed, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "iterations": done,
    }


def _eir_parameters(log: Path) -> int | None:
    found = re.search(r"Total parameters: ([0-9,]+)", log.read_text()) if log.exists() else None
    return int(found.group(1).replace(",", "")) if found else None


def run_eir_reference(data: Path, epochs: int, size: int, extra: list[str]) -> dict[str, Any] | None:
    """The original EIR 0.25.0 via benchmarks/eir_reference.sh, on ``data`` (the same files).

    8x8 outputs get ``cutoff: 128`` (EIR's own rule never finishes building that head; ours
    stops where that cutoff does, so both build the same model)."""
    script = ROOT / "benchmarks" / "eir_reference.sh"
    home = Path(os.environ.get("EIR_REFERENCE_DIR", Path.home() / ".cache" / "eir-reference"))
    if not (home / "venv" / "bin" / "eirtrain").exists():
        print("EIR is not installed (bash benchmarks/eir_reference.sh install); skipping it")
        return None
    name = f"bench-{os.getpid()}"
    cutoff = ["128"] if size * size < 128 else []
    cmd = ["bash", str(script), "train", name, str(data), "a", *cutoff, "--"]
    cmd += [f"--globals.basic_experiment.n_epochs={epochs}", *extra]
    proc, wall, procs = run_measured(cmd)
    run = home / "runs" / name
    if proc.returncode != 0:
        print("EIR run failed:", proc.stdout[-500:], proc.stderr[-1500:])
        return None
    valid = read_history(run / "validation_average_history.log")
    # EIR's progress bar ("Epoch [e/E]: [i/N]") counts the iterations; its training history log
    # is only written up to the last evaluation.
    log = (home / "runs" / f"{name}.log").read_text()
    progress = re.findall(r"Epoch \[(\d+)/\d+\]: \[(\d+)/(\d+)\]", log)
    if not progress:
        print("EIR's log has no progress lines; cannot count its iterations")
        return None
    epoch, step, per_epoch = (int(v) for v in progress[-1])
    iterations = (epoch - 1) * per_epoch + step
    return {
        "command": " ".join(["benchmarks/eir_reference.sh", *cmd[2:4], "DATA", *cmd[5:]]),
        "parameters": _eir_parameters(home / "runs" / f"{name}.log"),
        "run_folder": str(run),
        "wall_s": round(wall, 2),
        "iterations": iterations,
        "iterations_per_epoch": per_epoch,
        "samples_per_s_whole_process": round(iterations * 64 / wall, 1),
        "peak_rss_mb": max(p["mb"] for p in procs.values()),
        "validation_mse": valid,
    }


def median(values: list[float]) -> float:
    return round(float(np.median(values)), 3)


def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run whose ``key`` is the median (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda r: r[key])
    return ordered[(len(ordered) - 1) // 2]


def listed(values: list[float]) -> str:
    return f" ({', '.join(f'{v:g}' for v in values)})" if len(values) > 1 else ""


def rounds(runs: list[dict[str, Any]], key: str) -> str:
    return listed([r[key] for r in runs])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=28, choices=(8, 28))
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--nproc", type=int, default=2, help="processes for the torchrun figure (0: skip it)")
    ap.add_argument("--with-eir", action="store_true")
    ap.add_argument(
        "--repeats", type=int, default=1, help="rounds of eirtrain, bare loop (and EIR), one after the other"
    )
    ap.add_argument(
        "--eval-interval",
        type=int,
        default=0,
        help="validate (and checkpoint/sample) every N iterations in both systems (0: the tutorial's 1000)",
    )
    a = ap.parse_args()
    if a.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {a.repeats}")
    # Our modules byte-compiled, as after an install or a first run (EIR's were compiled by pip);
    # PYTHONDONTWRITEBYTECODE in the environment would make every eirtrain run compile eir_core.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    compileall.compile_dir(ROOT / "packages" / "core" / "src", quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "data", a.size, a.count)
        extra = []
        if a.eval_interval:
            extra = [
                f"--globals.evaluation_checkpoint.{k}={a.eval_interval}"
                for k in ("checkpoint_interval", "sample_interval")
            ]
        # Rounds of (eirtrain, bare loop, EIR) one after the other: this machine's speed drifts
        # over minutes, so each ratio compares runs made next to each other, and the figures
        # are the medians over the rounds.
        runs: list[dict[str, Any]] = []
        bares: list[dict[str, float]] = []
        eirs: list[dict[str, Any]] = []
        for r in range(a.repeats):
            if a.repeats > 1:
                print(f"round {r + 1}/{a.repeats}", file=sys.stderr)
            runs.append(run_eirtrain(data, Path(tmp) / f"run{r}", a.epochs, extra=extra))
            bares.append(bare_loop(data, int(runs[-1]["iterations"])))
            if bares[-1]["parameters"] != runs[-1]["parameters"]:
                sys.exit(f"the bare loop built {bares[-1]['parameters']} parameters, eirtrain {runs[-1]['parameters']}")
            if a.with_eir:
                got = run_eir_reference(data, a.epochs, a.size, extra)
                if got is None:
                    break
                eirs.append(got)
        ddp = run_eirtrain(data, Path(tmp) / "run_ddp", a.epochs, a.nproc, extra) if a.nproc > 1 else None
    ours, bare = median_run(runs, "wall_s"), median_run(bares, "loop_s")
    eir = median_run(eirs, "wall_s") if eirs else None
    loop_ratios = [round(o["loop_s"] / b["loop_s"], 3) for o, b in zip(runs, bares, strict=True)]
    eir_ratios = [
        round(o["samples_per_s_whole_process"] / e["samples_per_s_whole_process"], 2)
        for o, e in zip(runs, eirs, strict=False)
    ]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    result: dict[str, Any] = {
        "command": "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:]),
        "commit": commit.strip(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "workload": {
            "size": a.size,
            "count": a.count,
            "epochs": a.epochs,
            "batch_size": 64,
            "eval_interval": a.eval_interval,
        },
        "repeats": a.repeats,
        "eirtrain": ours,
        "bare_loop": bare,
        "eirtrain_runs": runs,
        "bare_loop_runs": bares,
        "first_step_s_median": median([r["first_step_s"] for r in runs]),
        "ratio_trainer_loop_over_bare_loop": median(loop_ratios),
        "ratios_trainer_loop_over_bare_loop_per_round": loop_ratios,
        "eirtrain_torchrun": ddp,
        "eir_0_25": eir,
        "eir_0_25_runs": eirs,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    if ddp:
        ratio = ddp["samples_per_s_loop"] / ours["samples_per_s_loop"]
        result["ratio_torchrun_over_one_process_loop"] = round(ratio, 2)
    if eir:
        result["ratio_whole_process_ours_over_eir"] = median(eir_ratios)
        result["ratios_whole_process_ours_over_eir_per_round"] = eir_ratios
        common = set(ours["validation_mse"]) & set(eir["validation_mse"])
        if common:
            at = max(common)
            result["validation_mse_same_iteration"] = {
                "iteration": at,
                "eirtrain": ours["validation_mse"][at],
                "eir_0_25": eir["validation_mse"][at],
            }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Training throughput ({result['date']}, {os.cpu_count()} CPUs, torch {torch.__version__})",
        "",
        f"Command: `{result['command']}` at commit {result['commit']}.",
        "",
        f"Workload: tutorial run 1, {a.size}x{a.size}, {a.count} images, {a.epochs} epochs, batch 64"
        + (f", validation every {a.eval_interval} iterations." if a.eval_interval else ".")
        + " Both systems run from byte-compiled modules (eir_core compiled before the rounds).",
        "",
        *(
            [
                f"{a.repeats} rounds of eirtrain, the bare loop"
                + (" and EIR" if eirs else "")
                + ", one after the other; each ratio compares the runs of one round. Figures of a "
                "single run are from the run with the median wall time; ratios and the first step "
                "are medians over the rounds (each round's in brackets).",
                "",
            ]
            if a.repeats > 1
            else []
        ),
        "| figure | value |",
        "|---|---|",
        f"| eirtrain wall time, start to exit | {ours['wall_s']} s{rounds(runs, 'wall_s')} |",
        f"| eirtrain whole-process throughput | {ours['samples_per_s_whole_process']} samples/s |",
        f"| first training step after process start | {result['first_step_s_median']} s"
        f"{rounds(runs, 'first_step_s')} |",
        f"| eirtrain training loop (incl. validation, samples, checkpoints) | {ours['loop_s']} s"
        f"{rounds(runs, 'loop_s')} |",
        f"| bare PyTorch loop, same model/optimizer/iterations | {bare['loop_s']} s "
        f"({bare['samples_per_s']} samples/s){rounds(bares, 'loop_s')} |",
        f"| ratio trainer loop / bare loop | {result['ratio_trainer_loop_over_bare_loop']}{listed(loop_ratios)} |",
        f"| peak RSS of eirtrain | {ours['peak_rss_mb']} MB |",
        f"| peak RSS of its plot renderer process | {ours['peak_rss_mb_renderer']} MB |",
        f"| final validation MSE (iteration {ours['final_iteration']}) | {ours['final_validation_mse']:.4f} |",
    ]
    if ddp:
        lines += [
            f"| torchrun, {a.nproc} processes (gloo, 32 samples each per step): whole process "
            f"| {ddp['samples_per_s_whole_process']} samples/s ({ddp['wall_s']} s) |",
            f"| torchrun training loop | {ddp['loop_s']} s ({ddp['samples_per_s_loop']} samples/s) |",
            f"| ratio torchrun loop / one-process loop (samples/s) | {round(ratio, 2)} |",
            f"| torchrun peak RSS per process: workers | {', '.join(f'{w} MB' for w in ddp['peak_rss_mb_workers'])} |",
            f"| torchrun peak RSS: launcher | {ddp['peak_rss_mb_launcher']} MB |",
            f"| torchrun final validation MSE (iteration {ddp['final_iteration']}) "
            f"| {ddp['final_validation_mse']:.4f} |",
        ]
    if eir:
        lines += [
            f"| EIR 0.25 wall time (same data files and YAMLs) | {eir['wall_s']} s{rounds(eirs, 'wall_s')} |",
            f"| EIR iterations (from its history log) | {eir['iterations']} "
            f"({eir['iterations_per_epoch']:g} per epoch) |",
            f"| EIR whole-process throughput | {eir['samples_per_s_whole_process']} samples/s |",
            f"| EIR peak RSS | {eir['peak_rss_mb']} MB |",
            f"| ratio ours / EIR, whole process | {result['ratio_whole_process_ours_over_eir']}{listed(eir_ratios)} |",
            f"| parameters: eirtrain / EIR | {ours['parameters']} / {eir['parameters']} |",
        ]
        same = result.get("validation_mse_same_iteration")
        if same:
            lines.append(
                f"| validation MSE at iteration {same['iteration']}: eirtrain / EIR "
                f"| {same['eirtrain']:.4f} / {same['eir_0_25']:.4f} |"
            )
    (RESULTS / "train_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
