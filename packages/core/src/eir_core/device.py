"""Which torch device to run on: ``auto`` is CUDA when available, else the CPU."""

from __future__ import annotations

from eir_core import _require_torch  # noqa: F401  (first: without PyTorch, an error naming the extra)

# isort: split
import torch


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a ValueError says what to use instead."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use auto or cpu")
    return dev
