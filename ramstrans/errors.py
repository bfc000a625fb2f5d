"""The user-facing error classes. Imported by the CLI at start-up, so this module imports nothing heavy.

Library code raises these for a user's mistake; each message is one sentence that names the culprit (a config key, a
file, a checkpoint, an argument); the CLI prints it and exits 2. They are ValueErrors, so code that catches
ValueError keeps working. Anything else that escapes is a bug: the CLI shows its traceback.
"""

import reprlib
from typing import Any

__all__ = ["UsageError", "ConfigError", "DataError", "CheckpointError", "short_repr"]

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 6, 6, 60, 60


def short_repr(value: Any) -> str:
    """A value as a message shows it: never whole (a long list or string is cut with ...)."""
    return _REPR.repr(value)


class UsageError(ValueError):
    """A mistake in what the user asked for (an argument, a combination of settings); the message names it."""


class ConfigError(UsageError):
    """A configuration mistake; the message names the key."""


class DataError(UsageError):
    """A problem with the data on disk; the message names the file."""


class CheckpointError(UsageError):
    """A checkpoint that cannot be used as asked; the message names the file and what does not fit."""
