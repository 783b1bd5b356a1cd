"""Train/val/test splits (temporal, leave-last-out or seeded random), the item cold-start hold-out, and the split
checks."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import polars as pl

from semid import schema as S
from semid.data.config import SplitConfig
from semid.errors import InputError


def leave_last_out(user: str) -> pl.Expr:
    """ "train"/"val"/"test" per row of a frame sorted by time: a user's last row is test, the one before it val;
    users with fewer than 3 rows stay in train."""
    from_end = pl.int_range(pl.len()).reverse().over(user)  # 0 = the user's last row
    n_user = pl.len().over(user)
    return (
        pl.when((n_user >= 3) & (from_end == 0))
        .then(pl.lit("test"))
        .when((n_user >= 3) & (from_end == 1))
        .then(pl.lit("val"))
        .otherwise(pl.lit("train"))
    )


def split_interactions(inter: pl.DataFrame, cfg: SplitConfig) -> dict[str, pl.DataFrame]:
    """train/val/test by time (temporal, leave_last_out) or by a seeded draw (random). `inter` has dense ids, label
    and timestamp; every split comes back sorted by (timestamp, user, item)."""
    if not (0 <= cfg.val_frac < 1 and 0 < cfg.test_frac < 1 and cfg.val_frac + cfg.test_frac < 1):
        raise InputError(
            f"bad split fractions val={cfg.val_frac} test={cfg.test_frac}",
            fix="use 0 <= val_frac, 0 < test_frac and val_frac + test_frac < 1",
        )
    inter = inter.sort([S.TIMESTAMP, S.USER, S.ITEM])
    if cfg.mode in ("temporal", "random"):
        n = inter.height
        n_train = int(round(n * (1 - cfg.val_frac - cfg.test_frac)))
        n_val = int(round(n * cfg.val_frac))
        if cfg.mode == "temporal":
            pos = pl.int_range(pl.len())
        else:  # each row's place in one seeded permutation of the (sorted, so reproducible) rows
            draw = np.random.default_rng(cfg.seed).permutation(n)  # (n,) row index at each place
            place = np.empty(n, dtype=np.int64)
            place[draw] = np.arange(n)
            pos = pl.lit(pl.Series("_place", place))
        part = pl.when(pos < n_train).then(pl.lit("train")).when(pos < n_train + n_val).then(pl.lit("val"))
        inter = inter.with_columns(part.otherwise(pl.lit("test")).alias("_split"))
    else:
        inter = inter.with_columns(leave_last_out(S.USER).alias("_split"))
    parts = inter.partition_by("_split", as_dict=True, include_key=False)
    splits = {name: parts.get((name,), inter.clear().drop("_split")) for name in S.SPLITS}
    if cfg.mode == "temporal":
        # The guarantee the temporal mode exists for: val and test are the future of train.
        for early, late in (("train", "val"), ("val", "test"), ("train", "test")):
            a, b = splits[early][S.TIMESTAMP].max(), splits[late][S.TIMESTAMP].min()
            if a is not None and b is not None and a > b:
                raise RuntimeError(
                    f"temporal split leaks: max {early} timestamp {a} > min {late} timestamp {b}"
                )
    return splits


def hold_out_items(
    inter: pl.DataFrame, splits: dict[str, pl.DataFrame], cfg: SplitConfig
) -> tuple[dict[str, pl.DataFrame], pl.Series]:
    """The item cold-start protocol: `cfg.cold_items` of the items lose their train rows (val/test rows stay).

    Returns the new splits and the held-out dense item ids (sorted; empty when the protocol is off).
    """
    empty = pl.Series(S.ITEM, [], dtype=pl.Int32)
    if cfg.cold_items == 0:
        return splits, empty
    if not 0 < cfg.cold_items < 1:
        raise InputError(
            f"bad cold-item fraction {cfg.cold_items}",
            fix="use 0 <= split.cold_items < 1 (e.g. 0.1; 0 = off)",
        )
    first = inter.group_by(S.ITEM).agg(pl.col(S.TIMESTAMP).min().alias("_first")).sort(S.ITEM)
    n = int(round(cfg.cold_items * first.height))
    if cfg.cold_item_mode == "newest":
        chosen = first.sort(["_first", S.ITEM], descending=True).head(n)[S.ITEM]
    else:
        order = np.random.default_rng(cfg.seed).permutation(first.height)[:n]
        chosen = first[S.ITEM].gather(order)
    chosen = chosen.sort()
    out = dict(splits)
    out["train"] = splits["train"].filter(~pl.col(S.ITEM).is_in(chosen.implode()))
    return out, chosen


def gauc_user_counts(splits: dict[str, pl.DataFrame]) -> dict[str, int]:
    """Per split, how many users have both a positive and a negative there (the users a GAUC rests on)."""
    return {
        name: int(
            df.group_by(S.USER).agg(pl.col(S.LABEL).n_unique().alias("_k")).filter(pl.col("_k") == 2).height
        )
        for name, df in splits.items()
    }


def check_splits(splits: dict[str, pl.DataFrame], file: Path, cfg: SplitConfig) -> dict[str, int]:
    """Refuse a split that is empty or holds one label class (its AUC would be NaN); warn when val or test GAUC
    would rest on no users. Returns the users per split a GAUC rests on."""
    fix = "use more data, or other split fractions / mode (split.val_frac, split.test_frac, split.mode)"
    for name, df in splits.items():
        if df.is_empty():
            raise InputError(f"the {name} split is empty (mode {cfg.mode})", file=file, fix=fix)
        classes = sorted(df[S.LABEL].unique().to_list())
        if classes != [0, 1]:
            raise InputError(
                f"the {name} split has only label {classes} ({df.height} rows): AUC and GAUC are undefined there",
                file=file,
                fix="check the label source (label_threshold, or the label column), use more data, or other split "
                "fractions / mode",
            )
    users = gauc_user_counts(splits)
    for name in ("val", "test"):
        if users[name] == 0:
            warnings.warn(
                f"no user has both a positive and a negative in the {name} split ({splits[name].height} rows, "
                f"mode {cfg.mode}): its GAUC rests on no users and will be undefined; select models by AUC, or "
                "use a split with several rows per user",
                UserWarning,
                stacklevel=3,
            )
    return users


# -- the stage ----------------------------------------------------------------------------------------------
