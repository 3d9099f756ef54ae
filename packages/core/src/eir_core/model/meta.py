"""The whole model, built from a :class:`ModelSpec` alone (the spec travels in the bundle).

``MetaModel`` keeps EIR's module names, so ``state_dict`` keys and ``layers_to_sample`` paths
read the same: ``input_modules.<input>``, ``fusion_modules.computed.fusion_modules.fusion``,
``output_modules.<output>``. Forward: each input -> extractor -> flatten -> concatenate in
input order -> fusion MLP -> each output head.

A diffusion output (``OutputSpec.diffusion_time_steps`` set) takes EIR's "pass-through" fusion
instead: its head gets every input's features unflattened (the (C, H, W) map of the CNN input
with its own name, the noised array, and the others as cross-attention context) and the
timesteps ``batch[timestep_key(name)]``, which it embeds itself. The MLP fusion ("computed") is
built only when some output reads it, as in EIR.
"""

from __future__ import annotations

from eir_core import _require_torch  # noqa: F401  (first: without PyTorch, an error naming the extra)

# isort: split
import types

import torch
from torch import nn

from eir_core.config.schema import ResidualMLPConfig
from eir_core.data.tabular import embedding_dim
from eir_core.errors import ConfigError
from eir_core.model import cnn, cnn_output, layers, lcl, v1_layers, v1_lcl
from eir_core.model.spec import ARCHITECTURE, InputSpec, ModelSpec, OutputSpec, timestep_key

__all__ = ["ARCHITECTURE", "Batch", "InputSpec", "MetaModel", "ModelSpec", "OutputSpec", "timestep_key"]

# A batch: input name -> tensor (array inputs: (B, C, H, W) float, normalized) or, for a
# tabular input, {"cat": (B, n_cat) int64 codes, "con": (B, n_con) float32 standardized};
# for a diffusion output X also timestep_key(X) -> (B,) int64 timesteps.
Batch = dict[str, torch.Tensor | dict[str, torch.Tensor]]


class TabularExtractor(nn.Module):
    """One embedding per categorical column, continuous values appended as they are."""

    def __init__(self, cat_cardinalities: dict[str, int], n_con: int) -> None:
        super().__init__()
        self.embeddings = nn.ModuleDict(
            {col: nn.Embedding(n, embedding_dim(n)) for col, n in cat_cardinalities.items()}
        )
        self.columns = list(cat_cardinalities)
        self.out_features = sum(embedding_dim(n) for n in cat_cardinalities.values()) + n_con

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [self.embeddings[c](x["cat"][:, i]) for i, c in enumerate(self.columns)]
        if "con" in x and x["con"].shape[1]:
            parts.append(x["con"])
        return torch.cat(parts, dim=1)


class MLPResidualFusion(nn.Module):
    """EIR's MLPResidualFusionModule: a first (adaptor) block from the concatenated features to
    ``fc_task_dim``, then ``layers[0] - 1`` same-width blocks."""

    def __init__(self, in_features: int, cfg: ResidualMLPConfig, architecture: int = ARCHITECTURE) -> None:
        super().__init__()
        block = layers.MLPResidualBlock if architecture >= 2 else v1_layers.MLPResidualBlock
        dim, n = cfg.fc_task_dim, cfg.layers[0]
        first = block(in_features, dim, cfg.rb_do, cfg.stochastic_depth_p)
        groups = [nn.Sequential(first)]
        if n > 1:
            rest = [block(dim, dim, cfg.rb_do, cfg.stochastic_depth_p) for _ in range(n - 1)]
            groups.append(nn.Sequential(*rest))
        self.fusion_modules = nn.ModuleDict({"fusion": nn.Sequential(*groups)})
        self.out_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.fusion_modules["fusion"](x)
        return result


class PassThroughFusion(nn.Module):
    """EIR's "pass-through" fusion (IdentityFusionModel): each input's features as they are."""

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return features


InputModule = lcl.ArrayInputExtractor | v1_lcl.ArrayInputExtractor | cnn.CNNInputExtractor | TabularExtractor


def _input_module(inp: InputSpec, rules: types.ModuleType, architecture: int) -> InputModule:
    if inp.type != "array":
        return TabularExtractor(inp.cat_cardinalities, inp.n_con)
    assert inp.shape is not None
    if inp.model_type == "cnn":
        if inp.cnn is None or architecture < 2:
            raise ConfigError(f"input {inp.name!r}: a cnn model needs its init config and architecture 2")
        return cnn.CNNInputExtractor(inp.shape, inp.cnn)
    assert inp.lcl is not None
    module: lcl.ArrayInputExtractor | v1_lcl.ArrayInputExtractor = rules.ArrayInputExtractor(inp.shape, inp.lcl)
    return module


def _diffusion_head(out: OutputSpec, spec: ModelSpec, modules: dict[str, InputModule]) -> cnn_output.CNNOutputHead:
    """The pass-through CNN head of a diffusion output, linked to the CNN input of the same name."""
    if out.model_type != "cnn" or out.cnn is None:
        raise ConfigError(f"output {out.name!r}: a diffusion output needs model_type: cnn (as in EIR)")
    linked = modules.get(out.name)
    linked_spec = next((i for i in spec.inputs if i.name == out.name), None)
    if not isinstance(linked, cnn.CNNInputExtractor) or linked_spec is None or linked_spec.cnn is None:
        raise ConfigError(
            f"output {out.name!r}: a diffusion output needs an array input of the same name with model_type: cnn"
        )
    if linked.flat_output:
        raise ConfigError(
            f"input {out.name!r}: num_output_features must be 0 for the input a diffusion output denoises"
        )
    contexts: dict[str, tuple[int, tuple[int, ...]]] = {}
    for name, module in modules.items():
        if name == out.name:
            continue
        if isinstance(module, cnn.CNNInputExtractor) and module.flat_output:
            raise ConfigError(f"input {name!r}: num_output_features must be 0 for a diffusion output's context")
        shape = module.output_shape if isinstance(module, cnn.CNNInputExtractor) else (module.out_features,)
        contexts[name] = (module.out_features, shape)
    up_every = out.cnn.up_every_n_blocks or linked_spec.cnn.down_sample_every_n_blocks or cnn_output.DEFAULT_UP_EVERY
    groups = linked_spec.cnn.layers or cnn_output.DEFAULT_LAYERS
    model = cnn_output.CNNPassThroughUpscaleModel(
        out.name, linked.output_shape, contexts, out.shape, out.cnn, up_every, groups, out.diffusion_time_steps
    )
    return cnn_output.CNNOutputHead(model, out.shape)


class MetaModel(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        rules = lcl if spec.architecture >= 2 else v1_lcl
        inputs: dict[str, InputModule] = {}
        width = 0
        for inp in spec.inputs:
            module = _input_module(inp, rules, spec.architecture)
            inputs[inp.name] = module
            width += module.out_features
        self.input_modules = nn.ModuleDict(inputs)
        self.diffusion = [o.name for o in spec.outputs if o.diffusion_time_steps is not None]
        fusions: dict[str, nn.Module] = {}
        computed: MLPResidualFusion | None = None
        if len(self.diffusion) < len(spec.outputs) or not spec.outputs:
            computed = MLPResidualFusion(width, spec.fusion, spec.architecture)
            fusions["computed"] = computed
        if self.diffusion:
            fusions["pass-through"] = PassThroughFusion()
        self.fusion_modules = nn.ModuleDict(fusions)
        heads: dict[str, nn.Module] = {}
        for o in spec.outputs:
            if o.diffusion_time_steps is not None:
                heads[o.name] = _diffusion_head(o, spec, inputs)
                continue
            assert computed is not None
            if o.model_type == "cnn":
                assert o.cnn is not None
                upscale = cnn_output.CNNUpscaleModel(computed.out_features, o.shape, o.cnn)
                heads[o.name] = cnn_output.CNNOutputHead(upscale, o.shape)
            else:
                assert o.lcl is not None
                heads[o.name] = rules.ArrayOutputHead(computed.out_features, o.shape, o.lcl)
        self.output_modules = nn.ModuleDict(heads)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        if not self.diffusion:  # every output reads the fused vector
            feats = [self.input_modules[i.name](batch[i.name]).flatten(1) for i in self.spec.inputs]
            fused = self.fusion_modules["computed"](torch.cat(feats, dim=1))
            return {name: head(fused) for name, head in self.output_modules.items()}
        features = {i.name: self.input_modules[i.name](batch[i.name]) for i in self.spec.inputs}
        out: dict[str, torch.Tensor] = {}
        if "computed" in self.fusion_modules:
            flat = torch.cat([f.flatten(1) for f in features.values()], dim=1)
            fused = self.fusion_modules["computed"](flat)
        passed = self.fusion_modules["pass-through"](features)
        for name, head in self.output_modules.items():
            if name in self.diffusion:
                timesteps = batch[timestep_key(name)]
                assert isinstance(timesteps, torch.Tensor)
                out[name] = head(passed, timesteps)
            else:
                out[name] = head(fused)
        return out
