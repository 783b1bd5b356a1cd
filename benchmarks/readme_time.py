"""Time the README's first command in a fresh clone of this repository's HEAD: the goal is <= 10 minutes (issues 13
and 18). The command is read from README.md itself (the code block after "Set up and run the main job"), run as
written from the clone's root, and split at its `semid run` into set-up (venv + install) and run; the run's stage
times come from its own log lines. One row per measurement is appended to benchmarks/results/readme_time.md.

    python -m benchmarks.readme_time [--out benchmarks/results/readme_time.md] [--keep]

Nothing else should run on the machine meanwhile: the figure is the wall time of a first-time user.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.machine import cpu_line

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "readme_time.md"
GOAL_S = 600
HEADER = """# The README's first command, timed in a fresh clone

Written by `python -m benchmarks.readme_time` (one row per run; goal: <= 600 s in all). Set-up = venv + install,
run = `semid run` (semantic IDs and fits are its own log's figures). The same machine's speed varies over a day.

| date (UTC) | commit | machine | set-up s | run s | total s | semantic IDs s | fits | goal |
|---|---|---|---:|---:|---:|---:|---:|---|
"""


def readme_command(readme: str) -> str:
    """The first command: the bash block after "Set up and run the main job"."""
    match = re.search(r"Set up and run the main job.*?```bash\n(.+?)\n```", readme, flags=re.S)
    if match is None:
        raise SystemExit("README.md: no ```bash block after 'Set up and run the main job'")
    return match.group(1).strip()


def split_command(command: str) -> tuple[str, str]:
    """(set-up part, run part), split at the `&&` before `semid run`."""
    head, sep, tail = command.rpartition("&& ")
    if not sep or "semid run" not in tail or "semid run" in head:
        raise SystemExit(f"README first command {command!r}: expected '<set-up> && .../semid run ...'")
    return head.strip(), tail.strip()


def stage_seconds(log: str) -> tuple[float | None, int]:
    """(semantic-ID stage seconds, finished fits) from a `semid run` log."""
    semids = re.search(r"^\[semids\] \S+ \(([\d.]+)s\)$", log, flags=re.M)
    fits = len(re.findall(r"^\[fit\] ", log, flags=re.M))
    return (float(semids.group(1)) if semids else None), fits


def row(commit: str, setup: float, run: float, semids: float | None, fits: int) -> str:
    total = setup + run
    verdict = "met" if total <= GOAL_S else "**missed**"
    ids = "n/a" if semids is None else f"{semids:.0f}"
    when = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}"
    machine = cpu_line()
    return f"| {when} | {commit} | {machine} | {setup:.0f} | {run:.0f} | {total:.0f} | {ids} | {fits} | {verdict} |"


def timed(command: str, cwd: Path, log: Path) -> tuple[float, int]:
    start = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.run(["bash", "-c", command], cwd=cwd, stdout=fh, stderr=subprocess.STDOUT).returncode
    return time.perf_counter() - start, rc


def main(argv: list[str] | None = None) -> None:
    from semid.io import replaceable, write_text

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OUT, help="the Markdown table a row is appended to")
    p.add_argument("--keep", action="store_true", help="keep the clone (its runs/ and logs) afterwards")
    a = p.parse_args(argv)
    if not replaceable(a.out, HEADER.splitlines()[0]):
        raise SystemExit(f"{a.out}: exists and is not this benchmark's table; pass another --out")
    setup_cmd, run_cmd = split_command(readme_command((ROOT / "README.md").read_text()))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="semid-readme-"))
    clone = work / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    print(f"[readme_time] {commit} in {clone}: {setup_cmd} && {run_cmd}", flush=True)
    setup_s, rc = timed(setup_cmd, clone, work / "setup.log")
    if rc != 0:
        raise SystemExit(f"set-up failed (exit {rc}): see {work / 'setup.log'}")
    run_s, rc = timed(run_cmd, clone, work / "run.log")
    if rc != 0:
        raise SystemExit(f"semid run failed (exit {rc}): see {work / 'run.log'}")
    semids, fits = stage_seconds((work / "run.log").read_text(errors="replace"))
    line = row(commit, setup_s, run_s, semids, fits)
    previous = a.out.read_text() if a.out.is_file() else HEADER
    write_text(previous.rstrip("\n") + "\n" + line + "\n", a.out)
    print(line, flush=True)
    if a.keep:
        print(f"[readme_time] kept {work}", flush=True)
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
