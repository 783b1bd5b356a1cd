"""Measure `semid.encoder.encode` against a bare Hugging Face forward pass over the same batches (ML-1M items), and
(--ddp) `encode` on one process against Lightning DDP batch inference on several CPU processes.

Both sides tokenize and run the model on identical length-sorted batches; `encode` adds pooling, normalising,
input checks, order restoring (and nothing else without a cache). Writes benchmarks/results/encoder_speed.md.
With --ddp: items/s of `encode` with devices=1 and devices=N on seeded synthetic item texts, one torch thread per
process, end to end (model loading, process start and the gather included); writes
benchmarks/results/encoder_speed_ddp.md. With --dtypes: items/s of `encode` with an encoder (--model, --pooling) per
`EncoderConfig.dtype`, and the cosine of each dtype's vectors to the first's; writes
benchmarks/results/encoder_speed_dtype.md.

    python benchmarks/encoder_speed.py [--prepared DIR] [--limit N] [--repeats 3] [--threads 2]
    OMP_NUM_THREADS=1 python benchmarks/encoder_speed.py --ddp [--texts 2000] [--devices 2] [--repeats 2]
    python benchmarks/encoder_speed.py --dtypes float32,bfloat16 --model gemma3-270m [--pooling mean] [--limit N]
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
from semid.encoder.distributed import resolve_strategy
from semid.io import cache_dir
from semid.schema import ITEMS_FILE, TEXT

RESULTS = Path(__file__).parent / "results" / "encoder_speed.md"
RESULTS_DDP = Path(__file__).parent / "results" / "encoder_speed_ddp.md"
RESULTS_DTYPE = Path(__file__).parent / "results" / "encoder_speed_dtype.md"
TITLE_WORDS = (
    "star", "night", "river", "lost", "city", "king", "dark", "love", "war", "ghost", "road", "home", "last", "blue",
    "red", "secret", "summer", "winter", "iron", "golden", "silent", "wild", "little", "big", "return", "of", "the",
    "in", "and", "a", "my",
)  # fmt: skip
GENRES = (
    "Action", "Adventure", "Animation", "Comedy", "Crime", "Documentary", "Drama", "Fantasy", "Horror", "Musical",
    "Romance", "Sci-Fi",
)  # fmt: skip


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


def synthetic_item_texts(n: int, seed: int = 0) -> list[str]:
    """`n` item texts shaped like the ML-1M ones ("{title} ({year}). Genres: {g1}, {g2}."), 1-6 title words."""
    g = torch.Generator().manual_seed(seed)
    n_words = torch.randint(1, 7, (n,), generator=g).tolist()
    words = torch.randint(len(TITLE_WORDS), (n, 6), generator=g).tolist()
    years = torch.randint(1920, 2001, (n,), generator=g).tolist()
    genres = torch.randint(len(GENRES), (n, 2), generator=g).tolist()
    return [
        f"{' '.join(TITLE_WORDS[w] for w in ws[:k]).title()} ({y}). Genres: {GENRES[a]}, {GENRES[b]}."
        for ws, k, y, (a, b) in zip(words, n_words, years, genres)
    ]


def ddp_speed(opts: argparse.Namespace) -> str:
    """items/s of `encode` with devices=1 and devices=`opts.devices` (CPU processes), interleaved; the report."""
    texts = synthetic_item_texts(opts.texts)
    base = EncoderConfig(batch_size=opts.batch_size)
    spread = EncoderConfig(batch_size=opts.batch_size, devices=opts.devices, accelerator="cpu")
    runs: dict[str, list[float]] = {"devices=1 (one process, no Lightning)": []}
    runs[f"devices={opts.devices} (Lightning DDP, {resolve_strategy(spread)}, gloo)"] = []
    loads: list[float] = []
    vectors: list[torch.Tensor] = []
    for _ in range(opts.repeats):  # interleaved so background load hits both alike
        for name, cfg in zip(runs, (base, spread)):
            start = time.perf_counter()
            vectors.append(encode(texts, cfg, progress=False))
            runs[name].append(time.perf_counter() - start)
            loads.append(os.getloadavg()[0])
    same = max(float((v - vectors[0]).abs().max()) for v in vectors)
    best = {name: min(values) for name, values in runs.items()}
    speedup = best[next(iter(runs))] / best[list(runs)[1]]
    lines = [
        f"# Encoder speed under DDP: {opts.texts} synthetic item texts, all-MiniLM-L6-v2 (CPU processes)",
        "",
        f"`encode` end to end (each rank loads the model; process start and the gather included), batch size "
        f"{opts.batch_size}, 1 torch thread per process, {os.cpu_count()} CPU cores, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}; best of {opts.repeats} "
        f"interleaved runs (all runs in brackets). 1-minute load average during the runs: "
        f"{min(loads):.1f}-{max(loads):.1f}.",
        "",
        "| path | seconds | items/s |",
        "|---|---:|---:|",
    ]
    for name, values in runs.items():
        all_runs = ", ".join(f"{v:.1f}" for v in values)
        lines.append(f"| {name} | {best[name]:.2f} ({all_runs}) | {opts.texts / best[name]:.0f} |")
    lines += [
        "",
        f"measured speed-up of devices={opts.devices} over devices=1: x{speedup:.2f}; largest difference between "
        f"the vectors of any two runs: {same:.1e}.",
        *([f"Conditions: {opts.note}"] if opts.note else []),
        "",
        "Extrapolation, not measured: the ranks share nothing but the final gather of N x 384 floats, so on several "
        "GPUs (accelerator gpu, ddp_spawn) the encoding time should fall close to 1 / devices once the texts are "
        "many more than devices x batch size; each rank pays its own process start and model load.",
        "",
    ]
    return "\n".join(lines)


def dtype_speed(opts: argparse.Namespace) -> str:
    """items/s of `encode` per dtype over the ML-1M item texts (model load included, runs interleaved) and the
    smallest cosine of each dtype's vectors to the first dtype's; the report."""
    texts = ml1m_item_texts(opts.prepared)
    texts = texts[: opts.limit] if opts.limit else texts
    dtypes = opts.dtypes.split(",")
    cfgs = {
        dt: EncoderConfig(model=opts.model, pooling=opts.pooling, dtype=dt, batch_size=opts.batch_size)
        for dt in dtypes
    }
    runs: dict[str, list[float]] = {dt: [] for dt in dtypes}
    vectors: dict[str, torch.Tensor] = {}
    loads: list[float] = []
    for _ in range(opts.repeats):  # interleaved so background load hits every dtype alike
        for dt, cfg in cfgs.items():
            start = time.perf_counter()
            vectors[dt] = encode(texts, cfg, progress=False)
            runs[dt].append(time.perf_counter() - start)
            loads.append(os.getloadavg()[0])
    ref = vectors[dtypes[0]]
    lines = [
        f"# Encoder speed per dtype: ML-1M item texts, encoder {opts.model!r} ({opts.pooling} pooling, CPU)",
        "",
        f"`semid.encoder.encode` end to end (model load included), {len(texts)} texts, batch size {opts.batch_size}, "
        f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPU cores, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}; best of {opts.repeats} "
        f"interleaved runs (all runs in brackets). 1-minute load average during the runs: "
        f"{min(loads):.1f}-{max(loads):.1f}.",
        "",
        f"| dtype | seconds | items/s | speed-up | min cosine to {dtypes[0]} | mean cosine |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    base = min(runs[dtypes[0]])
    for dt, values in runs.items():
        best = min(values)
        cos = (vectors[dt] * ref).sum(dim=1)  # unit vectors
        lines.append(
            f"| {dt} | {best:.2f} ({', '.join(f'{v:.1f}' for v in values)}) | {len(texts) / best:.0f} | "
            f"x{base / best:.2f} | {float(cos.min()):.4f} | {float(cos.mean()):.4f} |"
        )
    return "\n".join([*lines, ""])


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, default=cache_dir() / "prepared" / "ml-1m")
    parser.add_argument("--limit", type=int, default=0, help="encode only the first N texts (0 = all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=EncoderConfig.batch_size)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--ddp", action="store_true", help="measure devices=1 vs --devices CPU processes instead"
    )
    parser.add_argument("--texts", type=int, default=2000, help="--ddp: synthetic texts")
    parser.add_argument("--devices", type=int, default=2, help="--ddp: CPU processes of the DDP run")
    parser.add_argument(
        "--note", default="", help="--ddp: a line on the conditions (other load), printed as is"
    )
    parser.add_argument(
        "--dtypes", default="", help="e.g. float32,bfloat16: measure encode per dtype instead"
    )
    parser.add_argument("--model", default="default", help="--dtypes: the encoder (EncoderConfig.model)")
    parser.add_argument("--pooling", default="mean", help="--dtypes: EncoderConfig.pooling")
    opts = parser.parse_args(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if opts.dtypes:
        torch.set_num_threads(opts.threads)
        report = dtype_speed(opts)
        print(report)
        RESULTS_DTYPE.parent.mkdir(parents=True, exist_ok=True)
        RESULTS_DTYPE.write_text(report)
        return
    if opts.ddp:
        os.environ["OMP_NUM_THREADS"] = "1"  # forked ranks keep 1 thread (Lightning would set cores / ranks)
        torch.set_num_threads(1)
        report = ddp_speed(opts)
        print(report)
        RESULTS_DDP.parent.mkdir(parents=True, exist_ok=True)
        RESULTS_DDP.write_text(report)
        return
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
