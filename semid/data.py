"""Prepared datasets: read raw interaction/item/user files, validate, label, split by time, bucket by activity.

`prepare` is the first stage of the pipeline. It turns the user's files (parquet, CSV/TSV or RecBole atomic files)
plus a column mapping (`semid.datasets.Columns`) into a prepared dataset directory whose files follow
`semid.schema`: items.parquet, users.parquet, train/val/test.parquet. Every check a user can fail runs before the
directory is written, and the directory is staged then renamed, so a failure leaves what was there before.

What is refused (InputError naming file, column, fix): a missing or directory input (before anything is hashed),
null/NaN/inf ratings (NaN would compare as label 1), timestamps with a fractional part (never truncated), a split
without both label classes (its AUC would be NaN), image paths outside the image root. A val/test split on which
GAUC would rest on no user is a warning. Long-tail protocol options: item cold-start (`SplitConfig.cold_items`),
absolute tail buckets (`BucketConfig.*_tail_below`, column `abs_bucket`), sampled negatives for positive-only data
(`NegativeConfig`, used by `semid.amazon`).
"""

from __future__ import annotations

import os
import string
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from semid import schema as S
from semid.datasets import Columns
from semid.errors import InputError
from semid.io import sha256_file, sha256_json, staged_dir, write_json, write_parquet

ABS_BUCKET = "abs_bucket"
"""items/users column: the absolute tail definition of AKT-Rec (head / tail / cold by a fixed train-count threshold),
beside the percentile `bucket`."""
ABS_BUCKETS: tuple[str, ...] = ("head", "tail", "cold")


@dataclass(frozen=True)
class SplitConfig:
    mode: Literal["temporal", "leave_last_out"] = "temporal"
    """temporal: one global cut by timestamp, so val and test are the future of train (no leakage).
    leave_last_out: per user, the last interaction is test, the one before it val (users with < 3 stay in train)."""
    val_frac: float = 0.1
    test_frac: float = 0.1
    cold_items: float = 0.0
    """Item cold-start protocol: this fraction of the items (of those with any interaction) loses all its train
    interactions after the split; their val/test rows stay, so they are `cold` there. 0 = off."""
    cold_item_mode: Literal["random", "newest"] = "random"
    """random: a seeded uniform sample of items; newest: the items whose first interaction is latest (ties by id)."""
    seed: int = 0
    """Seed of the random cold-item sample."""


@dataclass(frozen=True)
class BucketConfig:
    """Activity buckets by train interaction count: entities ranked by count (ties by id), the top `head` fraction
    is head, the next `torso` fraction torso, the rest tail; entities absent from train are cold. Beside them the
    absolute buckets (`abs_bucket`, AKT-Rec's definition): tail below a fixed count, cold at zero, head otherwise."""

    head: float = 0.2
    torso: float = 0.3
    item_tail_below: int = 10
    """abs_bucket of an item: tail when 0 < train count < this (AKT-Rec: < 10 exposures)."""
    user_tail_below: int = 5
    """abs_bucket of a user: tail when 0 < train count < this (AKT-Rec: < 5 interactions)."""
    count: Literal["all", "positives"] = "all"
    """What a train count counts: every train row (exposures, e.g. ratings) or positive rows only (data whose
    negatives are sampled, where a negative is not an exposure)."""


@dataclass(frozen=True)
class NegativeConfig:
    """Sampled negatives, for data with positives only (e.g. amazon-food-kitchen; ignored by rated data)."""

    per_positive: int = 4
    """CTR negatives per positive: uniform over the target-domain items the user never interacted with, drawn
    once with `seed` (fixed across runs and models), at the positive's timestamp and in its split."""
    ranking: int = 999
    """Negatives per target of the ranking (HR@K / NDCG@K) candidate lists: uniform over the target-domain items
    outside the user's sequence."""
    seed: int = 0


@dataclass(frozen=True)
class PrepareConfig:
    label_threshold: float = 4.0
    """label = rating >= label_threshold (ignored when the mapping names an explicit label column)."""
    split: SplitConfig = field(default_factory=SplitConfig)
    buckets: BucketConfig = field(default_factory=BucketConfig)
    negatives: NegativeConfig = field(default_factory=NegativeConfig)


@dataclass(frozen=True)
class RawFiles:
    inter: Path
    item: Path
    user: Path | None = None


# -- reading ------------------------------------------------------------------------------------------------


def check_input_file(path: str | Path) -> Path:
    """`path` as a Path if it is a readable regular file; else one InputError (before anything hashes or writes)."""
    path = Path(path)
    if not path.exists():
        raise InputError(
            "file not found", file=path, fix="check the path (relative paths are taken from the cwd)"
        )
    if path.is_dir():
        raise InputError(
            "is a directory, not a file",
            file=path,
            fix="pass the data file inside it (parquet, CSV, TSV, RecBole)",
        )
    if not os.access(path, os.R_OK):
        raise InputError("is not readable", file=path, fix="check the file's permissions")
    return path


def read_raw(path: str | Path) -> pl.DataFrame:
    """Read a parquet, CSV/TSV or RecBole atomic file; RecBole's `name:type` header suffixes are stripped.

    Text formats are read as strings (types are checked and cast per column later, with errors naming the column).
    """
    path = check_input_file(path)
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
    """Cast one column strictly; strings like '1.0' become integers through Float64, but a value with a fractional
    part (or NaN/inf) never silently truncates to an integer."""
    series = df[col]
    try:
        if dtype.is_integer() and (series.dtype == pl.String or series.dtype.is_float()):
            as_float = series.cast(pl.Float64, strict=True)
            bad = series.filter(
                as_float.is_not_null() & ~(as_float.is_finite() & (as_float == as_float.floor()))
            )
            if bad.len():
                raise InputError(
                    f"{bad.len()} values are not whole numbers (e.g. {bad.head(3).to_list()}); they would be "
                    "truncated",
                    file=path,
                    column=col,
                    fix=f"store {col!r} as integers (e.g. whole seconds for a timestamp), or round them yourself",
                )
            return as_float.cast(dtype, strict=True)
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


def resolve_image_paths(
    paths: list[str | None],
    base: Path,
    *,
    file: str | Path | None = None,
    column: str = S.IMAGE_PATH,
) -> tuple[list[str | None], list[str]]:
    """Image paths resolved under the image root `base` (relative ones are taken from it; empty -> None), and
    those of them that are not files.

    `base` is the folder every image must lie in (`semid prepare`: the items file's folder unless
    `Columns.image_root` names another). A path that leaves it, by `..`, by being absolute elsewhere or through a
    symlink, is refused with an InputError naming `file` and `column`: an items file is untrusted data, and an
    image path must not make the encoder open `/etc/passwd`. Returned paths are the real (symlink-free) paths.
    """
    root = Path(base).resolve()
    resolved: list[str | None] = []
    outside: list[str] = []
    for p in paths:
        if p is None or not p.strip():
            resolved.append(None)
            continue
        real = (root / p).resolve()  # an absolute p replaces root in the join
        if not real.is_relative_to(root):
            outside.append(p)
        resolved.append(str(real))
    if outside:
        raise InputError(
            f"{len(outside)} image paths point outside the image root {str(root)!r}, e.g. {outside[:3]}",
            file=file,
            column=column,
            fix="keep images inside the image root (paths relative to it, no '..', no symlinks leading out), or set "
            "the image root (`columns.image_root`) to the folder that holds them",
        )
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


def activity(
    ids: pl.Series, train_ids: pl.Series, cfg: BucketConfig, *, tail_below: int | None = None
) -> pl.DataFrame:
    """Train interaction count, percentile bucket and absolute bucket for every id in `ids` (a dense-id column of
    the entity table). `abs_bucket`: cold at 0, tail below `tail_below` (default `cfg.item_tail_below`), else head."""
    if not (cfg.head > 0 and cfg.torso >= 0 and cfg.head + cfg.torso <= 1):
        raise InputError(f"bad bucket fractions {cfg}", fix="use 0 < head, 0 <= torso, head + torso <= 1")
    tail_below = cfg.item_tail_below if tail_below is None else tail_below
    if tail_below < 1:
        raise InputError(
            f"bad absolute tail threshold {tail_below}",
            fix="use buckets.item_tail_below >= 1 and buckets.user_tail_below >= 1",
        )
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
    abs_bucket = (
        pl.when(pl.col("_n") == 0)
        .then(pl.lit("cold"))
        .when(pl.col("_n") < tail_below)
        .then(pl.lit("tail"))
        .otherwise(pl.lit("head"))
    )
    return df.with_columns(
        pl.col("_n").alias(S.TRAIN_COUNT), bucket.alias(S.BUCKET), abs_bucket.alias(ABS_BUCKET)
    ).drop("_n")


def add_activity(
    items: pl.DataFrame, users: pl.DataFrame, train: pl.DataFrame, cfg: BucketConfig
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """items and users with train_count, bucket and abs_bucket joined on (counted over `cfg.count` train rows)."""
    if cfg.count == "positives":
        train = train.filter(pl.col(S.LABEL) == 1)
    items = items.join(activity(items[S.ITEM], train[S.ITEM], cfg, tail_below=cfg.item_tail_below), on=S.ITEM)
    users = users.join(activity(users[S.USER], train[S.USER], cfg, tail_below=cfg.user_tail_below), on=S.USER)
    return items, users


def hold_out_items(
    inter: pl.DataFrame, splits: dict[str, pl.DataFrame], cfg: SplitConfig
) -> tuple[dict[str, pl.DataFrame], pl.Series]:
    """The item cold-start protocol: `cfg.cold_items` of the items lose their train rows (val/test rows stay).

    Returns the new splits and the held-out dense item ids (sorted; empty when the protocol is off).
    """
    empty = pl.Series(S.ITEM, [], dtype=pl.Int32)
    if cfg.cold_items == 0:
        return splits, empty
    if not 0 < cfg.cold_items < 1:
        raise InputError(
            f"bad cold-item fraction {cfg.cold_items}",
            fix="use 0 <= split.cold_items < 1 (e.g. 0.1; 0 = off)",
        )
    first = inter.group_by(S.ITEM).agg(pl.col(S.TIMESTAMP).min().alias("_first")).sort(S.ITEM)
    n = int(round(cfg.cold_items * first.height))
    if cfg.cold_item_mode == "newest":
        chosen = first.sort(["_first", S.ITEM], descending=True).head(n)[S.ITEM]
    else:
        order = np.random.default_rng(cfg.seed).permutation(first.height)[:n]
        chosen = first[S.ITEM].gather(order)
    chosen = chosen.sort()
    out = dict(splits)
    out["train"] = splits["train"].filter(~pl.col(S.ITEM).is_in(chosen.implode()))
    return out, chosen


def gauc_user_counts(splits: dict[str, pl.DataFrame]) -> dict[str, int]:
    """Per split, how many users have both a positive and a negative there (the users a GAUC rests on)."""
    return {
        name: int(
            df.group_by(S.USER).agg(pl.col(S.LABEL).n_unique().alias("_k")).filter(pl.col("_k") == 2).height
        )
        for name, df in splits.items()
    }


def check_splits(splits: dict[str, pl.DataFrame], file: Path, cfg: SplitConfig) -> dict[str, int]:
    """Refuse a split that is empty or holds one label class (its AUC would be NaN); warn when val or test GAUC
    would rest on no users. Returns the users per split a GAUC rests on."""
    fix = "use more data, or other split fractions / mode (split.val_frac, split.test_frac, split.mode)"
    for name, df in splits.items():
        if df.is_empty():
            raise InputError(f"the {name} split is empty (mode {cfg.mode})", file=file, fix=fix)
        classes = sorted(df[S.LABEL].unique().to_list())
        if classes != [0, 1]:
            raise InputError(
                f"the {name} split has only label {classes} ({df.height} rows): AUC and GAUC are undefined there",
                file=file,
                fix="check the label source (label_threshold, or the label column), use more data, or other split "
                "fractions / mode",
            )
    users = gauc_user_counts(splits)
    for name in ("val", "test"):
        if users[name] == 0:
            warnings.warn(
                f"no user has both a positive and a negative in the {name} split ({splits[name].height} rows, "
                f"mode {cfg.mode}): its GAUC rests on no users and will be undefined; select models by AUC, or "
                "use a split with several rows per user",
                UserWarning,
                stacklevel=3,
            )
    return users


# -- the stage ----------------------------------------------------------------------------------------------


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
        # NaN compares greater than every number in polars: unchecked, a missing rating would become label 1.
        n_missing = rating.null_count() + int(rating.is_nan().sum())
        if n_missing:
            raise InputError(
                f"{n_missing} ratings are null or NaN",
                file=files.inter,
                column=cols.rating,
                fix="fill or drop those rows",
            )
        bad = rating.filter(rating.is_infinite()).head(3).to_list()
        if bad:
            raise InputError(
                f"infinite ratings, e.g. {bad}", file=files.inter, column=cols.rating, fix="fix those rows"
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
        root = Path(cols.image_root) if cols.image_root is not None else files.item.parent
        if not root.is_dir():
            raise InputError(
                "the image root is not a folder",
                file=root,
                fix="set `columns.image_root` to the folder holding the images (default: the items file's folder)",
            )
        resolved, missing = resolve_image_paths(
            items[S.IMAGE_PATH].to_list(), root, file=files.item, column=cols.image_path
        )
        if missing:
            raise InputError(
                f"{len(missing)} image files do not exist, e.g. {missing[:3]}",
                file=files.item,
                column=cols.image_path,
                fix="fix the paths (relative to the image root, or absolute inside it) or leave the cell empty",
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


def bucket_meta(items: pl.DataFrame, users: pl.DataFrame) -> dict[str, dict[str, int]]:
    """Entities per percentile and per absolute bucket, for the metadata and the prepare summary line."""
    return {
        "item_buckets": _bucket_sizes(items, S.BUCKET, S.BUCKETS),
        "user_buckets": _bucket_sizes(users, S.BUCKET, S.BUCKETS),
        "item_abs_buckets": _bucket_sizes(items, ABS_BUCKET, ABS_BUCKETS),
        "user_abs_buckets": _bucket_sizes(users, ABS_BUCKET, ABS_BUCKETS),
    }


def _bucket_sizes(df: pl.DataFrame, column: str, names: tuple[str, ...]) -> dict[str, int]:
    counts = dict(df.group_by(column).len().iter_rows())
    return {b: int(counts.get(b, 0)) for b in names}


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
