"""Errors a user fixes (a setting, an input file, a folder), told apart from bugs.

The command line prints a user error as one line (``multiret <command>: error: ...``) and
exits 2; anything else is a bug and keeps its traceback. ``HYDRA_FULL_ERROR=1`` shows the
traceback of user errors too.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

R = TypeVar("R")


class UserError(ValueError):
    """A setting or an input that cannot work; the message names the key, value or file:line and the fix.

    A ``ValueError``, so that callers catching ``ValueError`` around validation keep working.
    """


class DataFormatError(UserError):
    """Raised when an input file does not have the expected format; the message names file:line."""


USER_ERRORS: tuple[type[BaseException], ...] = (UserError, OSError)
"""What the command line reports as one line: our validation, and the file system's own errors (they name the path)."""


def user_error_in(error: BaseException | None) -> BaseException | None:
    """The user error behind ``error``: itself, or the cause that Hydra's ``instantiate`` wrapped; None for a bug."""
    from hydra.errors import InstantiationException  # here: kilt-eval and the usage text start without Hydra

    while error is not None and not isinstance(error, USER_ERRORS):
        error = error.__cause__ if isinstance(error, InstantiationException) else None
    return error


def full_traceback_wanted() -> bool:
    """True under ``HYDRA_FULL_ERROR=1``: user errors then raise with their traceback, as Hydra's own do."""
    return os.environ.get("HYDRA_FULL_ERROR", "") == "1"


def one_line(error: BaseException) -> str:
    """The error's message on one line (multi-line messages are joined); the exception type if it has none."""
    text = " ".join(part.strip() for part in str(error).splitlines() if part.strip())
    return text or type(error).__name__


class UserErrorExit(SystemExit):
    """A user error leaving a Hydra task function.

    Hydra catches every ``Exception`` of a task function and prints a stripped traceback; a
    ``SystemExit`` passes through, so the command line prints :attr:`message` as its one line.
    Uncaught (a script run directly, a DDP worker), Python prints the message and exits 1.
    """

    def __init__(self, error: BaseException) -> None:
        self.message = one_line(error)
        super().__init__(f"multiret: error: {self.message}")


def hydra_task(task: Callable[..., R]) -> Callable[..., R]:
    """Wrap a Hydra task function so that its user errors reach the command line as :class:`UserErrorExit`."""

    @functools.wraps(task)
    def wrapper(*args: object, **kwargs: object) -> R:
        try:
            return task(*args, **kwargs)
        except Exception as error:
            user_error = user_error_in(error)
            if user_error is None or full_traceback_wanted():
                raise
            raise UserErrorExit(user_error) from error

    return wrapper


def require_writable_folder(folder: str | os.PathLike[str], key: str) -> None:
    """Create ``folder`` if needed and write a temporary file in it, so a read-only place fails before the work."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserError(
            f"{key}: cannot write into {os.fspath(folder)!r} ({error.strerror or error}); "
            "choose a writable folder or fix its permissions"
        ) from error
