"""The prepare stage: raw files -> the prepared dataset's tables (build), written as one directory (write), read
back (load).

`prepare` is the first stage of the pipeline. It turns the user's files (parquet, CSV/TSV or RecBole atomic files)
plus a column mapping (`semid.datasets.Columns`) into a prepared dataset directory whose files follow
`semid.schema`: items.parquet, users.parquet, train/val/test.parquet. Every check a user can fail runs before the
directory is written, and the directory is staged then renamed, so a failure leaves what was there before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from semid import schema as S
from semid.data.activity import ABS_BUCKET, add_activity, bucket_meta
from semid.data.config import PrepareConfig, RawFiles
from semid.data.entities import items_table, users_table
from semid.data.readers import check_input_file, read_interactions
from semid.data.split import check_splits, hold_out_items, split_interactions
from semid.datasets import Columns
from semid.errors import InputError
from semid.io import read_meta, sha256_file, sha256_json, staged_dir, write_json, write_parquet


@dataclass
class Prepared:
    items: pl.DataFrame
    users: pl.DataFrame
    splits: dict[str, pl.DataFrame]
    meta: dict[str, Any]
    extras: dict[str, pl.DataFrame] = field(default_factory=dict)
    """Dataset-specific tables written beside the splits as `<name>.parquet` (e.g. amazon-food-kitchen's
    source_history and ranking candidate lists)."""


def _input_hashes(files: RawFiles) -> dict[str, str]:
    present = {role: p for role, p in asdict(files).items() if p is not None}
    for p in present.values():  # every input checked before the first byte is hashed
        check_input_file(p)
    return {role: sha256_file(p) for role, p in present.items()}


def fingerprint(files: RawFiles, cols: Columns, cfg: PrepareConfig) -> str:
    """Hash of everything a prepared directory is a function of: input file contents, column mapping, config."""
    return sha256_json(
        {
            "schema": S.SCHEMA_VERSION,
            "inputs": _input_hashes(files),
            "columns": asdict(cols),
            "config": asdict(cfg),
        }
    )


def build(files: RawFiles, cols: Columns, cfg: PrepareConfig, *, name: str) -> Prepared:
    """Read, validate and transform the raw files into the prepared tables (nothing is written here)."""
    raw = read_interactions(files.inter, cols, cfg.label_threshold)
    items, item_codes = items_table(files, cols, raw.item)
    users, user_codes = users_table(files, cols, raw.user)
    frame = (
        pl.DataFrame(
            {
                "raw_user": raw.user,
                "raw_item": raw.item,
                S.LABEL: raw.label,
                S.TIMESTAMP: raw.timestamp,
                S.RATING: raw.rating,
            }
        )
        .join(user_codes, left_on="raw_user", right_on=S.RAW_USER)
        .join(item_codes, left_on="raw_item", right_on=S.RAW_ITEM)
        .select(list(S.INTERACTIONS.names()))
    )
    splits = split_interactions(frame, cfg.split)
    splits, held_out = hold_out_items(frame, splits, cfg.split)
    gauc_users = check_splits(splits, files.inter, cfg.split)
    items, users = add_activity(items, users, splits["train"], cfg.buckets)
    items = items.select(
        *S.ITEMS_BASE.names(),
        ABS_BUCKET,
        *cols.item_features,
        *([S.IMAGE_PATH] if cols.image_path else []),
    )
    users = users.select(
        *S.USERS_BASE.names(), ABS_BUCKET, *(cols.user_features if files.user is not None else [])
    )

    meta = {
        "schema_version": S.SCHEMA_VERSION,
        "dataset": name,
        "inputs_sha256": _input_hashes(files),
        "columns": asdict(cols),
        "config": asdict(cfg),
        "data_hash": fingerprint(files, cols, cfg),
        "n_users": users.height,
        "n_items": items.height,
        "n_interactions": frame.height,
        "positive_rate": float(frame[S.LABEL].cast(pl.Float64).mean()),
        "splits": {k: v.height for k, v in splits.items()},
        "gauc_users": gauc_users,
        "held_out_items": held_out.to_list(),
        **bucket_meta(items, users),
    }
    return Prepared(items=items, users=users, splits=splits, meta=meta)


def write(prepared: Prepared, out: str | Path) -> Path:
    """Write the prepared tables as one directory, staged and renamed into place."""
    with staged_dir(out) as tmp:
        write_tables(prepared, tmp)
    return Path(out)


def write_tables(prepared: Prepared, folder: Path) -> None:
    """Write the prepared tables into `folder` (a staging folder the caller owns and renames into place)."""
    meta = prepared.meta
    tmp = Path(folder)
    write_parquet(prepared.items, tmp / S.ITEMS_FILE, {**meta, "features": _item_features(prepared.items)})
    write_parquet(prepared.users, tmp / S.USERS_FILE, {**meta, "features": _user_features(prepared.users)})
    for split, df in prepared.splits.items():
        write_parquet(df, tmp / S.split_file(split), meta)
    for extra, df in prepared.extras.items():
        write_parquet(df, tmp / f"{extra}.parquet", meta)
    write_json(meta, tmp / "prepare.json")


def _item_features(items: pl.DataFrame) -> list[str]:
    return [c for c in items.columns if c not in (*S.ITEMS_BASE.names(), ABS_BUCKET, S.IMAGE_PATH)]


def _user_features(users: pl.DataFrame) -> list[str]:
    return [c for c in users.columns if c not in (*S.USERS_BASE.names(), ABS_BUCKET)]


def load(path: str | Path) -> Prepared:
    """Read a prepared dataset directory back (all tables, eagerly)."""
    path = Path(path)
    need = [S.ITEMS_FILE, S.USERS_FILE, *(S.split_file(s) for s in S.SPLITS)]
    for f in need:
        if not (path / f).exists():
            raise InputError(
                "not a prepared dataset directory (missing file)",
                file=path / f,
                fix="run `semid prepare` first, or point to its output directory",
            )
    splits = {s: pl.read_parquet(path / S.split_file(s)) for s in S.SPLITS}
    return Prepared(
        items=pl.read_parquet(path / S.ITEMS_FILE),
        users=pl.read_parquet(path / S.USERS_FILE),
        splits=splits,
        meta=read_meta(path / S.ITEMS_FILE),
    )
