"""Pure functions between base64 strings and numpy arrays, with explicit checks. No I/O."""

from __future__ import annotations

import base64
import binascii
import math

import numpy as np

# What an array of the right element count but the wrong width most likely was.
_LIKELY = {1: "uint8", 2: "float16 or int16", 4: "float32", 8: "float64"}


class CodecError(ValueError):
    """The value cannot be decoded; the message says why."""


def decode_array(value: object, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """base64 of raw C-order bytes in ``dtype`` with prod(shape) elements -> array of ``shape``."""
    if not isinstance(value, str):
        raise CodecError(f"expected a base64 string of raw {np.dtype(dtype).name} bytes, got {type(value).__name__}")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise CodecError(
            "not valid base64: encode the raw array bytes with standard base64 (RFC 4648: A-Z a-z 0-9 + /, "
            "'=' padding, no line breaks), e.g. base64.b64encode(arr.tobytes()).decode()"
        ) from None
    dt = np.dtype(dtype)
    n = math.prod(shape)
    if len(raw) != n * dt.itemsize:
        message = f"expected {n * dt.itemsize} bytes ({n} x {dt.name}, shape {list(shape)}), got {len(raw)} bytes"
        per_value, rest = divmod(len(raw), n) if n else (0, 1)
        if not rest and per_value in _LIKELY:
            message += (
                f": {per_value} byte{'s' if per_value > 1 else ''} per value: did you send {_LIKELY[per_value]}? "
                f"Send arr.astype(np.{dt.name}).tobytes()"
            )
        raise CodecError(message)
    arr = np.frombuffer(raw, dtype=dt).reshape(shape)
    if dt.kind == "f" and not np.isfinite(arr).all():
        raise CodecError("contains NaN or infinite values")
    return arr


def encode_array(arr: np.ndarray, dtype: str = "<f4") -> str:
    """Raw C-order bytes of ``arr`` as ``dtype``, base64-encoded."""
    return base64.b64encode(np.ascontiguousarray(arr, dtype=np.dtype(dtype)).tobytes()).decode("ascii")
