"""Activity buckets by train count: percentile head/torso/tail/cold, and AKT-Rec's absolute head/tail/cold."""

from __future__ import annotations

import numpy as np
import polars as pl

from semid import schema as S
from semid.data.config import BucketConfig
from semid.errors import InputError

ABS_BUCKET = "abs_bucket"
"""items/users column: the absolute tail definition of AKT-Rec (head / tail / cold by a fixed train-count threshold),
beside the percentile `bucket`."""
ABS_BUCKETS: tuple[str, ...] = ("head", "tail", "cold")


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
