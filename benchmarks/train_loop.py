"""Measure DeepFM training throughput through Lightning `Trainer.fit` against a bare PyTorch loop (same model, same
Batches, same optimisers), for dense AdamW and for sparse tables + SparseAdam, and write a table.

Batches are synthetic with MovieLens-1M cardinalities (6,040 users, 3,706 items; user features age / gender /
occupation, item feature genre with 18 genres and up to 6 per movie; history 20), pre-materialised in memory so
the data path costs nothing and only the training loops are compared. Runs are interleaved (bare, Lightning,
bare, ...) so that load from other processes hits both alike; the table reports the median of `--repeats`.

    python benchmarks/train_loop.py --out benchmarks/results/train_loop.md
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from ctr.batch import Batch, DataSpec
from ctr.models import DeepFM
from ctr.module import CTRTask

ML1M = DataSpec(
    n_users=6040,
    n_items=3706,
    user_feature_names=("age", "gender", "occupation"),
    item_feature_names=("genre",),
    user_feature_vocab=(8, 3, 22),
    item_feature_vocab=(19,),
    user_sid_sizes=(1,),
    item_sid_sizes=(256, 256, 256),
    history_len=20,
    user_count_max=2314.0,
    item_count_max=3428.0,
)


def synthetic_batches(spec: DataSpec, n: int, batch_size: int, seed: int = 0) -> list[Batch]:
    """`n` random Batches with Zipf-like (popularity-skewed) item ids, like real interaction logs."""
    g = torch.Generator().manual_seed(seed)
    item_p = 1.0 / torch.arange(1, spec.n_items + 1).float() ** 0.8  # (I,)
    out = []
    for _ in range(n):
        b, h = batch_size, spec.history_len
        hist = torch.multinomial(item_p, b * h, replacement=True, generator=g).view(b, h) + 1  # (B, H)
        hist = hist * (torch.rand(b, h, generator=g) < 0.9)  # some padding
        genres = torch.randint(0, spec.item_feature_vocab[0], (b, 1, 6), generator=g)  # (B, 1, 6)
        genres = genres * (torch.rand(b, 1, 6, generator=g) < 0.4)
        out.append(
            Batch(
                user=torch.randint(0, spec.n_users, (b,), generator=g),
                item=torch.multinomial(item_p, b, replacement=True, generator=g),
                label=torch.randint(0, 2, (b,), generator=g).float(),
                user_sid=torch.zeros(b, 1, dtype=torch.long),
                item_sid=torch.randint(0, 256, (b, 3), generator=g),
                user_count=torch.randint(0, 2000, (b,), generator=g).float(),
                item_count=torch.randint(0, 3000, (b,), generator=g).float(),
                user_feats=torch.stack(
                    [torch.randint(1, v, (b,), generator=g) for v in spec.user_feature_vocab], 1
                ).unsqueeze(-1),  # (B, 3, 1)
                item_feats=genres,
                hist_item=hist,
                hist_item_sid=torch.randint(0, 256, (b, h, 3), generator=g) * (hist > 0).unsqueeze(-1),
                hist_item_count=torch.randint(0, 3000, (b, h), generator=g).float() * (hist > 0),
                user_bucket=torch.randint(0, 4, (b,), generator=g),
                item_bucket=torch.randint(0, 4, (b,), generator=g),
            )
        )
    return out


def make_model(sparse: bool) -> CTRTask:
    torch.manual_seed(0)
    return CTRTask(DeepFM, ML1M, sparse_embeddings=sparse)


def bare_loop(batches: list[Batch], sparse: bool) -> float:
    """Samples/s of a plain loop doing what CTRTask.training_step does (loss, zero_grad, backward, step)."""
    model = make_model(sparse).train()
    opts = model.configure_optimizers()
    opts = opts if isinstance(opts, list) else [opts]
    start = time.perf_counter()
    for batch in batches:
        loss, _ = model.loss(batch, model(batch))
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in opts:
            opt.step()
    return sum(b.label.shape[0] for b in batches) / (time.perf_counter() - start)


def lightning_fit(batches: list[Batch], sparse: bool) -> float:
    """Samples/s of Trainer.fit over the same batches (one epoch, wall time of fit() including its setup)."""
    model = make_model(sparse)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    loader = DataLoader(batches, batch_size=None)
    start = time.perf_counter()
    trainer.fit(model, train_dataloaders=loader)
    return sum(b.label.shape[0] for b in batches) / (time.perf_counter() - start)


def main(args: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_loop.md"))
    opts = parser.parse_args(args)
    if opts.threads > 0:
        torch.set_num_threads(opts.threads)
    load_before = os.getloadavg()[0]
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    batches = synthetic_batches(ML1M, opts.steps, opts.batch_size)
    bare_loop(batches[:10], False), lightning_fit(batches[:10], False)  # warm-up (allocator, lazy imports)
    runs: dict[str, list[float]] = {}
    for _ in range(opts.repeats):
        for sparse in (False, True):
            kind = "sparse" if sparse else "dense"
            runs.setdefault(f"bare/{kind}", []).append(bare_loop(batches, sparse))
            runs.setdefault(f"lightning/{kind}", []).append(lightning_fit(batches, sparse))
    med = {k: statistics.median(v) for k, v in runs.items()}
    load_after = os.getloadavg()[0]

    lines = [
        "# DeepFM train-loop throughput: Lightning vs bare PyTorch, dense vs sparse embeddings",
        "",
        f"Command: `python benchmarks/train_loop.py --steps {opts.steps} --batch-size {opts.batch_size} "
        f"--repeats {opts.repeats} --threads {opts.threads}`  ",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, lightning {L.__version__}; synthetic ML-1M-sized Batches "
        f"({opts.steps} x {opts.batch_size}); DeepFM defaults (embed_dim 16, MLP 256-128). "
        f"Median of {opts.repeats} interleaved runs (samples/s; all runs in brackets). "
        f"1-min load average {load_before:.1f} before, {load_after:.1f} after (other jobs share the CPU).",
        "",
        "| embeddings | bare loop | Lightning fit | Lightning / bare |",
        "|---|---:|---:|---:|",
    ]
    for kind in ("dense", "sparse"):
        bare, lit = med[f"bare/{kind}"], med[f"lightning/{kind}"]
        spread = lambda k: ", ".join(f"{x:,.0f}" for x in runs[k])  # noqa: E731
        lines.append(
            f"| {kind} | {bare:,.0f} ({spread(f'bare/{kind}')}) | {lit:,.0f} ({spread(f'lightning/{kind}')}) "
            f"| {lit / bare:.1%} |"
        )
    dense_vs_sparse = med["lightning/dense"] / med["lightning/sparse"]
    lines += [
        "",
        f"Dense AdamW / sparse (SparseAdam + AdamW) through Lightning: {dense_vs_sparse:.2f}x. "
        f"Default `sparse_embeddings={'False' if dense_vs_sparse >= 1 else 'True'}` follows the faster one.",
        "",
    ]
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return med


if __name__ == "__main__":
    main()
