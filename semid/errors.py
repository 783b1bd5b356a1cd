"""The one exception type for mistakes a user can make in their input (file, column, value) or config."""

from __future__ import annotations

from pathlib import Path


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
