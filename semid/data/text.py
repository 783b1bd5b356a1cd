"""Item and user content as polars expressions: rendered text, side-feature token lists, image paths."""

from __future__ import annotations

import string
from pathlib import Path

import polars as pl

from semid import schema as S
from semid.data.readers import require_columns
from semid.datasets import Columns
from semid.errors import InputError


def as_string(df: pl.DataFrame, col: str, cols: Columns) -> pl.Expr:
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
            require_columns(df, [name], path, "named in the text template")
            parts.append(as_string(df, name, cols))
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


def all_empty(df: pl.DataFrame, names: list[str]) -> pl.Expr:
    """True where every one of the text columns is null or blank: such an item has no content to encode."""
    empty = []
    for name in names:
        col = pl.col(name)
        if isinstance(df.schema[name], pl.List):
            empty.append(col.is_null() | (col.list.len() == 0))
        else:
            empty.append(col.is_null() | (col.cast(pl.String).str.strip_chars() == ""))
    return pl.all_horizontal(empty) if empty else pl.lit(True)


def side_features(df: pl.DataFrame, names: list[str], cols: Columns) -> list[pl.Expr]:
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
