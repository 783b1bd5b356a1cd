"""Options of `semid prepare`: how to split, bucket and sample negatives, and which raw files to read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class SplitConfig:
    mode: Literal["temporal", "leave_last_out", "random"] = "temporal"
    """temporal: one global cut by timestamp, so val and test are the future of train (no leakage).
    leave_last_out: per user, the last interaction is test, the one before it val (users with < 3 stay in train).
    random: a seeded uniform row split (`seed`), as the Scenario-Wise-Rec benchmark uses: train holds rows later
    than some val / test rows, so it is the benchmark's protocol, not a forecast. A sample's history stays strictly
    before its own timestamp (train positives for train rows, train and val positives for val / test rows; see
    ctr/data/history.py), never a test label."""
    val_frac: float = 0.1
    test_frac: float = 0.1
    cold_items: float = 0.0
    """Item cold-start protocol: this fraction of the items (of those with any interaction) loses all its train
    interactions after the split; their val/test rows stay, so they are `cold` there. 0 = off."""
    cold_item_mode: Literal["random", "newest"] = "random"
    """random: a seeded uniform sample of items; newest: the items whose first interaction is latest (ties by id)."""
    seed: int = 0
    """Seed of the random split (mode random) and of the random cold-item sample."""


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
