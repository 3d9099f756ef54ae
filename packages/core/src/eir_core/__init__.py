"""eir_core: EIR-compatible training of small generative array models, and their bundles."""

__version__ = "0.1.0"
