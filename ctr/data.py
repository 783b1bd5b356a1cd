"""CTR data module: a prepared dataset directory plus semantic-ID tables -> shuffled, rank-sharded `Batch`es.

Everything is read once in `setup` (polars, vectorised) into tensors: per split the sample arrays (user, item,
label, history end offset), per entity the feature tokens, semantic IDs, train counts and activity buckets. A batch
is a handful of index gathers from those tensors, so there is no per-sample Dataset or collate: a sampler yields
index tensors (`IndexBatches`) and the dataset turns one into a whole `Batch` (`SplitData`).

History without leakage: a sample's history is the user's last `history_len` positive interactions with a
timestamp strictly before the sample's, most recent first (equal timestamps ordered by item id), drawn from the
splits that are its past (`HISTORY_SOURCES`): a train sample reads train positives; a val or test sample reads
train *and* val positives, so a test sample of a user whose activity sits in the validation period still has it
as history. Never the sample itself, nothing at or after its timestamp, never a test label. Stored per source set
as one sorted array of positives plus, per sample, the end offset of its history in it.

Content vectors (optional, `item_content` / `user_content`): the frozen aligned vectors `semid build` writes
(item_embeddings.parquet / user_embeddings.parquet), read once into an (n, D) tensor indexed per batch.

Scenarios (optional, `scenarios`): a `scenarios.parquet` (semid.scenarios.write) gives every user or item one
scenario; each split's rows get theirs once, as a tensor (`Batch.scenario`), and `DataSpec` names them.

Source-domain history (optional, `source_history`): the Amazon reader's source_history.parquet (Food events of the
Kitchen users) is merged into every history source set, so a sample's history holds the user's target *and*
source events strictly before its timestamp (positions in the user's whole sequence); `Batch.hist_type` says which
is which (HIST_TARGET / HIST_SOURCE): the "naive source history" arm of the cross-domain comparison.

DDP: the loaders shard themselves (train: each rank takes an equal share of the epoch's permutation; eval: rank r
takes batches r::world_size, disjoint and covering every sample once, so ranks may get unequal batch counts -- do not
sync inside eval steps). Run the Trainer with `use_distributed_sampler=False`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import lightning as L
import numpy as np
import polars as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ctr.batch import HIST_SOURCE, HIST_TARGET, NO_CODES, Batch, DataSpec
from semid import scenarios as SC
from semid import schema as S
from semid.errors import InputError
from semid.ids import read_table, sid_columns
from semid.io import read_meta

Split = Literal["train", "val", "test"]

SOURCE_HISTORY_NAME = "source_history"  # <prepared>/source_history.parquet (semid.amazon.SOURCE_HISTORY)

HISTORY_SOURCES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "val": ("train", "val"),
    "test": ("train", "val"),
}
"""The splits whose positives form a sample's history, per split of the sample (always strictly before it)."""


# -- entity tables ------------------------------------------------------------------------------------------


class Features(NamedTuple):
    tokens: Tensor  # (n, F, M) int64 token ids per feature, 0 = padding
    names: tuple[str, ...]
    vocab: tuple[int, ...]  # vocabulary size per feature, padding included


class SemanticIds(NamedTuple):
    codes: Tensor  # (n, L) int64
    sizes: tuple[int, ...]  # codebook size per level


@dataclass(frozen=True)
class Entities:
    """Per-entity tensors of one side (items or users), indexed by the dense id."""

    feats: Features
    sid: SemanticIds
    count: Tensor  # (n,) float32 train interactions
    bucket: Tensor  # (n,) int64 index into BUCKETS
    content: Tensor  # (n, D) float32 frozen content vector per id; (n, 0) when none was loaded


class History(NamedTuple):
    """Positives (of the splits in HISTORY_SOURCES) sorted by (user, timestamp, item), with a search key for
    'last positive before t'."""

    items: Tensor  # (P + 1,) int64 item id + 1, with a leading 0 so that index 0 is padding
    types: Tensor  # (P + 1,) int64 HIST_TARGET / HIST_SOURCE of each event (0 at the padding index)
    user_start: Tensor  # (n_users,) int64 offset of each user's first positive in the sorted array
    key: (
        np.ndarray
    )  # (P,) int64 user * (K + 1) + rank of the timestamp among the K distinct positive timestamps
    times: np.ndarray  # (K,) int64 distinct timestamps of train positives, sorted


@dataclass(frozen=True)
class SplitArrays:
    user: Tensor  # (N,) int64
    item: Tensor  # (N,) int64
    label: Tensor  # (N,) float32
    hist_end: Tensor  # (N,) int64 one past the last history positive of the sample in its History.items[1:]
    scenario: Tensor  # (N,) int64 scenario code of each row; empty when no scenario table was given


class ScenarioCodes(NamedTuple):
    """A scenario table as per-entity codes: `codes[id]` is the scenario of user / item `id`."""

    key: str  # schema.USER or schema.ITEM
    codes: Tensor  # (n_users or n_items,) int64
    names: tuple[str, ...]  # scenario code -> name


@dataclass(frozen=True)
class Tables:
    items: Entities
    users: Entities
    histories: dict[str, History]  # per split: the history its samples read (see HISTORY_SOURCES)
    splits: dict[str, SplitArrays]
    scenarios: ScenarioCodes | None = None
    data_hash: str | None = None  # the prepared dataset's fingerprint (items.parquet metadata)
    merged_source: bool = False  # histories hold source-domain events (Batch.hist_type is served)


# -- validation and reading ---------------------------------------------------------------------------------


def _require_file(path: Path, fix: str) -> Path:
    if not path.is_file():
        raise InputError("file not found", file=path, fix=fix)
    return path


def _require_columns(schema: pl.Schema, cols: list[str], path: Path) -> None:
    for col in cols:
        if col not in schema:
            raise InputError(
                f"missing column {col!r}; the file has {list(schema.names())}",
                file=path,
                column=col,
                fix="re-run `semid prepare` (or the stage that wrote this file)",
            )


def _read_entities(path: Path, key: str) -> pl.DataFrame:
    """An items/users table sorted by its dense id, checked to hold exactly the ids 0..n-1."""
    _require_columns(pl.read_parquet_schema(path), [key, S.TRAIN_COUNT, S.BUCKET], path)
    df = pl.read_parquet(path).sort(key)
    ids = df[key].to_numpy()
    if df[key].null_count() or not np.array_equal(ids, np.arange(df.height)):
        raise InputError(
            f"ids are not the dense codes 0..{df.height - 1} (one row per id)",
            file=path,
            column=key,
            fix="use the table `semid prepare` wrote, unmodified",
        )
    if df.height == 0:
        raise InputError("empty table", file=path, fix="re-run `semid prepare`")
    bad = df.filter(~pl.col(S.BUCKET).is_in(list(S.BUCKETS)) | pl.col(S.BUCKET).is_null())[S.BUCKET]
    if bad.len():
        raise InputError(
            f"unknown bucket values {bad.unique().head(5).to_list()}; expected {list(S.BUCKETS)}",
            file=path,
            column=S.BUCKET,
            fix="re-run `semid prepare`",
        )
    return df


def _feature_names(df: pl.DataFrame, path: Path) -> list[str]:
    """Side features: the metadata's "features" list, else every List(String) column."""
    meta = read_meta(path)
    if "features" not in meta:
        return [c for c, t in df.schema.items() if t == S.FEATURE_DTYPE]
    names = list(meta["features"])
    for name in names:
        if name not in df.columns:
            raise InputError(
                "side feature named in the file's metadata is missing",
                file=path,
                column=name,
                fix="re-run `semid prepare`",
            )
        if df.schema[name] != S.FEATURE_DTYPE:
            raise InputError(
                f"side feature has dtype {df.schema[name]}, expected {S.FEATURE_DTYPE}",
                file=path,
                column=name,
                fix="re-run `semid prepare`",
            )
    return names


def feature_tokens(df: pl.DataFrame, names: list[str], max_tokens: int) -> Features:
    """List(String) side features -> (n, F, M) token ids, M = min(max_tokens, longest list), at least 1.

    The vocabulary of a feature is every token in the column (before truncation), sorted; token k -> id k + 1,
    0 = padding. Lists keep their first M tokens in stored order.
    """
    n = df.height
    longest = max((int(df[c].list.len().max() or 0) for c in names), default=0)
    m = max(1, min(max_tokens, longest))
    tokens = np.zeros((n, len(names), m), dtype=np.int64)
    vocab = []
    for f, name in enumerate(names):  # over feature columns (a few), not rows
        long = (
            df.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), pl.col(name).alias("tok"))
            .explode("tok")
            .drop_nulls("tok")
            .with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over("row").alias("pos"))
        )
        values = long["tok"].unique().sort()
        vocab.append(values.len() + 1)
        long = long.filter(pl.col("pos") < m)
        code = long["tok"].cast(pl.Enum(values)).to_physical().cast(pl.Int64).to_numpy() + 1
        tokens[long["row"].to_numpy(), f, long["pos"].to_numpy()] = code
    return Features(torch.from_numpy(tokens), tuple(names), tuple(vocab))


def _few(ids: np.ndarray, raw: pl.Series, k: int = 5) -> str:
    shown = ids[:k]
    raws = raw.gather(shown[(shown >= 0) & (shown < raw.len())]).to_list() if raw.len() else []
    more = f" (+{len(ids) - k} more)" if len(ids) > k else ""
    return f"{shown.tolist()}{more}" + (f", raw ids {raws}" if raws else "")


def read_sids(
    path: str | Path | None,
    *,
    key: str,
    n: int,
    raw: pl.Series,
    default_file: str,
    data_hash: str | None = None,
) -> SemanticIds:
    """An ID table -> (n, L) codes by dense id (the dedup suffix left out) and per-level codebook sizes.

    None -> one level of code 0 with size 1 (ID-only baselines). A directory means <dir>/<default_file>. The table
    is read and validated by `semid.ids.read_table` (schema, codes within the metadata's codebook_sizes, unique
    ids, and built from the prepared dataset whose `data_hash` is given); this adds what a dense lookup needs:
    every id of the dataset present, none beyond it.
    """
    if path is None:
        return SemanticIds(torch.zeros(n, 1, dtype=torch.int64), (1,))
    path = Path(path)
    if path.is_dir():
        path = path / default_file
    table, meta = read_table(path, key=key, data_hash=data_hash)
    cols = sid_columns(table)
    ids = table[key].cast(pl.Int64).to_numpy()
    unknown = np.unique(ids[ids >= n])
    if unknown.size:
        raise InputError(
            f"{unknown.size} ids are unknown to the dataset ({n} ids, 0..{n - 1}): {unknown[:5].tolist()}",
            file=path,
            column=key,
            fix=f"build the ID table from this prepared dataset (its {key} must be the dataset's dense ids)",
        )
    missing = np.setdiff1d(np.arange(n), ids)
    if missing.size:
        raise InputError(
            f"{missing.size} of the dataset's {n} ids have no semantic ID: {_few(missing, raw)}",
            file=path,
            column=key,
            fix="rebuild the IDs for this prepared dataset (`semid build`), or add the new ids with `semid assign`",
        )
    codes = np.zeros((n, len(cols)), dtype=np.int64)
    codes[ids] = table.select(cols).to_numpy().astype(np.int64)
    return SemanticIds(torch.from_numpy(codes), tuple(int(s) for s in meta["codebook_sizes"]))


def read_content(
    path: str | Path | None, *, key: str, n: int, default_file: str, data_hash: str | None = None
) -> Tensor:
    """A `semid build` embeddings table (key | embedding) -> (n, D) float32 by dense id; None -> (n, 0).

    A directory means <dir>/<default_file>. Every id 0..n-1 must have exactly one finite vector of one length, and
    a table whose metadata names another prepared dataset (`data_hash`) is refused.
    """
    if path is None:
        return torch.zeros(n, 0)
    path = Path(path)
    if path.is_dir():
        path = path / default_file
    fix = f"point data.{key}_content to the {default_file} that `semid build` wrote for this prepared dataset"
    _require_file(path, fix)
    _require_columns(pl.read_parquet_schema(path), [key, S.EMBEDDING], path)
    built_from = read_meta(path).get("data_hash")
    if data_hash is not None and built_from is not None and built_from != data_hash:
        raise InputError(
            f"the content vectors were built from another prepared dataset (data_hash {str(built_from)[:12]}, "
            f"this dataset {data_hash[:12]})",
            file=path,
            column="data_hash",
            fix=fix,
        )
    df = pl.read_parquet(path, columns=[key, S.EMBEDDING])
    ids = df[key].cast(pl.Int64).to_numpy()
    emb = df[S.EMBEDDING]
    if not isinstance(emb.dtype, pl.List | pl.Array):
        raise InputError(
            f"dtype {emb.dtype}, expected a list or array of floats", file=path, column=S.EMBEDDING, fix=fix
        )
    if isinstance(emb.dtype, pl.List):
        lengths = emb.list.len().unique().to_list()
        if len(lengths) != 1 or emb.null_count():
            raise InputError(
                f"vectors of several lengths {sorted(x for x in lengths if x is not None)[:5]} or nulls",
                file=path,
                column=S.EMBEDDING,
                fix=fix,
            )
        values = emb.explode().cast(pl.Float32).to_numpy().reshape(df.height, lengths[0])
    else:
        values = emb.cast(pl.Array(pl.Float32, emb.dtype.size)).to_numpy()
    values = np.asarray(values, dtype=np.float32)  # (N, D)
    if values.ndim != 2 or not np.isfinite(values).all():
        raise InputError("non-finite or malformed vectors", file=path, column=S.EMBEDDING, fix=fix)
    if np.unique(ids).size != ids.size or ids.min(initial=0) < 0 or ids.max(initial=-1) >= n:
        raise InputError(
            f"ids must be unique dense ids 0..{n - 1} of this dataset", file=path, column=key, fix=fix
        )
    missing = np.setdiff1d(np.arange(n), ids)
    if missing.size:
        raise InputError(
            f"{missing.size} of the dataset's {n} ids have no content vector: {missing[:5].tolist()}",
            file=path,
            column=key,
            fix=fix,
        )
    out = np.zeros((n, values.shape[1]), dtype=np.float32)
    out[ids] = values
    return torch.from_numpy(out)


def _entities(df: pl.DataFrame, path: Path, max_tokens: int, sid: SemanticIds, content: Tensor) -> Entities:
    bucket = df[S.BUCKET].replace_strict(list(S.BUCKETS), list(range(len(S.BUCKETS))), return_dtype=pl.Int64)
    return Entities(
        feats=feature_tokens(df, _feature_names(df, path), max_tokens),
        sid=sid,
        count=torch.from_numpy(df[S.TRAIN_COUNT].fill_null(0).cast(pl.Float32).to_numpy().copy()),
        bucket=torch.from_numpy(bucket.to_numpy().copy()),
        content=content,
    )


def _read_split(path: Path, split: str, n_users: int, n_items: int) -> pl.DataFrame:
    cols = [S.USER, S.ITEM, S.LABEL, S.TIMESTAMP]
    _require_columns(pl.read_parquet_schema(path), cols, path)
    df = pl.read_parquet(path, columns=cols)
    if df.is_empty():
        raise InputError(
            f"the {split} split is empty", file=path, fix="re-run `semid prepare` with other split fractions"
        )
    for col in cols:
        if df[col].null_count():
            raise InputError("null values", file=path, column=col, fix="re-run `semid prepare`")
    bad = df.filter(~pl.col(S.LABEL).is_in([0, 1]))[S.LABEL].unique().head(5).to_list()
    if bad:
        raise InputError(
            f"labels must be 0 or 1; found {bad}", file=path, column=S.LABEL, fix="re-run `semid prepare`"
        )
    for col, n in ((S.USER, n_users), (S.ITEM, n_items)):
        out = df.filter((pl.col(col) < 0) | (pl.col(col) >= n))[col].unique().head(5).to_list()
        if out:
            raise InputError(
                f"ids unknown to the dataset ({n} ids in the entity table): {out}",
                file=path,
                column=col,
                fix="the split and the items/users tables must come from the same `semid prepare` run",
            )
    return df


# -- history ------------------------------------------------------------------------------------------------


def build_history(interactions: pl.DataFrame, n_users: int, source: pl.DataFrame | None = None) -> History:
    """Sort the positives of `interactions` (and every event of `source`, typed HIST_SOURCE) by (user, timestamp,
    item) into one array with per-user offsets."""
    pos = interactions.filter(pl.col(S.LABEL) == 1).select(
        pl.col(S.USER).cast(pl.Int64), pl.col(S.ITEM).cast(pl.Int64), pl.col(S.TIMESTAMP).cast(pl.Int64)
    )
    events = pos.with_columns(pl.lit(HIST_TARGET, pl.Int64).alias("_type"))
    if source is not None:
        src = source.select(
            pl.col(S.USER).cast(pl.Int64), pl.col(S.ITEM).cast(pl.Int64), pl.col(S.TIMESTAMP).cast(pl.Int64)
        )
        events = pl.concat([events, src.with_columns(pl.lit(HIST_SOURCE, pl.Int64).alias("_type"))])
    user = events[S.USER].to_numpy()
    ts = events[S.TIMESTAMP].to_numpy()
    item = events[S.ITEM].to_numpy()
    kind = events["_type"].to_numpy()
    order = np.lexsort((item, ts, user))  # last key is the primary one
    user, ts, item, kind = user[order], ts[order], item[order], kind[order]
    times = np.unique(ts)
    # a combined key that sorts like (user, timestamp) without overflow: the timestamp is replaced by its rank
    key = user * (times.size + 1) + np.searchsorted(times, ts)
    user_start = np.searchsorted(key, np.arange(n_users, dtype=np.int64) * (times.size + 1), side="left")
    return History(
        items=torch.from_numpy(np.concatenate([[0], item + 1]).astype(np.int64)),
        types=torch.from_numpy(np.concatenate([[0], kind]).astype(np.int64)),
        user_start=torch.from_numpy(user_start.astype(np.int64)),
        key=key,
        times=times,
    )


def history_end(history: History, user: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Per sample, one past the position of the user's last history positive with timestamp < ts."""
    rank = np.searchsorted(history.times, ts, side="left")  # distinct positive timestamps strictly before ts
    query = user.astype(np.int64) * (history.times.size + 1) + rank
    return np.searchsorted(history.key, query, side="left")


def history_slots(history: History, user: Tensor, end: Tensor, length: int) -> Tensor:
    """(B,) users and history ends -> (B, length) indices into History.items / types of the last events, most
    recent first, 0 = pad."""
    pos = end[:, None] - 1 - torch.arange(length)  # (B, H) positions in the sorted positives
    valid = pos >= history.user_start[user][:, None]  # (B, H)
    return torch.where(valid, pos + 1, 0)  # (B, H)


def gather_history(history: History, user: Tensor, end: Tensor, length: int) -> Tensor:
    """(B,) users and history ends -> (B, length) item id + 1 of the last positives, most recent first, 0 = pad."""
    return history.items[history_slots(history, user, end, length)]  # (B, H)


def read_source_history(
    path: str | Path, *, n_users: int, n_items: int, data_hash: str | None
) -> pl.DataFrame:
    """The Amazon reader's source_history.parquet -> (user_id, item_id, timestamp) of the dataset's users (events
    of users without target-domain data, user_id null, are dropped), validated against the prepared dataset."""
    path = Path(path)
    if path.is_dir():
        path = path / f"{SOURCE_HISTORY_NAME}.parquet"
    fix = "point data.source_history to the source_history.parquet that `semid prepare` wrote (amazon-food-kitchen)"
    _require_file(path, fix)
    _require_columns(pl.read_parquet_schema(path), [S.USER, S.ITEM, S.TIMESTAMP], path)
    built_from = read_meta(path).get("data_hash")
    if data_hash is not None and built_from is not None and built_from != data_hash:
        raise InputError(
            "the source history belongs to another prepared dataset (data_hash differs)", file=path, fix=fix
        )
    df = pl.read_parquet(path, columns=[S.USER, S.ITEM, S.TIMESTAMP]).drop_nulls(S.USER)
    if df[S.ITEM].null_count() or df[S.TIMESTAMP].null_count():
        raise InputError("null item ids or timestamps", file=path, fix=fix)
    for col, n in ((S.USER, n_users), (S.ITEM, n_items)):
        out = df.filter((pl.col(col) < 0) | (pl.col(col) >= n))[col].unique().head(5).to_list()
        if out:
            raise InputError(f"ids unknown to the dataset ({n} ids): {out}", file=path, column=col, fix=fix)
    return df


def read_scenarios(path: str | Path, *, n_users: int, n_items: int, data_hash: str | None) -> ScenarioCodes:
    """A scenarios.parquet (semid.scenarios.read: validated, refused when built from another prepared dataset) ->
    one code per user / item id; every id of the dataset must have one."""
    path = Path(path)
    if path.is_dir():
        path = path / SC.SCENARIOS_FILE
    table = SC.read(path, data_hash=data_hash)
    n = n_users if table.key == S.USER else n_items
    keys = table.table[table.key].cast(pl.Int64).to_numpy()
    if keys.size != n or (keys.size and (keys.min() != 0 or keys.max() != n - 1)):
        raise InputError(
            f"the scenario table covers {keys.size} of the dataset's {n} {table.key} ids",
            file=path,
            column=table.key,
            fix="rebuild scenarios.parquet from this prepared directory (semid.scenarios.write)",
        )
    codes = np.zeros(n, dtype=np.int64)
    codes[keys] = table.table[SC.SCENARIO].cast(pl.Int64).to_numpy()
    return ScenarioCodes(table.key, torch.from_numpy(codes), table.names)


# -- batches ------------------------------------------------------------------------------------------------


def load_tables(
    data_dir: str | Path,
    *,
    item_sids: str | Path | None = None,
    user_sids: str | Path | None = None,
    max_tokens_per_feature: int = 8,
    item_content: str | Path | None = None,
    user_content: str | Path | None = None,
    scenarios: str | Path | None = None,
    source_history: str | Path | None = None,
) -> Tables:
    """Validate and read a prepared dataset directory and its ID tables into tensors."""
    root = Path(data_dir)
    fix = "run `semid prepare` first, or point data_dir to its output directory"
    if not root.is_dir():
        raise InputError("prepared dataset directory not found", file=root, fix=fix)
    items_path = _require_file(root / S.ITEMS_FILE, fix)
    users_path = _require_file(root / S.USERS_FILE, fix)
    split_paths = {s: _require_file(root / S.split_file(s), fix) for s in S.SPLITS}
    items = _read_entities(items_path, S.ITEM)
    users = _read_entities(users_path, S.USER)
    raw_items = items[S.RAW_ITEM] if S.RAW_ITEM in items.columns else pl.Series([], dtype=pl.String)
    raw_users = users[S.RAW_USER] if S.RAW_USER in users.columns else pl.Series([], dtype=pl.String)
    splits = {s: _read_split(p, s, users.height, items.height) for s, p in split_paths.items()}
    # the prepared dataset's fingerprint: an ID table built from another dataset (same counts or not) is refused
    data_hash = read_meta(items_path).get("data_hash")
    item_sid = read_sids(
        item_sids,
        key=S.ITEM,
        n=items.height,
        raw=raw_items,
        default_file=S.ITEM_SIDS_FILE,
        data_hash=data_hash,
    )
    user_sid = read_sids(
        user_sids,
        key=S.USER,
        n=users.height,
        raw=raw_users,
        default_file=S.USER_SIDS_FILE,
        data_hash=data_hash,
    )

    contents = {
        key: read_content(path, key=key, n=n, default_file=file, data_hash=data_hash)
        for key, path, n, file in (
            (S.ITEM, item_content, items.height, S.ITEM_EMB_FILE),
            (S.USER, user_content, users.height, S.USER_EMB_FILE),
        )
    }

    scenario_codes = (
        None
        if scenarios is None
        else read_scenarios(scenarios, n_users=users.height, n_items=items.height, data_hash=data_hash)
    )
    source = (
        None
        if source_history is None
        else read_source_history(
            source_history, n_users=users.height, n_items=items.height, data_hash=data_hash
        )
    )
    by_sources = {
        sources: build_history(
            pl.concat([splits[s] for s in sources], how="vertical_relaxed"), users.height, source
        )
        for sources in set(HISTORY_SOURCES.values())
    }
    histories = {split: by_sources[HISTORY_SOURCES[split]] for split in splits}
    arrays = {}
    for split, df in splits.items():
        user = torch.from_numpy(df[S.USER].cast(pl.Int64).to_numpy().copy())
        item = torch.from_numpy(df[S.ITEM].cast(pl.Int64).to_numpy().copy())
        end = history_end(histories[split], user.numpy(), df[S.TIMESTAMP].cast(pl.Int64).to_numpy())
        if scenario_codes is None:
            scenario = NO_CODES
        else:
            scenario = scenario_codes.codes[user if scenario_codes.key == S.USER else item]  # (N,)
        arrays[split] = SplitArrays(
            user=user,
            item=item,
            label=torch.from_numpy(df[S.LABEL].cast(pl.Float32).to_numpy().copy()),
            hist_end=torch.from_numpy(end.astype(np.int64)),
            scenario=scenario,
        )
    return Tables(
        items=_entities(items, items_path, max_tokens_per_feature, item_sid, contents[S.ITEM]),
        users=_entities(users, users_path, max_tokens_per_feature, user_sid, contents[S.USER]),
        histories=histories,
        splits=arrays,
        scenarios=scenario_codes,
        data_hash=data_hash,
        merged_source=source is not None,
    )


class SplitData(Dataset):
    """One split; indexing with a tensor of sample indices returns the whole `Batch` (no collate)."""

    def __init__(self, tables: Tables, split: str, history_len: int) -> None:
        self.tables = tables
        self.arrays = tables.splits[split]
        self.split = split
        self.history_len = history_len

    def __len__(self) -> int:
        return self.arrays.user.numel()

    def __getitem__(self, idx: Tensor) -> Batch:
        t, a = self.tables, self.arrays
        user, item = a.user[idx], a.item[idx]  # (B,)
        history = t.histories[self.split]
        slots = history_slots(history, user, a.hist_end[idx], self.history_len)  # (B, H)
        hist = history.items[slots]  # (B, H)
        hist_idx, hist_real = (hist - 1).clamp(min=0), hist > 0  # (B, H)
        hist_sid = t.items.sid.codes[hist_idx] * hist_real.unsqueeze(-1)  # (B, H, L_i)
        return Batch(
            user=user,
            item=item,
            label=a.label[idx],
            user_sid=t.users.sid.codes[user],  # (B, L_u)
            item_sid=t.items.sid.codes[item],  # (B, L_i)
            user_count=t.users.count[user],
            item_count=t.items.count[item],
            user_feats=t.users.feats.tokens[user],  # (B, F_u, M_u)
            item_feats=t.items.feats.tokens[item],  # (B, F_i, M_i)
            hist_item=hist,
            hist_item_sid=hist_sid,
            hist_item_count=t.items.count[hist_idx] * hist_real,  # (B, H)
            user_bucket=t.users.bucket[user],
            item_bucket=t.items.bucket[item],
            user_content=t.users.content[user],  # (B, D_u), (B, 0) when none
            item_content=t.items.content[item],  # (B, D_i)
            scenario=a.scenario[idx] if a.scenario.numel() else NO_CODES,  # (B,) or empty
            hist_type=history.types[slots] if t.merged_source else NO_CODES,  # (B, H) or empty
        )


class IndexBatches(Sampler[Tensor]):
    """Yields index tensors, one per batch, for this rank.

    shuffle=True (train): a permutation seeded by (seed, epoch); rank r takes every world_size-th index of it,
    cut to n // world_size so that every rank runs the same number of steps (world_size 1 serves every sample).
    shuffle=False (eval): file order in batches; rank r takes batches r::world_size (disjoint, covering all).
    """

    def __init__(
        self, n: int, *, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.n, self.batch_size, self.shuffle = n, batch_size, shuffle
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at the start of every epoch (the train order depends on it)."""
        self.epoch = epoch

    def _batches(self) -> list[Tensor]:
        if self.shuffle:
            perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
            mine = torch.from_numpy(perm[self.rank :: self.world_size][: self.n // self.world_size])
            return list(mine.split(self.batch_size))
        return list(torch.arange(self.n).split(self.batch_size))[self.rank :: self.world_size]

    def __iter__(self):
        yield from self._batches()

    def __len__(self) -> int:
        if self.shuffle:
            return math.ceil((self.n // self.world_size) / self.batch_size)
        return len(range(self.rank, math.ceil(self.n / self.batch_size), self.world_size))


def _whole_batch(batch: Batch) -> Batch:
    return batch


class CTRDataModule(L.LightningDataModule):
    """Serves `Batch`es of a prepared dataset; `spec` tells the model the cardinalities (link it in LightningCLI)."""

    def __init__(
        self,
        data_dir: str,
        item_sids: str | None = None,
        user_sids: str | None = None,
        batch_size: int = 2048,
        eval_batch_size: int = 8192,
        history_len: int = 20,
        max_tokens_per_feature: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        predict_split: Literal["val", "test"] = "test",
        item_content: str | None = None,
        user_content: str | None = None,
        scenarios: str | None = None,
        source_history: str | None = None,
    ) -> None:
        """
        Args:
            data_dir: a prepared dataset directory (`semid prepare` output).
            item_sids: item ID table (item_sids.parquet, or the directory holding it); None = one constant code.
            user_sids: user ID table (user_sids.parquet, or its directory); None = one constant code.
            batch_size: training batch size (per rank).
            eval_batch_size: validation / test / predict batch size.
            history_len: number of past positives per sample (train ones for train samples; train and val ones
                for val and test samples; always strictly before the sample).
            max_tokens_per_feature: multi-valued side features keep at most this many tokens.
            num_workers: DataLoader worker processes (0 = gather in the main process, usually fastest).
            seed: seeds the per-epoch shuffling.
            predict_split: the split `predict_dataloader` serves.
            item_content: frozen item content vectors (`semid build`'s item_embeddings.parquet, or the folder
                holding it), served as `Batch.item_content` (ContentFeatures); None = none.
            user_content: the same for users (user_embeddings.parquet).
            scenarios: a scenarios.parquet (semid.scenarios.write, or the folder holding it): every row gets its
                user's / item's scenario as `Batch.scenario` (STAR, MetaLayers, per-scenario metrics); refused when
                built from another prepared dataset. None = no scenarios.
            source_history: the amazon-food-kitchen source_history.parquet (or the prepared folder holding it):
                the users' source-domain (Food) events join their histories, strictly before each sample's
                timestamp, typed in `Batch.hist_type` (the naive source-history arm). None = target events only.
        """
        super().__init__()
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("eval_batch_size", eval_batch_size, 1),
            ("history_len", history_len, 0),
            ("max_tokens_per_feature", max_tokens_per_feature, 1),
            ("num_workers", num_workers, 0),
        ):
            if value < low:
                raise InputError(f"{name}={value} must be >= {low}", fix=f"set data.{name} to at least {low}")
        if predict_split not in ("val", "test"):
            raise InputError(
                f"predict_split={predict_split!r}", fix="set data.predict_split to 'val' or 'test'"
            )
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.item_sids = item_sids
        self.user_sids = user_sids
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.history_len = history_len
        self.max_tokens_per_feature = max_tokens_per_feature
        self.num_workers = num_workers
        self.seed = seed
        self.predict_split = predict_split
        self.item_content = item_content
        self.user_content = user_content
        self.scenarios = scenarios
        self.source_history = source_history
        self.tables: Tables | None = None

    def setup(self, stage: str | None = None) -> None:
        """Read everything once; later calls (every Trainer stage, `spec`) return at once."""
        if self.tables is None:
            self.tables = load_tables(
                self.data_dir,
                item_sids=self.item_sids,
                user_sids=self.user_sids,
                max_tokens_per_feature=self.max_tokens_per_feature,
                item_content=self.item_content,
                user_content=self.user_content,
                scenarios=self.scenarios,
                source_history=self.source_history,
            )

    @property
    def spec(self) -> DataSpec:
        self.setup()
        items, users = self.tables.items, self.tables.users
        return DataSpec(
            n_users=users.count.numel(),
            n_items=items.count.numel(),
            user_feature_names=users.feats.names,
            item_feature_names=items.feats.names,
            user_feature_vocab=users.feats.vocab,
            item_feature_vocab=items.feats.vocab,
            user_sid_sizes=users.sid.sizes,
            item_sid_sizes=items.sid.sizes,
            history_len=self.history_len,
            user_count_max=float(users.count.max()),
            item_count_max=float(items.count.max()),
            user_content_dim=int(users.content.shape[1]),
            item_content_dim=int(items.content.shape[1]),
            n_scenarios=0 if self.tables.scenarios is None else len(self.tables.scenarios.names),
            scenario_names=() if self.tables.scenarios is None else self.tables.scenarios.names,
            data_hash=self.tables.data_hash,
        )

    @property
    def world_size(self) -> int:
        return int(self.trainer.world_size) if self.trainer is not None else 1

    @property
    def rank(self) -> int:
        return int(self.trainer.global_rank) if self.trainer is not None else 0

    def dataset(self, split: Split) -> SplitData:
        self.setup()
        return SplitData(self.tables, split, self.history_len)

    def loader(
        self, split: Split, *, shuffle: bool, rank: int | None = None, world_size: int | None = None
    ) -> DataLoader:
        """Batches of `split` for one rank (default: the trainer's rank and world size, else 0 and 1)."""
        rank = self.rank if rank is None else rank
        world_size = self.world_size if world_size is None else world_size
        if world_size > 1 and self.trainer is not None:
            connector = getattr(self.trainer, "_accelerator_connector", None)
            if getattr(connector, "use_distributed_sampler", False):
                raise InputError(
                    "CTRDataModule shards batches by rank itself; Lightning's distributed sampler would re-shard them",
                    fix="create the Trainer with use_distributed_sampler=False (trainer.use_distributed_sampler: false)",
                )
        data = self.dataset(split)
        sampler = IndexBatches(
            len(data),
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            shuffle=shuffle,
            seed=self.seed,
            rank=rank,
            world_size=world_size,
        )
        return DataLoader(
            data,
            sampler=sampler,
            batch_size=None,
            collate_fn=_whole_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.loader(self.predict_split, shuffle=False)
