"""A bundle that a server could not answer with is refused before the port listens: one line
naming the file and the field, exit 2, never a traceback, nothing allocated from an impossible
manifest. Each case is a real bundle with one thing edited."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from eir_serve import cli

Edit = Callable[[dict[str, Any], dict[str, np.ndarray]], None]


def _edited(src: Path, dst: Path, edit: Edit) -> Path:
    with safe_open(str(src), framework="numpy") as f:
        meta = dict(f.metadata() or {})
    tensors = load_file(str(src))
    manifest = json.loads(meta["eir_manifest"])
    edit(manifest, tensors)
    meta["eir_manifest"] = json.dumps(manifest)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def _nan_mean(m: dict, t: dict) -> None:
    t["norm.input.mnist.mean"] = np.full_like(t["norm.input.mnist.mean"], np.nan)


def _inf_std(m: dict, t: dict) -> None:
    t["norm.output.mnist_output.std"] = np.full_like(t["norm.output.mnist_output.std"], np.inf)


def _object_dtype(m: dict, t: dict) -> None:
    m["inputs"][0]["dtype"] = "|O"


def _huge_shape(m: dict, t: dict) -> None:
    m["inputs"][0]["shape"] = [1, 100_000, 100_000]


def _no_inputs(m: dict, t: dict) -> None:
    m["inputs"] = []


def _corrupt_graph(m: dict, t: dict) -> None:
    graph = t["graph.onnx"].copy()
    graph[len(graph) // 3 :] = 7
    t["graph.onnx"] = graph


def _scalar_stats(m: dict, t: dict) -> None:
    t["norm.input.mnist.mean"] = np.array(0.5, np.float32)


def _output_shape(m: dict, t: dict) -> None:
    m["outputs"][0]["shape"] = [1, 9, 9]
    t["norm.output.mnist_output.mean"] = np.zeros((1, 1, 1), np.float32)
    t["norm.output.mnist_output.std"] = np.ones((1, 1, 1), np.float32)


CASES: dict[str, tuple[Edit, str, list[str]]] = {
    "NaN statistics": (_nan_mean, "tensor norm.input.mnist.mean: holds NaN or infinite values", []),
    "infinite statistics": (_inf_std, "tensor norm.output.mnist_output.std: holds NaN or infinite", []),
    "object dtype": (_object_dtype, "manifest field inputs[0].dtype: '|O' is not a supported dtype", []),
    "huge shape": (_huge_shape, "manifest field inputs[0].shape: [1, 100000, 100000] has 10000000000 elements", []),
    "no inputs": (_no_inputs, "manifest field inputs: empty", []),
    "corrupt graph": (_corrupt_graph, "the bundle's ONNX graph cannot be loaded", ["--runtime", "onnx"]),
    "0-d statistics": (_scalar_stats, "tensor norm.input.mnist.mean: F32 [], expected F32 [1, 1, 1]", []),
    "graph and manifest disagree": (_output_shape, "the ONNX graph's output", ["--runtime", "onnx"]),
    "model and manifest disagree": (
        _output_shape,
        "outputs[0].shape: [1, 9, 9], but the model gives",
        ["--runtime", "torch"],
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_bad_bundle_is_one_line_and_exit_2_before_listening(
    case: str,
    tiny_bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    edit, message, flags = CASES[case]
    bad = _edited(tiny_bundle, tmp_path / "bad.safetensors", edit)
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO):
        code = cli.main(["--model-path", str(bad), "--port", "0", "--grpc-port", "0", "--device", "cpu", *flags])
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"eirserve: error: {bad}: "), err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err + caplog.text and "listening on" not in caplog.text
    assert took < 60, took


def test_the_same_bundle_unedited_serves(tiny_bundle: Path, tmp_path: Path) -> None:
    """The edits above are what fails: the round trip through the editor itself is harmless."""
    from eir_core.onnx_runtime import OnnxPredictor

    same = _edited(tiny_bundle, tmp_path / "same.safetensors", lambda m, t: None)
    p = OnnxPredictor.from_path(same)
    assert p.predict([p.manifest.dummy_item()], [0])[0]["mnist_output"].shape == (1, 8, 8)
