"""A sample's history without leakage: the user's last positives strictly before the sample's timestamp.

A sample's history is the user's last `history_len` positive interactions with a timestamp strictly before the
sample's, most recent first (equal timestamps ordered by item id), drawn from the splits that are its past
(`HISTORY_SOURCES`): a train sample reads train positives; a val or test sample reads train *and* val positives,
so a test sample of a user whose activity sits in the validation period still has it as history. Never the sample
itself, nothing at or after its timestamp, never a test label. Stored per source set as one sorted array of
positives plus, per sample, the end offset of its history in it. Source-domain events (amazon-food-kitchen) may
join that array, typed HIST_SOURCE.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import polars as pl
import torch
from torch import Tensor

from ctr.batch import HIST_SOURCE, HIST_TARGET
from semid import schema as S

HISTORY_SOURCES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "val": ("train", "val"),
    "test": ("train", "val"),
}
"""The splits whose positives form a sample's history, per split of the sample (always strictly before it)."""


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
    valid = pos >= history.user_start.index_select(0, user)[:, None]  # (B, H)
    return torch.where(valid, pos + 1, 0)  # (B, H)


def gather_history(history: History, user: Tensor, end: Tensor, length: int) -> Tensor:
    """(B,) users and history ends -> (B, length) item id + 1 of the last positives, most recent first, 0 = pad."""
    return history.items[history_slots(history, user, end, length)]  # (B, H)
