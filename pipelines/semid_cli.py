"""`python -m pipelines.semid_cli`: the `semid` command (kept for old scripts; it lives in pipelines.cli)."""

from __future__ import annotations

from pipelines.cli import semid_main as main

__all__ = ["main"]

if __name__ == "__main__":
    main()
