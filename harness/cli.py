"""What the entry points share: a user mistake is one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from typing import Callable

from harness.errors import UserError, user_message

USER_ERROR_EXIT = 2
# What the machine, not the harness, got wrong: a full disk or quota, a read-only, missing or forbidden place.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                      errno.ENOTDIR, errno.EISDIR, errno.ENOENT, errno.EIO}


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors are one line and exit code 2 like every other user mistake (argparse
    itself prints the whole usage first)."""

    def error(self, message: str):
        sys.exit(_refuse(f"{self.prog}: {message} (see --help)"))


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``low``. Anything else is a usage error naming the option."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return whole_number


def run_command(target: str, args: argparse.Namespace) -> int:
    """Run a command's body, ``"package.module:function"`` called with the parsed ``args``, as ``run_cli`` does.
    Imported only now, after the arguments are parsed: ``--help`` and usage errors answer before torch is
    imported."""
    module, _, function = target.partition(":")
    command = getattr(importlib.import_module(module), function)
    return run_cli(lambda: command(args))


def run_cli(command: Callable[[], int]) -> int:
    try:
        return command()
    except UserError as error:
        return _refuse(user_message(error), own=getattr(error, "own", False))
    except OSError as error:
        if error.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f"{error.filename}: " if error.filename else ""
        return _refuse(f"{where}{error.strerror} (check that the place exists, can be written, and has space)")
    except KeyboardInterrupt:  # before or after the loop, where no checkpoint is due
        print("interrupted", file=sys.stderr)
        return 130


def _refuse(message: str, own: bool = False) -> int:
    """Print the one line and return the exit code. Every process meets the same mistake, and the main one says
    it; an error only this process met (``own``: a file its loader read) is said by this process, with its rank."""
    rank = os.environ.get("RANK", "0")
    if rank == "0":
        print(f"error: {message}", file=sys.stderr)
    elif own:
        print(f"error (process {rank}): {message}", file=sys.stderr)
    return USER_ERROR_EXIT
