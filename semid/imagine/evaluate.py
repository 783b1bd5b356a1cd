"""Semantic consistency of imagined behaviours: do they fall in the level-1 semantic clusters (sid_0) the user
actually visits next (val + test positives)? Also the exact-item hit rate; the same numbers for any baseline."""

from __future__ import annotations

import polars as pl

from semid import schema as S

METHOD = "method"
RESULT_COLUMNS = ("method", "users", "imagined", "consistency", "hit_rate", "users_with_hit")


def future_positives(splits: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """(user_id, item_id) of each user's next true behaviours: the val and test positives, deduplicated."""
    return (
        pl.concat([splits[name].select(S.USER, S.ITEM, S.LABEL) for name in ("val", "test")])
        .filter(pl.col(S.LABEL) == 1)
        .select(S.USER, S.ITEM)
        .unique()
    )


def consistency(recs: pl.DataFrame, future: pl.DataFrame, table: pl.DataFrame) -> dict[str, float | int]:
    """Scores of imagined items `recs` (user_id, item_id), over the users that have a next true behaviour.

    consistency = fraction of imagined items whose sid_0 is the sid_0 of one of the user's `future` items;
    hit_rate = fraction that are one of those items; users_with_hit = fraction of users with >= 1 exact hit.
    `table` is the item ID table (item_id, sid_0, ...)."""
    level1 = table.select(S.ITEM, S.sid_column(0))
    users = future.select(S.USER).unique()
    recs = recs.select(S.USER, S.ITEM).join(users, on=S.USER).join(level1, on=S.ITEM, how="left")
    future_sid = future.join(level1, on=S.ITEM).select(S.USER, S.sid_column(0)).unique()
    scored = recs.join(
        future_sid.with_columns(pl.lit(True).alias("_same")), on=[S.USER, S.sid_column(0)], how="left"
    ).join(future.with_columns(pl.lit(True).alias("_hit")), on=[S.USER, S.ITEM], how="left")
    scored = scored.with_columns(pl.col("_same", "_hit").fill_null(False))
    n = scored.height
    per_user = scored.group_by(S.USER).agg(pl.col("_hit").any())
    return {
        "users": per_user.height,
        "imagined": n,
        "consistency": float(scored["_same"].mean()) if n else float("nan"),
        "hit_rate": float(scored["_hit"].mean()) if n else float("nan"),
        "users_with_hit": float(per_user["_hit"].mean()) if per_user.height else float("nan"),
    }


def compare(methods: dict[str, pl.DataFrame], future: pl.DataFrame, table: pl.DataFrame) -> pl.DataFrame:
    """One row of `consistency` per method (name -> its (user_id, item_id) recommendations)."""
    return pl.DataFrame(
        [{METHOD: name, **consistency(recs, future, table)} for name, recs in methods.items()]
    ).select(RESULT_COLUMNS)


def markdown(results: pl.DataFrame) -> str:
    """The comparison as a markdown table."""
    lines = [
        "| method | users | imagined | level-1 consistency | exact hit rate | users with a hit |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in results.iter_rows(named=True):
        lines.append(
            f"| {row['method']} | {row['users']} | {row['imagined']} | {row['consistency']:.4f} | "
            f"{row['hit_rate']:.4f} | {row['users_with_hit']:.4f} |"
        )
    return "\n".join(lines)
