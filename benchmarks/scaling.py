"""Measure how AKT training cost grows with interactions and catalogue size on synthetic prepared datasets.

Each size is written straight in the prepared-dataset format (semid/schema.py; vectorised numpy/polars, no
`prepare` pass: Zipf-like item popularity, 80/10/10 temporal split, activity buckets from train counts, random 3-level
item semantic IDs with the auto codebook sizes) and measured in its own subprocess so that the peak RSS (VmHWM) is
that size's alone: `CTRDataModule.setup` time, AKT train samples/s over a fixed number of steps (Lightning fit, the
first `warmup` steps untimed), and VmRSS after loading / VmHWM at the end.

    python benchmarks/scaling.py --rows 1000000 --items 100000 --steps 50       # one size, prints JSON
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from semid import schema as S
from semid.ids import health, make_table, table_meta, write_table
from semid.io import write_parquet
from semid.rqvae import auto_codebook_sizes

GIB = 1 << 30


@dataclass(frozen=True)
class Size:
    rows: int
    items: int
    users: int


def _buckets(count: np.ndarray) -> np.ndarray:
    """head = top 20% by train count, torso = next 30%, tail = the rest with a count, cold = no train rows."""
    order = np.argsort(-count, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    frac = rank / max(order.size, 1)
    names = np.where(frac < 0.2, "head", np.where(frac < 0.5, "torso", "tail"))
    return np.where(count == 0, "cold", names)


def write_synthetic(size: Size, out: Path, *, seed: int = 0) -> Path:
    """A prepared dataset directory (items/users/train/val/test parquet + item_sids.parquet) of the given size."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    n = size.rows
    item = np.minimum((size.items * rng.random(n) ** 3).astype(np.int64), size.items - 1)  # popularity skew
    item = rng.permutation(size.items)[item]  # popular items spread over the id range
    user = rng.integers(0, size.users, n)
    label = (rng.random(n) < 0.55).astype(np.int8)
    ts = np.arange(n, dtype=np.int64) + 1_000_000_000  # already in time order
    cut = [int(n * 0.8), int(n * 0.9)]
    for split, lo, hi in (("train", 0, cut[0]), ("val", cut[0], cut[1]), ("test", cut[1], n)):
        frame = pl.DataFrame(
            {
                S.USER: user[lo:hi].astype(np.int32),
                S.ITEM: item[lo:hi].astype(np.int32),
                S.LABEL: label[lo:hi],
                S.TIMESTAMP: ts[lo:hi],
                S.RATING: (label[lo:hi] * 4 + 1).astype(np.float32),
            }
        )
        frame.write_parquet(out / S.split_file(split))
    item_count = np.bincount(item[: cut[0]], minlength=size.items)
    user_count = np.bincount(user[: cut[0]], minlength=size.users)
    genres = rng.integers(0, 18, (size.items, 2))
    items = pl.DataFrame(
        {
            S.ITEM: np.arange(size.items, dtype=np.int32),
            S.TRAIN_COUNT: item_count.astype(np.int64),
            S.BUCKET: _buckets(item_count),
            "g0": genres[:, 0],
            "g1": genres[:, 1],
        }
    ).select(
        S.ITEM,
        pl.format("i{}", S.ITEM).alias(S.RAW_ITEM),
        pl.format("item {}", S.ITEM).alias(S.TEXT),
        S.TRAIN_COUNT,
        S.BUCKET,
        pl.concat_list(pl.format("g{}", "g0"), pl.format("g{}", "g1"))
        .list.unique(maintain_order=True)
        .alias("genre"),
    )
    data_hash = f"synthetic-{size.rows}-{size.items}-{size.users}-{seed}"
    write_parquet(items, out / S.ITEMS_FILE, {"features": ["genre"], "data_hash": data_hash})
    users = pl.DataFrame(
        {
            S.USER: np.arange(size.users, dtype=np.int32),
            S.TRAIN_COUNT: user_count.astype(np.int64),
            S.BUCKET: _buckets(user_count),
            "a": rng.integers(0, 7, size.users),
            "g": rng.integers(0, 2, size.users),
        }
    ).select(
        S.USER,
        pl.format("u{}", S.USER).alias(S.RAW_USER),
        pl.format("user {}", S.USER).alias(S.TEXT),
        S.TRAIN_COUNT,
        S.BUCKET,
        pl.concat_list(pl.format("a{}", "a")).alias("age"),
        pl.concat_list(pl.format("g{}", "g")).alias("gender"),
    )
    write_parquet(users, out / S.USERS_FILE, {"features": ["age", "gender"], "data_hash": data_hash})
    sizes = auto_codebook_sizes(size.items, 3)
    codes = np.stack([rng.integers(0, k, size.items) for k in sizes], 1)  # (I, 3)
    table = make_table(np.arange(size.items), codes, key=S.ITEM)
    meta = table_meta(
        key=S.ITEM,
        codebook_sizes=sizes,
        health=health(table, sizes),
        encoder="random codes (synthetic)",
        seed=seed,
        data_hash=data_hash,
    )
    write_table(table, out / S.ITEM_SIDS_FILE, meta)
    return out


def _status(field: str) -> int:
    """A /proc/self/status memory field in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_one(data: Path, *, steps: int, warmup: int, batch_size: int, threads: int) -> dict:
    """Load `data` with CTRDataModule and train AKT for `steps` steps; timings and memory of this process."""
    import lightning as L
    import torch

    from ctr.data import CTRDataModule
    from ctr.module import CTRTask

    torch.set_num_threads(threads)
    start = time.perf_counter()
    dm = CTRDataModule(
        str(data), item_sids=str(data / S.ITEM_SIDS_FILE), batch_size=batch_size, history_len=20
    )
    dm.setup()
    load_s = time.perf_counter() - start
    rss_loaded = _status("VmRSS")
    torch.manual_seed(0)
    # AKT inside CTRTask as `ctr fit` builds it; the synthetic data has no content vectors (no content tower)
    net = {"class_path": "ctr.models.akt.AKT", "init_args": {"embed_dim": 16, "dropout": 0.0}}
    model = CTRTask(net, dm.spec, lr=1e-3)
    model.index_sids(dm.tables)  # as CTRTask.setup does for a Trainer given the DataModule

    class Clock(L.Callback):
        t0 = t1 = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == warmup:
                Clock.t0 = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            Clock.t1 = time.perf_counter()

    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[Clock()],
    )
    trainer.fit(model, train_dataloaders=dm.train_dataloader())
    timed = steps - warmup
    return {
        "rows": int(sum(dm.tables.splits[s].user.numel() for s in S.SPLITS)),
        "train_rows": int(dm.tables.splits["train"].user.numel()),
        "items": int(dm.spec.n_items),
        "users": int(dm.spec.n_users),
        "load_seconds": load_s,
        "train_samples_per_s": timed * batch_size / (Clock.t1 - Clock.t0),
        "steps": steps,
        "warmup": warmup,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "rss_after_load_gib": rss_loaded / GIB,
        "peak_rss_gib": _status("VmHWM") / GIB,
    }


def run(
    sizes: list[Size], work: Path, *, steps: int, warmup: int, batch_size: int, threads: int, timeout: int
) -> list[dict]:
    """Write and measure every size, one subprocess each (data removed afterwards); raises on any failure."""
    results = []
    for size in sizes:
        data = work / f"synthetic-{size.rows}-{size.items}"
        shutil.rmtree(data, ignore_errors=True)
        start = time.perf_counter()
        write_synthetic(size, data)
        write_s = time.perf_counter() - start
        cmd = [sys.executable, __file__, "--data", str(data), "--steps", str(steps), "--warmup", str(warmup)]
        cmd += ["--batch-size", str(batch_size), "--threads", str(threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        shutil.rmtree(data, ignore_errors=True)
        if done.returncode != 0:
            raise RuntimeError(f"scaling run {size} failed (rc {done.returncode}):\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["write_seconds"] = write_s
        print(f"[scaling] {json.dumps(result)}", flush=True)
        results.append(result)
    return results


def fit_growth(results: list[dict], limit_gib: float = 24.0) -> dict:
    """Least squares peak_rss = a + b * rows + c * items over the measured sizes, and the rows where it reaches
    `limit_gib` for 100k and 1M items (an extrapolation: say so when quoting it)."""
    x = np.array([[1.0, r["rows"], r["items"]] for r in results])
    y = np.array([r["peak_rss_gib"] for r in results])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    a, b, c = (float(v) for v in coef)
    fit = {"intercept_gib": a, "gib_per_million_rows": b * 1e6, "gib_per_million_items": c * 1e6}
    for items in (100_000, 1_000_000):
        rows = (limit_gib - a - c * items) / b if b > 0 else float("inf")
        fit[f"rows_at_{int(limit_gib)}gib_{items}_items"] = rows
    return fit


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="measure this prepared dir (what the parent runs per size)")
    p.add_argument(
        "--rows", type=int, help="write a synthetic dir of this many rows to a temp dir and measure it"
    )
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--users", type=int, default=0, help="0 = rows // 20")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if a.data is not None:
        out = measure_one(a.data, steps=a.steps, warmup=a.warmup, batch_size=a.batch_size, threads=a.threads)
        print(json.dumps(out))
        return
    if a.rows is None:
        p.error("give --data or --rows")
    size = Size(a.rows, a.items, a.users or max(a.rows // 20, 100))
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "semid-bench-scaling"
    print(
        json.dumps(
            run(
                [size],
                work,
                steps=a.steps,
                warmup=a.warmup,
                batch_size=a.batch_size,
                threads=a.threads,
                timeout=3600,
            )[0]
        )
    )


if __name__ == "__main__":
    main()
