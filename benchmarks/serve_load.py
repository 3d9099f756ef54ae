"""Bounded loopback load on `eirserve`: /predict vs an echo endpoint (the HTTP ceiling).

    python benchmarks/serve_load.py [--model-path BUNDLE] [-n 2000] [--max-seconds 20]

Without --model-path it trains the 8x8 tutorial autoencoder (examples/tutorial/digits8) first.
Starts `eirserve --enable-echo` on 127.0.0.1 (ephemeral port), measures time to ready, then for
concurrency 1, 8, 32, 64 sends a fixed number of requests (each one image, EIR's payload) to
/predict and to /echo (same JSON/base64 decode and encode, no model): req/s, p50, p99. At the same
load, the same image through the Open Inference Protocol: /v2 infer in JSON, /v2 infer with the
binary tensor extension, and gRPC ModelInfer (raw_input_contents), each as a ratio to /echo (the
HTTP ceiling). Also the in-process forward pass per item, and server RSS before/after 10 000
requests. Loopback only; every loop is bounded in count and time. Writes
benchmarks/results/serve_load.{json,md} with the command, commit and date.
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
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def drive(call: Callable[[], Awaitable[bool]], n: int, concurrency: int, max_seconds: float) -> dict[str, float]:
    """``n`` calls from ``concurrency`` workers (stopping at ``max_seconds``); ``call`` says if it succeeded."""
    lat: list[float] = []
    errors = 0
    it = iter(range(n))
    deadline = time.perf_counter() + max_seconds

    async def worker() -> None:
        nonlocal errors
        for _ in it:
            if time.perf_counter() > deadline:
                return
            t0 = time.perf_counter()
            errors += not await call()
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    elapsed = time.perf_counter() - t0
    lat.sort()

    def q(p: float) -> float:
        return lat[min(len(lat) - 1, round(p * (len(lat) - 1)))] * 1000

    return {"sent": len(lat), "req_per_s": round(len(lat) / elapsed, 1), "p50_ms": round(q(0.5), 2),
            "p99_ms": round(q(0.99), 2), "errors": errors}  # fmt: skip


async def load(
    url: str, body: bytes, n: int, concurrency: int, max_seconds: float, headers: dict[str, str] | None = None
) -> dict[str, float]:
    assert url.startswith("http://127.0.0.1")
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def call() -> bool:
            try:
                r = await client.post(url, content=body, headers=headers or {"content-type": "application/json"})
                return r.status_code == 200
            except httpx.HTTPError:
                return False

        return await drive(call, n, concurrency, max_seconds)


async def grpc_load(target: str, request: Any, n: int, concurrency: int, max_seconds: float) -> dict[str, float]:
    """ModelInfer calls over one HTTP/2 channel (gRPC multiplexes the concurrent calls)."""
    import grpc

    from eir_serve.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    assert target.startswith("127.0.0.1:")
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def call() -> bool:
            try:
                await stub.ModelInfer(request, timeout=60)
                return True
            except grpc.aio.AioRpcError:
                return False

        return await drive(call, n, concurrency, max_seconds)


def protocol_requests(name: str, img: np.ndarray) -> tuple[bytes, tuple[bytes, dict[str, str]], Any]:
    """The same one-image request as /v2 JSON, /v2 binary (Inference-Header-Content-Length) and gRPC."""
    from eir_serve.grpc import grpc_predict_v2_pb2 as pb

    shape = [1, *img.shape]
    tensor = {"name": "mnist", "shape": shape, "datatype": "UINT8"}
    as_json = json.dumps({"inputs": [{**tensor, "data": img.reshape(-1).tolist()}]}).encode()
    header = json.dumps({
        "inputs": [{**tensor, "parameters": {"binary_data_size": img.nbytes}}],
        "outputs": [{"name": "mnist_output", "parameters": {"binary_data": True}}],
    }).encode()  # fmt: skip
    binary = (header + img.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                       "content-type": "application/octet-stream"})  # fmt: skip
    grpc_request = pb.ModelInferRequest(model_name=name, raw_input_contents=[img.tobytes()])
    grpc_request.inputs.add(name="mnist", datatype="UINT8", shape=shape)
    return as_json, binary, grpc_request


def git_commit() -> str:
    r = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


def _ms(text: str) -> float:
    value, unit = float(text[:-2] if text.endswith(("us", "ms")) else text[:-1]), text[-2:]
    return value / 1000 if unit == "us" else value if unit == "ms" else value * 1000


def wrk_load(
    url: str, body_file: Path, concurrency: int, seconds: int, headers: dict[str, str] | None = None
) -> dict[str, float] | None:
    """The same load from `wrk` (C, one thread), when installed: a client that is not the bottleneck."""
    if shutil.which("wrk") is None:
        return None
    assert url.startswith("http://127.0.0.1")
    script = body_file.with_suffix(".lua")
    set_headers = "".join(
        f'wrk.headers["{k}"] = "{v}"\n' for k, v in (headers or {"Content-Type": "application/json"}).items()
    )
    script.write_text(
        f'local f = io.open("{body_file}", "rb")\nwrk.method = "POST"\nwrk.body = f:read("*a")\nf:close()\n'
        + set_headers
    )
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, timeout=seconds + 30).stdout  # fmt: skip
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    p50 = re.search(r"\s50%\s+([0-9.]+\w+)", out)
    p99 = re.search(r"\s99%\s+([0-9.]+\w+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if not (rps and p50 and p99):
        return None
    return {"req_per_s": float(rps.group(1)), "p50_ms": round(_ms(p50.group(1)), 2),
            "p99_ms": round(_ms(p99.group(1)), 2), "errors": int(non2xx.group(1)) if non2xx else 0}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train_bundle(tmp: Path) -> Path:
    from eir_core.cli.train import main as eirtrain
    from eir_core.data.builtin import make_digits, write_tutorial_layout

    data = tmp / "data"
    images, labels = make_digits(8)
    write_tutorial_layout(data, images, labels, 10000)
    conf = ROOT / "examples" / "tutorial" / "digits8"
    src = str(data / "mnist_npy")
    assert eirtrain([
        "--global_configs", str(conf / "globals.yaml"), "--input_configs", str(conf / "input_mnist_array.yaml"),
        "--output_configs", str(conf / "output.yaml"), f"--globals.basic_experiment.output_folder={tmp / 'run'}",
        f"--input_mnist_array.input_info.input_source={src}", f"--output.output_info.output_source={src}",
        "--globals.basic_experiment.n_epochs=10", "--globals.latent_sampling=None", "--no-pbar",
    ]) == 0  # fmt: skip
    return tmp / "run"


def main() -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a log line per request would load the client
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", type=Path)
    ap.add_argument("-n", type=int, default=2000, help="requests per measurement")
    ap.add_argument("--max-seconds", type=float, default=20.0)
    ap.add_argument("--wrk-seconds", type=int, default=8)
    ap.add_argument("--soak", type=int, default=10000, help="requests for the RSS check")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = a.model_path or train_bundle(Path(tmp))
        port, grpc_port = free_port(), free_port()
        base = f"http://127.0.0.1:{port}"
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "eir_serve.cli", "--model-path", str(model), "--port",
                                 str(port), "--grpc-port", str(grpc_port), "--enable-echo", "--log-level", "warning",
                                 "--max-queue", "4096"], env={**os.environ, "EIR_SERVE_DEVICE": "cpu"})  # fmt: skip
        try:
            while True:
                try:
                    if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.perf_counter() - t0 > 60 or proc.poll() is not None:
                    sys.exit("server did not become ready")
                time.sleep(0.02)
            ready_s = time.perf_counter() - t0
            info = httpx.get(f"{base}/info").json()
            shape, dtype = info["inputs"]["mnist"]["shape"], info["inputs"]["mnist"]["dtype"]
            img = (np.random.default_rng(0).random(shape) * 255).astype(np.dtype(dtype))
            body = json.dumps([{"mnist": base64.b64encode(img.tobytes()).decode()}]).encode()
            v2_url = f"{base}/v2/models/{info['model']['name']}/infer"
            v2_json, (v2_binary, binary_headers), grpc_request = protocol_requests(info["model"]["name"], img)
            grpc_target = f"127.0.0.1:{grpc_port}"
            asyncio.run(load(f"{base}/predict", body, 200, 8, 10))  # warm-up
            asyncio.run(grpc_load(grpc_target, grpc_request, 200, 8, 10))
            body_file, v2_json_file, v2_binary_file = (Path(tmp) / f for f in ("body.json", "v2.json", "v2.bin"))
            body_file.write_bytes(body)
            v2_json_file.write_bytes(v2_json)
            v2_binary_file.write_bytes(v2_binary)
            rows = []
            for c in (1, 8, 32, 64):
                p = asyncio.run(load(f"{base}/predict", body, a.n, c, a.max_seconds))
                e = asyncio.run(load(f"{base}/echo", body, a.n, c, a.max_seconds))
                v2j = asyncio.run(load(v2_url, v2_json, a.n, c, a.max_seconds))
                v2b = asyncio.run(load(v2_url, v2_binary, a.n, c, a.max_seconds, binary_headers))
                g = asyncio.run(grpc_load(grpc_target, grpc_request, a.n, c, a.max_seconds))
                row = {"concurrency": c, "predict": p, "echo": e,
                       "ratio_predict_over_echo": round(p["req_per_s"] / e["req_per_s"], 2),
                       "v2_json": v2j, "v2_binary": v2b, "grpc": g,
                       "ratio_over_echo": {k: round(v["req_per_s"] / e["req_per_s"], 2) for k, v in
                                           (("v2_json", v2j), ("v2_binary", v2b), ("grpc", g))}}  # fmt: skip
                wp = wrk_load(f"{base}/predict", body_file, c, a.wrk_seconds)
                we = wrk_load(f"{base}/echo", body_file, c, a.wrk_seconds)
                if wp and we:
                    row.update(wrk_predict=wp, wrk_echo=we, wrk_ratio=round(wp["req_per_s"] / we["req_per_s"], 2))
                    wj = wrk_load(v2_url, v2_json_file, c, a.wrk_seconds)
                    wb = wrk_load(v2_url, v2_binary_file, c, a.wrk_seconds, binary_headers)
                    if wj and wb:
                        row.update(wrk_v2_json=wj, wrk_v2_binary=wb, wrk_ratio_over_echo={
                            "v2_json": round(wj["req_per_s"] / we["req_per_s"], 2),
                            "v2_binary": round(wb["req_per_s"] / we["req_per_s"], 2)})  # fmt: skip
                rows.append(row)
            rss_before = rss_mb(proc.pid)
            soak = asyncio.run(load(f"{base}/predict", body, a.soak, 32, 120))
            rss_after = rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
        from eir_core.predict import Predictor
        from eir_serve.modelpath import resolve_model_path

        pred = Predictor.from_path(resolve_model_path(Path(model)), device="cpu")
        forward = {}
        for n in (1, 64):
            items = [{"mnist": img}] * n
            pred.predict(items, list(range(n)))
            t = time.perf_counter()
            for _ in range(50):
                pred.predict(items, list(range(n)))
            forward[f"batch_{n}_ms_per_item"] = round((time.perf_counter() - t) / 50 / n * 1000, 3)
    command = "python benchmarks/serve_load.py " + " ".join(sys.argv[1:])
    result = {
        "command": command.strip(),
        "commit": git_commit(),
        "ready_s": round(ready_s, 2),
        "rows": rows,
        "soak": soak,
        "rss_mb_before_soak": round(rss_before, 1),
        "rss_mb_after_soak": round(rss_after, 1),
        "forward": forward,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_load.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# eirserve load ({result['date']}, 8x8 tutorial model, one image per request, loopback)", "",
             f"`{result['command']}` at commit {result['commit']}, {os.cpu_count()} CPUs shared with other work.", "",
             f"Ready {ready_s:.2f} s after start. In-process forward: {forward['batch_1_ms_per_item']} ms/item alone, "
             f"{forward['batch_64_ms_per_item']} ms/item in a batch of 64.", "",
             "| concurrency | /predict req/s | p50 ms | p99 ms | /echo req/s | p50 ms | p99 ms | predict/echo | err |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        p, e = r["predict"], r["echo"]
        lines.append(
            f"| {r['concurrency']} | {p['req_per_s']} | {p['p50_ms']} | {p['p99_ms']} | {e['req_per_s']} | "
            f"{e['p50_ms']} | {e['p99_ms']} | {r['ratio_predict_over_echo']} | {p['errors'] + e['errors']} |"
        )
    if all("wrk_predict" in r for r in rows):
        lines += ["", "The same with `wrk` as the client (C; the Python client above saturates a core itself):", "",
                  "| concurrency | /predict req/s | p50 ms | p99 ms | /echo req/s | p50 ms | p99 ms | predict/echo |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in rows:
            p, e = r["wrk_predict"], r["wrk_echo"]
            lines.append(f"| {r['concurrency']} | {p['req_per_s']} | {p['p50_ms']} | {p['p99_ms']} | "
                         f"{e['req_per_s']} | {e['p50_ms']} | {e['p99_ms']} | {r['wrk_ratio']} |")  # fmt: skip
    lines += ["", "The Open Inference Protocol at the same load (the same image, the same httpx/grpc.aio client "
              "process; ratio = req/s over /echo's req/s in the table above):", "",
              "| concurrency | route | req/s | p50 ms | p99 ms | ratio to /echo | err |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    routes = (("predict", "/predict (EIR JSON, base64)"), ("v2_json", "/v2 infer, JSON"),
              ("v2_binary", "/v2 infer, binary tensors"), ("grpc", "gRPC ModelInfer (raw)"))  # fmt: skip
    for r in rows:
        for key, label in routes:
            m = r[key]
            ratio = r["ratio_predict_over_echo"] if key == "predict" else r["ratio_over_echo"][key]
            lines.append(f"| {r['concurrency']} | {label} | {m['req_per_s']} | {m['p50_ms']} | {m['p99_ms']} | "
                         f"{ratio} | {m['errors']} |")  # fmt: skip
    if all("wrk_v2_json" in r for r in rows):
        lines += ["", "The protocol's HTTP routes with `wrk` as the client (no C gRPC load tool here):", "",
                  "| concurrency | route | req/s | p50 ms | p99 ms | ratio to /echo (wrk) | err |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in rows:
            for key, label in (("v2_json", "/v2 infer, JSON"), ("v2_binary", "/v2 infer, binary tensors")):
                m = r[f"wrk_{key}"]
                lines.append(f"| {r['concurrency']} | {label} | {m['req_per_s']} | {m['p50_ms']} | {m['p99_ms']} | "
                             f"{r['wrk_ratio_over_echo'][key]} | {m['errors']} |")  # fmt: skip
    lines += ["", f"Soak: {soak['sent']} requests, concurrency 32, {soak['req_per_s']} req/s, {soak['errors']} errors; "
              f"server RSS {rss_before:.0f} MB before, {rss_after:.0f} MB after."]  # fmt: skip
    (RESULTS / "serve_load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
