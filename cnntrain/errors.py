"""User-facing errors.

Everything a user can get wrong (a config value, a missing dataset, an unknown name)
raises a subclass of `CnnTrainError`. The CLI prints its message and exits with
status 2 instead of showing a traceback, so each message must say what was wrong
and how to fix it. `first_line` and `first_few` are the two ways messages quote other
text: an exception's first line, and a list cut to its first few items.
"""

from collections.abc import Sequence


def first_line(err: BaseException) -> str:
    """The first line of an exception's text, or its type's name when it has none."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def first_few(items: Sequence[str], shown: int, more: str = "more") -> str:
    """'a, b, c and 4 more': the first `shown` items, then how many were left out."""
    return ", ".join(items[:shown]) + (f" and {len(items) - shown} {more}" if len(items) > shown else "")


class CnnTrainError(Exception):
    """A problem the user can fix; the message explains how."""


class ConfigError(CnnTrainError):
    """A config value is wrong (unknown name, bad setting, incompatible choice)."""


class DatasetError(CnnTrainError):
    """A dataset is missing, unreadable or malformed."""


class TrainingError(CnnTrainError):
    """Training cannot go on (e.g. the loss became NaN)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a run; the message says what was saved and the command that resumes the run.

    A KeyboardInterrupt still, so that a sweep stops too instead of going on to its next job.
    """

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code  # 128 + the signal: 130 for Ctrl-C, 143 for SIGTERM
