"""Reading and validating the files a CTR run reads: the prepared entity and split tables, ID tables, content
vectors, scenario tables, the source-domain history and imagined behaviours. Every user-fixable problem is one
InputError."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import Tensor

from ctr.data.arrays import Entities, Features, ImaginedItems, ScenarioCodes, SemanticIds
from semid import imagine as IM
from semid import scenarios as SC
from semid import schema as S
from semid.errors import InputError
from semid.ids import read_table, sid_columns
from semid.io import read_meta

SOURCE_HISTORY_NAME = "source_history"  # <prepared>/source_history.parquet (semid.amazon.SOURCE_HISTORY)


def require_file(path: Path, fix: str) -> Path:
    """`path` if it is a file; else an InputError with `fix`."""
    if not path.is_file():
        raise InputError("file not found", file=path, fix=fix)
    return path


def require_columns(schema: pl.Schema, cols: list[str], path: Path) -> None:
    """Refuse a file whose schema lacks one of `cols`."""
    for col in cols:
        if col not in schema:
            raise InputError(
                f"missing column {col!r}; the file has {list(schema.names())}",
                file=path,
                column=col,
                fix="re-run `semid prepare` (or the stage that wrote this file)",
            )


def require_same_data(path: Path, data_hash: str | None, what: str, fix: str) -> None:
    """InputError unless the file's recorded data_hash (if any) is the prepared dataset's (`what`: "the X was")."""
    built_from = read_meta(path).get("data_hash")
    if data_hash is not None and built_from is not None and built_from != data_hash:
        raise InputError(
            f"{what} built from another prepared dataset (data_hash {str(built_from)[:12]}, this dataset "
            f"{data_hash[:12]})",
            file=path,
            column="data_hash",
            fix=fix,
        )


def read_entities(path: Path, key: str) -> pl.DataFrame:
    """An items/users table sorted by its dense id, checked to hold exactly the ids 0..n-1."""
    require_columns(pl.read_parquet_schema(path), [key, S.TRAIN_COUNT, S.BUCKET], path)
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


def require_every_id(
    ids: np.ndarray,
    n: int,
    *,
    path: Path,
    key: str,
    what: str,
    fix: str,
    shown: Callable[[np.ndarray], str] = lambda missing: str(missing[:5].tolist()),
) -> None:
    """Refuse a per-id table (`ids` of its rows) in which one of the dataset's ids 0..n-1 has no `what`."""
    missing = np.setdiff1d(np.arange(n), ids)
    if missing.size:
        raise InputError(
            f"{missing.size} of the dataset's {n} ids have no {what}: {shown(missing)}",
            file=path,
            column=key,
            fix=fix,
        )


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
    require_every_id(
        ids,
        n,
        path=path,
        key=key,
        what="semantic ID",
        shown=lambda missing: _few(missing, raw),
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
    require_file(path, fix)
    require_columns(pl.read_parquet_schema(path), [key, S.EMBEDDING], path)
    require_same_data(path, data_hash, "the content vectors were", fix)
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
    require_every_id(ids, n, path=path, key=key, what="content vector", fix=fix)
    out = np.zeros((n, values.shape[1]), dtype=np.float32)
    out[ids] = values
    return torch.from_numpy(out)


def entity_arrays(
    df: pl.DataFrame, path: Path, max_tokens: int, sid: SemanticIds, content: Tensor
) -> Entities:
    """One checked entity table (`read_entities`) plus its semantic IDs and content vectors -> `Entities`."""
    bucket = df[S.BUCKET].replace_strict(list(S.BUCKETS), list(range(len(S.BUCKETS))), return_dtype=pl.Int64)
    return Entities(
        feats=feature_tokens(df, _feature_names(df, path), max_tokens),
        sid=sid,
        count=torch.from_numpy(df[S.TRAIN_COUNT].fill_null(0).cast(pl.Float32).to_numpy().copy()),
        bucket=torch.from_numpy(bucket.to_numpy().copy()),
        content=content,
    )


def read_split(path: Path, split: str, n_users: int, n_items: int) -> pl.DataFrame:
    """One split's (user, item, label, timestamp) rows, checked: non-empty, no nulls, 0/1 labels, known ids."""
    cols = [S.USER, S.ITEM, S.LABEL, S.TIMESTAMP]
    require_columns(pl.read_parquet_schema(path), cols, path)
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


def read_source_history(
    path: str | Path, *, n_users: int, n_items: int, data_hash: str | None
) -> pl.DataFrame:
    """The Amazon reader's source_history.parquet -> (user_id, item_id, timestamp) of the dataset's users (events
    of users without target-domain data, user_id null, are dropped), validated against the prepared dataset."""
    path = Path(path)
    if path.is_dir():
        path = path / f"{SOURCE_HISTORY_NAME}.parquet"
    fix = "point data.source_history to the source_history.parquet that `semid prepare` wrote (amazon-food-kitchen)"
    require_file(path, fix)
    require_columns(pl.read_parquet_schema(path), [S.USER, S.ITEM, S.TIMESTAMP], path)
    require_same_data(path, data_hash, "the source history was", fix)
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


def read_imagined(path: str | Path, *, n_users: int, n_items: int, data_hash: str | None) -> ImaginedItems:
    """A `semid imagine` imagined.parquet (or the folder holding it) -> each user's imagined items in rank order.

    Checked before any training: the IMAGINED_SCHEMA columns without nulls, user and item ids of this dataset, one
    row per (user, rank), finite confidences >= 0, every row flagged imagined, and built from this prepared dataset
    (the `data_hash` `semid imagine` records). K is the most rows of one user; ranks are compacted per user (a gap
    leaves no empty slot), users without rows read zeros.
    """
    path = Path(path)
    if path.is_dir():
        path = path / IM.IMAGINED_FILE
    fix = (
        f"point data.imagined to the {IM.IMAGINED_FILE} that `semid imagine` wrote for this prepared dataset"
    )
    require_file(path, fix)
    cols = [S.USER, IM.RANK, S.ITEM, IM.CONFIDENCE]
    schema = pl.read_parquet_schema(path)
    for col in cols:
        if col not in schema:
            raise InputError(
                f"missing column {col!r}; the file has {list(schema.names())}", file=path, column=col, fix=fix
            )
        numeric = schema[col].is_float() if col == IM.CONFIDENCE else schema[col].is_integer()
        if not numeric:
            want = "a float" if col == IM.CONFIDENCE else "an integer"
            raise InputError(f"dtype {schema[col]}, expected {want}", file=path, column=col, fix=fix)
    require_same_data(path, data_hash, "the imagined behaviours were", fix)
    flag = [IM.IMAGINED] if IM.IMAGINED in schema else []
    df = pl.read_parquet(path, columns=cols + flag)
    if df.is_empty():
        raise InputError("no imagined rows", file=path, fix=fix)
    for col in cols + flag:
        if df[col].null_count():
            raise InputError("null values", file=path, column=col, fix=fix)
    if flag and not df[IM.IMAGINED].all():
        raise InputError("rows not flagged imagined", file=path, column=IM.IMAGINED, fix=fix)
    for col, n in ((S.USER, n_users), (S.ITEM, n_items)):
        out = df.filter((pl.col(col) < 0) | (pl.col(col) >= n))[col].unique().head(5).to_list()
        if out:
            raise InputError(
                f"ids unknown to the dataset ({n} ids, 0..{n - 1}): {out}", file=path, column=col, fix=fix
            )
    conf = df[IM.CONFIDENCE].cast(pl.Float64)
    if not (conf.is_finite() & (conf >= 0)).all():
        raise InputError("confidences must be finite and >= 0", file=path, column=IM.CONFIDENCE, fix=fix)
    if df.select(S.USER, IM.RANK).is_duplicated().any():
        raise InputError("several rows share one (user_id, rank)", file=path, column=IM.RANK, fix=fix)
    df = df.sort(S.USER, IM.RANK).with_columns(pl.int_range(pl.len()).over(S.USER).alias("_slot"))
    k = int(df["_slot"].max()) + 1
    rows, slots = df[S.USER].cast(pl.Int64).to_numpy(), df["_slot"].cast(pl.Int64).to_numpy()
    items = np.zeros((n_users, k), dtype=np.int64)
    confidence = np.zeros((n_users, k), dtype=np.float32)
    items[rows, slots] = df[S.ITEM].cast(pl.Int64).to_numpy() + 1
    confidence[rows, slots] = df[IM.CONFIDENCE].cast(pl.Float32).to_numpy()
    return ImaginedItems(torch.from_numpy(items), torch.from_numpy(confidence))
