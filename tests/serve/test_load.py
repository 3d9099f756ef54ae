"""A bounded loopback load on a real server at concurrency 64 (shorter than the benchmark):
no errors, memory flat, queue bounded. `benchmarks/serve_load.py` runs the longer version."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serve.realserver import eirserve

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SECONDS = float(os.environ.get("EIR_LOAD_SECONDS", "9"))


def rss_mb(pid: int) -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.long
def test_concurrency_64_no_errors_flat_memory(tiny_bundle: Path, digits_dir: Path) -> None:
    with eirserve(tiny_bundle, "--max-queue", "256") as server:
        url, pid = server.url, server.proc.pid
        img = np.load(digits_dir / "mnist_npy" / "10001.npy")
        body = json.dumps([{"mnist": base64.b64encode(img.tobytes()).decode()}]).encode()
        thirds: list[list[float]] = [[], [], []]
        codes: dict[object, int] = {}
        depths: list[float] = []

        async def run() -> None:
            start = time.monotonic()
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
            async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

                async def worker() -> None:
                    for _ in range(5000):  # bounded in count and in time
                        if time.monotonic() - start > SECONDS:
                            return
                        try:
                            r = await client.post(
                                "/predict", content=body, headers={"content-type": "application/json"}
                            )
                            codes[r.status_code] = codes.get(r.status_code, 0) + 1
                        except httpx.HTTPError as e:
                            codes[type(e).__name__] = codes.get(type(e).__name__, 0) + 1

                async def sampler() -> None:
                    # Its own connection: on the workers' pool it would wait for a free one, and a
                    # busy machine could starve it of a whole third of the run.
                    async with httpx.AsyncClient(base_url=url, timeout=30) as probe:
                        while time.monotonic() - start < SECONDS:
                            third = min(2, int(3 * (time.monotonic() - start) / SECONDS))
                            thirds[third].append(rss_mb(pid))
                            m = (await probe.get("/metrics")).text
                            depths.append(
                                float(next(x for x in m.splitlines() if x.startswith("eir_queue_depth{")).split()[1])
                            )
                            await asyncio.sleep(0.2)  # sampling period of the memory probe

                await asyncio.gather(sampler(), *[worker() for _ in range(64)])

        asyncio.run(run())
        assert all(thirds), [len(t) for t in thirds]  # memory sampled in every third of the run
        assert set(codes) == {200}, codes
        assert sum(codes.values()) > 200
        first, last = np.mean(thirds[0]), np.mean(thirds[2])
        print(json.dumps({"seconds": SECONDS, "requests": sum(codes.values()), "codes": codes,  # shown with -s
                          "rss_mb_first_third": round(first, 1), "rss_mb_last_third": round(last, 1),
                          "max_queue_depth": max(depths)}))  # fmt: skip
        assert (last - first) / first < 0.10, (first, last)
        assert max(depths) <= 256
