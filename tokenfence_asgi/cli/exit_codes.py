"""``ExitCode``: what the ``tokenfence`` command's exit status means (importable without Typer)."""

from enum import IntEnum

__all__ = ["ExitCode"]


class ExitCode(IntEnum):
    """What the ``tokenfence`` command's exit status means."""

    OK = 0
    FAILED = 1  # the demo's story did not happen, or an unexpected fence error
    USAGE = 2  # bad arguments (as Click reports them), or no --redis-url for an operator command
    BAD_URL = 3  # a Redis URL that cannot be parsed
    UNKNOWN_PLAN = 4  # a plan name the configuration does not have
    STORE_UNAVAILABLE = 5  # Redis could not be reached in time
    INVALID_ID = 6  # a tenant or feature id that is empty, too long or has control characters
    BAD_CONFIG = 7  # a plan file that cannot be read or is invalid
    MISSING_EXTRA = 8  # the command needs an optional extra that is not installed
    UNKNOWN_TENANT = 9  # the store has no state for the tenant: a typo, or not the app's --prefix
