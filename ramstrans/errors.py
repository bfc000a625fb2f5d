"""The user-facing error classes. Imported by the CLI at start-up, so this module imports nothing heavy.

Each message is one sentence that names the culprit (a config key, a file, a checkpoint); the CLI prints it and exits 2.
"""

__all__ = ["ConfigError", "DataError", "CheckpointError"]


class ConfigError(ValueError):
    """A configuration mistake; the message names the key."""


class DataError(ValueError):
    """A problem with the data on disk; the message names the file."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names the file and what does not fit."""
