"""eirserve against general-purpose model servers on the same ONNX graph, pinned to disjoint cores.

    python benchmarks/serve_peers.py [--seconds 10] [--rounds 3] [--epochs 4] [--server-cpu 0] [--client-cpu 1]

1. Trains the 8x8 tutorial autoencoder that benchmarks/serve_load.py trains (its `prepare`) and
   exports the bundle's ONNX graph and its input/output normalization statistics to files
   (model.onnx, stats.npz). The peers do not import eir_core: their runtime code (written by
   this script into a temporary folder) applies the same arithmetic in NumPy, ``(x - mean) /
   (std + 1e-10)`` before the graph and ``y * (std + 1e-10) + mean`` after it, on ONNX Runtime
   with 1 intra-op thread, 1 inter-op thread, sequential execution, as eirserve does.
2. Each peer lives in its own venv under ~/.cache/eir-peers/<name>, created here from PyPI with
   the pinned versions in PEERS when missing:
   - MLServer: a custom runtime (a subclass of ``mlserver.MLModel``) with adaptive batching;
     a few of its documented settings (max_batch_size / max_batch_time, parallel_workers,
     metrics off) are tried first at C=32 and the best (requests per CPU-second) is measured.
     Routes: V2 JSON and gRPC ModelInfer (raw_input_contents). MLServer's REST server does not
     implement the binary tensor extension (its infer endpoint parses the body as a JSON
     ``InferenceRequest``; ``binary_data`` appears only in its `mlserver infer` client), so there
     is no V2 binary row for it.
   - LitServe: a ``LitAPI`` with batching (max_batch_size 64, batch_timeout 0.005, fast_queue)
     on EIR's ``/predict`` payload (a JSON list of ``{"mnist": base64 bytes}``, answered
     ``{"result": [{"mnist_output": base64 float32}]}``).
   - KServe's Python model server: a ``kserve.Model`` on the V2 JSON route and, as KServe
     implements the binary tensor extension, on V2 binary too (latency logging off, 1 worker).
3. Every peer's answer on each route is checked equal (np.allclose, rtol 1e-5) to eirserve's for
   the same image before anything is measured; the script stops if one differs.
4. This process (and so `wrk` and the gRPC client, grpc.aio from serve_load.py) runs on
   --client-cpu; each server is started under `taskset -c --server-cpu`, one server at a time.
   For --rounds rounds (server order reversed every other round) each server is started fresh
   (time from start to ready), warmed up, and every route it shares with eirserve is loaded at
   C=1 and C=32 (`wrk -t1`, --seconds each); RSS after the load; then it is stopped. The median
   round of each point is kept: req/s, p50, p99, server CPU-seconds per request (from /proc).
   gRPC's request count is its rate times the load's length (grpc_load returns the rate).

Writes benchmarks/results/serve_peers.{json,md}: command, commit, date, versions, cores, load
average, the table and the ratios eirserve / best peer per route. Needs `wrk` and `taskset`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import json
import logging
import os
import shutil
import signal
import statistics
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
VENVS = Path(os.environ.get("EIR_PEERS_DIR", Path.home() / ".cache" / "eir-peers"))
COMMON_PINS = ["onnxruntime==1.32.0", "numpy==2.4.6"]  # the versions eirserve runs here
PEERS = {
    "mlserver": ["mlserver==1.7.1", "uvloop==0.21.0"],  # its worker processes fail on uvloop 0.22+
    "litserve": ["litserve==0.2.19", "pyzmq"],
    "kserve": ["kserve==0.21.0"],
}
VERSION_OF = {"mlserver": "mlserver", "litserve": "litserve", "kserve": "kserve"}
CONCURRENCY = (1, 32)
# MLServer settings tried before the rounds (its documented knobs): (max_batch_size,
# max_batch_time, parallel_workers). parallel_workers 0 runs the model in the server process.
MLSERVER_CONFIGS = [(16, 0.002, 0), (64, 0.005, 0), (16, 0.002, 1)]

sys.path.insert(0, str(Path(__file__).parent))  # serve_load imports proctree from beside it
_spec = importlib.util.spec_from_file_location("serve_load", Path(__file__).with_name("serve_load.py"))
assert _spec is not None and _spec.loader is not None
sl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sl)

# --------------------------------------------------------------------------- peer code
# Written into the run's folder and imported by the peers' own Python (their venvs).
PEER_COMMON = '''
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

FOLDER = Path(__file__).parent
META = json.loads((FOLDER / "meta.json").read_text())


class Graph:
    """The bundle's graph with eirserve's normalization around it, on ONNX Runtime (1 thread)."""

    def __init__(self):
        z = np.load(FOLDER / "stats.npz")
        eps = np.float32(1e-10)
        self.in_mean, self.in_scale = z["in_mean"], z["in_std"] + eps
        self.out_mean, self.out_scale = z["out_mean"], z["out_std"] + eps
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(FOLDER / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.feed = META["graph_input"]

    def __call__(self, x):
        x = x.astype(np.float32).reshape(-1, *META["shape"])
        xn = ((x - self.in_mean) / self.in_scale).astype(np.float32, copy=False)
        (y,) = self.session.run(None, {self.feed: xn})
        return (y * self.out_scale + self.out_mean).astype(np.float32, copy=False)
'''

MLSERVER_RUNTIME = """
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

from peer_common import META, Graph


class EirOnnx(MLModel):
    async def load(self) -> bool:
        self.graph = Graph()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        y = self.graph(x)
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output(META["output"], y)])
"""

LITSERVE_APP = """
import base64
import sys

import litserve as ls
import numpy as np

from peer_common import META, Graph


class EirApi(ls.LitAPI):
    def setup(self, device):
        self.graph = Graph()

    def decode_request(self, request):
        return np.stack([np.frombuffer(base64.b64decode(item[META["input"]]), np.uint8) for item in request])

    def batch(self, inputs):
        return np.concatenate(inputs), [len(x) for x in inputs]

    def predict(self, batch):
        x, sizes = batch
        return self.graph(x), sizes

    def unbatch(self, output):
        y, sizes = output
        return np.split(y, np.cumsum(sizes)[:-1])

    def encode_response(self, y):
        return {"result": [{META["output"]: base64.b64encode(row.tobytes()).decode()} for row in y]}


if __name__ == "__main__":
    api = EirApi(max_batch_size=64, batch_timeout=0.005)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, fast_queue=True)
    server.run(port=int(sys.argv[1]), generate_client_file=False, log_level="warning")
"""

KSERVE_APP = """
import sys

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

from peer_common import META, Graph


class EirModel(Model):
    def __init__(self, name):
        super().__init__(name)
        self.graph = Graph()
        self.ready = True

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        y = self.graph(payload.inputs[0].as_numpy())
        binary = any(bool(o.binary_data) for o in payload.request_outputs or [])
        out = InferOutput(name=META["output"], shape=list(y.shape), datatype="FP32")
        out.set_data_from_numpy(y, binary_data=binary)
        return InferResponse(
            response_id=payload.id or "",
            model_name=self.name,
            infer_outputs=[out],
            use_binary_outputs=binary,
            requested_outputs=payload.request_outputs,
        )


if __name__ == "__main__":
    server = ModelServer(http_port=int(sys.argv[1]), workers=1, enable_grpc=False, enable_latency_logging=False)
    server.start([EirModel(META["model"])])
"""


# --------------------------------------------------------------------------- venvs and files
def peer_python(name: str) -> Path:
    """The peer's venv (created with its pinned versions when missing)."""
    venv = VENVS / name
    python = venv / "bin" / "python"
    if not python.exists():
        VENVS.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEERS[name], *COMMON_PINS], check=True)
    return python


def version_in(python: Path, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def export(bundle: Path, folder: Path, model: str) -> dict[str, Any]:
    from eir_core.bundle import load_array_bundle, resolve_bundle_path

    b = load_array_bundle(resolve_bundle_path(bundle))
    ((in_name, in_stats),) = b.input_stats.items()
    ((out_name, out_stats),) = b.output_stats.items()
    (graph_input,) = b.graph.meta.inputs
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(b.graph.onnx)
    np.savez(
        folder / "stats.npz", in_mean=in_stats.mean, in_std=in_stats.std, out_mean=out_stats.mean, out_std=out_stats.std
    )
    import onnxruntime as ort

    shape = list(ort.InferenceSession(b.graph.onnx).get_inputs()[0].shape[1:])  # [batch, C, H, W]
    meta = {"input": in_name, "output": out_name, "graph_input": graph_input.name, "shape": shape, "model": model}
    (folder / "meta.json").write_text(json.dumps(meta))
    (folder / "peer_common.py").write_text(PEER_COMMON)
    (folder / "eir_mlserver.py").write_text(MLSERVER_RUNTIME)
    (folder / "litserve_app.py").write_text(LITSERVE_APP)
    (folder / "kserve_app.py").write_text(KSERVE_APP)
    return meta


# --------------------------------------------------------------------------- servers
def _ok(url: str) -> bool:
    return httpx.get(url, timeout=2).status_code == 200


def start(name: str, bundle: Path, folder: Path, cpu: int, mlconf: tuple[int, float, int]) -> Any:
    """One server pinned to ``cpu``: sl.Server (time to ready, RSS) with the port(s) it serves."""
    pin = ["taskset", "-c", str(cpu)]
    port, grpc_port = sl.free_port(), sl.free_port()
    env = {**os.environ, "PYTHONPATH": str(folder)}
    if name == "eirserve":
        cmd = [sys.executable, "-m", "eir_serve.cli", "--model-path", str(bundle), "--port", str(port)]
        cmd += ["--grpc-port", str(grpc_port), "--log-level", "warning"]
        server = sl.Server(name, pin + cmd, port, lambda u: _ok(f"{u}/ready"), {**env, "EIR_SERVE_DEVICE": "cpu"})
    elif name == "mlserver":
        repo = folder / f"mlserver-{port}"
        (repo / "model").mkdir(parents=True)
        size, wait, workers = mlconf
        settings = {
            "http_port": port,
            "grpc_port": grpc_port,
            "metrics_port": sl.free_port(),
            "metrics_endpoint": None,
            "parallel_workers": workers,
            "debug": False,
            "metrics_dir": str(repo / ".metrics"),
        }
        (repo / "settings.json").write_text(json.dumps(settings))
        model = {
            "name": META_NAME,
            "implementation": "eir_mlserver.EirOnnx",
            "max_batch_size": size,
            "max_batch_time": wait,
        }
        (repo / "model" / "model-settings.json").write_text(json.dumps(model))
        cmd = [str(peer_python("mlserver").parent / "mlserver"), "start", str(repo)]
        ready = f"/v2/models/{META_NAME}/ready"
        server = sl.Server(name, pin + cmd, port, lambda u: _ok(u + ready), env)
    elif name == "litserve":
        cmd = [str(peer_python("litserve")), str(folder / "litserve_app.py"), str(port)]
        server = sl.Server(name, pin + cmd, port, lambda u: _ok(f"{u}/health"), env)
    elif name == "kserve":
        cmd = [str(peer_python("kserve")), str(folder / "kserve_app.py"), str(port)]
        ready = f"/v2/models/{META_NAME}/ready"
        server = sl.Server(name, pin + cmd, port, lambda u: _ok(u + ready), env)
    else:
        raise ValueError(name)
    server.grpc_port = grpc_port
    return server


def stop(server: Any) -> None:
    """The server and every process it started (LitServe's workers outlive a terminated parent
    and keep polling their queues on the server's core)."""
    from proctree import children

    pids = children(server.proc.pid)
    server.stop()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


META_NAME = "run"  # the served model's name (eirserve names it after the run folder)

# Routes each server serves, by the route's name.
ROUTES = {
    "eirserve": ["predict", "v2_json", "v2_binary", "grpc"],
    "mlserver": ["v2_json", "grpc"],
    "litserve": ["predict"],
    "kserve": ["v2_json", "v2_binary"],
}
ROUTE_LABEL = {
    "predict": "EIR /predict",
    "v2_json": "V2 JSON infer",
    "v2_binary": "V2 binary infer",
    "grpc": "gRPC ModelInfer",
}


class Requests:
    """The same image as each route's request: wrk scripts, the gRPC message, and answer decoders."""

    def __init__(self, tmp: Path, img: np.ndarray, meta: dict[str, Any]) -> None:
        self.img, self.meta = img, meta
        self.predict = json.dumps([{meta["input"]: base64.b64encode(img.tobytes()).decode()}]).encode()
        self.v2_json, (self.v2_binary, self.binary_headers) = sl.protocol_bodies(img)
        json_headers = {"Content-Type": "application/json"}
        self.lua = {
            "predict": sl.wrk_script(tmp, "predict", self.predict, json_headers),
            "v2_json": sl.wrk_script(tmp, "v2json", self.v2_json, json_headers),
            "v2_binary": sl.wrk_script(tmp, "v2bin", self.v2_binary, self.binary_headers),
        }
        from eir_serve.grpc import grpc_predict_v2_pb2 as pb

        self.pb = pb
        self.grpc = pb.ModelInferRequest(model_name=META_NAME, raw_input_contents=[img.tobytes()])
        self.grpc.inputs.add(name=meta["input"], datatype="UINT8", shape=[1, *img.shape])

    def path(self, route: str) -> str:
        return "/predict" if route == "predict" else f"/v2/models/{META_NAME}/infer"

    def answer(self, server: Any, route: str) -> np.ndarray:
        """The server's answer to the image on ``route``, as float32."""
        out = self.meta["output"]
        if route == "grpc":
            return asyncio.run(self._grpc_answer(f"127.0.0.1:{server.grpc_port}"))
        url = server.url + self.path(route)
        if route == "predict":
            r = httpx.post(url, content=self.predict, headers={"Content-Type": "application/json"}, timeout=10)
            r.raise_for_status()
            return np.frombuffer(base64.b64decode(r.json()["result"][0][out]), np.float32)
        if route == "v2_json":
            r = httpx.post(url, content=self.v2_json, headers={"Content-Type": "application/json"}, timeout=10)
            r.raise_for_status()
            (o,) = r.json()["outputs"]
            return np.asarray(o["data"], np.float32)
        r = httpx.post(url, content=self.v2_binary, headers=self.binary_headers, timeout=10)
        r.raise_for_status()
        n = int(r.headers["inference-header-content-length"])
        (o,) = json.loads(r.content[:n])["outputs"]
        if "binary_data_size" not in (o.get("parameters") or {}):
            raise RuntimeError(f"{server.name}: the V2 binary answer has no binary tensor: {r.content[:300]!r}")
        return np.frombuffer(r.content[n:], np.float32)

    async def _grpc_answer(self, target: str) -> np.ndarray:
        import grpc

        from eir_serve.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

        async with grpc.aio.insecure_channel(target) as channel:
            reply = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(self.grpc, timeout=30)
        if reply.raw_output_contents:
            return np.frombuffer(reply.raw_output_contents[0], np.float32)
        return np.asarray(reply.outputs[0].contents.fp32_contents, np.float32)

    def load(self, server: Any, route: str, c: int, seconds: int) -> dict[str, Any]:
        pid = server.proc.pid
        if route != "grpc":
            return sl.wrk(server.url + self.path(route), self.lua[route], c, seconds, pid)
        c0, t0 = sl.cpu_s(pid), time.perf_counter()
        m = asyncio.run(sl.grpc_load(f"127.0.0.1:{server.grpc_port}", self.grpc, 10**8, c, seconds))
        n = max(1, round(m["req_per_s"] * (time.perf_counter() - t0)))
        return {**m, "requests": n, "cpu_ms_per_req": round((sl.cpu_s(pid) - c0) / n * 1000, 4)}


def check_answers(server: Any, reqs: Requests, reference: dict[str, np.ndarray]) -> None:
    for route in ROUTES[server.name]:
        got = reqs.answer(server, route)
        want = reference[route]
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5):
            raise SystemExit(
                f"{server.name} {route}: the answer differs from eirserve's (max abs diff "
                f"{np.max(np.abs(got.reshape(-1)[: want.size] - want)) if got.size >= want.size else 'shape'})"
            )


def tune_mlserver(bundle: Path, folder: Path, cpu: int, reqs: Requests, seconds: int) -> list[dict[str, Any]]:
    tried = []
    for conf in MLSERVER_CONFIGS:
        server = start("mlserver", bundle, folder, cpu, conf)
        try:
            reqs.load(server, "v2_json", 8, 2)
            m = reqs.load(server, "v2_json", 32, seconds)
        finally:
            stop(server)
        tried.append({"max_batch_size": conf[0], "max_batch_time": conf[1], "parallel_workers": conf[2], **m})
        print("mlserver config", json.dumps(tried[-1]), flush=True)
    return tried


# --------------------------------------------------------------------------- main
def main() -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=10, help="per load")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median kept)")
    ap.add_argument("--tune-seconds", type=int, default=5, help="per MLServer configuration tried")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--bundle", type=Path, help="an existing run folder or bundle instead of training one")
    a = ap.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        sys.exit("wrk and taskset are needed (apt-get install wrk util-linux)")
    if a.server_cpu == a.client_cpu:
        sys.exit("--server-cpu and --client-cpu must differ")
    os.sched_setaffinity(0, {a.client_cpu})  # wrk and the gRPC client inherit it
    pythons = {name: peer_python(name) for name in PEERS}
    result: dict[str, Any] = {
        "command": "python benchmarks/serve_peers.py " + " ".join(sys.argv[1:]),
        "commit": sl.git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cores": {"server": a.server_cpu, "client (wrk, gRPC client)": a.client_cpu, "machine": os.cpu_count()},
        "versions": {
            "python": sys.version.split()[0],
            "onnxruntime (all)": version_in(Path(sys.executable), "onnxruntime"),
            **{name: version_in(py, VERSION_OF[name]) for name, py in pythons.items()},
            **{f"onnxruntime ({name})": version_in(py, "onnxruntime") for name, py in pythons.items()},
        },
        "loadavg_start": os.getloadavg(),
        "seconds": a.seconds,
        "rounds": a.rounds,
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bundle = a.bundle or sl.prepare(tmp, a.epochs, False)[0]
        folder = tmp / "peer"
        meta = export(bundle, folder, META_NAME)
        img = (np.random.default_rng(0).random((1, 8, 8)) * 255).astype(np.uint8)
        reqs = Requests(tmp, img, meta)
        cpu = a.server_cpu
        # eirserve's answers, the reference every peer must give.
        ours = start("eirserve", bundle, folder, cpu, MLSERVER_CONFIGS[0])
        try:
            if httpx.get(f"{ours.url}/info").json()["model"]["name"] != META_NAME:
                raise SystemExit("eirserve serves the model under another name")
            reference = {route: reqs.answer(ours, route) for route in ROUTES["eirserve"]}
        finally:
            stop(ours)
        tried = tune_mlserver(bundle, folder, cpu, reqs, a.tune_seconds)
        best = max(tried, key=lambda t: 1000 / t["cpu_ms_per_req"] if t["cpu_ms_per_req"] else 0)
        mlconf = (best["max_batch_size"], best["max_batch_time"], best["parallel_workers"])
        result["mlserver_configs"] = tried
        result["mlserver_config"] = {
            "max_batch_size": mlconf[0],
            "max_batch_time": mlconf[1],
            "parallel_workers": mlconf[2],
        }
        names = list(ROUTES)
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
        starts: dict[str, list[dict[str, float]]] = {n: [] for n in names}
        for r in range(a.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                server = start(name, bundle, folder, cpu, mlconf)
                try:
                    if r == 0 and name != "eirserve":
                        check_answers(server, reqs, reference)
                    for route in ROUTES[name]:
                        reqs.load(server, route, 8, 2)  # warm-up
                        for c in CONCURRENCY:
                            m = reqs.load(server, route, c, a.seconds)
                            runs.setdefault(f"{name}|{route}|{c}", []).append(m)
                            print(name, route, c, json.dumps(m), flush=True)
                    starts[name].append(
                        {
                            "ready_s": server.ready_s,
                            "rss_ready_mb": server.rss_ready_mb,
                            "rss_after_mb": sl.rss_mb(server.proc.pid),
                        }
                    )
                finally:
                    stop(server)
            print(f"round {r + 1} done, load average {os.getloadavg()}", flush=True)
        result["answers_checked"] = "every peer route equal to eirserve's (np.allclose, rtol 1e-5)"
        result["points"] = {k: sl.median_round(v) for k, v in runs.items()}
        result["servers"] = {
            n: {k: round(statistics.median(s[k] for s in v), 3) for k in ("ready_s", "rss_ready_mb", "rss_after_mb")}
            for n, v in starts.items()
        }
    result["loadavg_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_peers.json").write_text(json.dumps(result, indent=2) + "\n")
    text = render(result)
    (RESULTS / "serve_peers.md").write_text(text)
    print(text)


def _per_cpu(m: dict[str, Any]) -> float:
    return 1000 / m["cpu_ms_per_req"] if m["cpu_ms_per_req"] else float("nan")


def render(r: dict[str, Any]) -> str:
    v = r["versions"]
    ml = r["mlserver_config"]
    lines = [
        f"# eirserve against general-purpose model servers ({r['date']}, 8x8 tutorial autoencoder, "
        "one image per request)",
        "",
        f"`{r['command']}` at commit `{r['commit']}`. Each server pinned to CPU {r['cores']['server']} "
        f"(`taskset`), `wrk -t1` and the gRPC client (grpc.aio) to CPU {r['cores']['client (wrk, gRPC client)']}, "
        f"one server running at a time; {r['rounds']} interleaved rounds of {r['seconds']} s per point, the median "
        "round kept (every round's req/s in the JSON). The same ONNX graph and normalization in every server, "
        f"ONNX Runtime {v['onnxruntime (all)']} with 1 thread; every peer's answers checked equal to eirserve's "
        "(np.allclose, rtol 1e-5) before the loads.",
        "",
        f"Versions: MLServer {v['mlserver']}, LitServe {v['litserve']}, KServe {v['kserve']}, Python {v['python']}. "
        f"Load average (1, 5, 15 min) {', '.join(f'{x:.2f}' for x in r['loadavg_start'])} at the start, "
        f"{', '.join(f'{x:.2f}' for x in r['loadavg_end'])} at the end: the machine is shared, so req/s are noisy; "
        "requests per CPU-second of the server vary less.",
        "",
        "Configurations: MLServer custom runtime (`MLModel`), adaptive batching "
        f"max_batch_size {ml['max_batch_size']}, "
        f"max_batch_time {ml['max_batch_time']} s, parallel_workers {ml['parallel_workers']}, metrics off, debug off "
        "(the best of the configurations tried below); LitServe `LitAPI` with max_batch_size 64, batch_timeout "
        "0.005 s, fast_queue; KServe `kserve.Model`, 1 worker, latency logging off; eirserve at its defaults "
        "(gRPC on). MLServer's REST server has no binary tensor extension, so it has no V2 binary row.",
        "",
        "| route | server | C | req/s | p50 ms | p99 ms | CPU ms/req | req/CPU-s | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    pts = r["points"]
    for route, label in ROUTE_LABEL.items():
        for c in CONCURRENCY:
            for name, routes in ROUTES.items():
                if route not in routes:
                    continue
                m = pts[f"{name}|{route}|{c}"]
                lines.append(
                    f"| {label} | {name} | {c} | {m['req_per_s']:.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
                    f"{m['cpu_ms_per_req']:.3f} | {_per_cpu(m):.0f} | {m['errors']} |"
                )
    lines += [
        "",
        "eirserve / best peer on each shared route (best: the peer with the most req/s, or req/CPU-s, on that route):",
        "",
        "| route | C | best peer (req/s) | req/s ratio | best peer (req/CPU-s) | req/CPU-s ratio "
        "| p99 eirserve / that peer's |",
        "|---|---|---|---|---|---|---|",
    ]
    for route, label in ROUTE_LABEL.items():
        peers = [n for n, routes in ROUTES.items() if n != "eirserve" and route in routes]
        if not peers:
            continue
        for c in CONCURRENCY:
            ours = pts[f"eirserve|{route}|{c}"]
            by_rate = max(peers, key=lambda n: pts[f"{n}|{route}|{c}"]["req_per_s"])
            by_cpu = max(peers, key=lambda n: _per_cpu(pts[f"{n}|{route}|{c}"]))
            p = pts[f"{by_rate}|{route}|{c}"]
            q = pts[f"{by_cpu}|{route}|{c}"]
            lines.append(
                f"| {label} | {c} | {by_rate} | {ours['req_per_s'] / p['req_per_s']:.2f} | {by_cpu} | "
                f"{_per_cpu(ours) / _per_cpu(q):.2f} | {ours['p99_ms'] / p['p99_ms']:.2f} |"
            )
    lines += ["", "| server | start to ready s | RSS at ready MB | RSS after the loads MB |", "|---|---|---|---|"]
    for name, s in r["servers"].items():
        lines.append(f"| {name} | {s['ready_s']:.2f} | {s['rss_ready_mb']:.0f} | {s['rss_after_mb']:.0f} |")
    lines += [
        "",
        "(Medians over the rounds; RSS includes the server's child processes.)",
        "",
        "MLServer configurations tried (V2 JSON, C=32, one short load each):",
        "",
        "| max_batch_size | max_batch_time s | parallel_workers | req/s | p99 ms | req/CPU-s |",
        "|---|---|---|---|---|---|",
    ]
    for t in r["mlserver_configs"]:
        lines.append(
            f"| {t['max_batch_size']} | {t['max_batch_time']} | {t['parallel_workers']} | {t['req_per_s']:.0f} | "
            f"{t['p99_ms']:.2f} | {_per_cpu(t):.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
