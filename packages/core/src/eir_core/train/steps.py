"""One batch from sample indices to model tensors, the training loss, and validation.

Shared by the training step and validation: read the batch, drop whole inputs at random in
training (modality dropout), impute what is missing, move to the device.
"""

from __future__ import annotations

from eir_core import _require_torch  # noqa: F401  (first: without PyTorch, an error naming the extra)

# isort: split
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from eir_core.data.dataset import ArrayColumn, RunData, TabularColumn
from eir_core.imputation import impute_array_, impute_tabular_, modality_dropout, null_codes
from eir_core.model.spec import timestep_key
from eir_core.train.latents import LatentRecorder

if TYPE_CHECKING:
    from eir_core.diffusion import NoiseSchedule

VALIDATION_CHUNK = 1024  # samples per forward pass in validation


def masked_mse(pred: torch.Tensor, target: torch.Tensor, has_nan: bool) -> torch.Tensor:
    """MSE over the target's present (non-NaN) elements."""
    if not has_nan:
        return torch.nn.functional.mse_loss(pred, target)
    mask = ~torch.isnan(target)
    return ((pred - torch.nan_to_num(target)) ** 2 * mask).sum() / mask.sum().clamp(min=1)


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, dict):
        return {k: v.to(device, non_blocking=True) for k, v in x.items()}
    return x.to(device, non_blocking=True)


class Noiser:
    """EIR's diffusion training batch: the array a diffusion output denoises (the input of the
    same name, normalized) is noised at a timestep drawn uniformly from [0, T), and the target
    is the velocity ``v = sqrt(ac_t) eps - sqrt(1 - ac_t) x0`` (v-prediction, zero-terminal-SNR
    schedule: ``eir_core.diffusion``). Timesteps and noise come from the generator given (the
    global CPU generator in training, so a resumed run continues its stream; a fixed one in
    validation, so validations compare) and are drawn on the CPU, then moved."""

    def __init__(self, schedules: dict[str, NoiseSchedule], device: torch.device) -> None:
        self.steps = {name: s.time_steps for name, s in schedules.items()}
        self.coefficients = {
            name: tuple(torch.from_numpy(c).to(device) for c in s.coefficients()) for name, s in schedules.items()
        }

    def apply_(
        self,
        inputs: dict[str, Any],
        targets: dict[str, torch.Tensor],
        present: dict[str, np.ndarray],
        generator: torch.Generator | None,
    ) -> None:
        for name, (sqrt_ac, sqrt_1m_ac) in self.coefficients.items():
            x0: torch.Tensor = inputs[name]
            b = x0.shape[0]
            t = torch.randint(0, self.steps[name], (b,), generator=generator)
            eps = torch.randn(tuple(x0.shape), generator=generator).to(x0.device, non_blocking=True)
            t = t.to(x0.device, non_blocking=True)
            view = (b,) + (1,) * (x0.dim() - 1)
            a, s = sqrt_ac[t].view(view), sqrt_1m_ac[t].view(view)
            v = a * eps - s * x0
            if not present[name].all():  # no image: nothing to learn from this row
                v[torch.from_numpy(~present[name]).to(v.device)] = float("nan")
            inputs[name] = a * x0 + s * eps
            inputs[timestep_key(name)] = t
            targets[name] = v


class BatchMaker:
    def __init__(
        self,
        data: RunData,
        device: torch.device,
        dropout: dict[str, float],
        rng: np.random.Generator,
        diffusion: dict[str, NoiseSchedule] | None = None,
    ) -> None:
        self.data = data
        self.device = device
        self.dropout = dropout
        self.rng = rng  # modality dropout draws; replaced on resume
        self.null_codes = {n: null_codes(c.encoding) for n, c in data.inputs.items() if isinstance(c, TabularColumn)}
        self.has_nan = {n: not bool(c.present.all()) for n, c in data.outputs.items()}
        self.noiser = Noiser(diffusion, device) if diffusion else None
        if diffusion:  # a target row is NaN where the noised input is missing
            self.has_nan.update({n: not bool(data.inputs[n].present.all()) for n in diffusion})

    def prepare(
        self, idx: np.ndarray, train: bool, generator: torch.Generator | None = None
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        inputs, targets, present = self.data.batch(idx)
        for name, col in self.data.inputs.items():
            keep = present[name]
            if train:
                keep = modality_dropout(keep, self.dropout[name], self.rng)
            x = inputs[name]
            if isinstance(col, ArrayColumn):
                assert isinstance(x, torch.Tensor)
                impute_array_(x, ~keep, generator)
            else:
                assert isinstance(x, dict)
                impute_tabular_(x, ~keep, self.null_codes[name])
        on_device = {k: _to(v, self.device) for k, v in inputs.items()}
        target_tensors = {k: _to(v, self.device) for k, v in targets.items()}
        if self.noiser is not None:
            self.noiser.apply_(on_device, target_tensors, present, generator)
        return on_device, target_tensors

    def loss(self, preds: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        losses = [masked_mse(p, targets[n], self.has_nan[n]) for n, p in preds.items()]
        return torch.stack(losses).sum() if len(losses) > 1 else losses[0]


@torch.inference_mode()
def validate(model: nn.Module, batches: BatchMaker, latents: LatentRecorder, seed: int) -> dict[str, float]:
    """Mean squared error per output over the validation set (normalized space). Missing
    inputs are imputed with noise from a generator seeded the same at every validation."""
    data = batches.data
    model.eval()
    sums = {n: 0.0 for n in data.outputs}
    counts = {n: 0 for n in data.outputs}
    gen = torch.Generator().manual_seed(seed)
    latents.start()
    for s in range(0, len(data.valid_idx), VALIDATION_CHUNK):
        idx = data.valid_idx[s : s + VALIDATION_CHUNK]
        inputs, targets = batches.prepare(idx, train=False, generator=gen)
        preds = model(inputs)
        latents.collect([data.ids[i] for i in idx])
        for n, p in preds.items():
            t = targets[n]
            mask = ~torch.isnan(t)
            sums[n] += float((((p - torch.nan_to_num(t)) ** 2) * mask).sum())
            counts[n] += int(mask.sum())
    latents.stop()
    return {n: sums[n] / max(1, counts[n]) for n in sums}
