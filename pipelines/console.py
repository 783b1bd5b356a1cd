"""A quiet console for `semid run`: library chatter (Lightning, jsonargparse, transformers logs and warnings) goes to
the run's log file, so the terminal shows one summary line per stage (and the training progress bar); and
`plain_argv` for calling a CLI parser programmatically."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

NOISY_LOGGERS: tuple[str, ...] = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
    "lightning_fabric",
    "jsonargparse",
    "transformers",
    "torch",
)
"""Loggers whose INFO/WARNING lines (GPU/TPU available, litlogger tip, "Restoring states from the checkpoint",
"module(s) in eval mode", ...) mean nothing to a pipeline user."""


@contextlib.contextmanager
def quiet_console(log_file: str | Path, *, verbose: bool = False) -> Iterator[Path]:
    """Within the block, send the noisy loggers and every Python warning to `log_file` (appended); with `verbose`,
    they are also shown as usual. Logger handlers, levels and warning filters are restored on exit."""
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    saved: list[tuple[logging.Logger, list[logging.Handler], bool]] = []
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate))
        if verbose:
            logger.addHandler(handler)
        else:
            logger.handlers = [handler]
            logger.propagate = False
    log = handler.stream

    def showwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        text = warnings.formatwarning(message, category, filename, lineno, line)
        log.write(text)
        log.flush()
        if verbose:
            sys.stderr.write(text)

    # catch_warnings restores showwarning on exit; the filters themselves are left as the user set them
    with warnings.catch_warnings():
        warnings.showwarning = showwarning
        try:
            yield log_file
        finally:
            for logger, handlers, propagate in saved:
                logger.handlers = handlers
                logger.propagate = propagate
            handler.close()


@contextlib.contextmanager
def plain_argv() -> Iterator[None]:
    """Hide the process's own command line while a CLI parses an explicit args list: LightningCLI warns (with the
    whole argument list) when both are present, and no parser should read sys.argv then."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


SIGTERM_STATUS = 128 + 15
"""Exit status of a process stopped by SIGTERM (signal 15), as a shell reports it."""


@contextlib.contextmanager
def sigterm_fails() -> Iterator[None]:
    """Lightning turns SIGTERM into `SIGTERMException`, a SystemExit without a code, i.e. exit status 0: a killed
    fit would look finished to a scheduler or a script. Within the block it becomes exit status 143."""
    try:
        yield
    except SystemExit as err:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(err, SIGTERMException):
            raise SystemExit(SIGTERM_STATUS) from None
        raise
