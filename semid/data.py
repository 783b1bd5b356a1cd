"""Prepared datasets: read raw interaction/item/user files, validate, label, split by time, bucket by activity.

`prepare` is the first stage of the pipeline. It turns the user's files (parquet, CSV/TSV or RecBole atomic files)
plus a column mapping (`semid.datasets.Columns`) into a prepared dataset directory whose files follow
`semid.schema`: items.parquet, users.parquet, train/val/test.parquet. Every check a user can fail runs before the
directory is written, and the directory is staged then renamed, so a failure leaves what was there before.
"""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from semid import schema as S
from semid.datasets import Columns
from semid.errors import InputError
from semid.io import sha256_file, sha256_json, staged_dir, write_json, write_parquet


@dataclass(frozen=True)
class SplitConfig:
    mode: Literal["temporal", "leave_last_out"] = "temporal"
    """temporal: one global cut by timestamp, so val and test are the future of train (no leakage).
    leave_last_out: per user, the last interaction is test, the one before it val (users with < 3 stay in train)."""
    val_frac: float = 0.1
    test_frac: float = 0.1


@dataclass(frozen=True)
class BucketConfig:
    """Activity buckets by train interaction count: entities ranked by count (ties by id), the top `head` fraction
    is head, the next `torso` fraction torso, the rest tail; entities absent from train are cold."""

    head: float = 0.2
    torso: float = 0.3


@dataclass(frozen=True)
class PrepareConfig:
    label_threshold: float = 4.0
    """label = rating >= label_threshold (ignored when the mapping names an explicit label column)."""
    split: SplitConfig = field(default_factory=SplitConfig)
    buckets: BucketConfig = field(default_factory=BucketConfig)


@dataclass(frozen=True)
class RawFiles:
    inter: Path
    item: Path
    user: Path | None = None


# -- reading ------------------------------------------------------------------------------------------------


def read_raw(path: str | Path) -> pl.DataFrame:
    """Read a parquet, CSV/TSV or RecBole atomic file; RecBole's `name:type` header suffixes are stripped.

    Text formats are read as strings (types are checked and cast per column later, with errors naming the column).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(
            "file not found", file=path, fix="check the path (relative paths are taken from the cwd)"
        )
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pl.read_parquet(path)
        else:
            sep = "," if suffix == ".csv" else "\t"
            df = pl.read_csv(path, separator=sep, infer_schema=False, quote_char=None if sep == "\t" else '"')
    except (pl.exceptions.PolarsError, OSError) as err:
        raise InputError(
            f"cannot be read: {err}", file=path, fix="pass a parquet, CSV, TSV or RecBole file"
        ) from err
    return df.rename({c: c.split(":", 1)[0] for c in df.columns})


def _require(df: pl.DataFrame, cols: list[str | None], path: Path, what: str) -> None:
    for col in cols:
        if col is not None and col not in df.columns:
            raise InputError(
                f"missing column {col!r} ({what}); the file has {df.columns}",
                file=path,
                column=col,
                fix="rename the column in the file or map it in the column mapping (e.g. `columns.user: <name>`)",
            )


def _cast(df: pl.DataFrame, col: str, dtype: pl.DataType, path: Path) -> pl.Series:
    """Cast one column strictly; strings like '1.0' become integers through Float64."""
    series = df[col]
    try:
        if dtype.is_integer() and series.dtype == pl.String:
            return series.cast(pl.Float64, strict=True).cast(dtype, strict=True)
        return series.cast(dtype, strict=True)
    except pl.exceptions.PolarsError as err:
        bad = (
            df.filter(series.cast(pl.Float64, strict=False).is_null() & series.is_not_null())[col]
            .head(3)
            .to_list()
        )
        raise InputError(
            f"values are not {dtype} (e.g. {bad})",
            file=path,
            column=col,
            fix=f"make {col!r} numeric, without gaps",
        ) from err


def _string_keys(df: pl.DataFrame, key: str, path: Path, what: str) -> pl.DataFrame:
    """The entity table with its key column as strings, after checking the key is unique."""
    df = df.with_columns(pl.col(key).cast(pl.String))
    dup = df.filter(pl.col(key).is_duplicated())[key].unique().head(5).to_list()
    if dup:
        raise InputError(
            f"duplicate {what} ids, e.g. {dup}", file=path, column=key, fix=f"keep one row per {what} id"
        )
    return df


def _dense_ids(raw: pl.Series) -> pl.DataFrame:
    """raw id -> dense Int32 code in order of the raw id (numeric order when every id is a number)."""
    uniq = raw.unique()
    numeric = uniq.cast(pl.Float64, strict=False)
    order = numeric.arg_sort() if numeric.null_count() == 0 else uniq.arg_sort()
    uniq = uniq.gather(order)
    return pl.DataFrame({"raw": uniq, "code": pl.int_range(len(uniq), dtype=pl.Int32, eager=True)})


# -- content ------------------------------------------------------------------------------------------------


def _as_string(df: pl.DataFrame, col: str, cols: Columns) -> pl.Expr:
    """One column rendered as text: value maps applied, lists joined with ', ', nulls as 'unknown'."""
    expr = pl.col(col)
    if df.schema[col] != pl.String and not isinstance(df.schema[col], pl.List):
        expr = expr.cast(pl.String)
    if col in cols.value_maps:
        expr = expr.replace(cols.value_maps[col])
    if col in cols.multi_valued and df.schema[col] == pl.String:
        expr = expr.str.split(cols.multi_value_separator).list.eval(pl.element().filter(pl.element() != ""))
    if isinstance(df.schema[col], pl.List) or col in cols.multi_valued:
        expr = expr.list.eval(pl.element().cast(pl.String)).list.join(", ")
    return pl.when(expr.is_null() | (expr == "")).then(pl.lit("unknown")).otherwise(expr)


def render_text(df: pl.DataFrame, template: str, cols: Columns, path: Path) -> pl.Expr:
    """A `str.format`-style template over columns as one vectorised concat expression."""
    parts: list[pl.Expr] = []
    for literal, name, spec, _ in string.Formatter().parse(template):
        if literal:
            parts.append(pl.lit(literal))
        if name is not None:
            if spec:
                raise InputError(
                    f"format spec {spec!r} is not supported in the text template",
                    file=path,
                    column=name,
                    fix="use plain {column} placeholders",
                )
            _require(df, [name], path, "named in the text template")
            parts.append(_as_string(df, name, cols))
    return pl.concat_str(parts) if parts else pl.lit("")


def resolve_image_paths(paths: list[str | None], base: Path) -> tuple[list[str | None], list[str]]:
    """Image paths made absolute (relative ones are taken from `base`, the items file's folder; empty -> None),
    and those of them that are not files."""
    resolved = [
        None if p is None or not p.strip() else str(Path(p) if Path(p).is_absolute() else base / p)
        for p in paths
    ]
    return resolved, [p for p in resolved if p is not None and not Path(p).is_file()]


def _all_empty(df: pl.DataFrame, names: list[str]) -> pl.Expr:
    """True where every one of the text columns is null or blank: such an item has no content to encode."""
    empty = []
    for name in names:
        col = pl.col(name)
        if isinstance(df.schema[name], pl.List):
            empty.append(col.is_null() | (col.list.len() == 0))
        else:
            empty.append(col.is_null() | (col.cast(pl.String).str.strip_chars() == ""))
    return pl.all_horizontal(empty) if empty else pl.lit(True)


def _features(df: pl.DataFrame, names: list[str], cols: Columns) -> list[pl.Expr]:
    """Side features as List(String) of raw tokens (value maps applied; a single value is a list of one)."""
    out = []
    for name in names:
        expr = pl.col(name)
        if isinstance(df.schema[name], pl.List):
            expr = expr.list.eval(pl.element().cast(pl.String))
        else:
            expr = expr.cast(pl.String)
            if name in cols.value_maps:
                expr = expr.replace(cols.value_maps[name])
            if name in cols.multi_valued:
                expr = expr.str.split(cols.multi_value_separator)
            else:
                expr = pl.concat_list(expr)
        out.append(
            expr.list.eval(pl.element().filter(pl.element().is_not_null() & (pl.element() != ""))).alias(name)
        )
    return out


# -- splitting and activity ---------------------------------------------------------------------------------


def split_interactions(inter: pl.DataFrame, cfg: SplitConfig) -> dict[str, pl.DataFrame]:
    """train/val/test by time. `inter` has dense ids, label and timestamp."""
    if not (0 <= cfg.val_frac < 1 and 0 < cfg.test_frac < 1 and cfg.val_frac + cfg.test_frac < 1):
        raise InputError(
            f"bad split fractions val={cfg.val_frac} test={cfg.test_frac}",
            fix="use 0 <= val_frac, 0 < test_frac and val_frac + test_frac < 1",
        )
    inter = inter.sort([S.TIMESTAMP, S.USER, S.ITEM])
    if cfg.mode == "temporal":
        n = inter.height
        n_train = int(round(n * (1 - cfg.val_frac - cfg.test_frac)))
        n_val = int(round(n * cfg.val_frac))
        pos = pl.int_range(pl.len())
        part = pl.when(pos < n_train).then(pl.lit("train")).when(pos < n_train + n_val).then(pl.lit("val"))
        inter = inter.with_columns(part.otherwise(pl.lit("test")).alias("_split"))
    else:
        from_end = pl.int_range(pl.len()).reverse().over(S.USER)  # 0 = the user's last interaction
        n_user = pl.len().over(S.USER)
        part = (
            pl.when((n_user >= 3) & (from_end == 0))
            .then(pl.lit("test"))
            .when((n_user >= 3) & (from_end == 1))
            .then(pl.lit("val"))
            .otherwise(pl.lit("train"))
        )
        inter = inter.with_columns(part.alias("_split"))
    parts = inter.partition_by("_split", as_dict=True, include_key=False)
    splits = {name: parts.get((name,), inter.clear().drop("_split")) for name in S.SPLITS}
    if cfg.mode == "temporal":
        # The guarantee the temporal mode exists for: val and test are the future of train.
        for early, late in (("train", "val"), ("val", "test"), ("train", "test")):
            a, b = splits[early][S.TIMESTAMP].max(), splits[late][S.TIMESTAMP].min()
            if a is not None and b is not None and a > b:
                raise RuntimeError(
                    f"temporal split leaks: max {early} timestamp {a} > min {late} timestamp {b}"
                )
    return splits


def activity(ids: pl.Series, train_ids: pl.Series, cfg: BucketConfig) -> pl.DataFrame:
    """Train interaction count and bucket for every id in `ids` (a dense-id column of the entity table)."""
    if not (cfg.head > 0 and cfg.torso >= 0 and cfg.head + cfg.torso <= 1):
        raise InputError(f"bad bucket fractions {cfg}", fix="use 0 < head, 0 <= torso, head + torso <= 1")
    name = ids.name
    counts = train_ids.value_counts(name="_n").rename({train_ids.name: name})
    df = (
        pl.DataFrame({name: ids})
        .join(counts, on=name, how="left")
        .with_columns(pl.col("_n").fill_null(0).cast(pl.Int64))
    )
    n_active = int((df["_n"] > 0).sum())
    rank = pl.struct((-pl.col("_n")).alias("neg"), pl.col(name)).rank("ordinal") - 1  # 0 = most active
    n_head = int(np.ceil(cfg.head * n_active))
    n_torso = int(np.ceil((cfg.head + cfg.torso) * n_active)) - n_head
    bucket = (
        pl.when(pl.col("_n") == 0)
        .then(pl.lit("cold"))
        .when(rank < n_head)
        .then(pl.lit("head"))
        .when(rank < n_head + n_torso)
        .then(pl.lit("torso"))
        .otherwise(pl.lit("tail"))
    )
    return df.with_columns(pl.col("_n").alias(S.TRAIN_COUNT), bucket.alias(S.BUCKET)).drop("_n")


# -- the stage ----------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    items: pl.DataFrame
    users: pl.DataFrame
    splits: dict[str, pl.DataFrame]
    meta: dict[str, Any]


def _input_hashes(files: RawFiles) -> dict[str, str]:
    return {role: sha256_file(p) for role, p in asdict(files).items() if p is not None}


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
    inter = read_raw(files.inter)
    label_src = cols.label if cols.label is not None else cols.rating
    if label_src is None:
        raise InputError(
            "no label source", file=files.inter, fix="map `label` (0/1) or `rating` in the columns"
        )
    _require(inter, [cols.user, cols.item, cols.timestamp, label_src], files.inter, "interactions")
    if inter.is_empty():
        raise InputError("no interactions", file=files.inter, fix="pass a non-empty interactions file")
    for col in (cols.user, cols.item):
        if inter[col].null_count():
            raise InputError(
                "null ids", file=files.inter, column=col, fix="drop or fill rows with a missing id"
            )
    timestamp = _cast(inter, cols.timestamp, pl.Int64, files.inter)
    if timestamp.null_count():
        raise InputError(
            "null timestamps", file=files.inter, column=cols.timestamp, fix="fill or drop those rows"
        )
    rating = (
        _cast(inter, cols.rating, pl.Float32, files.inter)
        if cols.rating is not None and cols.rating in inter.columns
        else pl.Series(S.RATING, [None] * inter.height, dtype=pl.Float32)
    )
    if cols.label is not None:
        label = _cast(inter, cols.label, pl.Int64, files.inter)
        bad = label.filter(~label.is_in([0, 1]) | label.is_null()).unique().head(5).to_list()
        if bad:
            raise InputError(
                f"labels must be 0 or 1; found {bad}",
                file=files.inter,
                column=cols.label,
                fix="map clicks to 0/1, or map `rating` and set label_threshold instead",
            )
        label = label.cast(pl.Int8)
    else:
        if rating.null_count():
            raise InputError(
                "null ratings", file=files.inter, column=cols.rating, fix="fill or drop those rows"
            )
        label = (rating >= cfg.label_threshold).cast(pl.Int8)

    raw_user = inter[cols.user].cast(pl.String)
    raw_item = inter[cols.item].cast(pl.String)

    # -- items --
    items_raw = read_raw(files.item)
    item_key = cols.item_key or cols.item
    _require(
        items_raw, [item_key, *cols.item_text, *cols.item_features, cols.image_path], files.item, "items"
    )
    items_raw = _string_keys(items_raw, item_key, files.item, "item")
    seen = raw_item.unique()
    unknown = seen.filter(~seen.is_in(items_raw[item_key].implode()))
    if unknown.len():
        raise InputError(
            f"{unknown.len()} item ids in the interactions are not in the items file, e.g. {unknown.head(5).to_list()}",
            file=files.item,
            column=item_key,
            fix=f"add those items to {files.item.name} or drop their interactions from {files.inter.name}",
        )
    item_codes = _dense_ids(raw_item).rename({"raw": S.RAW_ITEM, "code": S.ITEM})
    if cols.item_text_template is not None:
        text = render_text(items_raw, cols.item_text_template, cols, files.item)
        text_cols = [f for _, f, _, _ in string.Formatter().parse(cols.item_text_template) if f is not None]
    elif cols.item_text:
        text_cols = list(cols.item_text)
        text = pl.concat_str([_as_string(items_raw, c, cols) for c in cols.item_text], separator=". ")
    else:
        raise InputError(
            "no item text: neither item_text_template nor item_text is set",
            file=files.item,
            fix="map `item_text: [title, ...]` or `item_text_template` in the columns",
        )
    extra = [pl.col(cols.image_path).cast(pl.String).alias(S.IMAGE_PATH)] if cols.image_path else []
    items = (
        items_raw.select(
            pl.col(item_key).alias(S.RAW_ITEM),
            pl.when(_all_empty(items_raw, text_cols))
            .then(pl.lit(""))
            .otherwise(text.str.strip_chars())
            .alias(S.TEXT),
            *_features(items_raw, cols.item_features, cols),
            *extra,
        )
        .join(item_codes, on=S.RAW_ITEM, how="inner")
        .sort(S.ITEM)
    )
    empty = items.filter(pl.col(S.TEXT).is_null() | (pl.col(S.TEXT) == ""))
    if empty.height:
        raise InputError(
            f"{empty.height} items have empty text, e.g. {empty[S.RAW_ITEM].head(5).to_list()}",
            file=files.item,
            column=",".join(text_cols),
            fix="fill the text columns of those items (or drop the items and their interactions)",
        )
    if cols.image_path:
        resolved, missing = resolve_image_paths(items[S.IMAGE_PATH].to_list(), files.item.parent)
        if missing:
            raise InputError(
                f"{len(missing)} image files do not exist, e.g. {missing[:3]}",
                file=files.item,
                column=cols.image_path,
                fix="fix the paths (absolute, or relative to the items file) or leave the cell empty",
            )
        items = items.with_columns(pl.Series(S.IMAGE_PATH, resolved, dtype=pl.String))

    # -- users --
    user_codes = _dense_ids(raw_user).rename({"raw": S.RAW_USER, "code": S.USER})
    if files.user is not None:
        users_raw = read_raw(files.user)
        user_key = cols.user_key or cols.user
        _require(users_raw, [user_key, *cols.user_features], files.user, "users")
        users_raw = _string_keys(users_raw, user_key, files.user, "user")
        known = users_raw[user_key].implode()
        unknown = user_codes.filter(~pl.col(S.RAW_USER).is_in(known))[S.RAW_USER]
        if unknown.len():
            raise InputError(
                f"{unknown.len()} user ids in the interactions are not in the users file, e.g. {unknown.head(5).to_list()}",
                file=files.user,
                column=user_key,
                fix=f"add those users to {files.user.name} or drop their interactions",
            )
        rendered = [
            pl.concat_str(pl.lit(f"{c.replace('_', ' ')}: "), _as_string(users_raw, c, cols))
            for c in cols.user_features
        ]
        users = users_raw.select(
            pl.col(user_key).alias(S.RAW_USER),
            (pl.concat_str(rendered, separator="; ") if rendered else pl.lit("")).alias(S.TEXT),
            *_features(users_raw, cols.user_features, cols),
        )
        users = user_codes.join(users, on=S.RAW_USER, how="left")
    else:
        users = user_codes.with_columns(pl.lit("").alias(S.TEXT))
    users = users.select(
        S.USER, S.RAW_USER, S.TEXT, *cols.user_features if files.user is not None else []
    ).sort(S.USER)

    # -- interactions, split, activity --
    frame = pl.DataFrame(
        {
            "raw_user": raw_user,
            "raw_item": raw_item,
            S.LABEL: label,
            S.TIMESTAMP: timestamp,
            S.RATING: rating.cast(pl.Float32),
        }
    )
    frame = (
        frame.join(user_codes, left_on="raw_user", right_on=S.RAW_USER)
        .join(item_codes, left_on="raw_item", right_on=S.RAW_ITEM)
        .select(list(S.INTERACTIONS.names()))
    )
    splits = split_interactions(frame, cfg.split)
    for split, df in splits.items():
        if df.is_empty():
            raise InputError(
                f"the {split} split is empty ({frame.height} interactions, mode {cfg.split.mode})",
                file=files.inter,
                fix="use more data, or other split fractions / mode (split.val_frac, split.test_frac, split.mode)",
            )
    train = splits["train"]
    items = items.join(activity(items[S.ITEM], train[S.ITEM], cfg.buckets), on=S.ITEM)
    users = users.join(activity(users[S.USER], train[S.USER], cfg.buckets), on=S.USER)
    items = items.select(
        *S.ITEMS_BASE.names(), *cols.item_features, *([S.IMAGE_PATH] if cols.image_path else [])
    )
    users = users.select(*S.USERS_BASE.names(), *(cols.user_features if files.user is not None else []))

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
        "item_buckets": _bucket_sizes(items),
        "user_buckets": _bucket_sizes(users),
    }
    return Prepared(items=items, users=users, splits=splits, meta=meta)


def _bucket_sizes(df: pl.DataFrame) -> dict[str, int]:
    counts = dict(df.group_by(S.BUCKET).len().iter_rows())
    return {b: int(counts.get(b, 0)) for b in S.BUCKETS}


def write(prepared: Prepared, out: str | Path) -> Path:
    """Write the prepared tables as one directory, staged and renamed into place."""
    meta = prepared.meta
    with staged_dir(out) as tmp:
        write_parquet(
            prepared.items, tmp / S.ITEMS_FILE, {**meta, "features": meta["columns"]["item_features"]}
        )
        write_parquet(
            prepared.users, tmp / S.USERS_FILE, {**meta, "features": _user_features(prepared.users)}
        )
        for split, df in prepared.splits.items():
            write_parquet(df, tmp / S.split_file(split), meta)
        write_json(meta, tmp / "prepare.json")
    return Path(out)


def _user_features(users: pl.DataFrame) -> list[str]:
    return [c for c in users.columns if c not in S.USERS_BASE.names()]


def load(path: str | Path) -> Prepared:
    """Read a prepared dataset directory back (all tables, eagerly)."""
    from semid.io import read_meta

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
