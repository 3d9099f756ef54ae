"""The one-way flow: serving imports only core's public face, and no module grows past 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_CORE = {
    "eir_core",
    "eir_core.manifest",
    "eir_core.bundle",
    "eir_core.predict",
    "eir_core.inference",
    "eir_core.onnx_runtime",
    "eir_core.device",
    "eir_core.errors",
    "eir_core.extras",  # which extra brings what: eirserve names eir-serve[torch] without PyTorch
    "eir_core.diffusion",  # the diffusion sampling arithmetic (NumPy), which eirserve's sampler runs
    "eir_core.diffusion_sampling",
}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if node.module == "eir_core")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_serving_imports_only_the_public_face_of_core() -> None:
    bad = {}
    for path in (ROOT / "services" / "serve" / "src").rglob("*.py"):
        core = {m for m in _imports(path) if m.split(".")[0] == "eir_core"}
        wrong = sorted(
            m for m in core if m not in PUBLIC_CORE and m.rsplit(".", 1)[0] not in PUBLIC_CORE - {"eir_core"}
        )
        if wrong:
            bad[str(path.relative_to(ROOT))] = wrong
    assert not bad, f"eir_serve reaches past eir_core's public face: {bad}"


def test_core_flows_one_way() -> None:
    """config ← data ← model ← train ← (bundle, predict); nothing earlier imports a later stage."""
    later = {
        "config": ("eir_core.data", "eir_core.model", "eir_core.train", "eir_core.bundle", "eir_core.predict"),
        "data": ("eir_core.model", "eir_core.train", "eir_core.bundle", "eir_core.predict"),
        "model": ("eir_core.train", "eir_core.bundle", "eir_core.predict"),
    }
    src = ROOT / "packages" / "core" / "src" / "eir_core"
    bad = []
    for stage, forbidden in later.items():
        for path in (src / stage).rglob("*.py"):
            bad += [f"{path.name} imports {m}" for m in _imports(path) if m.startswith(forbidden)]
    assert not bad, bad


def test_no_module_over_400_lines() -> None:
    long = {}
    for pkg in (ROOT / "packages" / "core" / "src", ROOT / "services" / "serve" / "src"):
        for path in pkg.rglob("*.py"):
            if "_pb2" in path.name:  # generated gRPC modules
                continue
            n = len(path.read_text().splitlines())
            if n > 400:
                long[str(path.relative_to(ROOT))] = n
    assert not long, long
