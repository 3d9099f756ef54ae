"""Where a request's CPU goes in eirserve at C=32, per route: a sampling profile under load.

    python benchmarks/serve_budget.py --bundle RUN_FOLDER_OR_BUNDLE [--seconds 10]
    (py-spy is needed: pip install py-spy; it is a benchmark tool, not a dependency)

1. Starts eirserve on the bundle pinned to CPU 0 (ONNX Runtime, 1 thread, its defaults).
2. For each route (/predict, V2 JSON, V2 binary; one 8x8 image per request), `wrk -t1 -c32` on
   CPU 1 for --seconds + 4 s; 2 s in, `py-spy record --gil` samples the server at 200 Hz for
   --seconds (only samples of the thread that holds the interpreter lock: waiting threads are
   not CPU). Each sample is put in one category by its innermost frame that a rule names
   (HTTP parsing, JSON, validation, metrics, batching, ONNX Runtime, encoding, ...).
3. Reports per route the server's CPU per request (/proc, the whole process) and the part of it
   spent holding the interpreter lock, split by category in microseconds per request; what is
   left (CPU without the lock: ONNX Runtime's compute, socket I/O in libuv, lock hand-offs) is
   the difference. With the command, commit, date and load average.

Writes benchmarks/results/serve_budget.{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))  # serve_load imports proctree from beside it
_spec = importlib.util.spec_from_file_location("serve_load", Path(__file__).with_name("serve_load.py"))
assert _spec is not None and _spec.loader is not None
sl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sl)

# (category, what a frame's file path holds) — the first rule matching the innermost frame that
# any rule matches names the sample. Order matters: specific before general.
RULES: list[tuple[str, tuple[str, ...]]] = [
    ("ONNX Runtime (its part holding the lock)", ("onnxruntime",)),
    ("metrics (prometheus_client, MetricsMiddleware)", ("prometheus_client", "eir_serve/metrics.py")),
    ("JSON parsing (jiter, body.py)", ("jiter", "eir_serve/body.py")),
    ("validation (pydantic)", ("pydantic",)),
    (
        "decoding and checks (codec, protocol, item checks)",
        ("eir_serve/codec.py", "eir_serve/protocol.py", "eir_core/manifest.py"),
    ),
    ("encoding the answer (responses)", ("starlette/responses.py",)),
    ("route code (routes/, service.py)", ("eir_serve/routes/", "eir_serve/service.py", "eir_serve/repository.py")),
    ("batching (batcher.py, queue, futures)", ("eir_serve/batcher.py", "queue.py", "threading.py")),
    ("model glue (eir_core: batch, normalize, split)", ("eir_core/",)),
    (
        "gate and connection bounds (gate.py, connections.py, server.py)",
        ("eir_serve/gate.py", "eir_serve/connections.py", "eir_serve/server.py"),
    ),
    ("FastAPI routing and dependencies", ("fastapi/", "starlette/routing.py")),
    ("Starlette middleware and exception wrappers", ("starlette/",)),
    ("HTTP parsing (uvicorn, httptools)", ("uvicorn/", "httptools")),
    ("event loop (uvloop, asyncio)", ("uvloop", "asyncio")),
]
FRAME = re.compile(r"\((.*?)(?::\d+)?\)$")


def category(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        m = FRAME.search(frame)
        path = m.group(1) if m else frame
        for name, parts in RULES:
            if any(p in path for p in parts):
                return name
    return "other"


def profile(pid: int, seconds: int, out: Path) -> collections.Counter[str]:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    cmd = ["taskset", "-c", "1", spy, "record", "--gil", "--nonblocking", "-r", "200", "-d", str(seconds),
           "--format", "raw", "-o", str(out), "-p", str(pid)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=seconds + 60)
    counts: collections.Counter[str] = collections.Counter()
    for line in out.read_text().splitlines():
        if line.strip():
            stack, n = line.rsplit(" ", 1)
            counts[category(stack)] += int(n)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, required=True, help="a run folder or bundle of the 8x8 autoencoder")
    ap.add_argument("--seconds", type=int, default=10)
    a = ap.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install wrk util-linux)")
    if shutil.which("py-spy") is None and not Path(sys.executable).with_name("py-spy").exists():
        sys.exit("py-spy is needed: pip install py-spy")
    result: dict[str, Any] = {
        "command": "python benchmarks/serve_budget.py " + " ".join(sys.argv[1:]),
        "commit": sl.git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average": os.getloadavg()[0],
        "routes": {},
    }
    img = (np.random.default_rng(0).random((1, 8, 8)) * 255).astype(np.uint8)
    import base64

    predict = json.dumps([{"mnist": base64.b64encode(img.tobytes()).decode()}]).encode()
    v2_json, (v2_binary, binary_headers) = sl.protocol_bodies(img)
    json_headers = {"Content-Type": "application/json"}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        server = sl.start_ours(a.bundle)
        pin = subprocess.run(["taskset", "-pc", "0", str(server.proc.pid)], capture_output=True)  # server on CPU 0
        assert pin.returncode == 0, pin.stderr
        try:
            import httpx

            name = httpx.get(f"{server.url}/info", timeout=5).json()["model"]["name"]
            loads = {
                "/predict": ("/predict", sl.wrk_script(tmp, "predict", predict, json_headers)),
                "V2 JSON": (f"/v2/models/{name}/infer", sl.wrk_script(tmp, "v2json", v2_json, json_headers)),
                "V2 binary": (f"/v2/models/{name}/infer", sl.wrk_script(tmp, "v2bin", v2_binary, binary_headers)),
            }
            for route, (path, script) in loads.items():
                sl.wrk(f"{server.url}{path}", script, 32, 2, server.proc.pid)  # warm-up
                box: dict[str, Any] = {}

                def spy(box: dict[str, Any] = box, route: str = route) -> None:
                    time.sleep(2)
                    box["counts"] = profile(server.proc.pid, a.seconds, tmp / f"{route.replace('/', '')}.txt")

                t = threading.Thread(target=spy)
                t.start()
                m = sl.wrk(f"{server.url}{path}", script, 32, a.seconds + 4, server.proc.pid)
                t.join()
                counts: collections.Counter[str] = box["counts"]
                per_req_us = 5000 / (m["req_per_s"] * a.seconds)  # one sample = 5 ms of lock-holding CPU
                result["routes"][route] = {
                    **m,
                    "cpu_us_per_req": round(m["cpu_ms_per_req"] * 1000, 1),
                    "lock_held_us_per_req": {k: round(v * per_req_us, 1) for k, v in counts.most_common()},
                }
                print(route, json.dumps(result["routes"][route]), flush=True)
        finally:
            server.stop()
    sl.write_results("serve_budget", result, render)


def render(r: dict[str, Any]) -> str:
    routes = list(r["routes"])
    cats = sorted(
        {c for v in r["routes"].values() for c in v["lock_held_us_per_req"]},
        key=lambda c: -max(v["lock_held_us_per_req"].get(c, 0) for v in r["routes"].values()),
    )
    lines = [
        f"# Where a request's CPU goes (eirserve, C=32, {r['date']})",
        "",
        f"Command: `{r['command']}` at commit `{r['commit']}`; server on CPU 0, `wrk -t1 -c32` on CPU 1, one 8x8 image "
        f"per request; load average {r['load_average']:.2f} at the start. Microseconds of server CPU per request.",
        "",
        "| | " + " | ".join(routes) + " |",
        "|---|" + "---:|" * len(routes),
        "| req/s | " + " | ".join(f"{r['routes'][k]['req_per_s']:.0f}" for k in routes) + " |",
        "| **server CPU per request (whole process)** | "
        + " | ".join(f"**{r['routes'][k]['cpu_us_per_req']:.0f}**" for k in routes)
        + " |",
    ]
    held = {k: sum(r["routes"][k]["lock_held_us_per_req"].values()) for k in routes}
    for c in cats:
        row = " | ".join(f"{r['routes'][k]['lock_held_us_per_req'].get(c, 0):.0f}" for k in routes)
        lines.append(f"| {c} | {row} |")
    lines.append("| holding the interpreter lock, in all | " + " | ".join(f"{held[k]:.0f}" for k in routes) + " |")
    lines.append(
        "| without the lock (ONNX Runtime's compute, socket I/O, lock hand-offs) | "
        + " | ".join(f"{max(r['routes'][k]['cpu_us_per_req'] - held[k], 0):.0f}" for k in routes)
        + " |"
    )
    lines += ["", "Categories by the innermost frame a rule names (benchmarks/serve_budget.py, `RULES`); a sampling "
              "profile, so rows under ~20 us are within its noise.", ""]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
