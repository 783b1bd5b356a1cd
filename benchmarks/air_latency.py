"""Measure the online AIR intent view's request latency (50 history events, no LLM call) on the real Amazon
Food + Kitchen items, after building their intents offline with the semantic-ID fallback.

The release has no built semantic IDs, so this script makes stand-in 2-level IDs (title tf-idf -> 64-d SVD ->
residual k-means, 256 x 16): they only feed the fallback's prefix naming and the node vocabulary size; the real
IDs come from `semid build` (aligned encoder + RQ-VAE). Writes benchmarks/results/air_latency.md.

    python benchmarks/air_latency.py [--source DIR] [--repeats 300] [--threads 1]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from ctr.models.air import IntentView
from semid import amazon
from semid import schema as S
from semid.intents import IntentConfig, build_intents, describe, read_intents
from semid.io import write_parquet, write_text

RESULTS = Path(__file__).parent / "results" / "air_latency.md"


def stand_in_sids(texts: list[str], sizes: tuple[int, int] = (256, 16), seed: int = 0) -> np.ndarray:
    """(N, 2) codes: residual k-means over L2-normalised SVD vectors of the titles' tf-idf."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    x = TfidfVectorizer(min_df=2, stop_words="english").fit_transform(texts)
    z = TruncatedSVD(64, random_state=seed).fit_transform(x)
    z /= np.linalg.norm(z, axis=1, keepdims=True).clip(min=1e-9)
    codes = []
    for size in sizes:
        km = MiniBatchKMeans(size, random_state=seed, n_init=3, batch_size=4096).fit(z)
        codes.append(km.labels_)
        z = z - km.cluster_centers_[km.labels_]
    return np.stack(codes, 1)


def latency(view: IntentView, n_items: int, batch: int, repeats: int, seed: int = 0) -> tuple[float, float]:
    """p50, p99 milliseconds of one forward: one user's 50 most recent events against `batch` candidates."""
    gen = torch.Generator().manual_seed(seed)
    times = []
    with torch.inference_mode():
        for r in range(repeats + 20):
            hist = torch.randint(1, n_items + 1, (1, 50), generator=gen).expand(batch, -1)  # (B, 50)
            target = torch.randn(batch, view.target_proj.in_features, generator=gen)  # (B, d)
            start = time.perf_counter()
            view(hist, target)
            if r >= 20:  # warm-up excluded
                times.append((time.perf_counter() - start) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("/tmp/air_latency"))
    opts = parser.parse_args(args)
    torch.set_num_threads(opts.threads)

    files = amazon.source_files(opts.source)
    items = amazon.read_items(files["items"]).select(
        pl.col(S.ITEM).cast(pl.Int32), pl.col("title").alias(S.TEXT), amazon.DOMAIN
    )
    start = time.perf_counter()
    codes = stand_in_sids(items[S.TEXT].to_list())
    sids = items.select(S.ITEM).with_columns(
        pl.Series(S.sid_column(0), codes[:, 0], pl.Int32),
        pl.Series(S.sid_column(1), codes[:, 1], pl.Int32),
    )
    sid_s = time.perf_counter() - start
    start = time.perf_counter()
    result = build_intents(items, sids=sids, cfg=IntentConfig(depth=2))
    intent_s = time.perf_counter() - start
    opts.out.mkdir(parents=True, exist_ok=True)
    write_parquet(result.table, opts.out / "intents.parquet", result.meta)
    intents = read_intents(opts.out / "intents.parquet", n_items=items.height)
    rng = np.random.default_rng(0)
    examples = [
        f"- {items[S.TEXT][int(i)][:70]!r} ({items[amazon.DOMAIN][int(i)]}): {' | '.join(describe(intents, int(i)))}"
        for i in rng.choice(items.height, 5, replace=False)
    ]

    class Spec:
        n_items = items.height

    rows = []
    for name, aware, tree in [
        ("AIR (tree, target-aware)", True, True),
        ("flat list", True, False),
        ("pool all nodes", False, True),
    ]:
        view = IntentView(
            Spec(), intents=intents, dim=32, top_k=4, beam=4, heads=2, target_aware=aware, tree=tree
        )
        view.eval()
        for batch in (1, 100):
            p50, p99 = latency(view, items.height, batch, opts.repeats)
            rows.append(f"| {name} | {batch} | {p50:.2f} | {p99:.2f} |")
            print(rows[-1], flush=True)

    text = "\n".join(
        [
            "# AIR intent view: online request latency",
            "",
            f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
            f"{opts.threads} thread(s), CPU, shared 2-core box (other jobs running). "
            f"`python benchmarks/air_latency.py --repeats {opts.repeats}`.",
            "",
            f"Items: {items.height} (Amazon Food + Kitchen titles). Intents: semantic-ID fallback on stand-in "
            f"2-level IDs (256 x 16 residual k-means over title tf-idf SVD; {sid_s:.1f} s), "
            f"{intents.n_nodes} nodes, built in {intent_s:.1f} s. No LLM call online (nor offline here).",
            "",
            "A request = one user's 50 most recent events (intent tree merge + top-down retrieval + attention) "
            "scored against B candidates; view width 32, top_k 4, beam 4, 2 heads; "
            f"{opts.repeats} requests after 20 warm-up.",
            "",
            "| view | candidates B | p50 ms | p99 ms |",
            "|---|---|---|---|",
            *rows,
            "",
            "Example fallback intent paths (random items):",
            "",
            *examples,
            "",
        ]
    )
    write_text(text, RESULTS)
    print(text)


if __name__ == "__main__":
    main()
