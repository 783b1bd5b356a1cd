"""Semantic-ID tables: codes -> unique hierarchical IDs (dedup suffix), their health, parquet I/O, new entities.

An ID is (sid_0, ..., sid_{L-1}, sid_dedup): the RQ-VAE codes plus a suffix that counts, in key order, the earlier
entities holding the same code tuple (the dedup idea of TIGER / GRID), so every entity gets a unique ID.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import torch
from torch import Tensor

from semid.errors import InputError
from semid.io import read_meta, write_parquet
from semid.schema import ITEM, SCHEMA_VERSION, SID_DEDUP, SID_PREFIX, USER, sid_column, sid_schema

REQUIRED_META: tuple[str, ...] = (
    "levels",
    "codebook_sizes",
    "health",
    "encoder",
    "seed",
    "data_hash",
    "version",
)
"""Facts every ID table carries in its parquet metadata (see `table_meta`); an optional "key" names the entity
column, which is otherwise found by name (item_id or user_id)."""


class CodebookCollapseError(InputError):
    """The codes use too little of a codebook to give meaningful hierarchical IDs."""


def _codes_array(codes: Tensor | np.ndarray) -> np.ndarray:
    array = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if array.ndim != 2 or array.shape[1] < 1:
        raise InputError(f"codes have shape {array.shape}", fix="pass codes as an (N, levels) integer array")
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"codes have dtype {array.dtype}", fix="pass integer codes (RQVAE.encode output)")
    return array.astype(np.int64)


def _code_frame(keys: np.ndarray, codes: np.ndarray, key: str) -> pl.DataFrame:
    keys = np.asarray(keys)
    if keys.ndim != 1 or len(keys) != len(codes):
        raise InputError(
            f"{keys.shape} keys for {len(codes)} code rows", column=key, fix="pass one key per row of codes"
        )
    frame = pl.DataFrame(
        {key: keys, **{sid_column(level): codes[:, level] for level in range(codes.shape[1])}}
    )
    if frame[key].is_duplicated().any():
        dupes = frame.filter(pl.col(key).is_duplicated())[key].unique().head(5).to_list()
        raise InputError(f"duplicate keys, e.g. {dupes}", column=key, fix="give every entity one row")
    return frame


def _suffix_expr(key: str, levels: int) -> pl.Expr:
    """0 for the first entity (by key) holding a code tuple, 1 for the next, ..."""
    return (pl.col(key).rank("ordinal").over([sid_column(i) for i in range(levels)]) - 1).cast(pl.Int32)


def dedup_suffix(codes: Tensor | np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Suffix (N,) int32 that makes (codes..., suffix) unique, in the input row order; deterministic in the keys."""
    array = _codes_array(codes)
    frame = _code_frame(keys, array, "key")
    return frame.select(_suffix_expr("key", array.shape[1]))["key"].to_numpy()


def make_table(keys: np.ndarray, codes: Tensor | np.ndarray, *, key: str) -> pl.DataFrame:
    """The ID table (schema `sid_schema(key, L)`) of entities `keys` (N,) with `codes` (N, L), sorted by key."""
    if key not in (ITEM, USER):
        raise InputError(f"unknown key {key!r}", column=key, fix=f"use {ITEM!r} or {USER!r}")
    array = _codes_array(codes)
    levels = array.shape[1]
    frame = _code_frame(keys, array, key).with_columns(_suffix_expr(key, levels).alias(SID_DEDUP))
    return frame.cast(dict(sid_schema(key, levels)), strict=True).sort(key)


def _levels_of(table: pl.DataFrame) -> int:
    return sum(
        1 for name in table.columns if name.startswith(SID_PREFIX) and name[len(SID_PREFIX) :].isdigit()
    )


def health(table: pl.DataFrame, sizes: list[int]) -> dict[str, Any]:
    """How well the codes use the codebooks and how often the suffix is needed (JSON-ready numbers).

    Per level: `used` codes, `utilization` = used / size, Shannon `entropy_bits` of the code distribution and
    `entropy_normalized` = bits / log2(size), and for levels > 0 `parent_utilization`: the mean, over the code
    prefixes (sid_0..sid_{l-1}) in use, of the fraction of this level's codes used under that prefix.
    `utilization` repeats the per-level utilizations as one list. Overall: `collision_rate` = fraction of
    entities whose code tuple an earlier entity already holds (suffix > 0), `colliding_tuples` (tuples held
    by more than one entity), `largest_bucket` (most entities on one tuple),
    `per_level0_code` min/median/max entities over the level-0 codes in use, and `unique_full_ids` (must be 1.0).
    """
    levels = _levels_of(table)
    n = table.height
    if n == 0:
        raise InputError("the ID table is empty", fix="build IDs from at least one entity")
    if len(sizes) != levels:
        raise InputError(f"{len(sizes)} codebook sizes for {levels} levels", fix="pass one size per level")
    cols = [sid_column(level) for level in range(levels)]
    per_level = []
    for level, (col, size) in enumerate(zip(cols, sizes)):
        counts = table[col].value_counts()
        if counts[col].min() < 0 or counts[col].max() >= size:
            raise InputError(
                f"codes outside 0..{size - 1}", column=col, fix="pass the codebook sizes the codes used"
            )
        p = counts["count"].to_numpy() / n
        bits = float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 (one code) into 0.0
        parent = None
        if level > 0:
            parent = table.group_by(cols[:level]).agg(pl.col(col).n_unique())[col].mean() / size
        per_level.append(
            {
                "level": level,
                "size": int(size),
                "used": int(counts.height),
                "utilization": counts.height / size,
                "parent_utilization": None if parent is None else float(parent),
                "entropy_bits": bits,
                "entropy_normalized": bits / math.log2(size) if size > 1 else 0.0,
            }
        )
    buckets = table.group_by(cols).len()["len"]
    level0 = table[cols[0]].value_counts()["count"]
    full_ids = table.select(cols + [SID_DEDUP]).n_unique() if SID_DEDUP in table.columns else buckets.len()
    return {
        "entities": n,
        "levels": per_level,
        "utilization": [lv["utilization"] for lv in per_level],
        "collision_rate": (n - buckets.len()) / n,
        "colliding_tuples": int((buckets > 1).sum()),
        "largest_bucket": int(buckets.max()),
        "per_level0_code": {
            "min": int(level0.min()),
            "median": float(level0.median()),
            "max": int(level0.max()),
        },
        "unique_full_ids": full_ids / n,
    }


def check_health(h: dict[str, Any], min_level0_utilization: float, *, what: str | None = None) -> None:
    """Raise CodebookCollapseError if level 0 is collapsed (or IDs are not unique) -- before anything is written.

    `what` names the table in the message ("items", "users"), so a user knows which RQ-VAE config to change.
    """
    level0 = h["levels"][0]
    table = f"{what} " if what else ""
    if level0["utilization"] < min_level0_utilization:
        raise CodebookCollapseError(
            f"{table}codebook collapse: level 0 uses {level0['used']} of {level0['size']} codes "
            f"({level0['utilization']:.0%} < min_level0_utilization {min_level0_utilization:.0%})",
            column=sid_column(0),
            fix="check the embeddings are not constant or near-duplicates; keep kmeans_init: true and raise "
            "kmeans_iters; raise threshold_ema_dead_code (dead-code replacement) or lower decay; lower "
            "codebook_size (or use 'auto'); or lower min_level0_utilization if this spread is expected",
        )
    if h["unique_full_ids"] != 1.0:
        raise CodebookCollapseError(
            f"{table}only {h['unique_full_ids']:.2%} of full IDs are unique",
            column=SID_DEDUP,
            fix="rebuild the table with make_table (it assigns the dedup suffix)",
        )


def table_meta(
    *,
    key: str,
    codebook_sizes: list[int],
    health: dict[str, Any],
    encoder: str,
    seed: int,
    data_hash: str,
    version: int = 1,
) -> dict[str, Any]:
    """The metadata document of an ID table (everything `REQUIRED_META` names)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "key": key,
        "levels": len(codebook_sizes),
        "codebook_sizes": [int(s) for s in codebook_sizes],
        "health": health,
        "encoder": encoder,
        "seed": int(seed),
        "data_hash": data_hash,
        "version": int(version),
    }


def sid_columns(table: pl.DataFrame) -> list[str]:
    """The level columns sid_0..sid_{L-1} of an ID table, in level order (the dedup suffix left out)."""
    return [sid_column(level) for level in range(_levels_of(table))]


_REBUILD = "rebuild the semantic IDs (semid build) instead of editing the table"
DATA_HASH_FIX = "rebuild the IDs for this prepared dataset with semid build"


def _validate(table: pl.DataFrame, key: str, meta: dict[str, Any], file: str | Path | None) -> pl.DataFrame:
    """The table in its schema `sid_schema(key, levels)`; InputError naming file and column on any mismatch."""
    levels = meta["levels"]
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
        raise InputError(f"metadata levels {levels!r} is not a positive integer", file=file, fix=_REBUILD)
    sizes = meta.get("codebook_sizes")
    if not isinstance(sizes, list) or len(sizes) != levels:
        raise InputError(
            f"metadata codebook_sizes {sizes!r} do not give one size per level ({levels} levels)",
            file=file,
            column=sid_column(0),
            fix=_REBUILD,
        )
    expected = sid_schema(key, levels)
    extra = [c for c in table.columns if c.startswith(SID_PREFIX) and c not in expected]
    if extra:
        raise InputError(
            f"level columns {extra} beyond the {levels} levels the metadata names",
            file=file,
            column=extra[0],
            fix=_REBUILD,
        )
    for name, dtype in expected.items():
        if name not in table.columns:
            raise InputError(
                f"missing column of a {levels}-level ID table", file=file, column=name, fix=_REBUILD
            )
        if not table.schema[name].is_integer():
            raise InputError(
                f"dtype {table.schema[name]}, expected {dtype}", file=file, column=name, fix=_REBUILD
            )
        nulls = table[name].null_count()
        if nulls:
            raise InputError(f"{nulls} null values", file=file, column=name, fix=_REBUILD)
    table = table.select(list(expected))
    try:
        table = table.cast(dict(expected), strict=True)
    except pl.exceptions.InvalidOperationError as err:
        raise InputError(f"values do not fit {pl.Int32}: {err}", file=file, fix=_REBUILD) from None
    if table.height and table[key].min() < 0:
        raise InputError("negative ids", file=file, column=key, fix=_REBUILD)
    for level, size in enumerate(sizes):
        col = table[sid_column(level)]
        if table.height and (col.min() < 0 or col.max() >= int(size)):
            raise InputError(
                f"codes outside 0..{int(size) - 1} (metadata codebook_sizes {sizes})",
                file=file,
                column=sid_column(level),
                fix=_REBUILD,
            )
    if (table[SID_DEDUP] < 0).any():
        raise InputError("negative dedup suffixes", file=file, column=SID_DEDUP, fix=_REBUILD)
    if table[key].is_duplicated().any():
        dupes = table.filter(pl.col(key).is_duplicated())[key].unique().sort().head(5).to_list()
        raise InputError(f"duplicate ids, e.g. {dupes}", file=file, column=key, fix=_REBUILD)
    if table.select(list(expected)[1:]).is_duplicated().any():
        raise InputError(
            "full IDs (codes + suffix) are not unique", file=file, column=SID_DEDUP, fix=_REBUILD
        )
    return table


def _key_of(columns: list[str], meta: dict[str, Any]) -> str:
    """The entity key of an ID table: meta["key"] if given, else whichever of item_id / user_id is a column."""
    if "key" in meta:
        return meta["key"]
    return ITEM if ITEM in columns or USER not in columns else USER


def write_table(table: pl.DataFrame, path: str | Path, meta: dict[str, Any]) -> None:
    """Validate `table` against its schema and `meta` against REQUIRED_META, then write atomically with the meta."""
    missing = [name for name in REQUIRED_META if name not in meta]
    if missing:
        raise InputError(f"metadata lacks {missing}", file=path, fix="build it with semid.ids.table_meta")
    table = _validate(table, _key_of(table.columns, meta), meta, path)
    write_parquet(table, path, meta)


def read_table(
    path: str | Path, *, key: str | None = None, data_hash: str | None = None
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """An ID table (schema `sid_schema(key, levels)`, sorted as written) and its metadata: THE reader of ID tables.

    Checks, each an InputError naming the file (and column) and the fix: the file exists and is a parquet ID table
    (metadata has `REQUIRED_META`); its entity column is `key` when given; columns and integer dtypes match the
    schema, no nulls; codes lie within the metadata `codebook_sizes`; ids and full IDs are unique; and, when
    `data_hash` is given, the table was built from that prepared dataset (metadata "data_hash").
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such ID table", file=path, fix="build the semantic IDs first (semid build)")
    if not path.is_file():
        raise InputError(
            "is a directory, not an ID table",
            file=path,
            fix="pass the item_sids.parquet / user_sids.parquet file",
        )
    try:
        meta = read_meta(path)
        table = pl.read_parquet(path)
    except Exception as err:  # noqa: BLE001 -- polars raises several types for a non-parquet/truncated file
        raise InputError(
            f"not a readable parquet file ({type(err).__name__})", file=path, fix="rebuild the semantic IDs"
        ) from None
    missing = [name for name in REQUIRED_META if name not in meta]
    if missing:
        raise InputError(
            f"not an ID table: metadata lacks {missing}", file=path, fix="rebuild the semantic IDs"
        )
    found = _key_of(table.columns, meta)
    if key is not None and found != key:
        raise InputError(
            f"an ID table of {found!r}, expected one of {key!r}",
            file=path,
            column=key,
            fix=f"pass the {'item' if key == ITEM else 'user'} ID table",
        )
    table = _validate(table, found, meta, path)
    if data_hash is not None and meta["data_hash"] != data_hash:
        raise InputError(
            f"data_hash {str(meta['data_hash'])[:12]} differs from the prepared dataset's {str(data_hash)[:12]}: "
            "the IDs were built from another prepared dataset",
            file=path,
            fix=DATA_HASH_FIX,
        )
    return table, meta


BUILD_FACTS: tuple[str, ...] = ("stage_hash", "data_hash", "encoder", "codebook_sizes")
"""What ties an ID table to the models of its build (`check_same_build`)."""


def check_same_build(meta: dict[str, Any], source: dict[str, Any], *, file: str | Path | None = None) -> None:
    """InputError unless every fact of `BUILD_FACTS` that both `meta` (an ID table's) and `source` (a model
    checkpoint's) hold is equal: the table and the model that gives new codes come from one `semid build`."""
    differ = [
        name
        for name in BUILD_FACTS
        if name in meta and name in source and _plain(meta[name]) != _plain(source[name])
    ]
    if differ:
        raise InputError(
            f"the ID table and the model giving new codes come from different builds ({', '.join(differ)} differ)",
            file=file,
            fix="use the item_sids.parquet of the same `semid build` output as the checkpoints (or rebuild)",
        )


def _plain(value: Any) -> Any:
    """JSON round trip: a tuple and a list, an int and its JSON form compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def assign_new(
    table: pl.DataFrame,
    meta: dict[str, Any],
    new_keys: np.ndarray,
    new_codes: Tensor | np.ndarray,
    *,
    source: dict[str, Any] | None = None,
    on_existing: Literal["error", "skip"] = "error",
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Add IDs for entities not yet in `table`, leaving every existing row exactly as it was.

    `source`: facts about the build whose model gave `new_codes` (the RQ-VAE checkpoint's / aligned encoder
    state's metadata: any of `BUILD_FACTS`); each one the table's metadata also has must be equal, else
    InputError -- codes from another build's RQ-VAE mean nothing in this table's code space.

    A new entity's suffix continues after the largest suffix its code tuple already has (new entities sharing a
    tuple are numbered in key order). Keys already in the table raise InputError, or with on_existing="skip" keep
    their old ID (their new codes are ignored) -- an ID, once given, never changes. Returns the table sorted by key
    and the metadata with `version` + 1, `added` and the new `health`.
    """
    key, levels, sizes = _key_of(table.columns, meta), meta["levels"], meta["codebook_sizes"]
    check_same_build(meta, source or {})
    array = _codes_array(new_codes)
    if array.shape[1] != levels:
        raise InputError(
            f"new codes have {array.shape[1]} levels, the table {levels}", fix="use the table's RQ-VAE"
        )
    if (array < 0).any() or (array >= np.asarray(sizes)).any():
        raise InputError(f"new codes outside the codebook sizes {sizes}", fix="use the table's RQ-VAE")
    schema = {name: dtype for name, dtype in sid_schema(key, levels).items() if name != SID_DEDUP}
    new = _code_frame(new_keys, array, key).cast(schema, strict=True)
    existing = new[key].is_in(table[key].implode())
    if existing.any():
        if on_existing == "error":
            raise InputError(
                f"{int(existing.sum())} keys already have IDs, e.g. {new.filter(existing)[key].head(5).to_list()}",
                column=key,
                fix="pass only new entities, or on_existing='skip' to keep their existing IDs",
            )
        new = new.filter(~existing)
    cols = [sid_column(level) for level in range(levels)]
    start = table.group_by(cols).agg((pl.col(SID_DEDUP).max() + 1).alias("start"))
    new = (
        new.join(start, on=cols, how="left")
        .with_columns(
            (pl.col("start").fill_null(0) + _suffix_expr(key, levels)).cast(pl.Int32).alias(SID_DEDUP)
        )
        .select(table.columns)
    )
    merged = pl.concat([table, new]).sort(key)
    out_meta = {
        **meta,
        "version": int(meta["version"]) + 1,
        "added": new.height,
        "health": health(merged, sizes),
    }
    return merged, out_meta


def format_health(h: dict[str, Any]) -> str:
    """A human-readable report of `health` (for `semid inspect`)."""
    per0 = h["per_level0_code"]
    lines = [
        f"entities              {h['entities']}",
        f"unique full IDs       {h['unique_full_ids']:.2%}",
        f"collision rate        {h['collision_rate']:.2%} before the suffix "
        f"({h['colliding_tuples']} shared tuples, largest bucket {h['largest_bucket']})",
        f"per level-0 code      min {per0['min']} / median {per0['median']:g} / max {per0['max']} entities",
        "",
        f"{'level':>5} {'size':>6} {'used':>6} {'utilization':>12} {'in parent':>10} {'entropy':>8} {'H/log2K':>8}",
    ]
    for lv in h["levels"]:
        parent = "-" if lv["parent_utilization"] is None else f"{lv['parent_utilization']:.1%}"
        lines.append(
            f"{lv['level']:>5} {lv['size']:>6} {lv['used']:>6} {lv['utilization']:>12.1%} {parent:>10} "
            f"{lv['entropy_bits']:>8.2f} {lv['entropy_normalized']:>8.3f}"
        )
    return "\n".join(lines)
