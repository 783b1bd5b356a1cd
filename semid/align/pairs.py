"""Training data of the alignment: co-engagement item pairs, each user's next item and rendered user text,
and their seeded held-out splits and popularity-damped samples (pure polars / torch, no model)."""

from __future__ import annotations

from typing import NamedTuple

import polars as pl
import torch
from torch import Tensor

from semid.errors import InputError
from semid.schema import ITEM, LABEL, TEXT, TIMESTAMP, USER

ANCHOR = "anchor_id"
POSITIVE = "positive_id"
NEXT_ITEM = "next_item_id"
_NO_PROFILE = "user"


def _positives(train: pl.DataFrame) -> pl.LazyFrame:
    """Positive train interactions in each user's timeline order (timestamp, ties by item_id)."""
    return train.lazy().filter(pl.col(LABEL) == 1).select(USER, ITEM, TIMESTAMP).sort(USER, TIMESTAMP, ITEM)


def co_engagement_pairs(train: pl.DataFrame, window: int) -> pl.DataFrame:
    """(user_id, anchor_id, positive_id): each positive of a user paired with the user's next `window` positives
    (timeline order), self-pairs (the same item twice) dropped. One shifted copy per offset, no loop over users."""
    require_columns(train, [USER, ITEM, LABEL, TIMESTAMP])
    pos = _positives(train)
    shifted = [
        pos.select(
            USER,
            pl.col(ITEM).alias(ANCHOR),
            pl.when(pl.col(USER).shift(-d) == pl.col(USER)).then(pl.col(ITEM).shift(-d)).alias(POSITIVE),
        )
        for d in range(1, window + 1)
    ]
    schema = {USER: pl.Int32, ANCHOR: pl.Int32, POSITIVE: pl.Int32}
    if not shifted:
        return pl.DataFrame(schema=schema)
    pairs = pl.concat(shifted).filter(pl.col(POSITIVE).is_not_null() & (pl.col(ANCHOR) != pl.col(POSITIVE)))
    return pairs.collect().cast(schema)


def next_items(train: pl.DataFrame) -> pl.DataFrame:
    """(user_id, next_item_id): each user's last positive train item, the target their user text is aligned to."""
    require_columns(train, [USER, ITEM, LABEL, TIMESTAMP])
    out = _positives(train).group_by(USER).agg(pl.col(ITEM).last().alias(NEXT_ITEM)).sort(USER)
    return out.collect().cast({USER: pl.Int32, NEXT_ITEM: pl.Int32})


def user_texts(
    users: pl.DataFrame, items: pl.DataFrame, train: pl.DataFrame, n_recent: int
) -> tuple[list[str], pl.DataFrame]:
    """One text per user in user_id order -- "<profile text>. Recently liked: <item text> | <item text> ..." over
    the `n_recent` positive train items before the last one, most recent first -- and the (user_id,
    next_item_id) targets (that last positive item) for users with at least one positive. A user with no profile
    text and no history gets the placeholder "user"."""
    require_columns(users, [USER, TEXT], what="users")
    require_columns(items, [ITEM, TEXT], what="items")
    pos = _positives(train).with_columns(
        # signed: pl.len() is unsigned, and `_n - 1 - n_recent` must go negative for users with few positives
        pl.int_range(pl.len()).over(USER).cast(pl.Int64).alias("_pos"),
        pl.len().over(USER).cast(pl.Int64).alias("_n"),
    )
    history = (
        pos.filter((pl.col("_pos") < pl.col("_n") - 1) & (pl.col("_pos") >= pl.col("_n") - 1 - n_recent))
        .join(items.lazy().select(ITEM, pl.col(TEXT).alias("_item_text")), on=ITEM, how="left")
        .sort(USER, "_pos", descending=[False, True])
        .group_by(USER, maintain_order=True)
        .agg(pl.col("_item_text").str.join(" | ").alias("_history"))
    )
    profile = pl.col(TEXT).fill_null("").str.strip_chars()
    recent = pl.col("_history")
    text = (
        pl.when(recent.is_null() | (recent == ""))
        .then(profile)
        .when(profile == "")
        .then(pl.lit("Recently liked: ") + recent)
        .otherwise(profile + pl.lit(". Recently liked: ") + recent)
    )
    rendered = (
        users.lazy()
        .select(USER, TEXT)
        .sort(USER)
        .join(history, on=USER, how="left", maintain_order="left")
        .select(pl.when(text == "").then(pl.lit(_NO_PROFILE)).otherwise(text).alias(TEXT))
        .collect()
    )
    return rendered[TEXT].to_list(), next_items(train)


def require_columns(df: pl.DataFrame, cols: list[str], *, what: str = "train") -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputError(
            f"the {what} frame lacks columns {missing}",
            file=f"{what}.parquet",
            column=missing[0],
            fix="pass a prepared dataset frame (see semid.schema)",
        )


def _weighted_sample(weights: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """n indices drawn without replacement with probability proportional to weights (Efraimidis-Spirakis keys
    log(u) / w; works for any population size, unlike torch.multinomial's 2**24 limit)."""
    if n >= weights.shape[0]:
        return torch.randperm(weights.shape[0], generator=generator)
    keys = torch.rand(weights.shape[0], generator=generator, dtype=torch.float64).log() / weights.double()
    return torch.topk(keys, n).indices


class _Split(NamedTuple):
    train: pl.DataFrame
    val: pl.DataFrame
    probe: pl.DataFrame


def split_pairs(pairs: pl.DataFrame, holdout: float, generator: torch.Generator) -> _Split:
    """Split by unique unordered pair, so a probe pair is never trained on (from any user)."""
    lo = pl.min_horizontal(ANCHOR, POSITIVE).alias("_lo")
    hi = pl.max_horizontal(ANCHOR, POSITIVE).alias("_hi")
    keyed = pairs.with_columns(lo, hi)
    uniq = keyed.select("_lo", "_hi").unique().sort("_lo", "_hi")
    n_hold = int(round(holdout * uniq.height))
    rank_values = torch.randperm(uniq.height, generator=generator).numpy()
    rank = pl.col("_rank")
    part = pl.when(rank < n_hold).then(pl.lit("probe")).when(rank < 2 * n_hold).then(pl.lit("val"))
    uniq = uniq.with_columns(pl.Series("_rank", rank_values)).with_columns(
        part.otherwise(pl.lit("train")).alias("_part")
    )
    keyed = keyed.join(uniq, on=["_lo", "_hi"], how="left", maintain_order="left")
    pick = [
        keyed.filter(pl.col("_part") == p).select(USER, ANCHOR, POSITIVE) for p in ("train", "val", "probe")
    ]
    return _Split(*pick)


def split_users(targets: pl.DataFrame, holdout: float, generator: torch.Generator) -> _Split:
    n_hold = int(round(holdout * targets.height))
    rank = torch.randperm(targets.height, generator=generator).numpy()
    ranked = targets.with_columns(pl.Series("_rank", rank))
    return _Split(
        ranked.filter(pl.col("_rank") >= 2 * n_hold).drop("_rank"),
        ranked.filter((pl.col("_rank") >= n_hold) & (pl.col("_rank") < 2 * n_hold)).drop("_rank"),
        ranked.filter(pl.col("_rank") < n_hold).drop("_rank"),
    )


def pairs_tensor(df: pl.DataFrame, a: str, b: str) -> Tensor:
    return (
        torch.stack([df[a].to_torch().long(), df[b].to_torch().long()], dim=1)
        if df.height
        else torch.empty(0, 2, dtype=torch.long)
    )


def sample_pairs(
    pairs: pl.DataFrame, counts: Tensor, n: int, power: float, generator: torch.Generator
) -> Tensor:
    t = pairs_tensor(pairs, ANCHOR, POSITIVE)  # (P, 2)
    if t.shape[0] == 0:
        return t
    weights = (counts[t[:, 0]] * counts[t[:, 1]]).double().clamp_min(1.0) ** -power  # (P,)
    return t[_weighted_sample(weights, n, generator)]
