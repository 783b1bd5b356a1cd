"""The `semid` and `ctr` commands: one dispatcher per command, one top-level error handler for both.

`semid prepare|build|assign|inspect|imagine|intents|rgcd|run` are jsonargparse commands over the stage
functions; `ctr fit|validate|test|predict` is the LightningCLI of pipelines.train, `ctr report` the report command,
`ctr tune` the Optuna search (pipelines.tune), `ctr warmup` the new-item warm-up protocol (pipelines.warmup) and
`ctr run` the same as `semid run`. Any InputError becomes one line `<command>: error: ...` and exit status 2;
`--debug` (anywhere on the line) adds the traceback; a SIGTERM during training exits with status 143, never 0.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.console import plain_argv, sigterm_fails
from semid.errors import InputError, user_errors

DEBUG_FLAG = "--debug"
CKPT_KEYWORDS = frozenset({"best", "last", "hpc", "registry", "null", "None"})
"""`--ckpt_path` values Lightning resolves itself (not files)."""


def _split_debug(args: list[str] | None) -> tuple[list[str], bool]:
    argv = sys.argv[1:] if args is None else list(args)
    return [a for a in argv if a != DEBUG_FLAG], DEBUG_FLAG in argv


def semid_commands() -> dict[str, Callable[..., Any]]:
    from pipelines.assign import assign, inspect
    from pipelines.build_semids import build
    from pipelines.imagine import imagine
    from pipelines.intents import intents
    from pipelines.prepare import prepare
    from pipelines.rgcd import rgcd
    from pipelines.run import run

    return {
        "prepare": prepare,
        "build": build,
        "assign": assign,
        "inspect": inspect,
        "imagine": imagine,
        "intents": intents,
        "rgcd": rgcd,
        "run": run,
    }


def _semid(argv: list[str]) -> None:
    from jsonargparse import CLI

    with plain_argv():
        CLI(semid_commands(), args=argv, as_positional=False)


def semid_main(args: list[str] | None = None) -> None:
    """The `semid` console entry point."""
    argv, debug = _split_debug(args)
    with user_errors("semid", debug=debug), sigterm_fails():
        _semid(argv)


def _option_value(argv: list[str], option: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(f"{option}="):
            return arg.split("=", 1)[1]
    return None


def check_checkpoint(path: str) -> None:
    """InputError unless `path` is a readable torch checkpoint holding a `state_dict` (checked before LightningCLI,
    which would otherwise fail deep inside with a traceback)."""
    import pickle
    import zipfile

    import torch

    file = Path(path).expanduser()
    fix = "pass a .ckpt file written by `ctr fit` (see <default_root_dir>/checkpoints), or 'best' / 'last'"
    if not file.exists():
        raise InputError("--ckpt_path: checkpoint not found", file=file, fix=fix)
    if not file.is_file():
        raise InputError("--ckpt_path: is a folder, not a checkpoint file", file=file, fix=fix)
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise InputError(
            f"--ckpt_path: not a readable torch checkpoint ({type(err).__name__}; truncated, corrupt, or a pickle "
            "that would run code)",
            file=file,
            fix=fix,
        ) from None
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise InputError("--ckpt_path: not a Lightning checkpoint (no state_dict)", file=file, fix=fix)


def _ctr(argv: list[str]) -> None:
    if argv and argv[0] == "report":
        from pipelines.report import main as report_main

        report_main(argv[1:])
        return
    if argv and argv[0] == "run":
        _semid(["run", *argv[1:]])
        return
    if argv and argv[0] == "tune":
        from pipelines.tune import main as tune_main

        tune_main(argv[1:])
        return
    if argv and argv[0] == "warmup":
        from pipelines.warmup import main as warmup_main

        warmup_main(argv[1:])
        return
    from pipelines.train import cli

    ckpt = _option_value(argv, "--ckpt_path")
    if ckpt is not None and ckpt not in CKPT_KEYWORDS:
        check_checkpoint(ckpt)
    with plain_argv():
        cli(argv)


def ctr_main(args: list[str] | None = None) -> None:
    """The `ctr` console entry point."""
    argv, debug = _split_debug(args)
    with user_errors("ctr", debug=debug), sigterm_fails():
        _ctr(argv)


def main(args: list[str] | None = None) -> None:
    """`python -m pipelines.cli semid|ctr ...`."""
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] not in ("semid", "ctr"):
        print("usage: python -m pipelines.cli semid|ctr ...", file=sys.stderr)
        raise SystemExit(2)
    (semid_main if argv[0] == "semid" else ctr_main)(argv[1:])


if __name__ == "__main__":
    main()
