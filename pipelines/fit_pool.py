"""Run the (model, seed) fits of `semid run` one after another in this process (jobs = 1, the default) or several at
once in worker processes (`semid run --jobs N`).

Small CTR models use a second core poorly inside one fit (most of a step is short ops on a 2,048-row batch), so on a
machine with few cores N single-threaded fits side by side finish sooner than N multi-threaded fits in a row. Each
worker is a fresh (spawned) interpreter with `torch.set_num_threads(max(1, cores // N))`; it writes library logs
and warnings to the run's log file as the parent does. A fit is the same `fit_one` / `fit_and_refit` call either
way, seeded by its seed; only floating-point summation order can differ with the thread count (the stage
fingerprint does not include it, as it does not include the machine).

Failures: a worker returns the error instead of raising it (an InputError's message, file, column and fix, or the
traceback of anything else); the parent cancels the fits not yet started, lets the running ones finish, and raises
it. Folders of finished fits stay done; the next `semid run` resumes at the unfinished ones.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.fit import ConfigText, fit_one, fresh_fit_dir
from semid.errors import InputError


@dataclass(frozen=True)
class FitTask:
    """One (model, seed) fit of a run: everything `fit_one` / `fit_and_refit` need, picklable."""

    name: str
    seed: int
    configs: tuple[ConfigText, ...]
    prepared: Path
    semids: Path
    model_dir: Path
    run_dir: Path
    stage_hash: str
    extra_args: tuple[str, ...]
    refit_train_val: bool = False


def run_task(task: FitTask) -> dict[str, Any]:
    """Fit one (model, seed) into its folder -> its metrics record."""
    if task.refit_train_val:
        from pipelines.refit import fit_and_refit

        return fit_and_refit(
            task.name,
            task.seed,
            list(task.configs),
            task.prepared,
            task.semids,
            task.model_dir,
            task.run_dir,
            task.stage_hash,
            task.extra_args,
        )
    fresh_fit_dir(task.model_dir, task.run_dir)
    return fit_one(
        task.name,
        task.seed,
        list(task.configs),
        task.prepared,
        task.semids,
        task.model_dir,
        task.stage_hash,
        task.extra_args,
    )


def worker_threads(jobs: int, cores: int | None = None) -> int:
    """torch threads per worker: the cores shared out, at least one."""
    return max(1, (cores or os.cpu_count() or 1) // jobs)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_in_worker(task: FitTask, log_file: str, verbose: bool) -> tuple[str, Any]:
    """("ok", (metrics, seconds)) or ("input", (problem, file, column, fix)) or ("error", traceback text)."""
    from pipelines.console import quiet_console

    try:
        start = time.perf_counter()
        with quiet_console(
            log_file, verbose=verbose
        ):  # library logs and warnings to the run's log, as the parent
            metrics = run_task(task)
        return "ok", (metrics, time.perf_counter() - start)
    except InputError as err:  # re-raised as itself in the parent (its constructor is keyword-only)
        return "input", (err.problem, err.file, err.column, err.fix)
    except BaseException:  # noqa: BLE001 -- reported to the parent, which raises it
        return "error", traceback.format_exc()


def run_fits(
    tasks: Sequence[FitTask],
    *,
    jobs: int,
    log_file: Path,
    verbose: bool,
    done: Callable[[FitTask, dict[str, Any], float], None],
) -> None:
    """Run every task, `jobs` at a time; `done(task, metrics, seconds)` in the parent as each one finishes."""
    if jobs < 1:
        raise InputError(
            f"jobs={jobs}", fix="give --jobs a number of fits to run at once (1 = one after another)"
        )
    if jobs == 1 or len(tasks) <= 1:
        for task in tasks:
            start = time.perf_counter()
            done(task, run_task(task), time.perf_counter() - start)
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    threads = worker_threads(min(jobs, len(tasks)))
    with ProcessPoolExecutor(
        max_workers=min(jobs, len(tasks)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(threads,),
    ) as pool:
        started = {pool.submit(_run_in_worker, task, str(log_file), verbose): task for task in tasks}
        failure: tuple[str, Any] | None = None
        for future in _as_finished(started):
            kind, value = future.result()
            if kind == "ok":
                done(started[future], *value)
            elif failure is None:
                failure = (kind, value)
                for other in started:
                    other.cancel()  # not started yet: never runs; running ones finish into their folders
    if failure is not None:
        kind, value = failure
        if kind == "input":
            problem, file, column, fix = value
            raise InputError(problem, file=file, column=column, fix=fix)
        raise RuntimeError(f"a fit failed in its worker process:\n{value}")


def _as_finished(futures: dict[Future, Any]) -> Iterator[Future]:
    """The futures as they complete, skipping cancelled ones."""
    pending = set(futures)
    while pending:
        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
        for future in finished:
            if not future.cancelled():
                yield future
