"""Reading the user's raw files (parquet, CSV/TSV, RecBole) and the input checks every column goes through."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import polars as pl

from semid import schema as S
from semid.datasets import Columns
from semid.errors import InputError


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


def require_columns(df: pl.DataFrame, cols: list[str | None], path: Path, what: str) -> None:
    for col in cols:
        if col is not None and col not in df.columns:
            raise InputError(
                f"missing column {col!r} ({what}); the file has {df.columns}",
                file=path,
                column=col,
                fix="rename the column in the file or map it in the column mapping (e.g. `columns.user: <name>`)",
            )


def cast_column(df: pl.DataFrame, col: str, dtype: pl.DataType, path: Path) -> pl.Series:
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


def unique_string_keys(df: pl.DataFrame, key: str, path: Path, what: str) -> pl.DataFrame:
    """The entity table with its key column as strings, after checking the key is unique."""
    df = df.with_columns(pl.col(key).cast(pl.String))
    dup = df.filter(pl.col(key).is_duplicated())[key].unique().head(5).to_list()
    if dup:
        raise InputError(
            f"duplicate {what} ids, e.g. {dup}", file=path, column=key, fix=f"keep one row per {what} id"
        )
    return df


def dense_ids(raw: pl.Series) -> pl.DataFrame:
    """raw id -> dense Int32 code in order of the raw id (numeric order when every id is a number)."""
    uniq = raw.unique()
    numeric = uniq.cast(pl.Float64, strict=False)
    order = numeric.arg_sort() if numeric.null_count() == 0 else uniq.arg_sort()
    uniq = uniq.gather(order)
    return pl.DataFrame({"raw": uniq, "code": pl.int_range(len(uniq), dtype=pl.Int32, eager=True)})


# -- content ------------------------------------------------------------------------------------------------


class RawInteractions(NamedTuple):
    """The interactions file's columns, checked and typed, one row per interaction (ids still raw strings)."""

    user: pl.Series
    item: pl.Series
    label: pl.Series
    timestamp: pl.Series
    rating: pl.Series


def read_interactions(path: Path, cols: Columns, label_threshold: float) -> RawInteractions:
    """Read and check the interactions file: ids present, whole-number timestamps, a 0/1 label (given, or
    rating >= `label_threshold` with no null/NaN/inf rating)."""
    inter = read_raw(path)
    label_src = cols.label if cols.label is not None else cols.rating
    if label_src is None:
        raise InputError("no label source", file=path, fix="map `label` (0/1) or `rating` in the columns")
    require_columns(inter, [cols.user, cols.item, cols.timestamp, label_src], path, "interactions")
    if inter.is_empty():
        raise InputError("no interactions", file=path, fix="pass a non-empty interactions file")
    for col in (cols.user, cols.item):
        if inter[col].null_count():
            raise InputError("null ids", file=path, column=col, fix="drop or fill rows with a missing id")
    timestamp = cast_column(inter, cols.timestamp, pl.Int64, path)
    if timestamp.null_count():
        raise InputError("null timestamps", file=path, column=cols.timestamp, fix="fill or drop those rows")
    rating = (
        cast_column(inter, cols.rating, pl.Float32, path)
        if cols.rating is not None and cols.rating in inter.columns
        else pl.Series(S.RATING, [None] * inter.height, dtype=pl.Float32)
    )
    if cols.label is not None:
        label = cast_column(inter, cols.label, pl.Int64, path)
        bad = label.filter(~label.is_in([0, 1]) | label.is_null()).unique().head(5).to_list()
        if bad:
            raise InputError(
                f"labels must be 0 or 1; found {bad}",
                file=path,
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
                file=path,
                column=cols.rating,
                fix="fill or drop those rows",
            )
        bad = rating.filter(rating.is_infinite()).head(3).to_list()
        if bad:
            raise InputError(
                f"infinite ratings, e.g. {bad}", file=path, column=cols.rating, fix="fix those rows"
            )
        label = (rating >= label_threshold).cast(pl.Int8)
    return RawInteractions(
        user=inter[cols.user].cast(pl.String),
        item=inter[cols.item].cast(pl.String),
        label=label,
        timestamp=timestamp,
        rating=rating.cast(pl.Float32),
    )


def check_known(ids: pl.Series, known: pl.Series, path: Path, column: str, what: str, fix: str) -> None:
    """Refuse ids of the interactions that the entity file `path` (key `column`) does not hold."""
    unknown = ids.filter(~ids.is_in(known.implode()))
    if unknown.len():
        raise InputError(
            f"{unknown.len()} {what} ids in the interactions are not in the {what}s file, "
            f"e.g. {unknown.head(5).to_list()}",
            file=path,
            column=column,
            fix=fix,
        )
