"""The errors a user can cause, by what went wrong: one base class, ``UserError``, whose
``exit_code`` is the process's exit status, and one subclass per meaning. The command line and
the scripts turn any of them into one line on stderr and that exit code
(``nfgen.cli.support.user_errors``); the Python API raises them as they are.

An exception class defined anywhere else in ``nfgen`` is internal: a caller in the package catches
it and raises one of these with the context the user needs (``tests/test_errors.py`` checks both).
Nothing here imports anything heavy: ``nfgen --help`` imports this module without torch.
"""

from __future__ import annotations

import re

# A DataLoader worker's error reaches the main process re-raised with the worker's traceback as
# its message ("Caught DataError in DataLoader worker ...\nOriginal Traceback ...\n
# nfgen.errors.DataError: <message>"); the last line, less the class's name, is the message.
_WORKER_PREFIX = re.compile(rf"^{re.escape(__name__)}\.\w+: ")


class UserError(Exception):
    """Something the user can fix, said in one line that says what to do. ``exit_code``: the
    exit status of the command that stops on it."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        if "Original Traceback" in message:
            message = _WORKER_PREFIX.sub("", message.strip().splitlines()[-1])
        super().__init__(message)


class ConfigError(UserError, ValueError):
    """A configuration, command-line option or environment variable that cannot work, found
    before any work starts. A ``ValueError`` too: parsers catch the ``ValueError`` of a bad
    value and the ``ConfigError`` of a bad key alike."""

    exit_code = 2  # the usage-error status, as Typer's own option errors


class PluginError(ConfigError):
    """A plugin module named in a config (``plugins:``) that cannot be found or fails while
    importing."""


class DataError(UserError):
    """A data set (or image folder) that cannot be read, or does not fit the model."""


class CheckpointError(UserError):
    """A checkpoint or export that cannot be read or used (missing, damaged, of a newer nfgen,
    of another model), or written."""


class OutputError(UserError):
    """An output that cannot or must not be written: an existing file without ``--overwrite``, a
    run folder in use, an unwritable path, two outputs to one file."""


class DeviceError(UserError):
    """A device that this machine does not have."""


class MissingExtraError(UserError):
    """An optional dependency a verb needs is not installed; the message names the extra."""


class FeaturesError(UserError):
    """A feature extractor for FID/KID that cannot be had or cannot read the images."""


class DivergenceError(UserError):
    """Training produced only non-finite losses or gradients and could not recover."""


class NumericalError(UserError, FloatingPointError):
    """A model that gives non-finite numbers (bits/dim, samples) on the inputs it was given. A
    ``FloatingPointError`` too, which the training loop's sampling catches."""


class NotALikelihoodError(UserError, ValueError):
    """Bits/dim asked of a model trained with Gaussian noise (generation mode), which has none."""
