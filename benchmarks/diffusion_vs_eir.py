"""The diffusion example trained by `eirtrain` and by the original EIR 0.25.0, side by side.

    python benchmarks/diffusion_vs_eir.py [--epochs 10] [--interval 100] [--repeats 1]
    (after: bash benchmarks/eir_reference.sh install)

Both train examples/diffusion (CNN image input + CLASS label -> `loss: diffusion` CNN output,
EIR's keys; our own `diffusion_guidance_scale` is left out for EIR, which does not know it) on
the very same 8x8 digit files for the same number of epochs, with validation, samples and a
checkpoint every `--interval` iterations (EIR evaluates only at its sample interval). Reported
for each: parameters, whole-process wall time, iterations per second over the whole process,
peak RSS, and the validation loss (v-prediction MSE at random timesteps, normalized space) at
the last iteration both evaluated. Rounds alternate ours / EIR (`--repeats`); ratios compare
the same round. Writes benchmarks/results/diffusion_vs_eir.{json,md}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "diffusion"
RESULTS = ROOT / "benchmarks" / "results"
_spec = importlib.util.spec_from_file_location("train_throughput", Path(__file__).with_name("train_throughput.py"))
assert _spec is not None and _spec.loader is not None
tt = importlib.util.module_from_spec(_spec)
sys.path.insert(0, str(Path(__file__).parent))  # train_throughput imports proctree from beside it
_spec.loader.exec_module(tt)


def common(epochs: int, interval: int) -> list[str]:
    return [
        f"--globals.basic_experiment.n_epochs={epochs}",
        f"--globals.evaluation_checkpoint.sample_interval={interval}",
        f"--globals.evaluation_checkpoint.checkpoint_interval={interval}",
    ]


def run_ours(data: Path, run: Path, epochs: int, interval: int) -> dict[str, Any]:
    src = str(data / "mnist_npy")
    cmd = [
        sys.executable, "-m", "eir_core.cli.train",
        "--global_configs", str(EXAMPLE / "globals.yaml"),
        "--input_configs", str(EXAMPLE / "input_mnist_array.yaml"), str(EXAMPLE / "input_mnist_label.yaml"),
        "--output_configs", str(EXAMPLE / "output.yaml"),
        f"--globals.basic_experiment.output_folder={run}",
        *common(epochs, interval),
        f"--input_mnist_array.input_info.input_source={src}",
        f"--input_mnist_label.input_info.input_source={data / 'mnist_labels.csv'}",
        f"--output.output_info.output_source={src}",
        "--no-pbar",
    ]  # fmt: skip
    proc, wall, procs = tt.run_measured(cmd)
    if proc.returncode != 0:
        sys.exit(f"eirtrain failed:\n{proc.stderr[-3000:]}")
    done = re.search(r"done: (\d+) iterations in ([0-9.]+)s", proc.stderr)
    params = re.search(r"model: (\d+) parameters", proc.stderr)
    assert done is not None and params is not None
    iters = int(done.group(1))
    return {
        "parameters": int(params.group(1)),
        "wall_s": round(wall, 2),
        "iterations": iters,
        "iterations_per_s_whole_process": round(iters / wall, 2),
        "loop_s": float(done.group(2)),
        "peak_rss_mb": max(p["mb"] for p in procs.values()),
        "validation_loss": tt.read_history(run / "validation_average_history.log"),
    }


def run_eir(data: Path, epochs: int, interval: int) -> dict[str, Any] | None:
    home = Path(os.environ.get("EIR_REFERENCE_DIR", Path.home() / ".cache" / "eir-reference"))
    if not (home / "venv" / "bin" / "eirtrain").exists():
        print("EIR is not installed (bash benchmarks/eir_reference.sh install); skipping it")
        return None
    name = f"diffusion-{os.getpid()}"
    cmd = ["bash", str(ROOT / "benchmarks" / "eir_reference.sh"), "train", name, str(data), "d", "--"]
    proc, wall, procs = tt.run_measured([*cmd, *common(epochs, interval)])
    if proc.returncode != 0:
        print("EIR run failed:", proc.stdout[-500:], proc.stderr[-1500:])
        return None
    log = (home / "runs" / f"{name}.log").read_text()
    progress = re.findall(r"Epoch \[(\d+)/\d+\]: \[(\d+)/(\d+)\]", log)
    params = re.search(r"Total parameters: ([0-9,]+)", log)
    if not progress:
        print("EIR's log has no progress lines; cannot count its iterations")
        return None
    epoch, step, per_epoch = (int(v) for v in progress[-1])
    iters = (epoch - 1) * per_epoch + step
    history = tt.read_history(home / "runs" / name / "validation_average_history.log")
    if not history:  # EIR names its loss column after the output: take the first metric
        path = home / "runs" / name / "validation_average_history.log"
        lines = path.read_text().strip().splitlines() if path.exists() else []
        history = {int(r.split(",")[0]): float(r.split(",")[1]) for r in lines[1:]} if lines else {}
    return {
        "command": " ".join(
            ["benchmarks/eir_reference.sh", "train", "NAME", "DATA", "d", "--", *common(epochs, interval)]
        ),
        "parameters": int(params.group(1).replace(",", "")) if params else None,
        "wall_s": round(wall, 2),
        "iterations": iters,
        "iterations_per_s_whole_process": round(iters / wall, 2),
        "peak_rss_mb": max(p["mb"] for p in procs.values()),
        "validation_loss": history,
        "run_folder": str(home / "runs" / name),
    }


def _env_prefix() -> str:
    """Thread settings the run was started with (they change its speed), as a shell prefix."""
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    return "".join(f"{k}={os.environ[k]} " for k in keys if k in os.environ)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--interval", type=int, default=100, help="validation/sample/checkpoint interval (both)")
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    if a.epochs < 1 or a.interval < 1 or a.repeats < 1:
        sys.exit("--epochs, --interval and --repeats must be >= 1")
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = tt.make_data(Path(tmp) / "data", 8, 1797)
        for r in range(a.repeats):
            ours = run_ours(data, Path(tmp) / f"run{r}", a.epochs, a.interval)
            print(
                f"round {r + 1}: eirtrain {ours['wall_s']} s, {ours['iterations_per_s_whole_process']} it/s", flush=True
            )
            eir = run_eir(data, a.epochs, a.interval)
            if eir is not None:
                print(f"round {r + 1}: EIR {eir['wall_s']} s, {eir['iterations_per_s_whole_process']} it/s", flush=True)
            rounds.append({"ours": ours, "eir": eir})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    result = {
        "command": _env_prefix() + "python benchmarks/diffusion_vs_eir.py " + " ".join(sys.argv[1:]),
        "commit": commit.strip() or "unknown",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "rounds": rounds,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "diffusion_vs_eir.json").write_text(json.dumps(result, indent=2) + "\n")
    md = render_md(result)
    (RESULTS / "diffusion_vs_eir.md").write_text(md)
    print(md)


def render_md(r: dict[str, Any]) -> str:
    lines = [
        f"# Diffusion example: eirtrain vs EIR 0.25.0 ({r['date']})",
        "",
        f"Command: `{r['command']}` at commit `{r['commit']}`, {r['date']} UTC. examples/diffusion on the 1797 "
        "built-in 8x8 digits (the same files for both), same epochs and intervals; whole process = start to exit.",
        "",
        "| round | who | parameters | iterations | wall s | it/s whole process | speed vs EIR | peak RSS MB "
        "| validation loss (iteration) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, rnd in enumerate(r["rounds"], 1):
        ours, eir = rnd["ours"], rnd["eir"]
        both = sorted(set(ours["validation_loss"]) & set(eir["validation_loss"])) if eir else []
        at = both[-1] if both else max(ours["validation_loss"])
        ratio = f"{eir['wall_s'] / ours['wall_s']:.2f}×" if eir else "–"
        for who, v, rel in (("eirtrain", ours, ratio), ("EIR 0.25.0", eir, "1")):
            if v is None:
                continue
            loss = v["validation_loss"].get(at)
            lines.append(
                f"| {i} | {who} | {v['parameters']:,} | {v['iterations']} | {v['wall_s']:.1f} "
                f"| {v['iterations_per_s_whole_process']:.2f} | {rel} | {v['peak_rss_mb']:.0f} "
                f"| {'–' if loss is None else f'{loss:.4f}'} ({at}) |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
