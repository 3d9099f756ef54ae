"""eir-core without its extras: the NumPy-only modules import, the PyTorch ones say which extra
to install (in a subprocess where importing PyTorch fails, as where it is not installed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from eir_core.errors import EirError
from eir_core.extras import EXTRAS, MissingExtraError, require

NO_TORCH = "import sys; sys.modules['torch'] = None\n"

TORCH_FREE = [
    "eir_core.manifest",
    "eir_core.bundle",
    "eir_core.inference",
    "eir_core.onnx_runtime",
    "eir_core.diffusion",
    "eir_core.diffusion_sampling",
    "eir_core.cli.train",
    "eir_core.cli.bundle",
    "eir_core.cli.data",
]
NEED_TORCH = [
    "eir_core.predict",
    "eir_core.device",
    "eir_core.model.meta",
    "eir_core.train.trainer",
    "eir_core.onnx_export",
]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", NO_TORCH + code], capture_output=True, text=True, timeout=120)


def test_numpy_only_modules_import_without_pytorch() -> None:
    r = _python(
        "".join(f"import {m}\n" for m in TORCH_FREE)
        + "assert 'torch' not in [k for k, v in sys.modules.items() if v]\nprint('ok')"
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.parametrize("module", NEED_TORCH)
def test_a_pytorch_module_names_the_extra(module: str) -> None:
    code = f"""
from eir_core.extras import MissingExtraError
try:
    import {module}
except MissingExtraError as e:
    assert isinstance(e, ImportError) and e.name == "torch"
    print(e)
"""
    r = _python(code)
    assert r.returncode == 0, r.stderr
    assert "needs torch" in r.stdout and "pip install 'eir-core[torch]'" in r.stdout, r.stdout


def test_the_training_commands_say_what_to_install() -> None:
    for code in (
        "from eir_core.cli.train import main; sys.exit(main(['--global_configs', 'g', '--output_configs', 'o']))",
        "from eir_core.cli.data import main; sys.exit(main(['digits', '--output-folder', '/nonexistent/x']))",
    ):
        r = _python(code)
        assert r.returncode == 2, r.stderr
        assert "pip install 'eir-core[train]'" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_require_is_an_eir_error_and_an_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    require("torch", "this test")  # installed here: nothing raised
    monkeypatch.setitem(EXTRAS, "train", (*EXTRAS["train"], "no_such_module_here"))
    with pytest.raises(MissingExtraError, match=r"training needs no_such_module_here.*'eir-core\[train\]'") as e:
        require("train", "training")
    assert isinstance(e.value, EirError) and isinstance(e.value, ModuleNotFoundError)
    assert e.value.name == "no_such_module_here"
