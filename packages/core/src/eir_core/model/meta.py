"""The whole model, built from a :class:`ModelSpec` alone (the spec travels in the bundle).

``MetaModel`` keeps EIR's module names, so ``state_dict`` keys and ``layers_to_sample`` paths
read the same: ``input_modules.<input>``, ``fusion_modules.computed.fusion_modules.fusion``,
``output_modules.<output>``. Forward: each input -> extractor -> flatten -> concatenate in
input order -> fusion MLP -> each output head.
"""

from __future__ import annotations

import torch
from torch import nn

from eir_core.config.schema import ResidualMLPConfig
from eir_core.data.tabular import embedding_dim
from eir_core.model import layers, lcl, v1_layers, v1_lcl
from eir_core.model.spec import ARCHITECTURE, InputSpec, ModelSpec, OutputSpec

__all__ = ["ARCHITECTURE", "Batch", "InputSpec", "MetaModel", "ModelSpec", "OutputSpec"]

# A batch: input name -> tensor (array inputs: (B, C, H, W) float, normalized) or, for a
# tabular input, {"cat": (B, n_cat) int64 codes, "con": (B, n_con) float32 standardized}.
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


class MetaModel(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        rules = lcl if spec.architecture >= 2 else v1_lcl
        inputs: dict[str, nn.Module] = {}
        width = 0
        for inp in spec.inputs:
            module: lcl.ArrayInputExtractor | v1_lcl.ArrayInputExtractor | TabularExtractor
            if inp.type == "array":
                assert inp.shape is not None and inp.lcl is not None
                module = rules.ArrayInputExtractor(inp.shape, inp.lcl)
            else:
                module = TabularExtractor(inp.cat_cardinalities, inp.n_con)
            inputs[inp.name] = module
            width += module.out_features
        self.input_modules = nn.ModuleDict(inputs)
        fusion = MLPResidualFusion(width, spec.fusion, spec.architecture)
        self.fusion_modules = nn.ModuleDict({"computed": fusion})
        self.output_modules = nn.ModuleDict(
            {o.name: rules.ArrayOutputHead(fusion.out_features, o.shape, o.lcl) for o in spec.outputs}
        )

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        feats = [self.input_modules[i.name](batch[i.name]).flatten(1) for i in self.spec.inputs]
        fused = self.fusion_modules["computed"](torch.cat(feats, dim=1))
        return {name: head(fused) for name, head in self.output_modules.items()}
