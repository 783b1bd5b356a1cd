"""Measure the LLM4MSR meta layers' cost per train step (forward + backward + AdamW) against the bare backbone, on
ML-1M-sized random data (6,040 users, 3,706 items, 3 age scenarios, 576-d SmolLM2 vectors), and write a table.

    python benchmarks/msr_overhead.py --device cuda --batch 4096 --out benchmarks/results/msr_overhead.md
Goal (issue 16): overhead <= 10% of a train step.
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import tempfile
import time
from pathlib import Path

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


def step_ms(net: torch.nn.Module, batches: list[Batch], warmup: int, device: str) -> float:
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    times = []
    for i, b in enumerate(batches):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(b).logit, b.label)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(args: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/msr_overhead.md")
    a = p.parse_args(args)
    g = torch.Generator().manual_seed(0)
    batches = [batch(a.batch, g, a.device) for _ in range(a.steps + a.warmup)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        f = files(Path(tmp))
        meta = dict(user_vectors=f["user"], scenario_vectors=f["scen"])
        backbones = {
            "STAR": functools.partial(STAR),
            "DeepFM": functools.partial(DeepFM),
        }
        for name, factory in backbones.items():
            arms = {
                "backbone": factory,
                "+ meta (user + scenario)": functools.partial(MetaLayers, backbone=factory, **meta),
                "+ meta (user only)": functools.partial(
                    MetaLayers, backbone=factory, use_scenario_level=False, **meta
                ),
                "+ meta (scenario only)": functools.partial(
                    MetaLayers, backbone=factory, use_user_level=False, **meta
                ),
            }
            base = None
            for arm, build in arms.items():
                torch.manual_seed(0)
                net = build(SPEC).to(a.device).train()
                ms = step_ms(net, batches, a.warmup, a.device)
                base = ms if base is None else base
                rows.append((name, arm, ms, 100 * (ms / base - 1)))
                print(f"{name:7s} {arm:26s} {ms:8.2f} ms  {rows[-1][3]:+6.1f}%", flush=True)
    device = (
        torch.cuda.get_device_name()
        if a.device == "cuda"
        else f"CPU ({platform.processor() or 'cpu'}, {torch.get_num_threads()} threads)"
    )
    lines = [
        "# LLM4MSR meta-layer overhead per train step",
        "",
        f"`python benchmarks/msr_overhead.py --device {a.device} --batch {a.batch} --steps {a.steps}` on {device}; "
        f"ML-1M-sized random batches, 576-d knowledge vectors, meta_dim 16, rank 4, scenario tower (64,); "
        "median of the timed steps (forward + backward + AdamW). Goal: <= 10%.",
        "",
        "| backbone | arm | ms / step | overhead |",
        "|---|---|---:|---:|",
        *(f"| {n} | {arm} | {ms:.2f} | {o:+.1f}% |" for n, arm, ms, o in rows),
        "",
    ]
    write_text("\n".join(lines), a.out)


if __name__ == "__main__":
    main()
