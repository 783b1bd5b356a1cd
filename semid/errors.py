"""The one exception type for mistakes a user can make in their input (file, column, value) or config, and the
one way a command reports it (one line on stderr, exit 2)."""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

EXIT_INPUT_ERROR = 2


class InputError(ValueError):
    """A user-fixable problem: the message names the file, the column (if any) and the fix."""

    def __init__(self, problem: str, *, file: str | Path | None = None, column: str | None = None, fix: str):
        where = []
        if file is not None:
            where.append(f"file {str(file)!r}")
        if column is not None:
            where.append(f"column {column!r}")
        prefix = ", ".join(where)
        message = f"{prefix}: {problem}" if prefix else problem
        super().__init__(f"{message}\n  fix: {fix}")
        self.file = None if file is None else str(file)
        self.column = column
        self.problem = problem
        self.fix = fix


@contextlib.contextmanager
def user_errors(command: str, *, debug: bool = False) -> Iterator[None]:
    """Turn an InputError raised in the block into `<command>: error: <message>` on stderr and exit status 2
    (with the traceback too when `debug`). Every other exception propagates unchanged: it is our bug."""
    try:
        yield
    except InputError as err:
        if debug:
            traceback.print_exc()
        print(f"{command}: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INPUT_ERROR) from None
