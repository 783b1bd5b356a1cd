"""The `semid` command: tokenizer-side subcommands (prepare, build, assign, inspect, run) with clear errors."""

from __future__ import annotations

import sys

from semid.errors import InputError


def _commands() -> dict:
    from pipelines.build_semids import assign, build, inspect
    from pipelines.prepare import prepare
    from pipelines.run import run

    return {"prepare": prepare, "build": build, "assign": assign, "inspect": inspect, "run": run}


def main(args: list[str] | None = None) -> None:
    from jsonargparse import CLI

    try:
        CLI(_commands(), args=args, as_positional=False)
    except InputError as err:
        print(f"semid: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
