"""Array sources: a folder of ``.npy`` files (searched recursively, ID = file stem) or a text
file listing ``.npy`` paths, one sample per file, as EIR reads them.

All files must agree in shape and dtype; unlike EIR (which trusts the first file) the first
file that differs is named in the error. Arrays become channel-first 3-D:
``(W,) -> (1, 1, W)``, ``(H, W) -> (1, H, W)``, ``(C, H, W)`` kept.
"""

from __future__ import annotations

import ast
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eir_core.errors import DataError

_NPY_MAGIC = b"\x93NUMPY"
READ_THREADS = 4


def channel_first_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) == 1:
        return (1, 1, shape[0])
    if len(shape) == 2:
        return (1, shape[0], shape[1])
    if len(shape) == 3:
        return (shape[0], shape[1], shape[2])
    raise DataError(f"arrays must be 1-D, 2-D or 3-D (channel first); got shape {shape}")


def _read_header(path: Path) -> tuple[bytes, tuple[int, ...], np.dtype, bool]:
    """(raw header bytes incl. preamble, shape, dtype, fortran_order) of one .npy file."""
    with path.open("rb") as f:
        pre = f.read(10)
        if len(pre) < 10 or not pre.startswith(_NPY_MAGIC):
            raise DataError(f"{path}: not a .npy file (bad magic bytes); save arrays with numpy.save")
        major = pre[6]
        if major == 1:
            hlen = int.from_bytes(pre[8:10], "little")
            head = pre + f.read(hlen)
        elif major in (2, 3):
            pre += f.read(2)
            hlen = int.from_bytes(pre[8:12], "little")
            head = pre + f.read(hlen)
        else:
            raise DataError(f"{path}: unsupported .npy format version {major}")
    text = head[len(pre) :].decode("latin1")
    try:
        meta = ast.literal_eval(text.strip())
        dtype = np.dtype(meta["descr"])
        shape = tuple(int(s) for s in meta["shape"])
        fortran = bool(meta["fortran_order"])
    except (ValueError, SyntaxError, KeyError, TypeError) as e:
        raise DataError(f"{path}: unreadable .npy header ({e})") from None
    if dtype.hasobject:
        raise DataError(f"{path}: holds Python objects (needs pickle), which are never loaded; store numbers")
    if dtype.kind not in "biuf":
        raise DataError(f"{path}: dtype {dtype} is not numeric; store bool, integer or float arrays")
    return head, shape, dtype, fortran


def load_npy(path: Path) -> np.ndarray:
    """np.load without pickle, with a DataError (not a numpy exception) on any problem."""
    _read_header(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read the array ({e})") from None
    return np.asarray(arr)


@dataclass
class ArraySource:
    """The files of one array source, checked to share shape and dtype."""

    source: Path
    ids: list[str]
    paths: list[str]  # strings, not Path objects: 10 000 of those take 0.1 s to make
    shape: tuple[int, int, int]  # channel first
    original_shape: tuple[int, ...]
    dtype: np.dtype
    cache: np.ndarray | None = None  # every file, once ``load_all`` ran (memory datasets)

    def load_all(self) -> np.ndarray:
        if self.cache is None:
            self.cache = self.read()
        return self.cache

    def index_of(self) -> dict[str, int]:
        return {sid: i for i, sid in enumerate(self.ids)}

    def nbytes(self, n: int | None = None) -> int:
        """Bytes of ``n`` arrays (all if None) as :meth:`read` returns them."""
        return (len(self.paths) if n is None else n) * math.prod(self.shape) * self.dtype.itemsize

    def read(self, indices: np.ndarray | list[int] | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """Arrays at ``indices`` (all if None) as one ``(N, C, H, W)`` array of the file dtype,
        written into ``out`` when given (a buffer of that shape and dtype)."""
        if self.cache is not None:
            return self.cache if indices is None else self.cache[np.asarray(indices, dtype=np.int64)]
        idx = range(len(self.paths)) if indices is None else indices
        if out is None:
            out = np.empty((len(idx), *self.shape), dtype=self.dtype)
        elif out.shape != (len(idx), *self.shape) or out.dtype != self.dtype:
            raise ValueError(f"out is {out.shape} {out.dtype}, not {(len(idx), *self.shape)} {self.dtype}")
        flat = out.reshape(len(idx), -1)
        first_head, _, _, fortran = _read_header(Path(self.paths[0]))
        size = len(first_head) + self.nbytes(1)

        def read_rows(rows: range) -> None:
            for row in rows:
                path = self.paths[idx[row]]
                fd = os.open(path, os.O_RDONLY)
                try:
                    data = os.read(fd, size + 1)  # one byte more: a longer file is caught below
                finally:
                    os.close(fd)
                # Same header bytes => same dtype, shape and order: take the payload as is.
                if not fortran and len(data) == size and data.startswith(first_head):
                    flat[row] = np.frombuffer(data, dtype=self.dtype, offset=len(first_head))
                else:
                    flat[row] = self._checked(Path(path)).reshape(-1)

        n = len(idx)
        if n < 2000:
            read_rows(range(n))
        else:  # file reads release the GIL: two threads halve the wall time of big folders
            with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
                step = math.ceil(n / READ_THREADS)
                list(pool.map(read_rows, [range(s, min(n, s + step)) for s in range(0, n, step)]))
        return out

    def _checked(self, path: Path) -> np.ndarray:
        arr = load_npy(path)
        if arr.shape != self.original_shape or arr.dtype != self.dtype:
            raise DataError(
                f"{path}: shape {arr.shape} dtype {arr.dtype} differs from the source's "
                f"first file ({self.original_shape}, {self.dtype}); all arrays of "
                f"{self.source} must agree"
            )
        return np.ascontiguousarray(arr)


def list_array_files(source: Path) -> list[str]:
    """The ``.npy`` files of a source, as path strings; a folder's in the order of their Paths."""
    if source.is_dir():
        found: list[tuple[tuple[str, ...], str]] = []  # (Path(file).parts, file)
        for root, _, names in os.walk(source):
            root_path = Path(root)
            parts, prefix = root_path.parts, str(root_path)
            found += [((*parts, n), os.path.join(prefix, n)) for n in names if n.endswith(".npy")]
        if not found:
            raise DataError(f"{source}: no .npy files found (searched recursively)")
        found.sort()  # Paths compare by their parts: the same order as sorting Path objects
        return [f for _, f in found]
    if source.is_file():
        lines = source.read_text(encoding="utf-8", errors="replace").splitlines()
        files = [Path(line.strip()) for line in lines if line.strip()]
        if not files:
            raise DataError(f"{source}: the list of .npy paths is empty")
        for f in files:
            if not f.is_file():
                raise DataError(f"{source}: listed file {f} does not exist")
        return [str(f) for f in files]
    raise DataError(f"{source}: array source not found (expected a folder of .npy files)")


def _stem(name: str) -> str:
    """``Path(name).stem`` without making a Path."""
    i = name.rfind(".")
    return name[:i] if 0 < i < len(name) - 1 else name


def open_array_source(source: Path) -> ArraySource:
    files = list_array_files(source)
    ids = [_stem(os.path.basename(f)) for f in files]
    seen: dict[str, str] = {}
    for sid, p in zip(ids, files, strict=True):
        if sid in seen:
            raise DataError(f"{source}: two files have the ID {sid!r}: {seen[sid]} and {p}")
        seen[sid] = p
    _, shape, dtype, _ = _read_header(Path(files[0]))
    return ArraySource(
        source=source,
        ids=ids,
        paths=files,
        shape=channel_first_shape(shape),
        original_shape=shape,
        dtype=dtype,
    )
