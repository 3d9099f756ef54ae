"""Back-pressure and codec properties."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from eir_serve.app import create_app
from eir_serve.batcher import Batcher, QueueFull
from eir_serve.codec import CodecError, decode_array, encode_array
from eir_serve.settings import Settings


def test_batcher_refuses_past_max_queue_and_recovers() -> None:
    gate = threading.Event()

    def slow(items, seeds, scales):  # type: ignore[no-untyped-def]
        gate.wait(5)
        return [i * 10 for i in items]

    b = Batcher(slow, max_batch_size=4, batch_timeout_s=0, max_queue=3)
    b.start()

    async def scenario() -> None:
        first = asyncio.create_task(b.submit([1, 2], [0, 1], [1.0, 1.0]))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(b.submit([3], [2], [1.0]))  # waits behind the running batch
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull):  # 1 waiting + 3 > max_queue (the running batch no longer counts)
            await b.submit([4, 5, 6], [3, 4, 5], [1.0, 1.0, 1.0])
        gate.set()
        assert await first == [10, 20] and await second == [30]
        assert await b.submit([7], [0], [1.0]) == [70]  # accepts again once drained

    asyncio.run(scenario())
    b.stop()


def test_full_queue_is_503_with_retry_after(tiny_bundle: Path, digits_dir: Path) -> None:
    app = create_app(Settings(model_path=tiny_bundle, device="cpu", max_queue=1, max_batch_size=1))
    img = np.load(digits_dir / "mnist_npy" / "10001.npy")
    body = [{"mnist": base64.b64encode(img.tobytes()).decode()}]
    with TestClient(app) as client:
        service = app.state.service
        real = service.predictor.predict

        def slow(items, seeds, **kw):  # type: ignore[no-untyped-def]
            time.sleep(0.3)
            return real(items, seeds, **kw)

        service.predictor.predict = slow
        results: list[object] = []
        threads = [
            threading.Thread(target=lambda: results.append(client.post("/predict", json=body))) for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = sorted(r.status_code for r in results)  # type: ignore[attr-defined]
        assert 200 in codes and 503 in codes, codes
        busy = next(r for r in results if r.status_code == 503)  # type: ignore[attr-defined]
        assert busy.headers["retry-after"] == "1" and busy.json()["error"]["code"] == "overloaded"  # type: ignore[attr-defined]
        service.predictor.predict = real
        assert client.post("/predict", json=body).status_code == 200  # later batches are fine


DTYPES = st.sampled_from(["|u1", "<i2", "<i4", "<f4", "<f8"])
SHAPES = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)


@settings(max_examples=60, deadline=None)
@given(dtype=DTYPES, shape=SHAPES, data=st.data())
def test_codec_round_trip(dtype: str, shape: tuple[int, ...], data: st.DataObject) -> None:
    n = int(np.prod(shape))
    raw = data.draw(st.binary(min_size=n * np.dtype(dtype).itemsize, max_size=n * np.dtype(dtype).itemsize))
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if np.dtype(dtype).kind == "f" and not np.isfinite(arr).all():
        with pytest.raises(CodecError, match="NaN or infinite"):
            decode_array(base64.b64encode(raw).decode(), dtype, shape)
        return
    out = decode_array(encode_array(arr, dtype), dtype, shape)
    np.testing.assert_array_equal(out, arr)


@settings(max_examples=80, deadline=None)
@given(value=st.one_of(st.text(max_size=40), st.integers(), st.none(), st.lists(st.integers(), max_size=3)))
def test_codec_refuses_every_wrong_form(value: object) -> None:
    """Whatever arrives, decoding either gives the exact array or a CodecError, never anything else."""
    try:
        out = decode_array(value, "|u1", (1, 2, 2))
    except CodecError:
        return
    assert isinstance(value, str) and out.shape == (1, 2, 2)
    assert base64.b64decode(value, validate=True) == out.tobytes()


def test_a_client_that_goes_away_does_not_poison_later_batches() -> None:
    gate = threading.Event()

    def slow(items, seeds, scales):  # type: ignore[no-untyped-def]
        gate.wait(5)
        return [i + 100 for i in items]

    b = Batcher(slow, max_batch_size=8, batch_timeout_s=0, max_queue=64)
    b.start()

    async def scenario() -> None:
        running = asyncio.create_task(b.submit([1], [0], [1.0]))
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(b.submit([2], [0], [1.0]))  # queued behind the running batch
        await asyncio.sleep(0.05)
        gone.cancel()  # the client disconnected
        stays = asyncio.create_task(b.submit([3], [0], [1.0]))
        await asyncio.sleep(0.05)
        gate.set()
        assert await running == [101]
        assert await stays == [103]
        assert gone.cancelled()
        assert await b.submit([4, 5], [0, 1], [1.0, 1.0]) == [104, 105]
        assert b.queue_depth == 0

    asyncio.run(scenario())
    b.stop()
