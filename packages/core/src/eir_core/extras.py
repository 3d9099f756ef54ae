"""Optional dependencies: which extra of eir-core brings what, and a clear error without it.

``eir-core`` itself reads bundles, builds batches, runs the diffusion sampling arithmetic and the
ONNX graph in NumPy (plus onnxruntime, which ``eir-serve`` installs): no PyTorch. The modules
that build, train or run the PyTorch model import ``eir_core._require_torch`` before PyTorch,
so that without it they fail with :class:`MissingExtraError`, which names the extra to install,
instead of a bare ``No module named 'torch'``.
"""

from __future__ import annotations

import importlib.util

from eir_core.errors import EirError

# The importable modules each extra of eir-core brings (its pyproject.toml lists the packages).
EXTRAS: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "train": ("torch", "matplotlib", "sklearn", "tqdm", "onnx", "onnxruntime"),
}
TORCH_HINT = "pip install 'eir-core[torch]' (or 'eir-core[train]' to train, 'eir-serve[torch]' to serve with it)"


class MissingExtraError(ModuleNotFoundError, EirError):
    """An optional dependency is not installed. An ImportError (``try: import … except
    ImportError`` still works) and an EirError (the CLIs print it as one line, exit code 2)."""

    def __init__(self, package: str, message: str) -> None:
        super().__init__(message, name=package)


def installed(package: str) -> bool:
    """Whether ``package`` can be imported, told without importing it."""
    return importlib.util.find_spec(package) is not None


def torch_installed() -> bool:
    return installed("torch")


def require(extra: str, what: str) -> None:
    """Raise MissingExtraError unless every module of eir-core's ``extra`` can be imported."""
    missing = [m for m in EXTRAS[extra] if not installed(m)]
    if missing:
        hint = TORCH_HINT if extra == "torch" else f"pip install 'eir-core[{extra}]'"
        raise MissingExtraError(missing[0], f"{what} needs {', '.join(missing)}, not installed here: {hint}")


def require_torch(what: str = "this") -> None:
    """Raise MissingExtraError unless PyTorch can be imported; ``what`` names what needs it."""
    require("torch", what)
