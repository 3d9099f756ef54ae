"""ArrayColumn._load converts in chunks (bounded temporaries): the result must not depend on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eir_core.data import dataset
from eir_core.data.arrays import open_array_source
from eir_core.data.dataset import ArrayColumn
from eir_core.data.normalization import compute_stats


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_chunked_load_equals_whole_set_normalization(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: type
) -> None:
    rng = np.random.default_rng(0)
    for i in range(11):
        arr = rng.integers(0, 255, size=(4, 5)).astype(dtype)
        if dtype == np.float32 and i == 3:
            arr[1, 2] = np.nan  # a missing element inside a file: imputed with the mean
        np.save(tmp_path / f"s{i:02d}.npy", arr)
    src = open_array_source(tmp_path)
    stats = compute_stats(src.read(), "channel")
    rows = np.array([0, 1, 2, -1, 3, 4, 5, 6, -1, 7, 8, 9, 10], dtype=np.int64)  # two run IDs without an array
    col = ArrayColumn("x", src, rows, stats)
    monkeypatch.setattr(dataset, "LOAD_CHUNK", 3)  # several chunks, one of them partial
    for idx in (np.arange(len(rows)), np.array([12, 3, 0, 5]), np.array([0, 1, 2, 4, 5, 6, 7])):  # last: all present
        got = col._load(idx)
        assert got.dtype == torch.float32 and got.shape == (len(idx), 1, 4, 5)
        want = torch.full((len(idx), 1, 4, 5), float("nan"))
        have = np.nonzero(rows[idx] >= 0)[0]
        want[torch.from_numpy(have)] = stats.normalize(torch.from_numpy(src.read(rows[idx][have]).astype(np.float32)))
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    col.preload()
    assert col.preloaded is not None
    torch.testing.assert_close(col.get(np.array([4, 0])), col._load(np.array([4, 0])), rtol=0, atol=0, equal_nan=True)
