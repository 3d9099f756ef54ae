"""Read real MNIST files a user already has: IDX (gzipped or not) or a Keras-style ``.npz``.

IDX layout: two zero bytes, a type code (0x08 = unsigned byte, the only one MNIST uses), the
number of dimensions, one big-endian uint32 per dimension, then the data.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from eir_core.errors import DataError

_NAMES = {
    ("train", "images"): ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    ("train", "labels"): ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    ("test", "images"): ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot read ({e})") from None


def read_idx(path: Path) -> np.ndarray:
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic number); pass MNIST's *-idx?-ubyte[.gz] files")
    if data[2] != 0x08:
        raise DataError(f"{path}: IDX type code 0x{data[2]:02x} is not supported (only 0x08, unsigned bytes)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims)) if dims else 0
    found = len(data) - header
    if found != expected:
        raise DataError(f"{path}: expected {expected} data bytes for shape {dims}, found {found} (truncated?)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find(folder: Path, split: str, kind: str) -> Path:
    for base in _NAMES[(split, kind)]:
        for name in (base, base + ".gz"):
            if (folder / name).is_file():
                return folder / name
    wanted = ", ".join(f"{n}[.gz]" for n in _NAMES[(split, kind)])
    raise DataError(f"{folder}: no MNIST {split} {kind} file; looked for {wanted}")


def _to_uint8(images: np.ndarray, where: str) -> np.ndarray:
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind not in "biuf":
        raise DataError(f"{where}: images of dtype {images.dtype} are not numbers")
    x = images.astype(np.float64)
    if x.size and np.nanmax(x) <= 1.0:
        x = x * 255.0
    return np.clip(np.round(np.nan_to_num(x)), 0, 255).astype(np.uint8)


def _check(images: np.ndarray, labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if images.ndim != 3:
        raise DataError(f"{where}: images must be 3-D (N, H, W), got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{where}: labels must be 1-D, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{where}: labels must be digits 0..9, found {labels.min()}..{labels.max()}")
    return images, labels.astype(np.int64)


def _read_npz(path: Path, splits: list[str]) -> tuple[np.ndarray, np.ndarray]:
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz ({e})") from None
    xs, ys = [], []
    with z:
        for split in splits:
            xk, yk = f"x_{split}", f"y_{split}"
            if xk not in z.files or yk not in z.files:
                raise DataError(f"{path}: needs keys {xk} and {yk} (found: {', '.join(z.files)})")
            try:
                x, y = z[xk], z[yk]
            except ValueError as e:  # object arrays would need pickle: refused
                raise DataError(f"{path}: {xk}/{yk} cannot be read without pickle ({e})") from None
            if y.dtype.kind not in "iu":
                raise DataError(f"{path}: {yk} must hold integer labels, got {y.dtype}")
            xs.append(_to_uint8(x, f"{path}:{xk}"))
            ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def read_mnist(source: Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, H, W), labels int64 (N,)) from an IDX folder, an IDX images file, or an .npz."""
    if split not in ("train", "test", "all"):
        raise DataError(f"split must be train, test or all, not {split!r}")
    splits = ["train", "test"] if split == "all" else [split]
    source = Path(source)
    if not source.exists():
        raise DataError(f"{source}: not found; pass a folder of MNIST IDX files, one IDX images file, or an .npz")
    if source.is_file() and source.suffix == ".npz":
        images, labels = _read_npz(source, splits)
        return _check(images, labels, str(source))
    if source.is_file():
        name = source.name.replace("images", "labels").replace("idx3", "idx1")
        label_file = source.with_name(name)
        if label_file == source or not label_file.is_file():
            raise DataError(f"{source}: no labels file {label_file.name} beside it")
        return _check(read_idx(source), read_idx(label_file), str(source))
    xs, ys = [], []
    for s in splits:
        xs.append(read_idx(_find(source, s, "images")))
        ys.append(read_idx(_find(source, s, "labels")))
    return _check(np.concatenate(xs), np.concatenate(ys), str(source))
