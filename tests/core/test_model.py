from __future__ import annotations

import time

import torch

from eir_core.config.schema import LCLModelInitConfig, OutputLCLModelInitConfig
from eir_core.model.layers import LCL
from eir_core.model.meta import InputSpec, MetaModel, ModelSpec, OutputSpec


def test_lcl_matches_its_definition() -> None:
    torch.manual_seed(0)
    layer = LCL(10, out_feature_sets=3, kernel_size=4)  # chunks = 3, padded to 12
    assert (layer.num_chunks, layer.out_features) == (3, 9)
    x = torch.randn(2, 10)
    xp = torch.nn.functional.pad(x, (0, 2)).view(2, 3, 4)
    expected = torch.zeros(2, 9)
    for o in range(3):
        for c in range(3):
            expected[:, o * 3 + c] = (xp[:, c] * layer.weight[o, c]).sum(-1) + layer.bias[o * 3 + c]
    torch.testing.assert_close(layer(x), expected)
    assert LCL(784, 1, num_chunks=196).kernel_size == 4


def test_lcl_paths_agree_with_the_definition() -> None:
    """Every forward path (kernel 1, broadcast, bmm), and chunk counts kept past the input
    (EIR's identity LCLs: 688 inputs in 1248 one-wide chunks, the last 560 all padding)."""
    torch.manual_seed(0)
    for n_in, sets, kernel, chunks in [(688, 1, None, 1248), (10, 3, 4, None), (256, 16, 6, None), (560, 28, 24, None)]:
        layer = LCL(n_in, sets, kernel_size=kernel, num_chunks=chunks)
        x = torch.randn(3, n_in)
        xp = torch.nn.functional.pad(x, (0, layer.padding)).view(3, layer.num_chunks, layer.kernel_size)
        expected = torch.einsum("nck,sck->nsc", xp, layer.weight).flatten(1) + layer.bias
        torch.testing.assert_close(layer(x), expected)
    assert LCL(688, 1, num_chunks=1248).out_features == 1248


def test_lcl_training_path_gives_the_definitions_values_and_gradients() -> None:
    """With autograd recording, LCLs take bmm with a contiguous gradient (not the inference
    paths): same output, same input and weight gradients as the einsum definition, for
    narrow (broadcast at inference), tiny (broadcast in training too) and wide layers."""
    torch.manual_seed(0)
    for n_in, sets, kernel, chunks in [(784, 4, 4, None), (1248, 1, None, 560), (928, 16, 12, None)]:
        layer = LCL(n_in, sets, kernel_size=kernel, num_chunks=chunks)
        x = torch.randn(5, n_in, requires_grad=True)
        upstream = torch.randn(5, layer.out_features)
        out = layer(x)
        (out * upstream).sum().backward()
        got = (out.detach(), x.grad, layer.weight.grad)
        x.grad, layer.weight.grad = None, None
        xp = torch.nn.functional.pad(x, (0, layer.padding)).view(5, layer.num_chunks, layer.kernel_size)
        expected = torch.einsum("nck,sck->nsc", xp, layer.weight).flatten(1) + layer.bias
        (expected * upstream).sum().backward()
        for a, b in zip(got, (expected.detach(), x.grad, layer.weight.grad), strict=True):
            torch.testing.assert_close(a, b)


def _spec(hw: int, label: bool = False) -> ModelSpec:
    inputs = [
        InputSpec(
            name="mnist",
            type="array",
            shape=(1, hw, hw),
            lcl=LCLModelInitConfig(kernel_width=8, attention_inclusion_cutoff=128),
        )
    ]
    if label:
        inputs.append(InputSpec(name="mnist_label", type="tabular", cat_cardinalities={"CLASS": 11}))
    return ModelSpec(
        inputs=inputs,
        outputs=[OutputSpec(name="mnist_output", shape=(1, hw, hw), lcl=OutputLCLModelInitConfig(channel_exp_base=4))],
    )


def test_tutorial_28x28_sizes_follow_the_spec() -> None:
    m = MetaModel(_spec(28, label=True))
    assert m.input_modules["mnist"].out_features == 196
    assert m.input_modules["mnist_label"].out_features == 6  # 11 categories -> 6-dim embedding
    head = m.output_modules["mnist_output"]
    assert head.feature_extractor.out_features == 560  # EIR 0.25.0: 688 -> 1248 -> 560
    assert (head.projection_head.fc_1.kernel_size, head.projection_head.fc_1.out_feature_sets) == (24, 28)
    names = dict(m.named_modules())
    assert "fusion_modules.computed.fusion_modules.fusion.1.0" in names
    batch = {
        "mnist": torch.randn(3, 1, 28, 28),
        "mnist_label": {"cat": torch.tensor([[0], [5], [10]]), "con": torch.zeros(3, 0)},
    }
    assert m(batch)["mnist_output"].shape == (3, 1, 28, 28)


def test_every_output_size_builds_quickly() -> None:
    for hw in (1, 2, 3, 8, 13, 28, 40):
        t0 = time.perf_counter()
        m = MetaModel(_spec(hw))
        assert time.perf_counter() - t0 < 5
        assert m({"mnist": torch.randn(2, 1, hw, hw)})["mnist_output"].shape == (2, 1, hw, hw)


def test_dropout_keeps_each_element_with_probability_1_minus_p() -> None:
    """layers.Dropout (cheaper CPU mask): the kept share is 1 - p in every 16-bit lane of the
    random words (a lane with a fixed bit would be off by far more than the tolerance), kept
    values are scaled so the mean is kept, the gradient is the same mask, evaluation is the
    identity, the printed module reads like nn.Dropout's, and a seed repeats the mask."""
    from eir_core.model.layers import Dropout

    layer = Dropout(0.1)
    assert str(layer) == str(torch.nn.Dropout(0.1))
    x = torch.ones(400_000, requires_grad=True)
    torch.manual_seed(3)
    y = layer(x)
    kept = y.detach() != 0
    for lane in range(4):  # 100 000 elements each: standard error 0.001
        assert abs(float(kept[lane::4].float().mean()) - 0.9) < 0.005
    scale = float(y.detach()[kept][0])
    assert abs(scale - 1 / 0.9) < 1e-4 and torch.all(y.detach()[kept] == scale)
    y.sum().backward()
    assert x.grad is not None and torch.equal(x.grad, y.detach())
    torch.manual_seed(3)
    assert torch.equal(layer(x).detach(), y.detach())
    assert not torch.equal(layer(x).detach(), y.detach())  # the next draw differs
    layer.eval()
    assert layer(x) is x
    assert torch.all(Dropout(1.0).train()(torch.ones(10)) == 0)
