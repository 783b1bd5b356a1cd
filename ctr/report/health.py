"""Semantic-ID health for the report: the ID tables are read and validated by semid.ids.read_table (the one
reader) and measured by semid.ids.health; this file lays the result out for report.json, compares it with the
health stored in the table's metadata, and counts code usage and prefix sizes for the plots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl

from semid import ids, schema

HEALTH_FIELDS: tuple[str, ...] = ("collision_rate", "colliding_tuples", "largest_bucket", "unique_full_ids")
LEVEL_FIELDS: tuple[str, ...] = ("size", "used", "utilization", "entropy_bits", "entropy_normalized")


class SidTable(NamedTuple):
    health: dict[str, Any]
    counts: list[np.ndarray]  # per level (size,) code usage
    prefixes: list[np.ndarray]  # per depth, rows per distinct prefix


def code_counts(table: pl.DataFrame, column: str, size: int) -> np.ndarray:
    """(size,) number of rows holding each code of one level."""
    return np.bincount(table[column].to_numpy().astype(np.int64), minlength=size)


def prefix_sizes(table: pl.DataFrame, columns: Sequence[str]) -> list[np.ndarray]:
    """For depth d = 1..L: the number of rows sharing each distinct (sid_0..sid_{d-1}) prefix."""
    return [table.group_by(list(columns[:d])).len()["len"].to_numpy() for d in range(1, len(columns) + 1)]


def sid_health(table: pl.DataFrame, codebook_sizes: Sequence[int]) -> dict[str, Any]:
    """semid.ids.health in the report's layout: rows, per_level (size, used, utilization, entropy), collision
    rate (rows with sid_dedup > 0), colliding tuples, largest bucket, unique full IDs."""
    h = ids.health(table, [int(s) for s in codebook_sizes])
    return {
        "rows": h["entities"],
        "per_level": [{"level": lv["level"], **{f: lv[f] for f in LEVEL_FIELDS}} for lv in h["levels"]],
        **{f: h[f] for f in HEALTH_FIELDS},
    }


def merge_health(recomputed: dict[str, Any], reported: dict[str, Any] | None) -> dict[str, Any]:
    """Take each field from the metadata "health" where it is there (same key names; per-level values under
    "per_level" or "levels"), else the recomputed one; record every field's source and where the two disagree."""
    reported = reported or {}
    mismatches: list[str] = []

    def pick(name: str, mine: Any, theirs: Any) -> tuple[Any, str]:
        if isinstance(theirs, (int, float)) and not isinstance(theirs, bool):
            if not math.isclose(float(theirs), float(mine), rel_tol=1e-6, abs_tol=1e-9):
                mismatches.append(name)
            return theirs, "metadata"
        return mine, "recomputed"

    merged = dict(recomputed)
    source: dict[str, Any] = {}
    for field in HEALTH_FIELDS:
        merged[field], source[field] = pick(field, recomputed[field], reported.get(field))
    theirs_levels = reported.get("per_level", reported.get("levels"))
    theirs_levels = theirs_levels if isinstance(theirs_levels, list) else []
    merged["per_level"], source["per_level"] = [], []
    for i, mine in enumerate(recomputed["per_level"]):
        theirs = theirs_levels[i] if i < len(theirs_levels) and isinstance(theirs_levels[i], dict) else {}
        level, level_source = {"level": i}, {}
        for f in LEVEL_FIELDS:
            level[f], level_source[f] = pick(f"per_level[{i}].{f}", mine[f], theirs.get(f))
        merged["per_level"].append(level)
        source["per_level"].append(level_source)
    merged["source"] = source
    merged["mismatches"] = mismatches
    return merged


def read_sid_table(path: Path, key: str) -> SidTable:
    """Health (metadata merged with recomputed), code usage and prefix sizes of one semantic-ID table."""
    table, meta = ids.read_table(path, key=key)  # schema, uniqueness, codes within codebook_sizes
    columns = ids.sid_columns(table)
    sizes = [int(s) for s in meta["codebook_sizes"]]
    recomputed = sid_health(table, sizes)
    health = merge_health(recomputed, meta.get("health") if isinstance(meta.get("health"), dict) else None)
    prefixes = prefix_sizes(table, columns)
    health.update(
        {
            "file": f"{schema.SEMIDS_DIR}/{path.name}",
            "levels": len(columns),
            "codebook_sizes": sizes,
            "encoder": meta.get("encoder"),
            "prefix_sizes": [
                {
                    "depth": d + 1,
                    "n_prefixes": int(p.size),
                    "mean": float(p.mean()) if p.size else 0.0,
                    "median": float(np.median(p)) if p.size else 0.0,
                    "max": int(p.max()) if p.size else 0,
                }
                for d, p in enumerate(prefixes)
            ],
            "recomputed": recomputed,
        }
    )
    return SidTable(health, [code_counts(table, c, s) for c, s in zip(columns, sizes)], prefixes)
