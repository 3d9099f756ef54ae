"""Loopback load on `eirserve`, beside EIR 0.25's own `eirserve` on the same model, in one run.

    python benchmarks/serve_load.py [--with-eir] [--levers] [--seconds 8] [--rounds 3] [--soak 100000]

1. Writes the 1797 built-in 8x8 digits in EIR's tutorial layout and the tutorial's run-1 YAMLs
   for them (`eir_reference.sh configs ... a 128`: the output model with `cutoff: 128`, without
   which EIR cannot build the 8x8 model), and trains `eirtrain` on them (--epochs, 4 by default:
   serving speed does not depend on how well the model is trained).
2. With --with-eir (after `bash benchmarks/eir_reference.sh install`): trains EIR on the very same
   data and YAMLs through `eir_reference.sh train`, and starts EIR's `eirserve` on its checkpoint.
   Both models have the same network (336 012 parameters).
3. Starts `eirserve --enable-echo` (defaults otherwise) and measures the time from the start of
   each process to its first answer (ours: /ready; EIR has none: its first 200 from /predict)
   and its RSS then.
4. For concurrency 1, 8, 32 and 64, `--rounds` rounds of `wrk` (C, one thread, --seconds each)
   against our /predict, our /echo (the same JSON/base64 decoding and encoding, no model: the
   HTTP ceiling) and EIR's /predict, interleaved, one image per request; the median round of
   each. Also each server's CPU time per request (from /proc), which noise disturbs less than
   latency.
5. The protocol routes at the same load: /v2 infer in JSON and with binary tensors (wrk), gRPC
   ModelInfer (grpc.aio client: no C load tool for gRPC here).
6. Soak: at least --soak requests at concurrency 32 (one wrk run, its length sized from the
   throughput measured in 4; the count it made is reported); RSS before and after.
7. With --levers: each serving lever turned off (or on) alone, on a fresh server: the runtime
   (--runtime torch: PyTorch with TorchScript, and with --graph eager), the parser and event loop
   (--http h11 --loop asyncio), --torch-threads 2, --access-log, --workers 2, and the gRPC
   server off, at concurrency 1 and 32, with each server's start-up time and RSS.
8. The in-process forward pass, PyTorch eager, TorchScript and ONNX Runtime, at batch 1 and 64.

Loopback only; every load is bounded in time. Needs `wrk` (Debian's
package). Writes benchmarks/results/serve_load.{json,md} with the command, commit and date.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from proctree import children  # benchmarks/proctree.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EIR_SH = ROOT / "benchmarks" / "eir_reference.sh"
EIR_DIR = Path(os.environ.get("EIR_REFERENCE_DIR", Path.home() / ".cache" / "eir-reference"))
CONCURRENCY = (1, 8, 32, 64)
TICKS = os.sysconf("SC_CLK_TCK")


def write_results(name: str, result: dict[str, Any], render: Callable[[dict[str, Any]], str]) -> None:
    """benchmarks/results/NAME.json (the raw figures) and NAME.md (``render``'s report), and print the report."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = render(result)
    (RESULTS / f"{name}.md").write_text(md)
    print(md)


def git_commit() -> str:
    r = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of ``pid`` and its children (the workers of --workers), in MB. ``field``
    RssAnon: the private part; RssFile: mapped files (shared libraries), shared between processes."""
    total = 0.0
    for p in [pid, *children(pid)]:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                total += int(line.split()[1]) / 1024
    return total


def cpu_s(pid: int) -> float:
    """User + system CPU time of ``pid`` and its children, in seconds."""
    total = 0.0
    for p in [pid, *children(pid)]:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def _ms(text: str) -> float:
    value, unit = float(re.sub(r"[a-z]+$", "", text)), re.sub(r"^[0-9.]+", "", text)
    return {"us": value / 1000, "ms": value, "s": value * 1000, "m": value * 60000}[unit]


# --------------------------------------------------------------------------- wrk
def wrk_script(folder: Path, name: str, body: bytes, headers: dict[str, str]) -> Path:
    body_file = folder / f"{name}.body"
    body_file.write_bytes(body)
    lines = [f'local f = io.open("{body_file}", "rb")', 'wrk.method = "POST"', 'wrk.body = f:read("*a")', "f:close()"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script = folder / f"{name}.lua"
    script.write_text("\n".join(lines) + "\n")
    return script


def wrk(url: str, script: Path, concurrency: int, seconds: float, pid: int) -> dict[str, float]:
    assert url.startswith("http://127.0.0.1")
    c0 = cpu_s(pid)
    flags = ["-t1", f"-c{concurrency}", f"-d{int(seconds)}s", "--latency", "--timeout", "10s", "-s", str(script)]
    out = subprocess.run(
        ["wrk", *flags, url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    cpu = cpu_s(pid) - c0
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"\s50%\s+([0-9.]+\w+)", out)
    p99 = re.search(r"\s99%\s+([0-9.]+\w+)", out)
    if not (rps and total and p50 and p99):
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    n = int(total.group(1))
    return {
        "req_per_s": float(rps.group(1)),
        "p50_ms": round(_ms(p50.group(1)), 3),
        "p99_ms": round(_ms(p99.group(1)), 3),
        "requests": n,
        "errors": (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, errors.groups())) if errors else 0),
        "cpu_ms_per_req": round(cpu / max(n, 1) * 1000, 4),
    }


def median_round(runs: list[dict[str, float]]) -> dict[str, float]:
    """The round with the median throughput (its own latencies, not a mix of rounds)."""
    ordered = sorted(runs, key=lambda r: r["req_per_s"])
    return {**ordered[len(ordered) // 2], "rounds_req_per_s": [r["req_per_s"] for r in runs]}


# --------------------------------------------------------------------------- servers
class Server:
    def __init__(self, name: str, cmd: list[str], port: int, ready: Callable[[str], bool], env: dict[str, str]) -> None:
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.TemporaryFile()
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, env=env)
        while True:
            try:
                if ready(self.url):
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.perf_counter() - t0 > 120:
                self.log.seek(0)
                raise RuntimeError(f"{name} did not start:\n{self.log.read().decode()[-3000:]}")
            time.sleep(0.01)  # poll interval
        self.ready_s = time.perf_counter() - t0
        self.rss_ready_mb = rss_mb(self.proc.pid)
        self.rss_ready_anon_mb = rss_mb(self.proc.pid, "RssAnon")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_ours(bundle: Path, *flags: str, grpc: bool = False) -> Server:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "eir_serve.cli",
        "--model-path",
        str(bundle),
        "--port",
        str(port),
        "--grpc-port",
        str(free_port() if grpc else 0),
        "--enable-echo",
        "--log-level",
        "warning",
        *flags,
    ]
    server = Server(
        "eirserve",
        cmd,
        port,
        lambda url: httpx.get(f"{url}/ready", timeout=2).status_code == 200,
        {**os.environ, "EIR_SERVE_DEVICE": "cpu"},
    )
    server.grpc_port = int(cmd[cmd.index("--grpc-port") + 1])  # type: ignore[attr-defined]
    return server


def start_eir(checkpoint: Path, body: bytes) -> Server:
    port = free_port()
    cmd = [
        str(EIR_DIR / "venv" / "bin" / "eirserve"),
        "--model-path",
        str(checkpoint),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    headers = {"content-type": "application/json"}
    return Server(
        "EIR eirserve",
        cmd,
        port,
        lambda url: httpx.post(f"{url}/predict", content=body, headers=headers, timeout=5).status_code == 200,
        dict(os.environ),
    )


# --------------------------------------------------------------------------- models
def prepare(tmp: Path, epochs: int, with_eir: bool) -> tuple[Path, Path | None, int]:
    from eir_core.cli.train import main as eirtrain
    from eir_core.data.builtin import make_digits, write_tutorial_layout

    data = tmp / "data"
    images, labels = make_digits(8)
    write_tutorial_layout(data, images, labels, 10000)
    conf = tmp / "conf"
    subprocess.run(["bash", str(EIR_SH), "configs", str(data), str(conf), "a", "128"], check=True)
    # 1597 training digits (valid_size 200), a checkpoint every 20 iterations (EIR writes one only there).
    overrides = [
        f"--globals.basic_experiment.n_epochs={epochs}",
        "--globals.basic_experiment.valid_size=200",
        "--globals.evaluation_checkpoint.checkpoint_interval=20",
        "--globals.evaluation_checkpoint.sample_interval=20",
    ]
    assert (
        eirtrain(
            [
                "--global_configs",
                str(conf / "globals.yaml"),
                "--input_configs",
                str(conf / "input_mnist_array.yaml"),
                "--output_configs",
                str(conf / "output.yaml"),
                f"--globals.basic_experiment.output_folder={tmp / 'run'}",
                *overrides,
                "--globals.latent_sampling=None",
                "--no-pbar",
            ]
        )
        == 0
    )
    from eir_core.bundle import resolve_bundle_path
    from eir_core.predict import Predictor

    params = sum(
        p.numel() for p in Predictor.from_path(resolve_bundle_path(tmp / "run"), device="cpu").model.parameters()
    )
    if not with_eir:
        return tmp / "run", None, params
    out = (
        subprocess.run(
            ["bash", str(EIR_SH), "train", "serve_load_8x8", str(data), "a", "128", "--", *overrides],
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    checkpoints = sorted(Path(out, "saved_models").glob("*.pt"), key=lambda p: p.stat().st_mtime)
    if not checkpoints:
        sys.exit(f"EIR wrote no checkpoint in {out}/saved_models")
    return tmp / "run", checkpoints[-1], params


# --------------------------------------------------------------------------- measurements
async def grpc_load(target: str, request: Any, n: int, concurrency: int, max_seconds: float) -> dict[str, float]:
    """ModelInfer calls over one HTTP/2 channel (grpc.aio, C core), ``n`` at most."""
    import grpc

    from eir_serve.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    assert target.startswith("127.0.0.1:")
    lat: list[float] = []
    errors = 0
    it = iter(range(n))
    deadline = time.perf_counter() + max_seconds
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def worker() -> None:
            nonlocal errors
            for _ in it:
                if time.perf_counter() > deadline:
                    return
                t0 = time.perf_counter()
                try:
                    await stub.ModelInfer(request, timeout=60)
                except grpc.aio.AioRpcError:
                    errors += 1
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        elapsed = time.perf_counter() - t0
    lat.sort()
    return {
        "req_per_s": round(len(lat) / elapsed, 1),
        "p50_ms": round(lat[len(lat) // 2] * 1000, 3),
        "p99_ms": round(lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))] * 1000, 3),
        "errors": errors,
    }


def protocol_bodies(img: np.ndarray) -> tuple[bytes, tuple[bytes, dict[str, str]]]:
    shape = [1, *img.shape]
    tensor = {"name": "mnist", "shape": shape, "datatype": "UINT8"}
    as_json = json.dumps({"inputs": [{**tensor, "data": img.reshape(-1).tolist()}]}).encode()
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": img.nbytes}}],
            "outputs": [{"name": "mnist_output", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return as_json, (
        header + img.tobytes(),
        {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )


def forward_times(bundle: Path, img: np.ndarray) -> dict[str, float]:
    import torch

    from eir_core.bundle import resolve_bundle_path
    from eir_core.onnx_runtime import OnnxPredictor
    from eir_core.predict import Predictor

    torch.set_num_threads(1)  # as eirserve runs it on the CPU
    path = resolve_bundle_path(bundle)
    out = {}
    runners: dict[str, Any] = {
        "eager": Predictor.from_path(path, device="cpu", graph="eager"),
        "torchscript": Predictor.from_path(path, device="cpu", graph="torchscript"),
        "onnxruntime": OnnxPredictor.from_path(path, threads=1),
    }
    for graph, pred in runners.items():
        for n in (1, 64):
            items = [{"mnist": img}] * n
            pred.predict(items, list(range(n)))
            t = time.perf_counter()
            for _ in range(100):
                pred.predict(items, list(range(n)))
            out[f"{graph}_batch_{n}_ms"] = round((time.perf_counter() - t) / 100 * 1000, 3)
    return out


LEVERS = {  # name -> flags that turn the lever off (or, for workers, on)
    "all levers (defaults)": [],
    "PyTorch (TorchScript) instead of ONNX Runtime": ["--runtime", "torch"],
    "PyTorch eager instead of ONNX Runtime": ["--runtime", "torch", "--graph", "eager"],
    "h11 + asyncio instead of httptools + uvloop": ["--http", "h11", "--loop", "asyncio"],
    "2 forward-pass threads instead of 1": ["--torch-threads", "2"],
    "access log on": ["--access-log", "--log-level", "info"],
    "--workers 2": ["--workers", "2"],
    "gRPC off (--grpc-port 0)": ["--grpc-port", "0"],
}


def main() -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--with-eir", action="store_true", help="also EIR 0.25's eirserve (eir_reference.sh install)")
    ap.add_argument("--levers", action="store_true", help="each serving lever alone, on a fresh server")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=8, help="per wrk run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per point (median kept)")
    ap.add_argument("--soak", type=int, default=100_000, help="requests for the RSS check")
    a = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed (apt-get install wrk)")
    if a.with_eir and not (EIR_DIR / "venv" / "bin" / "eirserve").exists():
        sys.exit(f"EIR is not installed in {EIR_DIR}/venv: run 'bash benchmarks/eir_reference.sh install'")
    started = time.strftime("%Y-%m-%d %H:%M")
    result: dict[str, Any] = {
        "command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:]),
        "commit": git_commit(),
        "date": started,
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bundle, eir_checkpoint, params = prepare(tmp, a.epochs, a.with_eir)
        result["parameters"] = params
        img = (np.random.default_rng(0).random((1, 8, 8)) * 255).astype(np.uint8)
        body = json.dumps([{"mnist": base64.b64encode(img.tobytes()).decode()}]).encode()
        v2_json, (v2_binary, binary_headers) = protocol_bodies(img)
        json_headers = {"Content-Type": "application/json"}
        predict_lua = wrk_script(tmp, "predict", body, json_headers)
        servers: list[Server] = []
        try:
            ours = start_ours(bundle, grpc=True)
            servers.append(ours)
            eir = start_eir(eir_checkpoint, body) if eir_checkpoint else None
            if eir:
                servers.append(eir)
            result["ready_s"] = {"ours": round(ours.ready_s, 2), **({"eir": round(eir.ready_s, 2)} if eir else {})}
            result["rss_ready_anon_mb"] = {"ours": round(ours.rss_ready_anon_mb, 1)}
            result["rss_ready_mb"] = {
                "ours": round(ours.rss_ready_mb, 1),
                **({"eir": round(eir.rss_ready_mb, 1)} if eir else {}),
            }
            targets = [("ours", ours, "/predict"), ("echo", ours, "/echo")] + (
                [("eir", eir, "/predict")] if eir else []
            )
            for _, server, path in targets:  # warm-up
                wrk(server.url + path, predict_lua, 8, 2, server.proc.pid)
            rows = []
            for c in CONCURRENCY:
                runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in targets}
                for r in range(a.rounds):
                    order = targets if r % 2 == 0 else targets[::-1]
                    for name, server, path in order:
                        runs[name].append(wrk(server.url + path, predict_lua, c, a.seconds, server.proc.pid))
                row: dict[str, Any] = {"concurrency": c, **{k: median_round(v) for k, v in runs.items()}}
                print(json.dumps(row), flush=True)
                rows.append(row)
            result["rows"] = rows
            # The protocol routes at the same load.
            model_name = httpx.get(f"{ours.url}/info").json()["model"]["name"]
            v2_url = f"{ours.url}/v2/models/{model_name}/infer"
            v2_json_lua = wrk_script(tmp, "v2json", v2_json, json_headers)
            v2_bin_lua = wrk_script(tmp, "v2bin", v2_binary, binary_headers)
            from eir_serve.grpc import grpc_predict_v2_pb2 as pb

            grpc_request = pb.ModelInferRequest(model_name=model_name, raw_input_contents=[img.tobytes()])
            grpc_request.inputs.add(name="mnist", datatype="UINT8", shape=[1, *img.shape])
            grpc_target = f"127.0.0.1:{ours.grpc_port}"  # type: ignore[attr-defined]
            asyncio.run(grpc_load(grpc_target, grpc_request, 500, 8, 10))
            result["protocol"] = [
                {
                    "concurrency": c,
                    "v2_json": wrk(v2_url, v2_json_lua, c, a.seconds, ours.proc.pid),
                    "v2_binary": wrk(v2_url, v2_bin_lua, c, a.seconds, ours.proc.pid),
                    "grpc": asyncio.run(grpc_load(grpc_target, grpc_request, 20_000, c, a.seconds)),
                }
                for c in (1, 32)
            ]
            # Soak: memory over --soak requests.
            # wrk's thread:stop() ends the sending but not wrk itself (it waits out -d): so a run
            # sized from the C=32 throughput measured above, for at least --soak requests.
            rate = next(row for row in rows if row["concurrency"] == 32)["ours"]["req_per_s"]
            rss_before = rss_mb(ours.proc.pid)
            soak = wrk(f"{ours.url}/predict", predict_lua, 32, min(600, a.soak / rate * 1.25 + 2), ours.proc.pid)
            result["soak"] = {
                **soak,
                "rss_mb_before": round(rss_before, 1),
                "rss_mb_after": round(rss_mb(ours.proc.pid), 1),
            }
            if eir:
                result["rss_after_mb"] = {"eir": round(rss_mb(eir.proc.pid), 1)}
        finally:
            for s in servers:
                s.stop()
        if a.levers:
            levers = []
            for label, flags in LEVERS.items():
                server = start_ours(bundle, *flags, grpc=True)  # the defaults include gRPC
                try:
                    wrk(f"{server.url}/predict", predict_lua, 8, 2, server.proc.pid)
                    one = median_round(
                        [
                            wrk(f"{server.url}/predict", predict_lua, 1, a.seconds, server.proc.pid)
                            for _ in range(a.rounds)
                        ]
                    )
                    many = median_round(
                        [
                            wrk(f"{server.url}/predict", predict_lua, 32, a.seconds, server.proc.pid)
                            for _ in range(a.rounds)
                        ]
                    )
                    levers.append(
                        {
                            "lever": label,
                            "flags": flags,
                            "c1": one,
                            "c32": many,
                            "ready_s": round(server.ready_s, 2),
                            "rss_ready_mb": round(server.rss_ready_mb, 1),
                        }
                    )
                    print(json.dumps(levers[-1]), flush=True)
                finally:
                    server.stop()
            result["levers"] = levers
        result["forward"] = forward_times(bundle, img)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_load.json").write_text(json.dumps(result, indent=2) + "\n")
    text = render(result)
    (RESULTS / "serve_load.md").write_text(text)
    print(text)


def _ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else float("nan")


def render(r: dict[str, Any]) -> str:
    eir = "eir" in r["ready_s"]
    lines = [
        f"# eirserve load ({r['date']}, 8x8 tutorial run-1 model, one image per request, loopback)",
        "",
        f"`{r['command']}` at commit `{r['commit']}`, {r['cpus']} CPUs, `wrk -t1` as the client "
        "(it shares the CPUs with the servers). Each point: the median of the interleaved rounds "
        f"(the throughput of every round in the JSON). Model: {r['parameters']:,} parameters"
        + (", the same network in both servers (tutorial YAMLs with `cutoff: 128`, the same data)." if eir else "."),
        "",
    ]
    head = "| concurrency | ours req/s | p50 ms | p99 ms | p99/p50 | echo req/s | ours/echo | CPU ms/req |"
    sep = "|---|---|---|---|---|---|---|---|"
    if eir:
        head += " EIR req/s | EIR p50 ms | EIR p99 ms | EIR CPU ms/req | req/s ours/EIR | p99 ours/EIR |"
        sep += "---|---|---|---|---|---|"
    lines += [head, sep]
    for row in r["rows"]:
        o, e = row["ours"], row["echo"]
        line = (
            f"| {row['concurrency']} | {o['req_per_s']:.0f} | {o['p50_ms']:.2f} | {o['p99_ms']:.2f} | "
            f"{_ratio(o['p99_ms'], o['p50_ms'])} | {e['req_per_s']:.0f} | {_ratio(o['req_per_s'], e['req_per_s'])} | "
            f"{o['cpu_ms_per_req']:.3f} |"
        )
        if eir:
            x = row["eir"]
            line += (
                f" {x['req_per_s']:.0f} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {x['cpu_ms_per_req']:.3f} | "
                f"{_ratio(o['req_per_s'], x['req_per_s'])} | {_ratio(o['p99_ms'], x['p99_ms'])} |"
            )
        lines.append(line)
    errors = sum(row[k]["errors"] for row in r["rows"] for k in ("ours", "echo", "eir") if k in row)
    lines += ["", f"Errors (non-2xx or socket errors) over all of these runs: {errors}.", ""]
    c1 = next(row for row in r["rows"] if row["concurrency"] == 1)
    c32 = next(row for row in r["rows"] if row["concurrency"] == 32)
    o32 = c32["ours"]
    checks = [
        ("C=32: throughput ≥ 0.8× the echo ceiling", _ratio(o32["req_per_s"], c32["echo"]["req_per_s"]), 0.8, True),
        ("C=32: p99 ≤ 2× our own p50", _ratio(o32["p99_ms"], o32["p50_ms"]), 2.0, False),
        ("C=1: p50 ≤ 2 ms", c1["ours"]["p50_ms"], 2.0, False),
        ("ready ≤ 1.5 s after start", r["ready_s"]["ours"], 1.5, False),
        ("RSS ≤ 300 MB (at ready)", r["rss_ready_mb"]["ours"], 300, False),
    ]
    if eir:
        checks[:0] = [
            ("C=32: throughput ≥ 5× EIR", _ratio(o32["req_per_s"], c32["eir"]["req_per_s"]), 5.0, True),
            ("C=32: p99 ≤ ⅓ of EIR's", _ratio(o32["p99_ms"], c32["eir"]["p99_ms"]), round(1 / 3, 2), False),
        ]
    lines += ["| target | measured | met |", "|---|---|---|"]
    for label, value, bound, at_least in checks:
        ok = value >= bound if at_least else value <= bound
        lines.append(f"| {label} | {value} | {'yes' if ok else 'no'} |")
    s = r["soak"]
    lines += [
        "",
        f"Start to ready: ours {r['ready_s']['ours']} s (RSS {r['rss_ready_mb']['ours']} MB, of which "
        f"{r['rss_ready_anon_mb']['ours']} MB private; the rest is mapped shared libraries)"
        + (
            f", EIR {r['ready_s']['eir']} s to its first answer (RSS {r['rss_ready_mb']['eir']} MB, "
            f"{r['rss_after_mb']['eir']} MB after its runs)"
            if eir
            else ""
        )
        + ".",
        "",
        f"Soak: {s['requests']} requests at concurrency 32 in one wrk run, {s['req_per_s']:.0f} req/s, "
        f"{s['errors']} errors; server RSS {s['rss_mb_before']} MB before, {s['rss_mb_after']} MB after.",
        "",
        "The Open Inference Protocol at the same load (gRPC with the grpc.aio client, the others with wrk):",
        "",
        "| concurrency | route | req/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for p in r["protocol"]:
        for key, label in (
            ("v2_json", "/v2 infer, JSON"),
            ("v2_binary", "/v2 infer, binary tensors"),
            ("grpc", "gRPC ModelInfer (raw)"),
        ):
            m = p[key]
            lines.append(
                f"| {p['concurrency']} | {label} | {m['req_per_s']:.0f} | {m['p50_ms']:.2f} | "
                f"{m['p99_ms']:.2f} | {m['errors']} |"
            )
    if "levers" in r:
        base = r["levers"][0]
        lines += [
            "",
            "Levers, one at a time on a fresh server (the first row is the defaults):",
            "",
            "| configuration | C=1 p50 ms | C=32 req/s | vs defaults | C=32 p50 ms | C=32 p99 ms | "
            "CPU ms/req (C=32) | ready s | RSS MB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for lv in r["levers"]:
            lines.append(
                f"| {lv['lever']} | {lv['c1']['p50_ms']:.2f} | {lv['c32']['req_per_s']:.0f} | "
                f"{_ratio(lv['c32']['req_per_s'], base['c32']['req_per_s'])} | {lv['c32']['p50_ms']:.2f} | "
                f"{lv['c32']['p99_ms']:.2f} | {lv['c32']['cpu_ms_per_req']:.3f} | {lv['ready_s']} | "
                f"{lv['rss_ready_mb']} |"
            )
    f = r["forward"]
    lines += [
        "",
        "In-process `predict` (batch building, forward pass, un-normalizing; 1 thread): PyTorch eager "
        f"{f['eager_batch_1_ms']} ms at batch 1, {f['eager_batch_64_ms']} ms at 64; TorchScript "
        f"{f['torchscript_batch_1_ms']} ms and {f['torchscript_batch_64_ms']} ms; ONNX Runtime "
        f"{f['onnxruntime_batch_1_ms']} ms and {f['onnxruntime_batch_64_ms']} ms.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
