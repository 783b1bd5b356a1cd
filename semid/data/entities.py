"""The items and users tables of a prepared dataset: dense ids, rendered text, side features, image paths."""

from __future__ import annotations

import string
from pathlib import Path

import polars as pl

from semid import schema as S
from semid.data.config import RawFiles
from semid.data.readers import check_known, dense_ids, read_raw, require_columns, unique_string_keys
from semid.data.text import all_empty, as_string, render_text, resolve_image_paths, side_features
from semid.datasets import Columns
from semid.errors import InputError


def items_table(files: RawFiles, cols: Columns, raw_item: pl.Series) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The items of the interactions (`raw_item`: their raw ids) with text, features and checked image paths,
    and the raw -> dense item code table."""
    items_raw = read_raw(files.item)
    item_key = cols.item_key or cols.item
    require_columns(
        items_raw, [item_key, *cols.item_text, *cols.item_features, cols.image_path], files.item, "items"
    )
    items_raw = unique_string_keys(items_raw, item_key, files.item, "item")
    check_known(
        raw_item.unique(),
        items_raw[item_key],
        files.item,
        item_key,
        "item",
        fix=f"add those items to {files.item.name} or drop their interactions from {files.inter.name}",
    )
    item_codes = dense_ids(raw_item).rename({"raw": S.RAW_ITEM, "code": S.ITEM})
    if cols.item_text_template is not None:
        text = render_text(items_raw, cols.item_text_template, cols, files.item)
        text_cols = [f for _, f, _, _ in string.Formatter().parse(cols.item_text_template) if f is not None]
    elif cols.item_text:
        text_cols = list(cols.item_text)
        text = pl.concat_str([as_string(items_raw, c, cols) for c in cols.item_text], separator=". ")
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
            pl.when(all_empty(items_raw, text_cols))
            .then(pl.lit(""))
            .otherwise(text.str.strip_chars())
            .alias(S.TEXT),
            *side_features(items_raw, cols.item_features, cols),
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
        paths = _image_paths(items, files, cols, cols.image_path)
        items = items.with_columns(pl.Series(S.IMAGE_PATH, paths, dtype=pl.String))
    return items, item_codes


def _image_paths(items: pl.DataFrame, files: RawFiles, cols: Columns, column: str) -> list[str | None]:
    """The items' image paths (raw column `column`) resolved under the image root; refused when one is missing
    or leaves the root."""
    root = Path(cols.image_root) if cols.image_root is not None else files.item.parent
    if not root.is_dir():
        raise InputError(
            "the image root is not a folder",
            file=root,
            fix="set `columns.image_root` to the folder holding the images (default: the items file's folder)",
        )
    resolved, missing = resolve_image_paths(
        items[S.IMAGE_PATH].to_list(), root, file=files.item, column=column
    )
    if missing:
        raise InputError(
            f"{len(missing)} image files do not exist, e.g. {missing[:3]}",
            file=files.item,
            column=column,
            fix="fix the paths (relative to the image root, or absolute inside it) or leave the cell empty",
        )
    return resolved


def users_table(files: RawFiles, cols: Columns, raw_user: pl.Series) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The users of the interactions (`raw_user`: their raw ids) with their side features rendered as text
    ("age: 25; gender: F"; empty without a users file), and the raw -> dense user code table."""
    user_codes = dense_ids(raw_user).rename({"raw": S.RAW_USER, "code": S.USER})
    if files.user is None:
        users = user_codes.with_columns(pl.lit("").alias(S.TEXT))
        return users.select(S.USER, S.RAW_USER, S.TEXT).sort(S.USER), user_codes
    users_raw = read_raw(files.user)
    user_key = cols.user_key or cols.user
    require_columns(users_raw, [user_key, *cols.user_features], files.user, "users")
    users_raw = unique_string_keys(users_raw, user_key, files.user, "user")
    check_known(
        user_codes[S.RAW_USER],
        users_raw[user_key],
        files.user,
        user_key,
        "user",
        fix=f"add those users to {files.user.name} or drop their interactions",
    )
    rendered = [
        pl.concat_str(pl.lit(f"{c.replace('_', ' ')}: "), as_string(users_raw, c, cols))
        for c in cols.user_features
    ]
    users = users_raw.select(
        pl.col(user_key).alias(S.RAW_USER),
        (pl.concat_str(rendered, separator="; ") if rendered else pl.lit("")).alias(S.TEXT),
        *side_features(users_raw, cols.user_features, cols),
    )
    users = user_codes.join(users, on=S.RAW_USER, how="left")
    return users.select(S.USER, S.RAW_USER, S.TEXT, *cols.user_features).sort(S.USER), user_codes
