from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from eir_core.cli.data import main as eir_data
from eir_core.data.mnist_files import read_mnist
from eir_core.errors import DataError


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    return bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()


def write_idx_folder(folder: Path, n: int = 5, gz: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in (("train-images-idx3-ubyte", x), ("train-labels-idx1-ubyte", y)):
        data = idx_bytes(arr)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return x, y


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_round_trip(tmp_path: Path, gz: bool) -> None:
    x, y = write_idx_folder(tmp_path / "m", gz=gz)
    images, labels = read_mnist(tmp_path / "m")
    np.testing.assert_array_equal(images, x)
    np.testing.assert_array_equal(labels, y.astype(np.int64))
    assert images.dtype == np.uint8 and labels.dtype == np.int64


def test_single_file_and_npz_forms(tmp_path: Path) -> None:
    x, y = write_idx_folder(tmp_path / "m", gz=False)
    images, _ = read_mnist(tmp_path / "m" / "train-images-idx3-ubyte")
    np.testing.assert_array_equal(images, x)
    npz = tmp_path / "mnist.npz"
    np.savez(npz, x_train=x, y_train=y, x_test=x[:2].astype(np.float32) / 255.0, y_test=y[:2])
    images, _ = read_mnist(npz, "all")
    assert images.shape == (7, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[5:], x[:2])  # floats in 0..1 scaled back to 0..255
    with pytest.raises(DataError, match="t10k-images"):
        read_mnist(tmp_path / "m", "test")


def test_broken_files_are_named(tmp_path: Path) -> None:
    x, y = write_idx_folder(tmp_path / "m", gz=False)
    img = tmp_path / "m" / "train-images-idx3-ubyte"
    img.write_bytes(idx_bytes(x)[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_mnist(tmp_path / "m")
    img.write_bytes(b"\x01\x02" + idx_bytes(x)[2:])
    with pytest.raises(DataError, match="bad magic"):
        read_mnist(tmp_path / "m")
    img.write_bytes(idx_bytes(x.astype(np.int32), code=0x0C))
    with pytest.raises(DataError, match="type code 0x0c"):
        read_mnist(tmp_path / "m")
    img.write_bytes(idx_bytes(x[:3]))
    with pytest.raises(DataError, match="3 images but 5 labels"):
        read_mnist(tmp_path / "m")
    bad_labels = tmp_path / "bad.npz"
    np.savez(bad_labels, x_train=x, y_train=np.full(5, 12))
    with pytest.raises(DataError, match="0..9"):
        read_mnist(bad_labels)
    obj = tmp_path / "obj.npz"
    np.savez(obj, x_train=np.array([object()] * 5, dtype=object), y_train=y)
    with pytest.raises(DataError, match="pickle"):
        read_mnist(obj)
    with pytest.raises(DataError, match="needs keys x_train"):
        np.savez(tmp_path / "keys.npz", a=x)
        read_mnist(tmp_path / "keys.npz")


def test_cli_converts_to_tutorial_layout(tmp_path: Path) -> None:
    x, y = write_idx_folder(tmp_path / "m")
    assert eir_data(["mnist", "--source", str(tmp_path / "m"), "--output-folder", str(tmp_path / "out")]) == 0
    files = sorted((tmp_path / "out" / "mnist_npy").glob("*.npy"))
    assert len(files) == 5
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "mnist_npy" / "3.npy"), x[3])
    rows = (tmp_path / "out" / "mnist_labels.csv").read_text().splitlines()
    assert rows[0] == "ID,CLASS" and rows[4] == f"3,{y[3]}"
    assert eir_data(["mnist", "--source", str(tmp_path / "nope"), "--output-folder", str(tmp_path / "o2")]) == 2
    assert eir_data(["mnist", "--source", str(tmp_path / "m"), "--output-folder", str(tmp_path / "out")]) == 2
