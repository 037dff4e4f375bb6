"""Errors that carry a message meant for the person running esmtune.

The CLI prints these without a traceback and exits with status 2; anything else is a bug and keeps
its traceback.
"""


class EsmtuneError(Exception):
    """A problem the user can fix; the message says what happened and how to fix it."""


class ConfigError(EsmtuneError):
    """The configuration is invalid; the message lists every problem at once."""


class DataError(EsmtuneError):
    """The input data is invalid; the message names the file, line and record."""


class ModelLoadError(EsmtuneError):
    """A backbone or run directory cannot be loaded."""


class RunDirError(EsmtuneError):
    """A run directory would be overwritten, or lacks what a command needs."""


class StorageError(EsmtuneError):
    """A file cannot be written or read back: a full disk, a read-only folder, a damaged file.

    The message names the path and what to do (free space, choose another folder, or resume
    from the checkpoint that is still complete).
    """
