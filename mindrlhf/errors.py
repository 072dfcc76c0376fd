"""The project's error types and the one error path every command ends in.

A user error (a bad recipe, override, checkpoint, data file, reward function or launch setting, or a file that is
not there) ends a command with one line ``error: <file/key/line>: <what is wrong>`` on stderr and exit status
:data:`USER_ERROR_STATUS`; the traceback is shown only with ``--log_level DEBUG``. Anything else is a bug and keeps
its traceback.

The error types of the modules (``ConfigError``, ``CheckpointError``, ``ConversionError``, ``RewardFunctionError``,
``RankTableError``) derive from :class:`UserError`, itself a ``ValueError`` so that callers catching
``ValueError`` keep working.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import traceback
from typing import Callable, Optional

USER_ERROR_STATUS = 2
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# OSError numbers that describe the user's files or disk rather than a bug
USER_OS_ERRNOS = (
    errno.ENOENT,
    errno.EACCES,
    errno.EPERM,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.ENOSPC,
    errno.EFBIG,
    errno.EROFS,
    errno.EDQUOT,
    errno.EEXIST,
    errno.ENAMETOOLONG,
)


class UserError(ValueError):
    """An input the user can fix; the message names the file, key or line and what is wrong with it."""


class DataError(UserError):
    """A dataset (MindRecord, JSON/JSONL) that cannot be read or does not fit the run."""


class LaunchError(UserError):
    """A launch setting (flags that do not go together, an output folder in use or already holding a run)."""


def _raised_in_package(err: BaseException) -> bool:
    """True when the innermost frame that raised ``err`` is in this package (its own message, not a library's)."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(PACKAGE_DIR + os.sep)


def user_message(err: BaseException) -> Optional[str]:
    """The one-line message for a user error, None for anything else (a bug, which keeps its traceback)."""
    if isinstance(err, UserError) or (isinstance(err, (ValueError, OSError)) and _raised_in_package(err)):
        text = str(err)
    elif isinstance(err, OSError) and err.errno in USER_OS_ERRNOS:
        where = err.filename if err.filename is not None else ""
        text = f"{where}: {err.strerror}" if where else str(err.strerror or err)
    else:
        return None
    text = text.strip()
    return text[len("error:") :].strip() if text.startswith("error:") else text


def _exit_message(stop: SystemExit) -> Optional[str]:
    """The text of ``raise SystemExit("message")`` (None for a numeric status such as argparse's)."""
    code = stop.code
    if code is None or isinstance(code, int):
        return None
    text = str(code).strip()
    return text[len("error:") :].strip() if text.startswith("error:") else text


def run_command(func: Callable[..., Optional[int]], *args) -> int:
    """Run a command body ``func(*args)``; a user error becomes one ``error: ...`` line and exit status 2.

    Returns the command's own status (0 when it returns None).
    """
    try:
        return func(*args) or 0
    except SystemExit as stop:
        text = _exit_message(stop)
        if text is None:
            raise
        _report(text, stop)
    except Exception as err:  # noqa: BLE001 - sorted into user errors and bugs by user_message
        text = user_message(err)
        if text is None:
            raise
        _report(text, err)
    return USER_ERROR_STATUS


def _report(text: str, err: BaseException) -> None:
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    print("error: " + " ".join(text.split()), file=sys.stderr, flush=True)
