"""The bundle's ONNX graph: written by training, checked against the model, run on ONNX Runtime
without PyTorch, and giving the same answers as the PyTorch Predictor for the same items and seeds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from eir_core import onnx_export
from eir_core.bundle import (
    Graph,
    has_graph,
    load_array_bundle,
    load_bundle,
    save_bundle,
)
from eir_core.cli.bundle import main as eir_bundle
from eir_core.errors import BundleError
from eir_core.inference import ItemModel
from eir_core.onnx_export import RTOL, add_graph, export_graph
from eir_core.onnx_runtime import OnnxPredictor
from eir_core.predict import Predictor


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 17, 64).astype(np.uint8) for _ in range(n)]


def _close(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> float:
    """The largest difference between two answers, relative to the answers' scale."""
    worst = 0.0
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype == np.float32 and x[k].shape == y[k].shape
            worst = max(worst, float(np.abs(x[k] - y[k]).max()) / (float(np.abs(x[k]).max()) + 1e-6))
    return worst


def test_training_writes_a_graph_checked_against_the_model(tiny_bundle: Path) -> None:
    assert has_graph(tiny_bundle)
    b = load_array_bundle(tiny_bundle)
    assert b.graph.meta.format == "onnx" and b.graph.meta.outputs == ["mnist_output"]
    assert b.graph.meta.max_rel_diff <= RTOL and b.graph.meta.checked_batch_sizes == [1, 5, 17]
    assert b.graph.onnx[:2] != b"" and len(b.graph.onnx) > 10_000
    assert "mnist_output" in b.output_stats and b.output_stats["mnist_output"].mean.dtype == np.float32
    # the PyTorch loader ignores the graph: the weights are exactly the model's
    assert "graph.onnx" not in load_bundle(tiny_bundle).state_dict


@pytest.mark.parametrize("n", [1, 3, 17, 64])
def test_onnx_and_torch_give_the_same_reconstructions(tiny_bundle: Path, n: int) -> None:
    items = [{"mnist": img} for img in _images(n, seed=n)]
    want = Predictor.from_path(tiny_bundle, device="cpu", graph="eager").predict(items, seeds=list(range(n)))
    got = OnnxPredictor.from_path(tiny_bundle).predict(items, seeds=list(range(n)))
    assert _close(want, got) <= RTOL


def test_onnx_and_torch_generate_the_same_digit_from_a_label_and_seed(tiny_conditional_bundle: Path) -> None:
    torch_p = Predictor.from_path(tiny_conditional_bundle, device="cpu", graph="eager")
    onnx_p = OnnxPredictor.from_path(tiny_conditional_bundle)
    labels: list[dict[str, Any]] = [{"mnist_label": {"CLASS": str(d)}} for d in range(10)]
    mixed = labels + [{"mnist": img, "mnist_label": {"CLASS": "3"}} for img in _images(5)] + [{"mnist": _images(1)[0]}]
    seeds = [100 + i for i in range(len(mixed))]
    for scale in (1.0, 3.0):
        want = torch_p.predict(mixed, seeds=seeds, noise_scale=scale)
        got = onnx_p.predict(mixed, seeds=seeds, noise_scale=scale)
        assert _close(want, got) <= RTOL
    # batched and one by one agree on ONNX Runtime too (one noise generator per item)
    alone = [onnx_p.predict([it], seeds=[s])[0] for it, s in zip(mixed, seeds, strict=True)]
    assert _close(onnx_p.predict(mixed, seeds=seeds), alone) <= RTOL
    # different seeds give different digits: the noise reaches the graph
    a, b = onnx_p.predict(labels[:1], seeds=[1])[0], onnx_p.predict(labels[:1], seeds=[2])[0]
    assert np.abs(a["mnist_output"] - b["mnist_output"]).mean() > 0.01


ONNX_ONLY = """
import sys
sys.modules["torch"] = None  # any import of PyTorch on this path fails
from eir_core.onnx_runtime import OnnxPredictor
p = OnnxPredictor.from_path(sys.argv[1])
out = p.predict([{"mnist_label": {"CLASS": "4"}}], seeds=[0])
assert out[0]["mnist_output"].shape == (1, 8, 8), out[0]["mnist_output"].shape
print("RAN", p.runtime, p.graph)
"""


def test_the_onnx_runtime_never_imports_torch(tiny_conditional_bundle: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-c", ONNX_ONLY, str(tiny_conditional_bundle)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["RAN", "onnxruntime", "onnx"]


def _without_graph(src: Path, dst: Path) -> Path:
    b = load_bundle(src)
    save_bundle(dst, b.manifest, b.state_dict, b.input_stats, b.output_stats)
    return dst


def test_add_graph_to_a_bundle_without_one(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _without_graph(tiny_bundle, tmp_path / "old.safetensors")
    assert not has_graph(old)
    with pytest.raises(BundleError, match="no ONNX graph.*eir-bundle add-graph"):
        load_array_bundle(old)
    assert eir_bundle(["inspect", str(old)]) == 0
    assert "none (eir-bundle add-graph adds one)" in capsys.readouterr().out
    assert eir_bundle(["add-graph", str(old)]) == 0
    assert "ONNX graph added" in capsys.readouterr().out
    assert has_graph(old)
    before, after = load_bundle(tiny_bundle).state_dict, load_bundle(old).state_dict
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    items = [{"mnist": img} for img in _images(4)]
    want = Predictor.from_path(old, device="cpu").predict(items, seeds=[0, 1, 2, 3])
    assert _close(want, OnnxPredictor.from_path(old).predict(items, seeds=[0, 1, 2, 3])) <= RTOL
    assert eir_bundle(["add-graph", str(old)]) == 0  # already there: left alone unless --force
    assert "already has an ONNX graph" in capsys.readouterr().out


def test_a_failed_export_leaves_the_bundle_as_it_was(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old = _without_graph(tiny_bundle, tmp_path / "old.safetensors")
    data = old.read_bytes()
    monkeypatch.setattr(onnx_export, "bundle_graph", lambda bundle, model=None: (None, "the exporter refused"))
    with pytest.raises(BundleError, match="the exporter refused"):
        add_graph(old)
    assert old.read_bytes() == data
    assert eir_bundle(["add-graph", str(old)]) == 2
    assert "eir-bundle: error:" in capsys.readouterr().err and old.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.safetensors"]  # no temporary file left


def test_a_corrupt_graph_or_description_is_a_bundle_error(tiny_bundle: Path, tmp_path: Path) -> None:
    b = load_bundle(tiny_bundle)
    meta = load_array_bundle(tiny_bundle).graph.meta
    bad = tmp_path / "bad.safetensors"
    save_bundle(bad, b.manifest, b.state_dict, b.input_stats, b.output_stats, Graph(b"not an onnx model", meta))
    with pytest.raises(BundleError, match="ONNX graph cannot be loaded"):
        OnnxPredictor.from_path(bad)
    wrong = meta.model_copy(update={"outputs": ["something_else"]})
    save_bundle(bad, b.manifest, b.state_dict, b.input_stats, b.output_stats, Graph(b"x", wrong))
    with pytest.raises(BundleError, match="does not match the manifest.*mnist_output"):
        OnnxPredictor.from_path(bad)


class _BatchTwoOnly(torch.nn.Module):
    """A model whose trace holds only at the traced batch size (a Python branch on it)."""

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["mnist"]
        return {"mnist_output": x * 2.0 if x.shape[0] == 2 else x * 3.0}


def test_a_graph_that_differs_from_the_model_is_refused_with_the_reason(tiny_bundle: Path) -> None:
    b = load_bundle(tiny_bundle)
    items = ItemModel(b.manifest, b.input_stats, b.output_stats)
    model = _BatchTwoOnly()
    model.register_buffer("unused", torch.zeros(1))  # export_graph reads the model's device from it
    model.p = torch.nn.Parameter(torch.zeros(1))
    graph, why = export_graph(model, items)
    assert graph is None and "differs from the model" in why


def test_no_onnxruntime_means_no_graph_and_says_so(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    b = load_bundle(tiny_bundle)
    graph, why = onnx_export.bundle_graph(b)
    assert graph is None and "onnxruntime is not installed" in why


def test_the_export_leaves_a_training_model_in_training_mode(tiny_bundle: Path) -> None:
    from eir_core.model.meta import MetaModel

    b = load_bundle(tiny_bundle)
    model = MetaModel(b.manifest.model_spec)
    model.load_state_dict(b.state_dict)
    model.train()
    graph, why = onnx_export.bundle_graph(b, model)
    assert graph is not None, why
    assert model.training and all(m.training for m in model.modules())
