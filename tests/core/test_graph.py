"""The TorchScript inference graph: the same answers as the eager model, or the eager model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from eir_core.bundle import resolve_bundle_path
from eir_core.graph import TracedGraph, trace_for_inference
from eir_core.predict import Predictor


def _items(p: Predictor, n: int, with_images: bool = True) -> list[dict[str, object]]:
    rng = np.random.default_rng(n)
    items: list[dict[str, object]] = []
    for i in range(n):
        item: dict[str, object] = {}
        for name, entry in p.inputs.items():
            if entry.type == "array" and with_images:
                item[name] = (rng.random(entry.shape) * 255).astype(np.dtype(entry.dtype))
            elif entry.type == "tabular":
                item[name] = {c: entry.offered(c)[i % len(entry.offered(c))] for c in entry.cat_columns}
        items.append(item)
    return items


@pytest.mark.parametrize("which", ["tiny_bundle", "tiny_conditional_bundle"])
def test_torchscript_graph_answers_as_the_eager_model(which: str, request: pytest.FixtureRequest) -> None:
    path = resolve_bundle_path(Path(request.getfixturevalue(which)))
    eager = Predictor.from_path(path, device="cpu")
    traced = Predictor.from_path(path, device="cpu", graph="auto")
    assert eager.graph == "eager" and traced.graph == "torchscript"
    assert isinstance(traced.forward, TracedGraph) and isinstance(traced.forward.script, torch.jit.ScriptModule)
    for n in (1, 3, 17, 64):
        for with_images in (True, False) if len(eager.inputs) > 1 else (True,):  # label only: imputed images
            items = _items(eager, n, with_images)
            seeds = list(range(100, 100 + n))
            a, b = eager.predict(items, seeds), traced.predict(items, seeds)
            for x, y in zip(a, b, strict=True):
                for name in x:
                    np.testing.assert_allclose(y[name], x[name], rtol=1e-4, atol=1e-3)  # pixel units 0-255


def test_eager_graph_is_kept_when_asked_and_names_are_checked(tiny_bundle: Path) -> None:
    path = resolve_bundle_path(tiny_bundle)
    assert Predictor.from_path(path, device="cpu", graph="eager").graph == "eager"
    with pytest.raises(ValueError, match="graph must be one of"):
        Predictor.from_path(path, device="cpu", graph="jit")


class _SignDependent(torch.nn.Module):
    """Control flow on the data: a trace records one branch only."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(4))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["x"] * self.w
        return {"y": x if float(x.sum()) > 0 else -x}


def test_a_trace_that_differs_from_the_model_is_refused() -> None:
    def make(n: int) -> dict[str, torch.Tensor]:  # traced at n=2 (positive), checked at n=1 and 5 (negative)
        return {"x": torch.ones(n, 4) * (1 if n == 2 else -1)}

    graph, why = trace_for_inference(_SignDependent(), make)
    assert graph is None and "differs from the model" in why


class _Untraceable(torch.nn.Module):
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"y": torch.from_numpy(np.asarray(batch["x"].sum().item()))}  # leaves the graph


def test_a_model_that_cannot_be_traced_reports_why() -> None:
    graph, why = trace_for_inference(_Untraceable(), lambda n: {"x": torch.ones(n, 2)})
    # Either the tracer refuses it or the result is a constant that does not match other batches.
    assert graph is None and why
