"""Which runtime runs the model, and loading it.

* ``onnx``: the bundle's ONNX graph on ONNX Runtime (``eir_core.onnx_runtime``), on the CPU.
  Nothing on this path imports PyTorch, so the process is ready sooner and smaller.
* ``torch``: the PyTorch module (``eir_core.predict``), on the CPU or CUDA, traced with
  TorchScript on the CPU (``graph``).
* ``auto``: ``onnx`` when the bundle carries a graph, ONNX Runtime is installed and the model is
  to run on the CPU (``--device cpu``, or ``auto`` on a machine without an NVIDIA GPU); else
  ``torch``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

from eir_core.bundle import has_graph
from eir_core.extras import torch_installed

if TYPE_CHECKING:
    from eir_core.inference import Runner
    from eir_serve.settings import Settings


def gpu_visible() -> bool:
    """Whether PyTorch could find a CUDA device here, told without importing it: an NVIDIA
    driver is loaded and CUDA_VISIBLE_DEVICES does not hide every device."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def _torch_or_error(why: str) -> str:
    """``"torch"`` when PyTorch is installed; else an error that says ``why`` it was needed and
    which extra brings it (eir-serve installs without PyTorch)."""
    if not torch_installed():
        raise ValueError(f"{why} needs PyTorch, which is not installed here: pip install 'eir-serve[torch]'")
    return "torch"


def resolve_runtime(settings: Settings, bundle_path: Path) -> str:
    """``"onnx"`` or ``"torch"``; a ValueError names the flag when the choice cannot work."""
    if settings.runtime == "torch":
        return _torch_or_error("--runtime torch")
    # Without PyTorch there is no CUDA runtime: --device auto means the CPU.
    cpu = settings.device == "cpu" or (settings.device == "auto" and not (gpu_visible() and torch_installed()))
    if settings.runtime == "onnx":
        if not cpu:
            raise ValueError(
                f"--runtime onnx runs on the CPU, but --device is {settings.device!r}"
                + (" and a GPU is visible" if settings.device == "auto" else "")
                + "; pass --device cpu, or --runtime torch for CUDA"
            )
        if not onnxruntime_installed():
            raise ValueError("--runtime onnx: the onnxruntime package is not installed (pip install onnxruntime)")
        if not has_graph(bundle_path):
            raise ValueError(
                f"--runtime onnx: {bundle_path} has no ONNX graph; add one with `eir-bundle add-graph "
                f"{bundle_path}`, or pass --runtime torch"
            )
        return "onnx"
    if cpu and onnxruntime_installed() and has_graph(bundle_path):
        return "onnx"
    if not cpu:
        return _torch_or_error(f"--device {settings.device}")
    if not has_graph(bundle_path):
        return _torch_or_error(
            f"{bundle_path} has no ONNX graph (`eir-bundle add-graph` adds one, with eir-core[train]); serving it"
        )
    return _torch_or_error("without onnxruntime, serving")


def forward_threads(settings: Settings, device_type: str) -> int:
    """``torch_threads``, or 1 on the CPU: the forward pass of a batch of small items gains little
    from more threads, and idle runtime threads spin on cores the HTTP side needs. 0 on CUDA
    keeps PyTorch's default."""
    if settings.torch_threads:
        return settings.torch_threads
    return 1 if device_type == "cpu" else 0


def load_predictor(settings: Settings, bundle_path: Path, runtime: str) -> Runner:
    """The model on its runtime (PyTorch is imported only for ``torch``)."""
    if runtime == "onnx":
        from eir_core.onnx_runtime import OnnxPredictor

        return OnnxPredictor.from_path(bundle_path, threads=forward_threads(settings, "cpu"))
    import torch

    from eir_core.device import resolve_device
    from eir_core.predict import Predictor

    threads = forward_threads(settings, resolve_device(settings.device).type)
    if threads:
        torch.set_num_threads(threads)
    return Predictor.from_path(bundle_path, device=settings.device, graph=settings.graph)


def load_checked(settings: Settings, bundle_path: Path, runtime: str) -> Runner:
    """``load_predictor``, then one forward pass of the manifest's example item: everything about
    the bundle is checked before the server listens. A failure is a BundleError (one line)."""
    from eir_core.errors import BundleError, EirError

    predictor = load_predictor(settings, bundle_path, runtime)
    try:
        out = predictor.predict([predictor.manifest.dummy_item()], [0], noise_scale=settings.noise_scale)
    except EirError:
        raise
    except Exception as e:  # the graph or weights disagree with what the manifest says
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise BundleError(
            f"{bundle_path}: the model failed its first forward pass ({type(e).__name__}: {first})"
        ) from None
    for i, (name, arr) in enumerate(out[0].items()):
        want = tuple(predictor.outputs[name].shape)
        if arr.shape != want:
            raise BundleError(
                f"{bundle_path}: manifest field outputs[{i}].shape: {list(want)}, but the model gives {list(arr.shape)}"
            )
    return predictor


def describe(predictor: Runner) -> str:
    """``"cpu (onnxruntime, 1 thread)"``, ``"cpu (torchscript, 1 thread)"``, ``"cuda:0 (eager, …)"``."""
    if predictor.runtime == "onnxruntime":
        n = int(getattr(predictor, "threads", 1))
    else:
        import torch

        n = torch.get_num_threads()
    kind = "onnxruntime" if predictor.runtime == "onnxruntime" else predictor.graph
    return f"{predictor.device} ({kind}, {n} thread{'' if n == 1 else 's'})"
