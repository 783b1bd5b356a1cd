"""Measure `semid.encoder.encode` against a bare Hugging Face forward pass over the same batches (ML-1M items).

Both sides tokenize and run the model on identical length-sorted batches; `encode` adds pooling, normalising,
input checks, order restoring (and nothing else without a cache). Writes benchmarks/results/encoder_speed.md.

    python benchmarks/encoder_speed.py [--prepared DIR] [--limit N] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import polars as pl
import torch

from semid.encoder import ContentEncoder, EncoderConfig, encode, length_batches
from semid.io import cache_dir
from semid.schema import ITEMS_FILE, TEXT

RESULTS = Path(__file__).parent / "results" / "encoder_speed.md"


def ml1m_item_texts(prepared: Path | None) -> list[str]:
    """Item texts from a prepared ML-1M items.parquet, else rendered from the raw RecBole file the same way:
    "{movie_title} ({release_year}). Genres: {genre, comma-joined}."."""
    if prepared is not None and (prepared / ITEMS_FILE).is_file():
        return pl.read_parquet(prepared / ITEMS_FILE, columns=[TEXT])[TEXT].to_list()
    raw = cache_dir() / "datasets" / "ml-1m" / "raw" / "ml-1m.item"
    df = pl.read_csv(raw, separator="\t", quote_char=None, infer_schema=False)
    df = df.rename({c: c.split(":")[0] for c in df.columns})
    year = pl.col("release_year").fill_null("").str.replace(r"\.0$", "")
    genres = pl.col("genre").fill_null("").str.split(" ").list.join(", ")
    text = pl.format("{} ({}). Genres: {}.", pl.col("movie_title"), year, genres)
    return df.select(text.alias(TEXT))[TEXT].to_list()


def bare_forward(encoder: ContentEncoder, texts: list[str]) -> None:
    """The floor: tokenizer + model forward over the same batches, no pooling, no bookkeeping."""
    tok, model, cfg = encoder.tokenizer, encoder.model, encoder.cfg
    with torch.inference_mode():
        for rows in length_batches(texts, cfg.batch_size):
            batch = tok(
                [texts[i] for i in rows.tolist()],
                padding=True,
                truncation=True,
                max_length=cfg.max_length,
                return_tensors="pt",
            )
            model(**batch)


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, default=cache_dir() / "prepared" / "ml-1m")
    parser.add_argument("--limit", type=int, default=0, help="encode only the first N texts (0 = all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=EncoderConfig.batch_size)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    opts = parser.parse_args(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(opts.threads)

    texts = ml1m_item_texts(opts.prepared)
    texts = texts[: opts.limit] if opts.limit else texts
    cfg = EncoderConfig(batch_size=opts.batch_size)
    encoder = ContentEncoder(cfg)
    n_tokens = sum(
        len(ids) for ids in encoder.tokenizer(texts, truncation=True, max_length=cfg.max_length)["input_ids"]
    )

    bare_forward(encoder, texts[: cfg.batch_size * 2])  # warm-up
    timings: dict[str, list[float]] = {"bare HF forward": [], "semid encode": []}
    for _ in range(opts.repeats):  # interleaved so background load hits both alike
        start = time.perf_counter()
        bare_forward(encoder, texts)
        timings["bare HF forward"].append(time.perf_counter() - start)
        start = time.perf_counter()
        encode(texts, cfg, progress=False)  # includes loading the model (~0.3 s), as a pipeline call does
        timings["semid encode"].append(time.perf_counter() - start)

    best = {name: min(values) for name, values in timings.items()}
    overhead = best["semid encode"] / best["bare HF forward"] - 1
    lines = [
        "# Encoder speed: ML-1M item texts, all-MiniLM-L6-v2 (CPU)",
        "",
        f"{len(texts)} texts, {n_tokens} tokens, batch size {cfg.batch_size}, max_length {cfg.max_length}, "
        f"{opts.threads} torch threads, {platform.processor() or platform.machine()}, torch {torch.__version__}; "
        f"best of {opts.repeats} interleaved runs (all runs in brackets).",
        "",
        "| path | seconds | items/s | tokens/s |",
        "|---|---:|---:|---:|",
    ]
    for name, values in timings.items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        lines.append(
            f"| {name} | {best[name]:.2f} ({runs}) | {len(texts) / best[name]:.0f} | {n_tokens / best[name]:.0f} |"
        )
    lines += ["", f"encode overhead over the bare forward: {overhead:+.1%} (budget: +10%)", ""]
    report = "\n".join(lines)
    print(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)


if __name__ == "__main__":
    main()
