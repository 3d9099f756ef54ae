"""Request-body parsing: the standard library's json.loads vs eir_serve's parse_json (jiter with
duplicate-key and depth checks, then the 64-bit/finite number check), side by side on the same
bodies in one run. Ratio > 1: parse_json is faster.

    python benchmarks/json_body.py [--repeat 30]

Writes benchmarks/results/json_body.{json,md}.
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from eir_serve.body import parse_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def bodies() -> dict[str, bytes]:
    rng = np.random.default_rng(0)

    def image(shape: tuple[int, ...]) -> str:
        return base64.b64encode((rng.random(shape) * 255).astype(np.uint8).tobytes()).decode()

    v2 = {"inputs": [{"name": "mnist", "shape": [64, 1, 28, 28], "datatype": "UINT8",
                      "data": rng.integers(0, 256, 64 * 784).tolist()}]}  # fmt: skip
    return {
        "/predict, 1 item 8x8 uint8": json.dumps([{"mnist": image((1, 8, 8))}]).encode(),
        "/predict, 64 items 28x28 uint8 + label": json.dumps(
            [{"mnist": image((1, 28, 28)), "mnist_label": {"CLASS": str(i % 10)}} for i in range(64)]
        ).encode(),
        "one 8 MB base64 string": json.dumps([{"mnist": "A" * 7_999_000}]).encode(),
        "V2 JSON, 64x784 integers": json.dumps(v2).encode(),
    }


def best_of(fn: object, raw: bytes, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(raw)  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=30)
    a = ap.parse_args()
    rows = []
    for name, raw in bodies().items():
        assert parse_json(raw) == json.loads(raw)
        stdlib, ours = best_of(json.loads, raw, a.repeat), best_of(parse_json, raw, a.repeat)
        rows.append({"body": name, "bytes": len(raw), "json_loads_ms": round(stdlib * 1e3, 3),
                     "parse_json_ms": round(ours * 1e3, 3), "ratio": round(stdlib / ours, 2)})  # fmt: skip
        print(json.dumps(rows[-1]))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    meta = {"command": f"python benchmarks/json_body.py --repeat {a.repeat}", "commit": commit.strip(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"), "python": platform.python_version(),
            "machine": platform.machine(), "timing": f"best of {a.repeat}"}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "json_body.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    lines = [f"# Request-body parsing: json.loads vs parse_json\n\n`{meta['command']}` at {meta['commit']}, "
             f"{meta['date']}, Python {meta['python']}, {meta['timing']}.\n",
             "| body | bytes | json.loads ms | parse_json ms | ratio |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['body']} | {r['bytes']} | {r['json_loads_ms']} | {r['parse_json_ms']} | {r['ratio']} |")
    (RESULTS / "json_body.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
