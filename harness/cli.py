"""What the entry points share: a user mistake is one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import os
import sys
from typing import Callable

from harness.errors import UserError, user_message

USER_ERROR_EXIT = 2


def run_cli(command: Callable[[], int]) -> int:
    try:
        return command()
    except UserError as error:
        if os.environ.get("RANK", "0") == "0":  # every process hits the same mistake; one says it
            print(f"error: {user_message(error)}", file=sys.stderr)
        return USER_ERROR_EXIT
    except KeyboardInterrupt:  # before or after the loop, where no checkpoint is due
        print("interrupted", file=sys.stderr)
        return 130
