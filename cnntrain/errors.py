"""User-facing errors.

Everything a user can get wrong (a config value, a missing dataset, an unknown name)
raises a subclass of `CnnTrainError`. The CLI prints its message and exits with
status 2 instead of showing a traceback, so each message must say what was wrong
and how to fix it.
"""


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
