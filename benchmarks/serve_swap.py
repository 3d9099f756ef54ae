"""Checkpoints swapped into a loaded server: `eirserve --model-control poll` under `wrk`.

    python benchmarks/serve_swap.py [--swaps 40] [--concurrency 32] [--settle 1.0]

1. Trains the 8x8 tutorial autoencoder with `eirtrain` on the built-in digits, keeping a
   checkpoint every 10 iterations (real checkpoints of one run, each with other weights).
2. Starts `eirserve --model-control poll --poll-interval-s 0.2` on a run folder holding the first
   checkpoint, pinned to CPU 0; `wrk` (one thread, C=--concurrency) on CPU 1 sends /predict for
   the whole run.
3. Copies the checkpoints in one by one, each named as the best so far (as eirtrain names a better
   checkpoint), removing the one before; waits until /info says it is served, and --settle
   seconds more. --swaps swaps in all (round and round through the checkpoints).
4. Reports: swaps done, requests, non-2xx answers and socket errors (must be 0), req/s, p50/p99,
   the time from a file's arrival to its being served, and the server's RSS after the first swap
   after the last, and once the versions swapped out are released (`eir_model_versions_loaded`
   back to 1): flat within 10 % is the bar, measured from the swap by which every checkpoint
   was served once (the first that carries the ONNX graph loads ONNX Runtime, a one-time step),
   and from the first swap too; with the command, commit and date.

Writes benchmarks/results/serve_swap.{json,md}.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from eir_core.manifest import checkpoint_name, checkpoints_in, parse_checkpoint_name

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TUTORIAL = ROOT / "examples" / "tutorial" / "digits8"

sys.path.insert(0, str(Path(__file__).parent))  # serve_load imports proctree from beside it
_spec = importlib.util.spec_from_file_location("serve_load", Path(__file__).with_name("serve_load.py"))
assert _spec is not None and _spec.loader is not None
sl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sl)


def train(data: Path, run: Path) -> list[Path]:
    src = str(data / "mnist_npy")
    cmd = [
        sys.executable, "-m", "eir_core.cli.train",
        "--global_configs", str(TUTORIAL / "globals.yaml"),
        "--input_configs", str(TUTORIAL / "input_mnist_array.yaml"),
        "--output_configs", str(TUTORIAL / "output.yaml"),
        f"--globals.basic_experiment.output_folder={run}",
        "--globals.basic_experiment.n_epochs=4",
        "--globals.evaluation_checkpoint.checkpoint_interval=10",
        "--globals.evaluation_checkpoint.sample_interval=10",
        "--globals.evaluation_checkpoint.n_saved_models=100",
        f"--input_mnist_array.input_info.input_source={src}",
        f"--output.output_info.output_source={src}",
        "--no-pbar",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    found = [path for _, _, path in sorted(checkpoints_in(run / "saved_models"), key=lambda c: c[1])]
    if len(found) < 3:
        sys.exit(f"the training kept {len(found)} checkpoints; 3 or more are needed")
    return found


def place(folder: Path, checkpoint: Path, rank: int) -> Path:
    """Copy ``checkpoint`` into ``folder`` named as the best so far (perf-average ``rank``), atomically."""
    parsed = parse_checkpoint_name(checkpoint.name)
    assert parsed is not None, checkpoint
    target = folder / checkpoint_name("live", parsed[0], rank)
    part = folder / (target.name + ".part")
    shutil.copyfile(checkpoint, part)
    part.rename(target)
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--swaps", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--settle", type=float, default=1.0, help="seconds of load after each swap")
    ap.add_argument("--server-cpus", default="0")
    ap.add_argument("--client-cpus", default="1")
    a = ap.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        sys.exit("wrk and taskset are needed (apt-get install wrk util-linux)")
    result: dict[str, Any] = {
        "command": "python benchmarks/serve_swap.py " + " ".join(sys.argv[1:]),
        "commit": sl.git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        from eir_core.data.builtin import make_digits, write_tutorial_layout

        data = tmp / "data"
        images, labels = make_digits(8)
        write_tutorial_layout(data, images, labels, 10000)
        print("training ...", flush=True)
        checkpoints = train(data, tmp / "train")
        result["checkpoints"] = len(checkpoints)
        saved = tmp / "live" / "saved_models"
        saved.mkdir(parents=True)
        current = place(saved, checkpoints[0], 1)
        port = sl.free_port()
        cmd = ["taskset", "-c", a.server_cpus, sys.executable, "-m", "eir_serve.cli", "--model-path", str(tmp / "live"),
               "--port", str(port), "--grpc-port", "0", "--log-level", "info", "--model-control", "poll",
               "--poll-interval-s", "0.2", "--device", "cpu"]  # fmt: skip
        server = sl.Server("eirserve", cmd, port, lambda u: httpx.get(f"{u}/ready", timeout=2).status_code == 200,
                           dict(os.environ))  # fmt: skip
        body = json.dumps([{"mnist": base64.b64encode(np.zeros((1, 8, 8), np.uint8).tobytes()).decode()}]).encode()
        script = sl.wrk_script(tmp, "predict", body, {"Content-Type": "application/json"})
        try:
            budget = int(a.swaps * (a.settle + 3) + 180)  # wrk runs for the whole sequence; stopped after it
            load = subprocess.Popen(
                ["taskset", "-c", a.client_cpus, "wrk", "-t1", f"-c{a.concurrency}", f"-d{budget}s", "--latency",
                 "--timeout", "10s", "-s", str(script), f"{server.url}/predict"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            time.sleep(a.settle)
            to_served: list[float] = []
            rss: list[float] = []
            for k in range(a.swaps):
                nxt = checkpoints[(k + 1) % len(checkpoints)]
                t0 = time.perf_counter()
                target = place(saved, nxt, 10 + k)
                current.unlink()
                current = target
                while httpx.get(f"{server.url}/info", timeout=10).json()["model"]["checkpoint"] != target.name:
                    if time.perf_counter() - t0 > 60:
                        sys.exit(f"swap {k + 1}: {target.name} was not served within 60 s")
                    time.sleep(0.02)
                to_served.append(time.perf_counter() - t0)
                time.sleep(a.settle)
                rss.append(sl.rss_mb(server.proc.pid))
                print(f"swap {k + 1}: served after {to_served[-1]:.2f} s, RSS {rss[-1]:.0f} MB", flush=True)
            # the versions swapped out are released once no request can still hold them (the body
            # deadline, 30 s by default, and a margin): wait for that under the same load, then RSS
            t_release = time.perf_counter()
            one_loaded = re.compile(r'^eir_model_versions_loaded\{model="[^"]*"\} 1\.0$', re.M)
            while not one_loaded.search(httpx.get(f"{server.url}/metrics", timeout=10).text):
                if time.perf_counter() - t_release > 120:
                    sys.exit("the versions swapped out were not released within 120 s")
                time.sleep(0.5)
            released_after_s = time.perf_counter() - t_release
            rss_released = sl.rss_mb(server.proc.pid)
            load.send_signal(2)  # wrk prints its summary on SIGINT
            out, _ = load.communicate(timeout=60)
            metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        finally:
            server.stop()
    total = re.search(r"(\d+) requests in ([0-9.]+)(\w+)", out)
    p50 = re.search(r"\s50%\s+([0-9.]+\w+)", out)
    p99 = re.search(r"\s99%\s+([0-9.]+\w+)", out)
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if not (total and p50 and p99 and rps):
        sys.exit(f"could not read wrk's output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    swaps_ok = re.search(r'eir_model_swaps_total\{model="[^"]*",result="ok"\} ([0-9.]+)', metrics)
    result.update(
        {
            "swaps": len(to_served),
            "swaps_counted_by_server": float(swaps_ok.group(1)) if swaps_ok else None,
            "requests": int(total.group(1)),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(map(int, errors.groups())) if errors else 0,
            "req_per_s": float(rps.group(1)),
            "p50_ms": round(sl._ms(p50.group(1)), 2),
            "p99_ms": round(sl._ms(p99.group(1)), 2),
            "to_served_s": {"median": round(float(np.median(to_served)), 3), "max": round(max(to_served), 3)},
            "rss_mb": {
                "after_first_swap": round(rss[0], 1),
                "after_half_the_swaps": round(rss[len(rss) // 2 - 1], 1),
                "after_last_swap": round(rss[-1], 1),
                "max": round(max(rss), 1),
                "released": round(rss_released, 1),
            },
            "released_after_s": round(released_after_s, 1),
            "rss_growth": round(rss_released / rss[0] - 1, 4),
            # Once every checkpoint has been served (the run's last one carries the ONNX graph, so
            # ONNX Runtime is loaded the first time it comes in): what the swaps themselves keep.
            "rss_mb_after_first_cycle": round(rss[min(len(checkpoints), len(rss)) - 1], 1),
            "rss_growth_after_first_cycle": round(rss_released / rss[min(len(checkpoints), len(rss)) - 1] - 1, 4),
        }
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_swap.json").write_text(json.dumps(result, indent=2) + "\n")
    md = render(result)
    (RESULTS / "serve_swap.md").write_text(md)
    print(md)


def render(r: dict[str, Any]) -> str:
    failed = r["non_2xx"] + r["socket_errors"]
    return "\n".join(
        [
            f"# Checkpoints swapped in under load ({r['date']})",
            "",
            f"Command: `{r['command']}` at commit `{r['commit']}`, {r['date']} UTC; {r['cpus']} CPUs (server on one, "
            f"wrk on the other), load average {r['load_average']:.2f} at the start.",
            "",
            "| swaps (server counted) | requests | failed (non-2xx + socket errors) | req/s | p50 ms | p99 ms "
            "| file to served, median / max s | RSS MB: after 1st swap / half of them / last / max "
            "| RSS MB once swapped-out versions were released (after) | RSS growth, 1st swap to released "
            "| RSS growth, after every checkpoint was served once to released |",
            "|---:|---:|---:|---:|---:|---:|---|---|---|---:|---:|",
            f"| {r['swaps']} ({r['swaps_counted_by_server']}) | {r['requests']} | {failed} | {r['req_per_s']} | "
            f"{r['p50_ms']} | {r['p99_ms']} | {r['to_served_s']['median']} / {r['to_served_s']['max']} | "
            f"{r['rss_mb']['after_first_swap']} / {r['rss_mb']['after_half_the_swaps']} / "
            f"{r['rss_mb']['after_last_swap']} / {r['rss_mb']['max']} | "
            f"{r['rss_mb']['released']} ({r['released_after_s']} s) | {r['rss_growth'] * 100:.1f} % | "
            f"{r['rss_growth_after_first_cycle'] * 100:.1f} % (from {r['rss_mb_after_first_cycle']} MB, "
            f"swap {min(r['checkpoints'], r['swaps'])} of {r['checkpoints']} checkpoints) |",
            "",
            "A version swapped out is stopped 2 s after it stopped taking new requests (a request that still "
            "reaches it goes on to the version serving then). The run's last checkpoint is the only one that "
            "carries the ONNX graph, so the swap that first brings it in loads ONNX Runtime (a one-time step "
            "of ~30 MB); the last column is the growth once every checkpoint, and so each runtime, was loaded.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
