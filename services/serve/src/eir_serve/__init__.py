"""eir_serve: serve an eir-core bundle over HTTP (EIR-compatible /predict and /info)."""

__version__ = "0.1.0"
