"""Measure the LLM4MSR meta layers' cost in the real training loop: `ctr fit` (Lightning, the prepared dataset's own
data loader, the run's scenario table and knowledge vectors) for a backbone and its meta-layer arms, and write a table.

    python benchmarks/msr_loop_overhead.py --run /work/runs/msr/ml-1m-scenarios --threads 1 \\
        --out benchmarks/results/msr_loop_overhead.md

`--run` is a `semid run` folder of a scenario protocol (configs/pipeline/ml-1m-scenarios.yaml, or amazon-scenarios.yaml
with `--common configs/ctr/common/amazon-kitchen.yaml`): it holds prepared/, scenarios.parquet and
knowledge/{llm,prompt_text}/. Each arm trains
`--steps` batches of one epoch (validation off), `--repeats` times, arms interleaved in a rotated order so load from
other processes falls on every arm alike. Per repeat and arm, a callback records for every train batch after the
first `--warmup`: the step (Lightning's training_step + backward + optimiser, from on_train_batch_start to
on_train_batch_end) and the cycle (batch end to the next batch end: the step plus the loader's next batch and the
loop's own work). Reported: the median over repeats of each arm's median per-batch time, and the overhead = that
over the backbone's - 1. benchmarks/msr_overhead.py measures the bare model step on random batches.
Goal (issue 16): meta-layer overhead <= 10% of a train step.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from semid.errors import InputError
from semid.io import write_text

ROOT = Path(__file__).resolve().parents[1]
ARMS: dict[str, list[str]] = {
    "STAR (backbone)": ["configs/ctr/msr/star.yaml"],
    "+ meta, LLM vectors (meta_llm)": ["configs/ctr/msr/meta_llm.yaml"],
    "+ meta, LLM vectors, 64 user components (meta_llm_pc64)": ["configs/ctr/msr/meta_llm_pc64.yaml"],
    "+ meta, prompt-text vectors (meta_prompt_text)": ["configs/ctr/msr/meta_prompt_text.yaml"],
    "+ meta, learned embeddings (meta_learned)": ["configs/ctr/msr/meta_learned.yaml"],
}
SOURCE = {"meta_llm": "llm", "meta_llm_pc64": "llm", "meta_prompt_text": "prompt_text"}


class StepTimes(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.steps, self.cycles = warmup, [], []
        self._start = self._end = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        now = time.perf_counter()
        if batch_idx >= self.warmup:
            self.steps.append(now - self._start)
            self.cycles.append(now - self._end)
        self._end = now


def fit_times(
    run: Path, common: Path, configs: list[str], steps: int, warmup: int, root: Path
) -> tuple[float, float]:
    """(median step ms, median cycle ms) of one `ctr fit` over `steps` train batches."""
    from pipelines.console import plain_argv
    from pipelines.train import cli

    args = ["--config", str(common)]
    for c in configs:
        args += ["--config", str(ROOT / c)]
    name = Path(configs[-1]).stem
    args += [
        "--data.data_dir", str(run / "prepared"), "--data.scenarios", str(run / "scenarios.parquet"),
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(steps + warmup),
        "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
        "--trainer.default_root_dir", str(root),
    ]  # fmt: skip
    if name in SOURCE:
        kdir = run / "knowledge" / SOURCE[name]
        args += ["--model.net.init_args.user_vectors", str(kdir / "user_vectors.parquet")]
        args += ["--model.net.init_args.scenario_vectors", str(kdir / "scenario_vectors.parquet")]
    with plain_argv():
        c = cli(args, run=False)
    # no validation runs: nothing to stop early on or to checkpoint
    c.trainer.callbacks = [
        cb for cb in c.trainer.callbacks if type(cb).__name__ not in ("EarlyStopping", "ModelCheckpoint")
    ]
    timer = StepTimes(warmup)
    c.trainer.callbacks.append(timer)
    c.trainer.fit(c.model, datamodule=c.datamodule)
    return 1e3 * statistics.median(timer.steps), 1e3 * statistics.median(timer.cycles)


def shown(path: Path) -> str:
    return str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)


def main(args: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a semid run folder of a scenario protocol")
    p.add_argument(
        "--common",
        type=Path,
        default=ROOT / "configs/ctr/common/ml-1m.yaml",
        help="the protocol's common config",
    )
    p.add_argument("--steps", type=int, default=150, help="timed train batches per fit")
    p.add_argument("--warmup", type=int, default=10, help="untimed train batches first")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (semid run --jobs 2 fits use 1 each)"
    )
    p.add_argument("--arms", nargs="*", default=None, help="arm config stems to time (default: all)")
    p.add_argument("--out", default="benchmarks/results/msr_loop_overhead.md")
    a = p.parse_args(args)
    for need in ("prepared", "scenarios.parquet", "knowledge"):
        if not (a.run / need).exists():
            raise InputError(
                f"the run folder has no {need}", file=a.run, fix="give --run a scenario protocol's run"
            )
    torch.set_num_threads(a.threads)
    arms = {k: v for k, v in ARMS.items() if a.arms is None or Path(v[-1]).stem in a.arms}
    load = os.getloadavg()[0]
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in arms}
    names = list(arms)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for j in range(len(names)):
                name = names[(r + j) % len(names)]
                times[name].append(fit_times(a.run, a.common, arms[name], a.steps, a.warmup, Path(tmp)))
                print(
                    f"repeat {r + 1} {name}: step {times[name][-1][0]:.2f} ms, cycle {times[name][-1][1]:.2f} ms"
                )
    base = names[0]
    med = {k: np.median(np.asarray(v), axis=0) for k, v in times.items()}
    rows = []
    for k in names:
        s, c = med[k]
        runs = ", ".join(f"{x[0]:.1f}" for x in times[k])
        rows.append(
            f"| {k} | {s:.2f} ({runs}) | {100 * (s / med[base][0] - 1):+.1f}% | {c:.2f} | "
            f"{100 * (c / med[base][1] - 1):+.1f}% |"
        )
    lines = [
        "# LLM4MSR meta-layer overhead in the real training loop",
        "",
        f"`python benchmarks/msr_loop_overhead.py --run {a.run} --common {shown(a.common)} --steps {a.steps} --warmup {a.warmup} --repeats "
        f"{a.repeats} --threads {a.threads}`: CPU ({platform.processor() or platform.machine()}), torch threads "
        f"{torch.get_num_threads()}, 1-min load average {load:.2f} at the start, the run's prepared data, scenario "
        "table and knowledge vectors, each arm's shipped config over the protocol's common config (batch size, "
        "optimiser). Step = training_step + backward + optimiser; cycle = step + the loader's next batch + the "
        "loop. ms: median over repeats of the per-batch median (each repeat in brackets). Goal: <= 10%.",
        "",
        "| arm | step ms (repeats) | step overhead | cycle ms | cycle overhead |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
    ]
    print("\n".join(lines))
    write_text("\n".join(lines), a.out)


if __name__ == "__main__":
    main()
