"""Serving the diffusion example: eirserve's step loop beside EIR 0.25's eirserve, in one run.

    python benchmarks/serve_diffusion.py [--with-eir | --eir-run RUN] [--epochs 2] [--seconds 12]
                                         [--rounds 2] [--concurrency 1,8,32] [--server-cpus 0] [--client-cpus 1]

1. Writes the 1797 built-in 8x8 digits in EIR's tutorial layout and trains examples/diffusion on
   them with `eirtrain` for --epochs (sampling speed does not depend on how well it is trained;
   sample quality is benchmarks/generation_quality.py's, through the same sampler code).
2. With --with-eir (after `bash benchmarks/eir_reference.sh install`) EIR trains the same config
   on the same files (`eir_reference.sh train NAME DATA d`); --eir-run takes an EIR run folder of
   that config trained earlier instead. EIR's own `eirserve` serves its last checkpoint.
3. Every server runs pinned to --server-cpus and `wrk` (one thread) to --client-cpus (`taskset`),
   so the servers get the same CPU. Each request is EIR's diffusion request: one item, the
   image input (zeros, which a diffusion model does not use: sampling starts from noise) and the
   label; each answer is one generated digit. Loads: C = --concurrency, --rounds interleaved
   rounds of --seconds each, the median round kept: samples per second, p50, p99, and the
   server's CPU seconds per sample (from /proc).
   Ours: the 50-step DDIM without guidance (what EIR runs for this config) and the bundle's
   defaults (the same with guidance 1.5: two rows per item). EIR: the config's settings (50-step
   DDIM), and EIR's own defaults (a copy of the run whose config leaves the sampler unset: 500
   DDPM steps), the latter at C=1 only for 3x --seconds (EIR samples one request at a time: its
   samples per second do not grow with C, see the rows at the config's settings).
   After each load the server is left to finish what it still computes (EIR's keeps sampling the
   requests wrk abandoned) before the next load starts, so no server runs in another's time.
4. The ceiling: the same sampler in this process on ONNX Runtime (1 thread, pinned to the
   server CPUs), one call of 32 label-only items (one forward pass per step for all), at each
   of the two settings.
5. Ours must answer what the in-process sampler gives for the same seed: checked for a few seeds.

Writes benchmarks/results/serve_diffusion.{json,md} with the command, commit, date and versions.
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

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EXAMPLE = ROOT / "examples" / "diffusion"
EIR_SH = ROOT / "benchmarks" / "eir_reference.sh"
EIR_DIR = Path(os.environ.get("EIR_REFERENCE_DIR", Path.home() / ".cache" / "eir-reference"))
LABEL = "mnist_label"
EIR_CONFIG_ROW = "EIR 0.25 eirserve, DDIM 50 (the config's settings)"
EIR_DEFAULT_ROW = "EIR 0.25 eirserve, its defaults (DDPM 500 steps)"

sys.path.insert(0, str(Path(__file__).parent))  # serve_load imports proctree from beside it
_spec = importlib.util.spec_from_file_location("serve_load", Path(__file__).with_name("serve_load.py"))
assert _spec is not None and _spec.loader is not None
sl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sl)


def cpus(spec: str) -> list[int]:
    return [int(c) for c in spec.split(",") if c != ""]


def train_ours(data: Path, run: Path, epochs: int) -> None:
    src = str(data / "mnist_npy")
    cmd = [
        sys.executable, "-m", "eir_core.cli.train",
        "--global_configs", str(EXAMPLE / "globals.yaml"),
        "--input_configs", str(EXAMPLE / "input_mnist_array.yaml"), str(EXAMPLE / "input_mnist_label.yaml"),
        "--output_configs", str(EXAMPLE / "output.yaml"),
        f"--globals.basic_experiment.output_folder={run}",
        f"--globals.basic_experiment.n_epochs={epochs}",
        "--globals.evaluation_checkpoint.checkpoint_interval=20",
        "--globals.evaluation_checkpoint.sample_interval=20",
        f"--input_mnist_array.input_info.input_source={src}",
        f"--input_mnist_label.input_info.input_source={data / 'mnist_labels.csv'}",
        f"--output.output_info.output_source={src}",
        "--no-pbar",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)


def train_eir(data: Path, epochs: int) -> Path:
    name = f"serve-diffusion-{os.getpid()}"
    overrides = [
        f"--globals.basic_experiment.n_epochs={epochs}",
        "--globals.evaluation_checkpoint.checkpoint_interval=20",
        "--globals.evaluation_checkpoint.sample_interval=20",
    ]
    subprocess.run(
        ["bash", str(EIR_SH), "train", name, str(data), "d", "--", *overrides], check=True, capture_output=True
    )
    return EIR_DIR / "runs" / name


def eir_checkpoint(run: Path) -> Path:
    found = sorted(
        (run / "saved_models").glob("*.pt"), key=lambda p: int(p.name.split("_checkpoint_")[1].split("_")[0])
    )
    if not found:
        sys.exit(f"no EIR checkpoint in {run}/saved_models")
    return found[-1]


def eir_defaults_run(run: Path, tmp: Path) -> Path:
    """A copy of the EIR run whose output config leaves the sampler settings unset: EIR's eirserve
    then samples with EIR's defaults (500 DDPM steps). EIR's eirserve reads the run's
    serializations/configs_stripped."""
    import yaml

    copy = tmp / "eir-defaults" / run.name
    shutil.copytree(run, copy)
    path = copy / "serializations" / "configs_stripped" / "output_configs.yaml"
    configs = yaml.safe_load(path.read_text())
    for config in configs:
        for key in ("diffusion_inference_steps", "diffusion_sampler", "diffusion_eta"):
            (config.get("sampling_config") or {}).pop(key, None)
    path.write_text(yaml.safe_dump(configs, sort_keys=False))
    return copy


def drain(pid: int, limit_s: float = 600.0) -> float:
    """Wait until the server stops using CPU (at most limit_s): requests a load left behind are
    finished (or dropped) before the next load is measured. Returns the seconds waited."""
    t0 = time.perf_counter()
    last = sl.cpu_s(pid)
    while time.perf_counter() - t0 < limit_s:
        time.sleep(0.5)
        now = sl.cpu_s(pid)
        if now - last < 0.02:
            break
        last = now
    return time.perf_counter() - t0


def pinned(cores: list[int], cmd: list[str]) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, cores)), *cmd]


def start(name: str, cmd: list[str], port: int, ready: Any, env: dict[str, str]) -> Any:
    return sl.Server(name, cmd, port, ready, env)


def start_ours(run: Path, cores: list[int]) -> Any:
    port = sl.free_port()
    cmd = [sys.executable, "-m", "eir_serve.cli", "--model-path", str(run), "--port", str(port),
           "--grpc-port", "0", "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "EIR_SERVE_DEVICE": "cpu"}
    return start(
        "eirserve", pinned(cores, cmd), port, lambda u: httpx.get(f"{u}/ready", timeout=2).status_code == 200, env
    )


def start_eir(checkpoint: Path, body: bytes, cores: list[int]) -> Any:
    port = sl.free_port()
    cmd = [str(EIR_DIR / "venv" / "bin" / "eirserve"), "--model-path", str(checkpoint),
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    headers = {"content-type": "application/json"}

    def ready(url: str) -> bool:
        return httpx.post(f"{url}/predict", content=body, headers=headers, timeout=300).status_code == 200

    return start("EIR eirserve", pinned(cores, cmd), port, ready, dict(os.environ))


def wrk(url: str, script: Path, c: int, seconds: int, pid: int, cores: list[int]) -> dict[str, Any]:
    c0 = sl.cpu_s(pid)
    flags = ["-t1", f"-c{c}", f"-d{seconds}s", "--latency", "--timeout", "120s", "-s", str(script)]
    out = subprocess.run(pinned(cores, ["wrk", *flags, url]), capture_output=True, text=True, timeout=seconds + 200)
    cpu = sl.cpu_s(pid) - c0
    drain(pid)
    total = re.search(r"(\d+) requests in ([0-9.]+)(\w+)", out.stdout)
    p50 = re.search(r"\s50%\s+([0-9.]+\w+)", out.stdout)
    p99 = re.search(r"\s99%\s+([0-9.]+\w+)", out.stdout)
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out.stdout)
    if not (total and p50 and p99 and rps):
        raise RuntimeError(f"could not read wrk's output:\n{out.stdout}\n{out.stderr}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out.stdout)
    n = int(total.group(1))
    p50_ms, p99_ms = sl._ms(p50.group(1)), sl._ms(p99.group(1))
    return {
        "samples_per_s": float(rps.group(1)),
        "p50_ms": round(p50_ms, 1),
        "p99_ms": round(p99_ms, 1),
        "p99_over_p50": round(p99_ms / p50_ms, 2) if p50_ms else None,
        "samples": n,
        "errors": (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, errors.groups())) if errors else 0),
        "server_cpu_ms_per_sample": round(cpu / max(n, 1) * 1000, 2),
    }


def ceiling(run: Path, cores: list[int], seconds: float) -> dict[str, float]:
    """Samples per second of the in-process sampler: one call of 32 label-only items (one forward
    pass per step for all of them), without guidance and with the bundle's defaults."""
    from eir_core.bundle import resolve_bundle_path
    from eir_core.diffusion_sampling import SamplingParams
    from eir_core.onnx_runtime import OnnxPredictor

    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cores))
    try:
        p = OnnxPredictor.from_path(resolve_bundle_path(run), threads=1)
        out: dict[str, float] = {}
        n = 32
        items = [{LABEL: {"CLASS": str(i % 10)}} for i in range(n)]
        for name, params in (("no_guidance", SamplingParams(guidance_scale=1.0)), ("bundle_default", None)):
            p.predict(items, list(range(n)), sampling=params)  # warm-up
            t0, done = time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds:
                p.predict(items, list(range(done, done + n)), sampling=params)
                done += n
            out[name] = round(done / (time.perf_counter() - t0), 2)
        return out
    finally:
        os.sched_setaffinity(0, before)


def served_equals_in_process(url: str, run: Path) -> bool:
    from eir_core.bundle import resolve_bundle_path
    from eir_core.onnx_runtime import OnnxPredictor

    p = OnnxPredictor.from_path(resolve_bundle_path(run), threads=1)
    for seed, digit in ((1, "3"), (2, "8"), (3, "0")):
        r = httpx.post(f"{url}/predict", params={"seed": seed}, json=[{LABEL: {"CLASS": digit}}], timeout=60)
        got = np.frombuffer(base64.b64decode(r.json()["result"][0]["mnist"]), "<f4")
        want = p.predict([{LABEL: {"CLASS": digit}}], [seed])[0]["mnist"].reshape(-1)
        if not np.array_equal(got, want):
            return False
    return True


def versions() -> dict[str, str]:
    import onnxruntime

    from eir_serve import __version__

    out = {"eir_serve": __version__, "onnxruntime": onnxruntime.__version__, "python": sys.version.split()[0]}
    eir_py = EIR_DIR / "venv" / "bin" / "python"
    if eir_py.exists():
        r = subprocess.run([str(eir_py), "-c", "import importlib.metadata as m; print(m.version('eir-dl'))"],
                           capture_output=True, text=True)  # fmt: skip
        out["eir-dl"] = r.stdout.strip()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--with-eir", action="store_true", help="train EIR on the same config and serve it")
    ap.add_argument("--eir-run", type=Path, help="an EIR run folder of examples/diffusion to serve instead")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--server-cpus", default="0")
    ap.add_argument("--client-cpus", default="1")
    a = ap.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        sys.exit("wrk and taskset are needed (apt-get install wrk util-linux)")
    if (a.with_eir or a.eir_run) and not (EIR_DIR / "venv" / "bin" / "eirserve").exists():
        sys.exit(f"EIR is not installed in {EIR_DIR}/venv: run 'bash benchmarks/eir_reference.sh install'")
    server_cpus, client_cpus = cpus(a.server_cpus), cpus(a.client_cpus)
    levels = [int(c) for c in a.concurrency.split(",")]
    result: dict[str, Any] = {
        "command": "python benchmarks/serve_diffusion.py " + " ".join(sys.argv[1:]),
        "commit": sl.git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpus": os.cpu_count(),
        "server_cpus": server_cpus,
        "client_cpus": client_cpus,
        "versions": versions(),
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        from eir_core.data.builtin import make_digits, write_tutorial_layout

        data = tmp / "data"
        images, labels = make_digits(8)
        write_tutorial_layout(data, images, labels, 10000)
        print("training ours ...", flush=True)
        train_ours(data, tmp / "run", a.epochs)
        eir_run = a.eir_run
        if a.with_eir and eir_run is None:
            print("training EIR ...", flush=True)
            eir_run = train_eir(data, a.epochs)
        body = json.dumps(
            [{"mnist": base64.b64encode(np.zeros((1, 8, 8), np.uint8).tobytes()).decode(), LABEL: {"CLASS": "3"}}]
        ).encode()
        script = sl.wrk_script(tmp, "diffusion", body, {"Content-Type": "application/json"})
        print("in-process ceiling ...", flush=True)
        result["ceiling_samples_per_s"] = ceiling(tmp / "run", server_cpus, a.seconds / 2)
        servers = []
        try:
            ours = start_ours(tmp / "run", server_cpus)
            servers.append(ours)
            result["served_equals_in_process"] = served_equals_in_process(ours.url, tmp / "run")
            eir = start_eir(eir_checkpoint(eir_run), body, server_cpus) if eir_run else None
            eir_default = None
            if eir_run:
                servers.append(eir)
                eir_default = start_eir(eir_checkpoint(eir_defaults_run(eir_run, tmp)), body, server_cpus)
                eir_default.name = "EIR eirserve (its defaults)"
                servers.append(eir_default)
            result["ready_s"] = {s.name: round(s.ready_s, 2) for s in servers}
            targets = [("ours, DDIM 50, no guidance (as EIR samples)", ours, "/predict?guidance_scale=1"),
                       ("ours, bundle default: DDIM 50, guidance 1.5", ours, "/predict")]  # fmt: skip
            if eir:
                targets.append((EIR_CONFIG_ROW, eir, "/predict"))
            if eir_default:
                targets.append((EIR_DEFAULT_ROW, eir_default, "/predict"))
            for _, server, path in targets:  # warm-up
                wrk(server.url + path, script, 2, 3, server.proc.pid, client_cpus)
            rows = []
            for c in levels:
                here = [t for t in targets if t[0] != EIR_DEFAULT_ROW or c == 1]
                runs: dict[str, list[dict[str, Any]]] = {t[0]: [] for t in here}
                for r in range(a.rounds):
                    for name, server, path in here:
                        seconds = a.seconds * 3 if name == EIR_DEFAULT_ROW else a.seconds
                        m = wrk(server.url + path, script, c, seconds, server.proc.pid, client_cpus)
                        runs[name].append(m)
                        print(f"C={c} round {r + 1} {name}: {m}", flush=True)
                for name, ms in runs.items():
                    best = sorted(ms, key=lambda m: m["samples_per_s"])[len(ms) // 2]
                    rows.append({"server": name, "concurrency": c, **best,
                                 "rounds_samples_per_s": [m["samples_per_s"] for m in ms]})  # fmt: skip
            result["rows"] = rows
        finally:
            for s in servers:
                s.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_diffusion.json").write_text(json.dumps(result, indent=2) + "\n")
    md = render(result)
    (RESULTS / "serve_diffusion.md").write_text(md)
    print(md)


def render(r: dict[str, Any]) -> str:
    ceil = r["ceiling_samples_per_s"]

    # the target compares C=32 with one call of 32 items, at the same sampling settings
    def top(server: str) -> float:
        return float(
            ceil["no_guidance"] if "no guidance" in server or server.startswith("EIR") else ceil["bundle_default"]
        )

    eir = {row["concurrency"]: row for row in r["rows"] if row["server"] == EIR_CONFIG_ROW}
    eir_default = next((row for row in r["rows"] if row["server"] == EIR_DEFAULT_ROW), None)

    lines = [
        f"# Serving the diffusion example: eirserve's step loop vs EIR 0.25 ({r['date']})",
        "",
        f"Command: `{r['command']}` at commit `{r['commit']}`, {r['date']} UTC; {r['cpus']} CPUs, servers "
        f"pinned to CPU {r['server_cpus']}, wrk to CPU {r['client_cpus']}. Versions: {r['versions']}.",
        "",
        "One label-conditioned 8x8 digit per request (EIR's diffusion request: image input and label). "
        f"In-process ceiling (same sampler, ONNX Runtime, 1 thread): {ceil} samples/s. "
        f"Served samples equal the in-process sampler's for the same seed: {r.get('served_equals_in_process')}. "
        f"Time to ready: {r['ready_s']} s.",
        "",
        "| server | C | samples/s | × ceiling (batch 32) | × EIR, config's settings (same C) "
        "| × EIR, its defaults | p50 ms | p99 ms | p99/p50 | server CPU ms/sample | errors | rounds (samples/s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def ratio(a: float, b: dict[str, Any] | None) -> str:
        return f"{a / b['samples_per_s']:.1f}×" if b and b["samples_per_s"] else "–"

    for row in r["rows"]:
        ceiling_ratio = "–" if row["server"] == EIR_DEFAULT_ROW else f"{row['samples_per_s'] / top(row['server']):.2f}"
        lines.append(
            f"| {row['server']} | {row['concurrency']} | {row['samples_per_s']:.2f} | {ceiling_ratio} | "
            f"{ratio(row['samples_per_s'], eir.get(row['concurrency']))} | "
            f"{ratio(row['samples_per_s'], eir_default)} | {row['p50_ms']} | {row['p99_ms']} | "
            f"{row['p99_over_p50']} | {row['server_cpu_ms_per_sample']} | {row['errors']} | "
            f"{row['rounds_samples_per_s']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
