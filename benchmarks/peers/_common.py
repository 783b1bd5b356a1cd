"""What every peer run script shares: arguments, reading the exported data, timing, and the JSON it hands back.

Runs inside a peer's own venv (numpy, pandas, pyarrow, torch), so it imports nothing from this project. The data
are the flat files `benchmarks/peer_data.py` wrote: `{train,val,test}.parquet` + `vocab.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Args:
    data: Path
    out: Path
    threads: int
    batch_size: int
    eval_batch_size: int
    embed_dim: int
    mlp: tuple[int, ...]
    lr: float
    steps: int
    repeats: int
    epochs: int
    seed: int


def parse_args(description: str, argv: list[str] | None = None) -> Args:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", type=Path, required=True, help="directory written by benchmarks/peer_data.py")
    p.add_argument("--out", type=Path, required=True, help="directory for result.json and test_pred.parquet")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--eval-batch-size", type=int, default=8192)
    p.add_argument("--embed-dim", type=int, default=16)
    p.add_argument("--mlp", type=str, default="256,128")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=100, help="train steps per throughput repetition")
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="throughput repetitions (0: only the quality run, another seed)",
    )
    p.add_argument(
        "--epochs", type=int, default=1, help="epochs of the quality run (fixed, no early stopping)"
    )
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    return Args(
        data=a.data,
        out=a.out,
        threads=a.threads,
        batch_size=a.batch_size,
        eval_batch_size=a.eval_batch_size,
        embed_dim=a.embed_dim,
        mlp=tuple(int(x) for x in a.mlp.split(",")),
        lr=a.lr,
        steps=a.steps,
        repeats=a.repeats,
        epochs=a.epochs,
        seed=a.seed,
    )


def setup(args: Args) -> None:
    """Same threads and seeds in every process; no progress bars."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    os.environ.setdefault("TQDM_DISABLE", "1")
    args.out.mkdir(parents=True, exist_ok=True)


def vocab(args: Args) -> dict:
    return json.loads((args.data / "vocab.json").read_text())


def read_split(args: Args, split: str) -> pd.DataFrame:
    return pd.read_parquet(args.data / f"{split}.parquet")


def padded(df: pd.DataFrame, name: str, width: int) -> np.ndarray:
    """(N, width) int64 tokens of a multi-valued feature from its `<name>__j` columns, 0 = padding."""
    return np.stack([df[f"{name}__{j}"].to_numpy() for j in range(width)], 1).astype(np.int64)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def versions(*packages: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "numpy", "pandas", *packages):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def finish(
    args: Args,
    *,
    peer: str,
    packages: tuple[str, ...],
    train_runs: list[float],
    predict_runs: list[float],
    test_scores: np.ndarray,
    n_test: int,
    quality_seconds: float,
    notes: list[str],
) -> None:
    """Write test predictions (row order of test.parquet) and result.json, and print the JSON on the last line."""
    scores = np.asarray(test_scores, dtype=np.float64).reshape(-1)
    if scores.size != n_test:
        sys.exit(f"{peer}: {scores.size} test predictions for {n_test} test rows")
    if not np.isfinite(scores).all():
        sys.exit(f"{peer}: non-finite test predictions")
    pd.DataFrame({"score": scores}).to_parquet(args.out / "test_pred.parquet")
    result = {
        "peer": peer,
        "versions": versions(*packages),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "eval_batch_size": args.eval_batch_size,
        "steps": args.steps,
        "epochs": args.epochs,
        "train_samples_per_s": statistics.median(train_runs) if train_runs else None,  # --repeats 0
        "train_runs": train_runs,
        "predict_samples_per_s": statistics.median(predict_runs) if predict_runs else None,
        "predict_runs": predict_runs,
        "quality_train_seconds": quality_seconds,
        "predictions": str(args.out / "test_pred.parquet"),
        "notes": notes,
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
