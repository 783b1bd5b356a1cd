"""Cross-domain behaviour pairs (RGCD-Rep, arXiv 2606.04448): (source item, target item) co-engaged by one user
within a window of positions, with a behaviour score.

An event pair of one user counts with weight `decay ** (gap - 1)` (gap = |position difference| >= 1, at most
`window`); a user who co-engaged the two items several times counts once, with their closest occurrence. Per item
pair: `users` (distinct users), `weight` (sum of the per-user weights) and `score = weight / sqrt(n_s * n_t)`, where
n_s, n_t are the users who engaged each item at all: a cosine-like association in (0, 1] that does not favour the
head items every user buys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from semid import schema as S
from semid.errors import InputError

SOURCE_ITEM = "source_item"
TARGET_ITEM = "target_item"
USERS = "users"
WEIGHT = "weight"
SCORE = "score"
MIN_GAP = "min_gap"
PAIRS = pl.Schema(
    {
        SOURCE_ITEM: pl.Int32,
        TARGET_ITEM: pl.Int32,
        USERS: pl.UInt32,
        MIN_GAP: pl.Int64,
        WEIGHT: pl.Float64,
        SCORE: pl.Float64,
    }
)
"""pairs.parquet; `transferability` (the teacher's) is added by semid.crossdomain.teacher."""

SOURCE_HISTORY_FILE = "source_history.parquet"
"""<prepared>/source_history.parquet of a cross-domain prepared dataset (semid.amazon.SOURCE_HISTORY)."""


@dataclass(frozen=True)
class PairConfig:
    window: int = 10
    """Largest position gap between a source and a target event of one user that still makes a pair."""
    decay: float = 0.8
    """An event pair at gap g weighs decay ** (g - 1): adjacent events weigh 1."""
    min_users: int = 1
    """Pairs co-engaged by fewer distinct users are dropped."""
    max_pairs: int | None = None
    """Keep only the best-scored pairs (ties: more users, then ids); None keeps all."""


def check_config(cfg: PairConfig) -> None:
    if cfg.window < 1 or not 0.0 < cfg.decay <= 1.0 or cfg.min_users < 1:
        raise InputError(f"bad pair settings {cfg}", fix="use window >= 1, 0 < decay <= 1 and min_users >= 1")
    if cfg.max_pairs is not None and cfg.max_pairs < 1:
        raise InputError(f"max_pairs={cfg.max_pairs}", fix="use max_pairs >= 1 or leave it unset")


def co_engaged_pairs(
    source: pl.DataFrame, target: pl.DataFrame, cfg: PairConfig = PairConfig()
) -> pl.DataFrame:
    """Pairs (schema PAIRS) from source-domain and target-domain events, each (user_id, item_id, timestamp) with
    the timestamp a position in the user's one mixed-domain sequence. Sorted by score, best first."""
    check_config(cfg)
    cols = [S.USER, S.ITEM, S.TIMESTAMP]
    src = source.lazy().select(cols).rename({S.ITEM: SOURCE_ITEM, S.TIMESTAMP: "_ts"})
    tgt = target.lazy().select(cols).rename({S.ITEM: TARGET_ITEM, S.TIMESTAMP: "_tt"})
    n_s = src.group_by(SOURCE_ITEM).agg(pl.col(S.USER).n_unique().alias("_ns"))
    n_t = tgt.group_by(TARGET_ITEM).agg(pl.col(S.USER).n_unique().alias("_nt"))
    gap = (pl.col("_ts") - pl.col("_tt")).abs()
    per_user = (
        src.join(tgt, on=S.USER)
        .with_columns(gap.alias("_gap"))
        .filter((pl.col("_gap") >= 1) & (pl.col("_gap") <= cfg.window))
        .group_by(S.USER, SOURCE_ITEM, TARGET_ITEM)
        .agg(pl.col("_gap").min())
    )
    pairs = (
        per_user.group_by(SOURCE_ITEM, TARGET_ITEM)
        .agg(
            pl.len().cast(pl.UInt32).alias(USERS),
            pl.col("_gap").min().cast(pl.Int64).alias(MIN_GAP),
            pl.lit(cfg.decay, pl.Float64).pow(pl.col("_gap") - 1).sum().alias(WEIGHT),
        )
        .filter(pl.col(USERS) >= cfg.min_users)
        .join(n_s, on=SOURCE_ITEM)
        .join(n_t, on=TARGET_ITEM)
        .with_columns((pl.col(WEIGHT) / (pl.col("_ns") * pl.col("_nt")).cast(pl.Float64).sqrt()).alias(SCORE))
        .sort([SCORE, USERS, SOURCE_ITEM, TARGET_ITEM], descending=[True, True, False, False])
        .select(pl.col(SOURCE_ITEM).cast(pl.Int32), pl.col(TARGET_ITEM).cast(pl.Int32), *list(PAIRS)[2:])
    )
    if cfg.max_pairs is not None:
        pairs = pairs.head(cfg.max_pairs)
    return pairs.collect()


def read_events(data_dir: str | Path, prepared_train: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(source events, target events) of a cross-domain prepared dataset: the source-domain history of users who
    also have target-domain events, and the target-domain train positives (val/test never make a pair)."""
    path = Path(data_dir) / SOURCE_HISTORY_FILE
    if not path.is_file():
        raise InputError(
            "no source-domain history: RGCD needs a cross-domain prepared dataset",
            file=path,
            fix="prepare the amazon-food-kitchen dataset (semid prepare --dataset amazon-food-kitchen)",
        )
    history = pl.read_parquet(path)
    missing = [c for c in (S.USER, S.ITEM, S.TIMESTAMP) if c not in history.columns]
    if missing:
        raise InputError(
            f"missing column {missing[0]!r}", file=path, column=missing[0], fix="prepare the dataset again"
        )
    source = history.filter(pl.col(S.USER).is_not_null()).select(S.USER, S.ITEM, S.TIMESTAMP)
    target = prepared_train.filter(pl.col(S.LABEL) == 1).select(S.USER, S.ITEM, S.TIMESTAMP)
    return source, target
