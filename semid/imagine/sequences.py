"""Users' train behaviours as sequences of semantic-ID tuples: the data side of the imagination model (ReaSeq).

A behaviour is a train positive (label 1), in time order (ties by item id). An item is its code tuple
(sid_0, ..., sid_{L-1}) from the item ID table; the dedup suffix is dropped: it only counts, in id order, the
earlier items sharing a tuple, so it carries no meaning a model could learn. A generated tuple is mapped back to
a real item through the table (ties between items sharing a tuple: the most popular in train, then the lowest id).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import polars as pl
import torch
from torch import Tensor

from semid import schema as S
from semid.ids import sid_columns

_POS = "_pos"
_ROW = "_row"


class ItemCodes(NamedTuple):
    """Everything the model knows about the catalogue, indexed by item_id (rows 0..n_items-1)."""

    codes: Tensor  # (N, L) int64 code tuple of each item (0 for items without an ID)
    known: Tensor  # (N,) bool: the item has an ID (only these are ever generated)
    popularity: Tensor  # (N,) int64 train positives of each item
    order: Tensor  # (N,) int64 item ids by popularity desc, then id asc: the tie-break of every top-k
    sizes: list[int]  # codebook size of each level


class PrefixTree(NamedTuple):
    """The code prefixes that exist in the ID table, one entry per level 1..L-1 (level 0 has no prefix)."""

    prefixes: list[Tensor]  # level l: (P_l, l) distinct prefixes (sid_0..sid_{l-1}) held by some item
    index: list[Tensor]  # level l: (N,) row of each item's prefix in prefixes[l-1]


def positives(train: pl.DataFrame) -> pl.DataFrame:
    """(user_id, item_id, _pos) of the train positives, `_pos` = 0.. in time order per user (ties by item id)."""
    return (
        train.filter(pl.col(S.LABEL) == 1)
        .sort(S.USER, S.TIMESTAMP, S.ITEM)
        .select(S.USER, S.ITEM, pl.int_range(pl.len()).over(S.USER).alias(_POS))
    )


def item_codes(table: pl.DataFrame, n_items: int, train: pl.DataFrame, sizes: list[int]) -> ItemCodes:
    """The catalogue tensors from an item ID table (validated by semid.ids.read_table) and the train split."""
    cols = sid_columns(table)
    ids = torch.from_numpy(table[S.ITEM].to_numpy().astype(np.int64))  # (n_table,)
    codes = torch.zeros(n_items, len(cols), dtype=torch.long)  # (N, L)
    codes[ids] = torch.from_numpy(table.select(cols).to_numpy().astype(np.int64))
    known = torch.zeros(n_items, dtype=torch.bool)
    known[ids] = True
    counts = positives(train)[S.ITEM].value_counts()
    popularity = torch.zeros(n_items, dtype=torch.long)
    popularity[torch.from_numpy(counts[S.ITEM].to_numpy().astype(np.int64))] = torch.from_numpy(
        counts["count"].to_numpy().astype(np.int64)
    )
    # stable sort on -popularity keeps ids ascending within equal popularity
    order = torch.sort(-popularity, stable=True).indices  # (N,)
    return ItemCodes(codes, known, popularity, order, [int(s) for s in sizes])


def prefix_tree(codes: Tensor) -> PrefixTree:
    """The distinct prefixes of every length 1..L-1 of the item tuples `codes` (N, L), and each item's row."""
    prefixes, index = [], []
    for level in range(1, codes.shape[1]):
        unique, inverse = torch.unique(codes[:, :level], dim=0, return_inverse=True)  # (P, l), (N,)
        prefixes.append(unique)
        index.append(inverse)
    return PrefixTree(prefixes, index)


def _known_positives(train: pl.DataFrame, known: Tensor) -> pl.DataFrame:
    """`positives` of the items that have an ID, `_pos` renumbered 0.. per user."""
    ids = pl.Series(np.flatnonzero(known.numpy()).astype(np.int32)).implode()
    return (
        positives(train)
        .filter(pl.col(S.ITEM).is_in(ids))
        .with_columns(pl.int_range(pl.len()).over(S.USER).alias(_POS))
    )


def _fill(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> Tensor:
    out = np.full(shape, -1, dtype=np.int64)
    out[rows, cols] = values
    return torch.from_numpy(out)


def training_windows(train: pl.DataFrame, known: Tensor, max_len: int) -> Tensor:
    """Every user's positive sequence cut into windows of at most `max_len` items: (W, max_len) item ids, -1 pad.

    Windows are cut from the latest behaviour backwards, so the newest `max_len` items are one window and a
    user's oldest items form the short one; items without an ID are skipped.
    """
    pos = _known_positives(train, known).with_columns(
        ((pl.len().over(S.USER) - 1 - pl.col(_POS)) // max_len).alias("_window"),
    )
    windows = pos.select(S.USER, "_window").unique().sort(S.USER, "_window").with_row_index(_ROW)
    pos = pos.join(windows, on=[S.USER, "_window"]).with_columns(
        (pl.col(_POS) - pl.col(_POS).min().over(_ROW)).alias("_col")
    )
    return _fill(
        pos[_ROW].to_numpy(), pos["_col"].to_numpy(), pos[S.ITEM].to_numpy(), (windows.height, max_len)
    )


def histories(train: pl.DataFrame, users: np.ndarray, known: Tensor, length: int) -> Tensor:
    """The last `length` train positives (with an ID) of each of `users`: (U, length) item ids, left-aligned in
    time order, -1 pad (a user without positives is all pad)."""
    pos = _known_positives(train, known)
    rows = pl.DataFrame({S.USER: users.astype(np.int32)}).with_row_index(_ROW)
    pos = (
        pos.join(rows, on=S.USER)
        .filter(pl.col(_POS) >= pl.col(_POS).max().over(S.USER) - (length - 1))
        .with_columns((pl.col(_POS) - pl.col(_POS).min().over(S.USER)).alias("_col"))
    )
    return _fill(pos[_ROW].to_numpy(), pos["_col"].to_numpy(), pos[S.ITEM].to_numpy(), (len(users), length))


def seen(train: pl.DataFrame, users: np.ndarray, n_items: int) -> Tensor:
    """(U, N) bool: item was in the user's train interactions (positive or not): never imagined for that user."""
    rows = pl.DataFrame({S.USER: users.astype(np.int32)}).with_row_index(_ROW)
    pairs = train.select(S.USER, S.ITEM).join(rows, on=S.USER)
    out = torch.zeros(len(users), n_items, dtype=torch.bool)
    out[
        torch.from_numpy(pairs[_ROW].to_numpy().astype(np.int64)),
        torch.from_numpy(pairs[S.ITEM].to_numpy().astype(np.int64)),
    ] = True
    return out


def positive_counts(train: pl.DataFrame, users: pl.DataFrame) -> pl.DataFrame:
    """(user_id, n_positives) for every user of users.parquet (0 for users without train positives)."""
    counts = positives(train).group_by(S.USER).len("n_positives")
    return (
        users.select(S.USER)
        .join(counts, on=S.USER, how="left")
        .with_columns(pl.col("n_positives").fill_null(0))
        .sort(S.USER)
    )
