"""Hostile load on `eirserve`: what a well-behaved client sees while others attack, with and
without `--api-key`, beside a quiet server measured in the same run.

    python benchmarks/hostile_load.py [--seconds 30] [--bundle PATH] [--trickle 1000] [--stalled 250]

Four phases, each on a fresh `eirserve` with its default settings (plus `--api-key` in two):
quiet without a key, hostile without a key, quiet with a key, hostile with a key. In a hostile
phase, at once and for the whole phase:

* `--trickle` connections that trickle one byte a second: half inside their headers, half
  inside the body of a `GET /health` that declared `Content-Length: 10000000`; each one the
  server closes is opened again;
* `--stalled` uploads of the maximum size (`POST /predict`, `Content-Length` = the server's
  `--max-body-bytes`): each sends its first 64 KiB, then, unless already answered, the body up
  to 100 kB short of its end, and stalls; reopened when closed;
* `--json-rate` worst-case JSON bodies a second (7.6 MB of `[[0],[0],...]`, 1.9 million
  lists; every other pair 60 kB of the same, small enough to be admitted whatever large uploads
  hold), alternately to `/predict` and `/v2/models/<name>/infer`, each on a new connection;
* a gRPC flood of `ModelInfer` calls without the key, `--grpc-concurrency` at a time, each
  message of the largest size the server accepts (read from its log);

while a well-behaved client sends `POST /predict` (one 8x8 digit) at concurrency `--good` on
keep-alive connections, and a probe asks `GET /ready` every 50 ms. Printed and kept: the good
client's p50/p99 and errors, the probe's latency, the server's peak RSS (sampled every 0.25 s,
and the kernel's high-water mark), and what each attack got back.

The attackers, the good client and the gRPC flood each run in a process of their own; every
connection is to 127.0.0.1; each phase ends by itself after its time. The open-file limit is
raised to the hard limit for the sockets. Trains a small tutorial model (`--epochs`) unless
`--bundle` is given. Writes benchmarks/results/hostile_load.{json,md} with command, commit, date.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
KEY = "hostile-load-key"
RAMP_S = 6.0  # attackers open their connections before the good client starts
NESTED_JSON = b"[" + b",".join([b"[0]"] * 1_900_000) + b"]"  # 7.6 MB, 1.9 million lists
SMALL_NESTED_JSON = b"[" + b",".join([b"[0]"] * 15_000) + b"]"  # 60 kB: under the 64 KiB that may use the whole pool


def raise_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


# --------------------------------------------------------------------------- raw HTTP/1.1
async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(status, body) of one response with a Content-Length (what eirserve sends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    body = await reader.readexactly(int(m.group(1))) if m else b""
    return status, body


def request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# --------------------------------------------------------------------------- the good client
async def good_client(port: int, seconds: float, concurrency: int, key: str | None, image_b64: str) -> dict[str, Any]:
    body = json.dumps([{"mnist": image_b64}]).encode()
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
    raw = request("POST", "/predict", body, headers)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    end = time.monotonic() + seconds

    async def worker() -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                if conn is None:
                    conn = await asyncio.open_connection("127.0.0.1", port)
                conn[1].write(raw)
                status, _ = await asyncio.wait_for(read_response(conn[0]), 30)
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                conn = None
                continue
            if status == 200:
                latencies.append((time.perf_counter() - t0) * 1000)
            else:
                errors[str(status)] = errors.get(str(status), 0) + 1

    async def probe() -> tuple[list[float], dict[str, int]]:
        got: list[float] = []
        bad: dict[str, int] = {}
        conn = None
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                if conn is None:
                    conn = await asyncio.open_connection("127.0.0.1", port)
                conn[1].write(request("GET", "/ready"))
                status, _ = await asyncio.wait_for(read_response(conn[0]), 30)
                got.append((time.perf_counter() - t0) * 1000)
                if status != 200:
                    bad[str(status)] = bad.get(str(status), 0) + 1
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
                bad[type(e).__name__] = bad.get(type(e).__name__, 0) + 1
                conn = None
            await asyncio.sleep(0.05)
        return got, bad

    probing = asyncio.create_task(probe())
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    ready, ready_bad = await probing
    return {
        "requests": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "ready_probes": len(ready),
        "ready_p50_ms": round(percentile(ready, 50), 2),
        "ready_p99_ms": round(percentile(ready, 99), 2),
        "ready_max_ms": round(max(ready, default=float("nan")), 2),
        "ready_not_200": ready_bad,
    }


# --------------------------------------------------------------------------- HTTP attackers
class Tally:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    got = b""
    while chunk := await reader.read(1 << 16):
        got += chunk
    return got


async def trickler(port: int, kind: str, end: float, tally: Tally, opened: asyncio.Event | None) -> None:
    """One trickling connection at a time (a byte a second, whatever the server answers), opened
    again whenever the server closes it."""
    while time.monotonic() < end:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as e:
            tally.add(f"connect {type(e).__name__}")
            await asyncio.sleep(1)
            continue
        tally.add("opened")
        if kind == "headers":
            writer.write(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ")
        else:
            writer.write(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 10000000\r\n\r\n")
        if opened is not None:
            opened.set()
            opened = None

        closed = asyncio.create_task(_until_closed(reader))
        t0 = time.monotonic()
        while time.monotonic() < end and not closed.done():
            try:
                writer.write(b"a")
            except OSError:
                break
            await asyncio.wait([closed], timeout=1.0)
        if closed.done() and closed.exception() is None:
            data = closed.result()
            answer = data[9:12].decode() if data.startswith(b"HTTP/1.1 ") else "nothing"
            tally.add(f"closed by the server after {5 * round((time.monotonic() - t0) / 5)} s, answered {answer}")
        elif closed.done():
            tally.add(f"reset by the server ({type(closed.exception()).__name__})")
        else:
            closed.cancel()
            tally.add("still open at the end")
        writer.close()


async def stalled_upload(port: int, max_body: int, end: float, tally: Tally, key_free: bool) -> None:
    head = request("POST", "/predict", b"", {"content-type": "application/json"}).replace(
        b"content-length: 0", f"content-length: {max_body}".encode()
    )
    chunk = b"[" + b"0," * (128 * 1024)
    while time.monotonic() < end:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as e:
            tally.add(f"connect {type(e).__name__}")
            await asyncio.sleep(1)
            continue
        answer = asyncio.create_task(reader.read(65536))
        try:
            writer.write(head + chunk[: 64 * 1024])
            await writer.drain()
            await asyncio.wait([answer], timeout=0.05)
            sent = 64 * 1024
            while not answer.done() and sent < max_body - 100_000 and time.monotonic() < end:
                writer.write(chunk[: min(len(chunk), max_body - 100_000 - sent)])
                sent += min(len(chunk), max_body - 100_000 - sent)
                await writer.drain()
            tally.add("answered early" if answer.done() else f"sent {sent // 1_000_000} MB, stalled")
            await asyncio.wait([answer], timeout=max(0.0, end - time.monotonic()))
            if answer.done():
                data = answer.result()
                tally.add("answer " + (data[9:12].decode() if data.startswith(b"HTTP/1.1 ") else "none (closed)"))
                rest = await asyncio.wait_for(reader.read(1 << 20), max(0.1, end - time.monotonic()))
                while rest:
                    rest = await asyncio.wait_for(reader.read(1 << 20), max(0.1, end - time.monotonic()))
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
            tally.add(f"ended {type(e).__name__}")
        finally:
            answer.cancel()
            writer.close()


async def json_bomber(port: int, model: str, rate: float, end: float, tally: Tally, latencies: list[float]) -> None:
    head = {"content-type": "application/json"}
    paths = ["/predict", f"/v2/models/{model}/infer"]
    tasks = []
    i = 0

    async def one(path: str, body: bytes) -> None:
        t0 = time.perf_counter()
        what = f"{path.split('/')[1]} {len(body) // 1000} kB"
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request("POST", path, body, head))
            status, _ = await asyncio.wait_for(read_response(reader), 60)
            tally.add(f"{what} {status}")
            latencies.append((time.perf_counter() - t0) * 1000)
            writer.close()
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
            tally.add(f"{what} {type(e).__name__}")

    while time.monotonic() < end:
        tasks.append(asyncio.create_task(one(paths[i % 2], NESTED_JSON if i % 4 < 2 else SMALL_NESTED_JSON)))
        i += 1
        await asyncio.sleep(1 / rate)
    await asyncio.wait(tasks, timeout=30)


async def http_attack(a: dict[str, Any]) -> dict[str, Any]:
    end = time.monotonic() + a["seconds"]
    trickle, stalled, bombs = Tally(), Tally(), Tally()
    bomb_ms: list[float] = []
    first = [asyncio.Event() for _ in range(a["trickle"])]
    tasks = [
        asyncio.create_task(trickler(a["port"], "headers" if i % 2 else "body", end, trickle, first[i]))
        for i in range(a["trickle"])
    ]
    await asyncio.wait_for(asyncio.gather(*[e.wait() for e in first]), 60)
    tasks += [
        asyncio.create_task(stalled_upload(a["port"], a["max_body"], end, stalled, a["key"] is None))
        for _ in range(a["stalled"])
    ]
    print("ready", flush=True)
    tasks.append(asyncio.create_task(json_bomber(a["port"], a["model"], a["json_rate"], end, bombs, bomb_ms)))
    await asyncio.wait(tasks, timeout=a["seconds"] + 60)
    return {
        "trickle": trickle.counts,
        "stalled_uploads": stalled.counts,
        "json_bodies": bombs.counts,
        "json_body_answer_p50_ms": round(percentile(bomb_ms, 50), 1),
    }


# --------------------------------------------------------------------------- gRPC flood
async def grpc_flood(a: dict[str, Any]) -> dict[str, Any]:
    import grpc

    from eir_serve.grpc import grpc_predict_v2_pb2 as pb
    from eir_serve.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    tensor = pb.ModelInferRequest.InferInputTensor(name="mnist", datatype="UINT8", shape=[1, 1, 8, 8])
    message = pb.ModelInferRequest(
        model_name=a["model"], inputs=[tensor], raw_input_contents=[os.urandom(a["max_message"] - 512)]
    )
    codes = Tally()
    end = time.monotonic() + a["seconds"]
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{a['grpc_port']}", options=options) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def caller() -> None:
            while time.monotonic() < end:
                try:
                    await stub.ModelInfer(message, timeout=30)
                    codes.add("OK")
                except grpc.aio.AioRpcError as e:
                    codes.add(e.code().name)

        await asyncio.gather(*[caller() for _ in range(a["concurrency"])])
    return {"message_bytes": message.ByteSize(), "statuses": codes.counts}


# --------------------------------------------------------------------------- the server
class Server:
    def __init__(self, bundle: Path, key: str | None) -> None:
        self.grpc_port = _free_port()
        cmd = [sys.executable, "-m", "eir_serve.cli", "--model-path", str(bundle), "--port", "0"]
        cmd += ["--grpc-port", str(self.grpc_port), "--device", "cpu", *(["--api-key", key] if key else [])]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.port: int | None = None
        self.max_message: int | None = None
        self._have = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._have.wait(120) or self.port is None:
            raise SystemExit("eirserve did not start:\n" + "\n".join(self.lines[-30:]))
        deadline = time.monotonic() + 120
        while not self.ready():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("eirserve did not become ready:\n" + "\n".join(self.lines[-30:]))
            time.sleep(0.05)  # poll interval, not a wait for readiness

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            if m := re.search(r"listening on http://127\.0\.0\.1:(\d+)", line):
                self.port = int(m.group(1))
                self._have.set()
            if m := re.search(r"messages up to (\d+) bytes", line):
                self.max_message = int(m.group(1))
        self._have.set()

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port or 0), timeout=2) as s:
                s.sendall(request("GET", "/ready"))
                return s.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def rss_mb(self, field: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _role(name: str, params: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--role", name, "--params", json.dumps(params)],
        stdout=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])


def run_phase(bundle: Path, a: argparse.Namespace, hostile: bool, key: str | None, image_b64: str) -> dict[str, Any]:
    server = Server(bundle, key)
    name = json.loads(_get(server.port or 0, "/info"))["model"]["name"]
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], server.rss_mb())
            except OSError:
                return
            stop.wait(0.25)

    threading.Thread(target=sample, daemon=True).start()
    attack_s = RAMP_S + a.seconds + 2
    attackers = []
    if hostile:
        common = {"port": server.port, "model": name, "seconds": attack_s, "key": key}
        http = _role("http-attack", {**common, "trickle": a.trickle, "stalled": a.stalled, "json_rate": a.json_rate,
                                     "max_body": 8_000_000})  # fmt: skip
        flood = _role("grpc-flood", {**common, "grpc_port": server.grpc_port, "concurrency": a.grpc_concurrency,
                                     "max_message": server.max_message})  # fmt: skip
        attackers = [http, flood]
        assert http.stdout is not None
        first = http.stdout.readline()  # "ready": its connections are open
        if first.strip() != "ready":
            raise SystemExit(f"the HTTP attacker did not start: {first!r}")
        time.sleep(max(0.0, RAMP_S - 3))  # the stalled uploads get under way
    good = _role("good", {"port": server.port, "seconds": a.seconds, "concurrency": a.good, "key": key,
                          "image": image_b64})  # fmt: skip
    result = {"hostile": hostile, "api_key": key is not None, "good": _result(good, a.seconds + 120)}
    if hostile:
        result["http_attack"] = _result(attackers[0], attack_s + 120)
        result["grpc_flood"] = _result(attackers[1], attack_s + 120)
    stop.set()
    result["peak_rss_mb"] = round(peak[0], 1)
    result["rss_high_water_mb"] = round(server.rss_mb("VmHWM"), 1)
    result["server_log_warnings"] = [ln[:200] for ln in server.lines if " WARNING " in ln or " ERROR " in ln][-5:]
    result["tracebacks"] = sum("Traceback" in ln for ln in server.lines)
    server.stop()
    return result


def _get(port: int, path: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request("GET", path) + b"")
        data = b""
        while True:
            chunk = s.recv(65536)
            data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            m = re.search(rb"(?i)content-length: *(\d+)", head)
            if m and len(body) >= int(m.group(1)):
                return body.decode()
            if not chunk:
                return body.decode()


def train_bundle(tmp: Path, epochs: int) -> Path:
    from eir_core.cli.train import main as eirtrain
    from eir_core.data.builtin import make_digits, write_tutorial_layout

    data = tmp / "data"
    images, labels = make_digits(8)
    write_tutorial_layout(data, images, labels, 10000)
    conf = ROOT / "examples" / "tutorial" / "digits8"
    code = eirtrain(
        [
            "--global_configs",
            str(conf / "globals.yaml"),
            "--input_configs",
            str(conf / "input_mnist_array.yaml"),
            "--output_configs",
            str(conf / "output.yaml"),
            f"--input_mnist_array.input_info.input_source={data / 'mnist_npy'}",
            f"--output.output_info.output_source={data / 'mnist_npy'}",
            f"--globals.basic_experiment.output_folder={tmp / 'run'}",
            f"--globals.basic_experiment.n_epochs={epochs}",
            "--globals.latent_sampling=None",
            "--no-pbar",
        ]
    )
    if code != 0:
        raise SystemExit("training the benchmark's model failed")
    return tmp / "run"


def report(meta: dict[str, Any], phases: list[dict[str, Any]]) -> str:
    rows = [
        "| phase | key | good requests | errors | p50 ms | p99 ms | p99 / quiet | /ready p99 ms | /ready max ms "
        "| /ready not 200 | peak RSS MB | RSS high-water MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    quiet = {p["api_key"]: p["good"]["p99_ms"] for p in phases if not p["hostile"]}
    for p in phases:
        g = p["good"]
        ratio = g["p99_ms"] / quiet[p["api_key"]] if quiet.get(p["api_key"]) else float("nan")
        rows.append(
            f"| {'hostile' if p['hostile'] else 'quiet'} | {'yes' if p['api_key'] else 'no'} | {g['requests']} "
            f"| {g['errors']} | {g['p50_ms']} | {g['p99_ms']} | {ratio:.2f} | {g['ready_p99_ms']} "
            f"| {g['ready_max_ms']} | {g['ready_not_200'] or 'none'} | {p['peak_rss_mb']} | {p['rss_high_water_mb']} |"
        )
    lines = [
        "# Hostile load: a well-behaved client beside attackers",
        "",
        f"`{meta['command']}` at {meta['commit']}, {meta['date']}; {meta['machine']}.",
        "",
        *rows,
        "",
        "What the attacks got back (counts over each hostile phase):",
        "",
    ]
    for p in phases:
        if p["hostile"]:
            lines.append(f"- {'with' if p['api_key'] else 'without'} --api-key:")
            lines.append(f"  - trickling connections: {p['http_attack']['trickle']}")
            lines.append(f"  - stalled uploads: {p['http_attack']['stalled_uploads']}")
            lines.append(
                f"  - worst-case JSON bodies: {p['http_attack']['json_bodies']} "
                f"(answer p50 {p['http_attack']['json_body_answer_p50_ms']} ms)"
            )
            lines.append(
                f"  - gRPC flood ({p['grpc_flood']['message_bytes']}-byte messages): {p['grpc_flood']['statuses']}"
            )
            lines.append(f"  - server tracebacks: {p['tracebacks']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=30.0, help="the good client's time in each phase")
    p.add_argument("--bundle", type=Path, help="a bundle or run folder of an 8x8 tutorial model (else trained)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--trickle", type=int, default=1000)
    p.add_argument("--stalled", type=int, default=250)
    p.add_argument("--json-rate", type=float, default=4.0)
    p.add_argument("--grpc-concurrency", type=int, default=32)
    p.add_argument("--good", type=int, default=8)
    p.add_argument("--role", help=argparse.SUPPRESS)
    p.add_argument("--params", help=argparse.SUPPRESS)
    a = p.parse_args()
    raise_file_limit()
    if a.role:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        params = json.loads(a.params)
        if a.role == "good":
            out = asyncio.run(
                good_client(params["port"], params["seconds"], params["concurrency"], params["key"], params["image"])
            )
        elif a.role == "http-attack":
            out = asyncio.run(http_attack(params))
        else:
            out = asyncio.run(grpc_flood(params))
        print(json.dumps(out), flush=True)
        return

    with tempfile.TemporaryDirectory(prefix="hostile-load-") as tmp:
        bundle = a.bundle or train_bundle(Path(tmp), a.epochs)
        import numpy as np

        from eir_core.data.builtin import make_digits

        images, _ = make_digits(8)
        image_b64 = base64.b64encode(np.asarray(images[1], np.uint8).tobytes()).decode()
        phases = []
        for hostile, key in ((False, None), (True, None), (False, KEY), (True, KEY)):
            print(f"phase: {'hostile' if hostile else 'quiet'}, api key {'on' if key else 'off'} ...", flush=True)
            phases.append(run_phase(bundle, a, hostile, key, image_b64))
            print(json.dumps(phases[-1]["good"]), f"peak RSS {phases[-1]['peak_rss_mb']} MB", flush=True)
    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    argv = " ".join(sys.argv[1:])
    meta = {
        "command": f"python benchmarks/hostile_load.py{' ' + argv if argv else ''}",
        "commit": commit.stdout.strip() or "unknown",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "hostile_load.json").write_text(json.dumps({**meta, "phases": phases}, indent=2) + "\n")
    text = report(meta, phases)
    (RESULTS / "hostile_load.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
