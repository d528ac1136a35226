"""aelab's own errors: anything a user can cause raises one of these.

The CLI catches `AelabError`, prints its message on one line and exits with code 2; any other
exception is a bug in aelab and keeps its traceback.
"""


class AelabError(Exception):
    """Base class: a problem with the user's input, named in one line with how to fix it."""

    exit_code = 2  # the CLI's exit status for this error


class ConfigError(AelabError):
    """An unknown config key, a value of the wrong type or range, an unknown model or study."""


class DataError(AelabError):
    """A data file that is missing, truncated, corrupt or inconsistent."""


class CheckpointError(AelabError):
    """A run folder or checkpoint that cannot be loaded, resumed or written."""
