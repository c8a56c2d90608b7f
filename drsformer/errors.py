"""The errors drsformer raises on purpose. Each message names the file, key or value at fault.

The command line prints any :class:`DrsformerError` as one line and exits with status 2; any other exception is
a bug and keeps its traceback. Each class also derives from the built-in error a caller would expect
(``ValueError``, ``OSError``, ``FileNotFoundError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class DrsformerError(Exception):
    """Base of every error raised on purpose: bad input, bad configuration, unusable files."""


class ConfigError(DrsformerError, ValueError):
    """A configuration key or value that cannot be used; the message names the key path."""


class CheckpointError(DrsformerError, ValueError):
    """A file or dict that cannot be loaded as DRSformer weights or a training state."""


class MissingPathError(DrsformerError, FileNotFoundError):
    """A file or folder that was asked for and does not exist."""


class ImageReadError(DrsformerError, OSError):
    """An image that is missing, unreadable or corrupt."""


class ImageWriteError(DrsformerError, OSError):
    """An image that cannot be encoded or written."""


class PairingError(DrsformerError, ValueError):
    """Input and target images that do not pair up; the message lists the unmatched names."""


class EvaluationError(DrsformerError, ValueError):
    """Folders or images that cannot be scored."""


class PrepareError(DrsformerError, ValueError):
    """A benchmark release that cannot be recognised, or a destination that cannot be used."""


class TrainingError(DrsformerError, RuntimeError):
    """A training run that cannot go on (repeated non-finite losses, out of memory, ...); says what to change."""


class OutOfMemory(DrsformerError, RuntimeError):
    """The device ran out of memory; the message says where and which option lowers the memory needed."""


class RunStopped(DrsformerError):
    """A training run that stopped on request (a signal, or the stop file) after saving its state.

    ``exit_status``: 75 (``EX_TEMPFAIL``: try again) for SIGTERM, SIGUSR1 and the stop file, which is what a
    cluster's requeue logic tests for; 130 for Ctrl-C.
    """

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class MissingDependency(DrsformerError, ImportError):
    """An optional package a command needs is not installed; the message names the extra that provides it."""


class ExportError(DrsformerError, RuntimeError):
    """An exported model that could not be written, or that does not compute what the PyTorch model computes."""
