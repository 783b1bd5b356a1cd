"""The tensors a CTR dataset is read into once: per entity (features, semantic IDs, counts, buckets, content),
per split (sample arrays), scenarios, and the `Tables` that hold them all."""

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


@dataclass(frozen=True)
class Tables:
    items: Entities
    users: Entities
    histories: dict[str, History]  # per split: the history its samples read (see HISTORY_SOURCES)
    splits: dict[str, SplitArrays]
    scenarios: ScenarioCodes | None = None
    data_hash: str | None = None  # the prepared dataset's fingerprint (items.parquet metadata)
    merged_source: bool = False  # histories hold source-domain events (Batch.hist_type is served)
