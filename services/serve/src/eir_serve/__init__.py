"""eir_serve: serve an eir-core bundle over HTTP (EIR-compatible /predict and /info)."""

from importlib.metadata import PackageNotFoundError, version

try:  # the repository's VERSION file, as the installed package's metadata carries it
    __version__ = version("eir-serve")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
