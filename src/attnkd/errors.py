"""Errors that the CLI turns into a clear message and a non-zero exit status."""

from __future__ import annotations


class AttnkdError(Exception):
    """Base class for user-facing errors (bad config, bad data, bad model path).

    The CLI prints ``str(err)`` without a traceback and exits with ``exit_code`` (2: the
    input was wrong, as for argument errors; 1 is left to failures that are not the user's).
    """

    exit_code = 2


class Terminated(Exception):  # noqa: N818 (a requested stop, not an error)
    """Training stopped on SIGTERM after saving ``checkpoint`` at ``step``; the CLI exits 143
    (128 + SIGTERM, as a shell reports a job ended by SIGTERM) and ``--resume`` continues."""

    exit_code = 143

    def __init__(self, step: int, checkpoint: object):
        self.step, self.checkpoint = step, checkpoint
        super().__init__(
            f"stopped on SIGTERM after step {step}; checkpoint saved to {checkpoint}; "
            "continue with --resume"
        )


class ConfigError(AttnkdError):
    """A config key, value or referenced path is wrong. Raised before any training starts."""

    exit_code = 2

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        super().__init__(f"config error at '{key}': {message}")


class DataError(AttnkdError):
    """A data file is missing or malformed; the message names the file and line."""

    exit_code = 2

    def __init__(self, path: str, line: int | None, message: str):
        self.path = str(path)
        self.line = line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"data error in {where}: {message}")
