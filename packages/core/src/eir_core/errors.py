"""Errors that reach a user as one clear message (CLI exit code 2, or an HTTP 4xx).

Everything the user can fix raises a subclass of :class:`EirError`; the CLIs print
``str(error)`` without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class EirError(Exception):
    """Base class for errors caused by user input (files, configs, payloads)."""


class ConfigError(EirError):
    """A config file, key or value is wrong. The message names the file and key path."""


class DataError(EirError):
    """A data source (array folder, CSV, MNIST file) is missing, malformed or inconsistent."""


class BundleError(EirError):
    """A bundle file is missing, foreign, corrupt or of an unknown format version."""


class RunFolderError(EirError):
    """The run folder exists and would be overwritten; the message says which flag to use."""


class InputError(EirError):
    """One prediction input is wrong; ``field`` names it (e.g. ``mnist`` or ``mnist_label.CLASS``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
