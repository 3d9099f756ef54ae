"""eir_core: EIR-compatible training of small generative array models, and their bundles."""

from importlib.metadata import PackageNotFoundError, version

try:  # the repository's VERSION file, as the installed package's metadata carries it
    __version__ = version("eir-core")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
