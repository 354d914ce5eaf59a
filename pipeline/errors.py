"""User errors: each names the bad file, row, column or param; the CLI prints one line and exits 1."""

from __future__ import annotations


class DataFormatError(ValueError):
    """A task's data file is missing or malformed; the message names the file, the row and the column."""


class ExportError(RuntimeError):
    """An exported variant disagrees with the PyTorch student, or the student cannot be exported."""


class UnknownModelError(ValueError):
    """A model name that is neither an exported variant on disk nor a PyTorch model."""


class UnknownTaskError(ValueError):
    """A task name that is not in the registry."""


class ShardError(ValueError):
    """Shards are missing, corrupted, or disagree with their manifest; the message names the file."""


class TaggerUnavailableError(RuntimeError):
    """The configured POS tagger cannot run here (e.g. NLTK without its tagger data)."""


class ParamsError(ValueError):
    """params.yaml is missing, malformed, has an unknown key or a value of the wrong type."""


class InputError(ValueError):
    """Invalid input lines; the message lists each as ``<source>:<line>: <problem>``."""


class PackagedCheckpointError(ValueError):
    """A ``packaged:`` teacher checkpoint cannot be fetched, or its files are not the pinned ones (names the file)."""
