"""Imported first by every eir_core module that needs PyTorch (the model, training, the PyTorch
runtime, the ONNX exporter): without PyTorch, importing one of them raises MissingExtraError
naming the extra to install. Importing this module has no other effect."""

from eir_core.extras import require_torch

require_torch("this part of eir-core (building, training or running the PyTorch model)")
