"""Measure the LLM4MSR meta layers' cost per train step (forward + backward + AdamW) against the bare backbone, on
ML-1M-sized random data (6,040 users, 3,706 items, 3 age scenarios, 576-d SmolLM2 vectors), and write a table.

    python benchmarks/msr_overhead.py --device cuda --batch 4096 --out benchmarks/results/msr_overhead.md
    OMP_NUM_THREADS=1 python benchmarks/msr_overhead.py --device cpu --threads 1 --batch 1024 --steps 100
Goal (issue 16): overhead <= 10% of a train step.

The arms are interleaved (every round steps each arm once, in a rotated order) and compared round by round with
the same round's backbone, so load from other processes on a shared machine falls on all arms alike instead of
drifting between arms timed one after another.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl
import torch

from ctr.batch import Batch, DataSpec
from ctr.models.deepfm import DeepFM
from ctr.models.meta import MetaLayers
from ctr.models.star import STAR
from semid import scenarios as SC
from semid import schema as S
from semid.io import write_parquet, write_text
from semid.knowledge import msr

SPEC = DataSpec(
    n_users=6040,
    n_items=3706,
    user_feature_names=("age", "gender", "occupation", "zip_code"),
    item_feature_names=("genre",),
    user_feature_vocab=(8, 3, 22, 3400),
    item_feature_vocab=(19,),
    user_sid_sizes=(256, 256, 256),
    item_sid_sizes=(256, 256, 256),
    history_len=20,
    user_count_max=1000.0,
    item_count_max=3000.0,
    n_scenarios=3,
    scenario_names=("a", "b", "c"),
)
K = 576  # SmolLM2-135M hidden size
BACKBONE = "backbone"


class Arm(NamedTuple):
    backbone: str
    variant: str
    net: torch.nn.Module
    opt: torch.optim.Optimizer


def batch(b: int, g: torch.Generator, device: str) -> Batch:
    r = functools.partial(torch.randint, generator=g)
    hist = r(0, SPEC.n_items + 1, (b, SPEC.history_len))
    out = Batch(
        user=r(0, SPEC.n_users, (b,)),
        item=r(0, SPEC.n_items, (b,)),
        label=r(0, 2, (b,)).float(),
        user_sid=r(0, 256, (b, 3)),
        item_sid=r(0, 256, (b, 3)),
        user_count=r(0, 100, (b,)).float(),
        item_count=r(0, 100, (b,)).float(),
        user_feats=r(1, 3, (b, 4, 1)),
        item_feats=r(0, 19, (b, 1, 3)),
        hist_item=hist,
        hist_item_sid=r(0, 256, (b, SPEC.history_len, 3)),
        hist_item_count=r(0, 100, hist.shape).float(),
        user_bucket=r(0, 4, (b,)),
        item_bucket=r(0, 4, (b,)),
    )
    out = out._replace(scenario=out.user % 3)
    return Batch(*(t.to(device) for t in out))


def files(root: Path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    table = pl.DataFrame({S.USER: range(SPEC.n_users)}, schema={S.USER: pl.Int32}).with_columns(
        (pl.col(S.USER) % 3).cast(pl.Int32).alias(SC.SCENARIO)
    )
    write_parquet(
        table, root / SC.SCENARIOS_FILE, {"kind": "scenarios", "key": S.USER, "names": ["a", "b", "c"]}
    )
    users = msr.Knowledge(table.select(S.USER), [])
    scen = msr.Knowledge(pl.DataFrame({SC.SCENARIO: [0, 1, 2]}, schema={SC.SCENARIO: pl.Int32}), [])
    msr.write_vectors(root / "u.parquet", users, rng.normal(size=(SPEC.n_users, K)), kind="user", meta={})
    msr.write_vectors(root / "s.parquet", scen, rng.normal(size=(3, K)), kind="scenario", meta={})
    return {
        "scenarios": str(root / SC.SCENARIOS_FILE),
        "user": str(root / "u.parquet"),
        "scen": str(root / "s.parquet"),
    }


def train_step(
    net: torch.nn.Module, opt: torch.optim.Optimizer, b: Batch, device: str
) -> tuple[float, float]:
    """One train step (forward + backward + optimiser): (wall ms, process CPU ms), the device synchronised on both
    ends. CPU time leaves out the time the process waits while another one holds the core, the main noise on a
    shared CPU; it counts every thread's work, so with several threads it is the work, not the latency."""
    if device == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(net(b).logit, b.label)
    loss.backward()
    opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3


def interleaved(arms: list[Arm], batches: list[Batch], warmup: int, device: str) -> np.ndarray:
    """(rounds, arms, 2) step times in ms (wall, CPU). Each round steps every arm once on the same batch, starting
    one arm later than the round before, so slow phases of a shared machine land on every arm alike and a round's
    arms can be compared with each other (paired); the first `warmup` rounds are not kept."""
    n = len(arms)
    times = np.zeros((len(batches), n, 2))
    for r, b in enumerate(batches):
        gc.collect()  # between rounds, never inside a timed step
        gc.disable()
        for j in range(n):
            i = (r + j) % n  # rotated order: every arm takes every position equally often
            times[r, i] = train_step(arms[i].net, arms[i].opt, b, device)
        gc.enable()
        if r >= warmup and (r - warmup + 1) % 50 == 0:
            print(f"round {r - warmup + 1}/{len(batches) - warmup}", flush=True)
    return times[warmup:]


def overhead(times: np.ndarray, base: np.ndarray) -> tuple[float, float, float]:
    """Median and quartiles (%) of the per-round ratio arm / backbone - 1; times, base (rounds,) of one clock."""
    q1, med, q3 = np.percentile(100 * (times / base - 1), [25, 50, 75])
    return float(med), float(q1), float(q3)


def main(args: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=100, help="timed rounds (one step of every arm each)")
    p.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument(
        "--user_components",
        type=int,
        default=None,
        help="also time a reduced arm: both levels with the user vectors cut to this many principal components",
    )
    p.add_argument(
        "--reduced_tower",
        type=int,
        nargs="*",
        default=None,
        help="the reduced arm's scenario tower hidden layers (default: the model's, (64,))",
    )
    p.add_argument("--out", default="benchmarks/results/msr_overhead.md")
    a = p.parse_args(args)
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    batches = [batch(a.batch, g, a.device) for _ in range(a.steps + a.warmup)]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with tempfile.TemporaryDirectory() as tmp:
        f = files(Path(tmp))
        meta = dict(user_vectors=f["user"], scenario_vectors=f["scen"])
        variants = {
            BACKBONE: {},
            "+ meta (user + scenario)": meta,
            "+ meta (user only)": {**meta, "use_scenario_level": False},
            "+ meta (scenario only)": {**meta, "use_user_level": False},
        }
        if a.user_components is not None or a.reduced_tower is not None:
            reduced = {**meta, "user_components": a.user_components}
            label = f"+ meta (user + scenario), user K = {a.user_components or K}"
            if a.reduced_tower is not None:
                reduced["scenario_dims"] = tuple(a.reduced_tower)
                label += f", tower {tuple(a.reduced_tower)}"
            variants[label] = reduced
        arms = []
        for name, factory in {"STAR": STAR, "DeepFM": DeepFM}.items():
            for variant, kw in variants.items():
                torch.manual_seed(0)
                net = factory(SPEC) if not kw else MetaLayers(SPEC, backbone=factory, **kw)
                net = net.to(a.device).train()
                opt = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)  # as CTRTask trains
                arms.append(Arm(name, variant, net, opt))
        times = interleaved(arms, batches, a.warmup, a.device)
    base = {arm.backbone: i for i, arm in enumerate(arms) if arm.variant == BACKBONE}
    clocks = ["wall", "CPU"] if a.device == "cpu" else ["wall"]  # host CPU time says nothing about a GPU
    rows = []
    for i, arm in enumerate(arms):
        cells = []
        for c in range(len(clocks)):
            med, q1, q3 = overhead(times[:, i, c], times[:, base[arm.backbone], c])
            cells += [f"{np.median(times[:, i, c]):.2f}", f"{med:+.1f}%", f"{q1:+.1f}% .. {q3:+.1f}%"]
        rows.append(f"| {arm.backbone} | {arm.variant} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    device = (
        torch.cuda.get_device_name()
        if a.device == "cuda"
        else f"CPU ({platform.processor() or platform.machine()})"
    )
    header = "".join(f" {c} ms / step | {c} overhead | {c} IQR |" for c in clocks)
    lines = [
        "# LLM4MSR meta-layer overhead per train step",
        "",
        f"`python benchmarks/msr_overhead.py --device {a.device} --batch {a.batch} --steps {a.steps}"
        f"{'' if a.threads is None else f' --threads {a.threads}'}"
        f"{'' if a.user_components is None else f' --user_components {a.user_components}'}"
        f"{'' if a.reduced_tower is None else ' --reduced_tower ' + ' '.join(map(str, a.reduced_tower))}`: "
        f"device {device}, "
        f"torch threads {torch.get_num_threads()}, batch {a.batch}, {a.steps} timed rounds after {a.warmup} "
        f"warm-up rounds, 1-min load average {load:.2f} at the start. ML-1M-sized random batches, 576-d knowledge "
        "vectors, meta_dim 16, rank 4, scenario tower (64,). A step is forward + backward + fused AdamW "
        "(as CTRTask trains); each round times one step of every arm on the same batch in a rotated order. "
        "ms / step: median over rounds; overhead: median over rounds of (arm / the same round's backbone) - 1, "
        "IQR its interquartile range; wall = elapsed time, CPU = the process's CPU time (not counting time "
        "the core spent on other processes). Goal: <= 10%.",
        "",
        "| backbone | arm |" + header,
        "|---|---|" + "---:|" * (3 * len(clocks)),
        *rows,
        "",
    ]
    write_text("\n".join(lines), a.out)


if __name__ == "__main__":
    main()
