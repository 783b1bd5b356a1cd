"""The tensors a CTR dataset is read into once: per entity (features, semantic IDs, counts, buckets, content),
per split (sample arrays), scenarios, imagined behaviours, and the `Tables` that hold them all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor

from ctr.data.history import History


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


class ImaginedItems(NamedTuple):
    """An imagined.parquet as per-user rows: `items[user]` are the user's imagined items in rank order."""

    items: Tensor  # (n_users, K) int64 item id + 1, 0 = none (users without imagined rows are all 0)
    confidence: Tensor  # (n_users, K) float32, 0 where none


@dataclass(frozen=True)
class Tables:
    items: Entities
    users: Entities
    histories: dict[str, History]  # per split: the history its samples read (see HISTORY_SOURCES)
    splits: dict[str, SplitArrays]
    scenarios: ScenarioCodes | None = None
    data_hash: str | None = None  # the prepared dataset's fingerprint (items.parquet metadata)
    merged_source: bool = False  # histories hold source-domain events (Batch.hist_type is served)
    imagined: ImaginedItems | None = None  # imagined behaviours per user (Batch.imag_item / imag_conf)
