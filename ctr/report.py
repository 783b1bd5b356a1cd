"""The run report: AUC / GAUC / log loss per model, seed and activity bucket, the target's deltas vs the best baseline
with paired-seed and user-bootstrap significance, ablations, semantic-ID health, as report.md, report.json and PNGs.

Reads a run directory (`<run>/models/<model>/seed<k>/predictions.parquet` [+ metrics.json], `<run>/semids/*.parquet`)
and writes `<run>/report/` atomically. report.json's schema (schema_version 1) is documented in docs/report.md.
Metric values come from `ctr.metrics`; the bootstrap re-weights per-user AUCs computed once per model and seed.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import torch

from ctr import metrics
from semid import schema
from semid.errors import InputError
from semid.io import read_meta, staged_dir, write_json

REPORT_SCHEMA_VERSION = 1
REPORT_DIR = "report"
MODELS_DIR = "models"
SEMIDS_DIR = "semids"
METRICS_FILE = "metrics.json"
METRIC_NAMES: tuple[str, ...] = ("auc", "gauc", "logloss")
DELTA_METRICS: tuple[str, ...] = ("auc", "gauc")
BUCKET_KINDS: dict[str, str] = {"item_buckets": schema.ITEM_BUCKET, "user_buckets": schema.USER_BUCKET}
BUCKET_TITLES: dict[str, str] = {"item_buckets": "item popularity", "user_buckets": "user activity"}
PLOTS: tuple[str, ...] = ("auc_by_bucket.png", "gauc_by_bucket.png", "codebook_usage.png", "prefix_sizes.png")
_SEED_DIR = re.compile(r"^seed(\d+)$")
_SID_LEVEL = re.compile(rf"^{schema.SID_PREFIX}(\d+)$")
_HEALTH_FIELDS: tuple[str, ...] = ("collision_rate", "colliding_tuples", "largest_bucket", "unique_full_ids")
_LEVEL_FIELDS: tuple[str, ...] = ("size", "used", "utilization", "entropy_bits", "entropy_normalized")


# -- reading a run directory -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedRun:
    """One trained model at one seed: its validated predictions and (optional) metrics.json."""

    model: str
    seed: int
    predictions: pl.DataFrame
    metrics: dict[str, Any] | None


def discover(run_dir: Path) -> dict[str, dict[int, Path]]:
    """model name -> seed -> seed directory holding a predictions file; errors for no models / a model without any."""
    models_dir = run_dir / MODELS_DIR
    model_dirs = sorted(p for p in models_dir.iterdir() if p.is_dir()) if models_dir.is_dir() else []
    if not model_dirs:
        raise InputError(
            "the run directory has no trained models",
            file=models_dir,
            fix=f"train and predict first, so that {MODELS_DIR}/<model>/seed<k>/{schema.PREDICTIONS_FILE} exists",
        )
    found: dict[str, dict[int, Path]] = {}
    for model_dir in model_dirs:
        seeds = {}
        for seed_dir in model_dir.iterdir():
            match = _SEED_DIR.match(seed_dir.name)
            if match and (seed_dir / schema.PREDICTIONS_FILE).is_file():
                seeds[int(match.group(1))] = seed_dir
        if not seeds:
            raise InputError(
                "this model has no predictions",
                file=model_dir,
                fix=f"run `ctr predict` for it (writes seed<k>/{schema.PREDICTIONS_FILE}) or remove the directory",
            )
        found[model_dir.name] = dict(sorted(seeds.items()))
    return found


def read_predictions(path: Path) -> pl.DataFrame:
    """A predictions parquet checked against `semid.schema.PREDICTIONS` (columns, labels, scores, bucket names)."""
    names = pl.read_parquet_schema(path)
    missing = [c for c in schema.PREDICTIONS if c not in names]
    if missing:
        raise InputError(
            f"missing column(s) {missing} (has {list(names)})",
            file=path,
            column=missing[0],
            fix=f"write predictions with `ctr predict`; the schema is semid.schema.PREDICTIONS: {list(schema.PREDICTIONS)}",
        )
    frame = pl.read_parquet(path, columns=list(schema.PREDICTIONS)).cast(dict(schema.PREDICTIONS))
    if frame.height == 0:
        raise InputError("the predictions file is empty", file=path, fix="predict on a non-empty test split")
    if frame[schema.SCORE].null_count() or not bool(frame[schema.SCORE].is_finite().all()):
        raise InputError(
            "scores must be finite probabilities", file=path, column=schema.SCORE, fix="re-run predict"
        )
    if not bool(frame[schema.LABEL].is_in([0, 1]).all()):
        raise InputError(
            "labels must be 0 or 1", file=path, column=schema.LABEL, fix="binarise labels in prepare"
        )
    for column in (schema.ITEM_BUCKET, schema.USER_BUCKET):
        names = frame[column].unique()
        bad = names.filter(names.is_null() | ~names.is_in(schema.BUCKETS))
        if bad.len():
            raise InputError(
                f"bucket names must be one of {list(schema.BUCKETS)}; found {bad.to_list()[:5]}",
                file=path,
                column=column,
                fix="write predictions with ctr.module.predictions_frame (it maps bucket indices to names)",
            )
    return frame


def read_seed(model: str, seed: int, seed_dir: Path) -> SeedRun:
    metrics_path = seed_dir / METRICS_FILE
    metrics_json = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    return SeedRun(model, seed, read_predictions(seed_dir / schema.PREDICTIONS_FILE), metrics_json)


def val_gauc(metrics_json: dict[str, Any] | None) -> float | None:
    """Overall validation GAUC from a metrics.json ("val": {"gauc"} or {"val/gauc"}), None if absent."""
    val = (metrics_json or {}).get("val") or {}
    for key in ("gauc", "val/gauc"):
        if isinstance(val.get(key), (int, float)) and math.isfinite(val[key]):
            return float(val[key])
    return None


# -- metrics -----------------------------------------------------------------------------------------------------


def score_predictions(frame: pl.DataFrame) -> dict[str, Any]:
    """ctr.metrics AUC, GAUC (groups = user), log loss, n and positives: overall and per item / user bucket."""
    preds = torch.tensor(frame[schema.SCORE].to_numpy(), dtype=torch.float32)  # (n,)
    target = torch.tensor(frame[schema.LABEL].to_numpy(), dtype=torch.float32)  # (n,)
    user = torch.tensor(frame[schema.USER].to_numpy(), dtype=torch.long)  # (n,)

    def scores(mask: torch.Tensor | None) -> dict[str, float]:
        p, y, u = (preds, target, user) if mask is None else (preds[mask], target[mask], user[mask])
        return {
            "auc": metrics.auc(p, y),
            "gauc": metrics.gauc(p, y, u),
            "logloss": metrics.logloss(p, y),
            "n": int(p.numel()),
            "n_pos": int(y.sum()),
        }

    out: dict[str, Any] = {"overall": scores(None)}
    for kind, column in BUCKET_KINDS.items():
        names = frame[column].to_numpy()
        out[kind] = {b: scores(torch.from_numpy(names == b)) for b in schema.BUCKETS}
    return out


def group_auc(frame: pl.DataFrame, by: Sequence[str]) -> pl.DataFrame:
    """AUC and row count of every group in `by` (ties = average rank, as ctr.metrics); auc null for one class."""
    n_pos, n_all = pl.col("n_pos"), pl.col("n")
    return (
        frame.lazy()
        .with_columns(_rank=pl.col(schema.SCORE).cast(pl.Float64).rank("average").over(list(by)))
        .group_by(list(by))
        .agg(
            n=pl.len().cast(pl.Float64),
            n_pos=pl.col(schema.LABEL).cast(pl.Float64).sum(),
            rank_pos=(pl.col("_rank") * pl.col(schema.LABEL).cast(pl.Float64)).sum(),
        )
        .with_columns(
            auc=pl.when((n_pos > 0) & (n_pos < n_all)).then(
                (pl.col("rank_pos") - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * (n_all - n_pos))
            )
        )
        .select(*by, "auc", "n")
        .collect()
    )


def user_auc_table(frame: pl.DataFrame) -> pl.DataFrame:
    """Per-user AUC and impressions for every scope: columns scope ("overall" | kind), bucket, user_id, auc, n."""
    parts = [
        group_auc(frame, [schema.USER]).select(
            scope=pl.lit("overall"),
            bucket=pl.lit("all"),
            **{schema.USER: pl.col(schema.USER)},
            auc="auc",
            n="n",
        )
    ]
    for kind, column in BUCKET_KINDS.items():
        parts.append(
            group_auc(frame, [column, schema.USER]).select(
                scope=pl.lit(kind),
                bucket=pl.col(column),
                **{schema.USER: pl.col(schema.USER)},
                auc="auc",
                n="n",
            )
        )
    return pl.concat(parts)


def stat(values: Sequence[float | None]) -> dict[str, Any]:
    """mean and std (ddof=1 with >= 2 finite values, else 0) over seeds, ignoring NaN; keeps the values."""
    vals = [math.nan if v is None else float(v) for v in values]
    finite = np.asarray([v for v in vals if math.isfinite(v)], dtype=np.float64)
    mean = float(finite.mean()) if finite.size else math.nan
    std = float(finite.std(ddof=1)) if finite.size >= 2 else (0.0 if finite.size else math.nan)
    return {"mean": mean, "std": std, "values": vals}


def summarise_model(runs: Sequence[SeedRun], scores: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-seed scores of one model folded into {mean, std, values} per metric, overall and per bucket."""

    def fold(cells: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {m: stat([c[m] for c in cells]) for m in METRIC_NAMES}
        out["n"] = cells[0]["n"]
        out["n_values"] = [c["n"] for c in cells]
        out["n_pos_values"] = [c["n_pos"] for c in cells]
        return out

    summary: dict[str, Any] = {
        "seeds": [r.seed for r in runs],
        "overall": fold([s["overall"] for s in scores]),
    }
    for kind in BUCKET_KINDS:
        summary[kind] = {b: fold([s[kind][b] for s in scores]) for b in schema.BUCKETS}
    has_metrics = [r.metrics is not None for r in runs]
    summary["val_gauc"] = stat([val_gauc(r.metrics) for r in runs]) if any(has_metrics) else None
    for key in ("fit_seconds", "epochs"):
        got = [(r.metrics or {}).get(key) for r in runs]
        summary[key] = stat(got) if any(isinstance(v, (int, float)) for v in got) else None
    return summary


# -- baseline choice, deltas, significance -----------------------------------------------------------------------


class Roles(NamedTuple):
    target: str
    baselines: list[str]
    ablations: list[str]
    others: list[str]  # neither: models left out of an explicit `baselines` list


def roles(models: Sequence[str], target: str, baselines: Sequence[str] | None, where: Path) -> Roles:
    if target not in models:
        raise InputError(
            f"target model {target!r} is not in the run (models: {list(models)})",
            file=where,
            fix=f"pass target=<one of {list(models)}>",
        )
    ablations = sorted(m for m in models if m.startswith(f"{target}_"))
    auto = sorted(m for m in models if m != target and m not in ablations)
    if baselines is None:
        chosen = auto
    else:
        unknown = [b for b in baselines if b not in models or b == target]
        if unknown:
            raise InputError(
                f"baselines {unknown} are not models of this run other than the target",
                file=where,
                fix=f"choose baselines from {auto}",
            )
        chosen = list(dict.fromkeys(baselines))
    others = [m for m in models if m not in chosen and m != target and m not in ablations]
    return Roles(target, chosen, ablations, others)


class Selection(NamedTuple):
    best: str | None
    rule: str  # "val_gauc" | "test_gauc" | "none"
    description: str


def select_best(baselines: Sequence[str], summaries: dict[str, dict[str, Any]]) -> Selection:
    """Highest mean overall val GAUC (metrics.json) if every seed of every baseline has it, else test GAUC."""
    if not baselines:
        return Selection(None, "none", "no baseline in the run: deltas are not reported")

    def has_val(name: str) -> bool:
        v = summaries[name]["val_gauc"]
        return v is not None and all(math.isfinite(x) for x in v["values"])

    def key(name: str, field: str) -> float:
        m = (
            summaries[name][field]["mean"]
            if field == "val_gauc"
            else summaries[name]["overall"]["gauc"]["mean"]
        )
        return m if math.isfinite(m) else -math.inf

    if all(has_val(b) for b in baselines):
        best = max(sorted(baselines), key=lambda b: key(b, "val_gauc"))
        return Selection(
            best, "val_gauc", "highest mean overall validation GAUC (metrics.json) among the baselines"
        )
    best = max(sorted(baselines), key=lambda b: key(b, "test_gauc"))
    return Selection(
        best,
        "test_gauc",
        "highest mean overall test GAUC among the baselines "
        "(validation GAUC missing from metrics.json for at least one baseline seed)",
    )


def _cells(summary: dict[str, Any]) -> list[tuple[str, str | None, dict[str, Any]]]:
    """(scope, bucket, cell) for overall and every bucket of a model summary."""
    out: list[tuple[str, str | None, dict[str, Any]]] = [("overall", None, summary["overall"])]
    out += [(kind, b, summary[kind][b]) for kind in BUCKET_KINDS for b in schema.BUCKETS]
    return out


def _put(tree: dict[str, Any], scope: str, bucket: str | None, value: Any) -> None:
    if bucket is None:
        tree[scope] = value
    else:
        tree.setdefault(scope, {})[bucket] = value


def mean_deltas(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """100 * (mean of a - mean of b) for AUC and GAUC, overall and per bucket (points), with the bucket's n."""
    out: dict[str, Any] = {}
    cells_b = {(s, k): c for s, k, c in _cells(b)}
    for scope, bucket, cell in _cells(a):
        other = cells_b[(scope, bucket)]
        value = {m: 100.0 * (cell[m]["mean"] - other[m]["mean"]) for m in DELTA_METRICS}
        value["n"] = cell["n"]
        _put(out, scope, bucket, value)
    return out


def paired_deltas(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per common seed: 100 * (a - b); mean, std (ddof=1), how many seeds have delta > 0, for AUC and GAUC."""
    seeds = sorted(set(a["seeds"]) & set(b["seeds"]))
    ia = [a["seeds"].index(s) for s in seeds]
    ib = [b["seeds"].index(s) for s in seeds]
    out: dict[str, Any] = {"seeds": seeds}
    cells_b = {(s, k): c for s, k, c in _cells(b)}
    for scope, bucket, cell in _cells(a):
        other = cells_b[(scope, bucket)]
        value = {}
        for m in DELTA_METRICS:
            d = [100.0 * (cell[m]["values"][i] - other[m]["values"][j]) for i, j in zip(ia, ib)]
            s = stat(d)
            finite = [x for x in d if math.isfinite(x)]
            value[m] = {**s, "positive": sum(x > 0 for x in finite), "n_seeds": len(finite)}
        _put(out, scope, bucket, value)
    return out


def _dense(
    tables: Sequence[pl.DataFrame], users: np.ndarray, scope: str, bucket: str
) -> tuple[np.ndarray, np.ndarray]:
    """(U, S) impression-weighted AUC sums and weights per user and seed for one scope; 0 where undefined."""
    num = np.zeros((users.size, len(tables)))  # (U, S)
    den = np.zeros((users.size, len(tables)))  # (U, S)
    for s, table in enumerate(tables):
        rows = table.filter(
            (pl.col("scope") == scope) & (pl.col("bucket") == bucket) & pl.col("auc").is_not_null()
        )
        idx = np.searchsorted(users, rows[schema.USER].to_numpy())  # (G,)
        num[idx, s] = rows["n"].to_numpy() * rows["auc"].to_numpy()
        den[idx, s] = rows["n"].to_numpy()
    return num, den


def _seed_mean_gauc(counts: np.ndarray, num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """(B,) mean over seeds of each draw's GAUC; NaN where a seed has no weight left."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((counts @ num) / (counts @ den)).mean(axis=1)  # (B, S) -> (B,)


def bootstrap_gauc_delta(
    target_tables: Sequence[pl.DataFrame],
    base_tables: Sequence[pl.DataFrame],
    *,
    n_boot: int,
    seed: int,
    confidence: float = 0.95,
    max_cells: int = 1 << 24,
) -> dict[str, Any]:
    """Bootstrap over users of 100 * (mean-over-seeds GAUC of target - of baseline), every scope at once.

    `*_tables` are `user_auc_table` frames, one per seed. Users are resampled with replacement (multinomial
    counts, the same draw for both models, all seeds and scopes); a draw's GAUC is sum(count * n * auc) /
    sum(count * n) over users, so per-user AUCs are computed only once. numpy, not torch: torch's thread pool
    makes thousands of tiny matmuls slow on a busy CPU.
    Returns {scope: value} or {scope: {bucket: value}}, value = {estimate, ci_low, ci_high, p_le_0, n_valid}.
    """
    all_tables = [*target_tables, *base_tables]
    users = np.unique(np.concatenate([t[schema.USER].to_numpy() for t in all_tables]))  # (U,)
    scopes = [("overall", "all")] + [(kind, b) for kind in BUCKET_KINDS for b in schema.BUCKETS]
    dense = {key: (_dense(target_tables, users, *key), _dense(base_tables, users, *key)) for key in scopes}
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, max_cells // max(users.size, 1)))
    draws: dict[tuple[str, str], list[np.ndarray]] = {key: [] for key in scopes}
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        counts = rng.multinomial(users.size, np.full(users.size, 1.0 / users.size), size=b).astype(np.float64)
        for key, ((num_t, den_t), (num_b, den_b)) in dense.items():  # counts: (B, U)
            delta = _seed_mean_gauc(counts, num_t, den_t) - _seed_mean_gauc(counts, num_b, den_b)  # (B,)
            draws[key].append(100.0 * delta)
        done += b
    ones = np.ones((1, users.size))  # (1, U) the sample itself
    alpha = (1.0 - confidence) / 2.0
    out: dict[str, Any] = {}
    for key, ((num_t, den_t), (num_b, den_b)) in dense.items():
        estimate = float(
            100.0 * (_seed_mean_gauc(ones, num_t, den_t) - _seed_mean_gauc(ones, num_b, den_b))[0]
        )
        d = np.concatenate(draws[key])
        d = d[np.isfinite(d)]
        if d.size:
            lo, hi = (float(q) for q in np.quantile(d, [alpha, 1.0 - alpha]))
            p_le_0 = float((d <= 0).mean())
        else:
            lo = hi = p_le_0 = math.nan
        value = {"estimate": estimate, "ci_low": lo, "ci_high": hi, "p_le_0": p_le_0, "n_valid": int(d.size)}
        _put(out, key[0], None if key[0] == "overall" else key[1], value)
    return out


# -- semantic-ID health ------------------------------------------------------------------------------------------


def sid_levels(table: pl.DataFrame, path: Path | str, key: str) -> list[str]:
    """The level columns sid_0..sid_{L-1} of an ID table, checking the key and suffix columns exist."""
    for column in (key, schema.SID_DEDUP):
        if column not in table.columns:
            raise InputError(
                f"missing column (has {table.columns})",
                file=path,
                column=column,
                fix="rebuild the semantic IDs with `semid build` (schema semid.schema.sid_schema)",
            )
    levels = sorted((int(m.group(1)), c) for c in table.columns if (m := _SID_LEVEL.match(c)))
    if not levels or [i for i, _ in levels] != list(range(len(levels))):
        raise InputError(
            f"level columns must be {schema.SID_PREFIX}0..{schema.SID_PREFIX}<L-1>, found {[c for _, c in levels]}",
            file=path,
            column=schema.sid_column(0),
            fix="rebuild the semantic IDs with `semid build`",
        )
    return [c for _, c in levels]


def code_counts(table: pl.DataFrame, column: str, size: int) -> np.ndarray:
    """(size,) number of rows holding each code of one level."""
    codes = table[column].to_numpy().astype(np.int64)
    return np.bincount(codes, minlength=size)


def prefix_sizes(table: pl.DataFrame, columns: Sequence[str]) -> list[np.ndarray]:
    """For depth d = 1..L: the number of rows sharing each distinct (sid_0..sid_{d-1}) prefix."""
    return [table.group_by(list(columns[:d])).len()["len"].to_numpy() for d in range(1, len(columns) + 1)]


def sid_health(table: pl.DataFrame, columns: Sequence[str], codebook_sizes: Sequence[int]) -> dict[str, Any]:
    """Recompute health from an ID table: per level codes used, utilization (used / size), entropy of code usage
    (bits, and / log2 size); collision rate (rows with sid_dedup > 0), colliding tuples (code tuples held by more
    than one row), largest bucket (most rows on one code tuple), unique full IDs (distinct tuples + suffix / rows)."""
    n = table.height
    per_level = []
    for level, (column, size) in enumerate(zip(columns, codebook_sizes)):
        counts = code_counts(table, column, size)  # (size,)
        p = counts[counts > 0] / max(n, 1)
        bits = float(-(p * np.log2(p)).sum()) if n else 0.0
        per_level.append(
            {
                "level": level,
                "size": int(size),
                "used": int((counts > 0).sum()),
                "utilization": float((counts > 0).sum() / size),
                "entropy_bits": bits,
                "entropy_normalized": bits / math.log2(size) if size > 1 else 0.0,
            }
        )
    tuples = table.group_by(list(columns)).len()["len"]
    return {
        "rows": n,
        "per_level": per_level,
        "collision_rate": float((table[schema.SID_DEDUP] > 0).mean()) if n else 0.0,
        "colliding_tuples": int((tuples > 1).sum()),
        "largest_bucket": int(tuples.max()) if n else 0,
        "unique_full_ids": table.select([*columns, schema.SID_DEDUP]).n_unique() / n if n else 1.0,
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
    for field in _HEALTH_FIELDS:
        merged[field], source[field] = pick(field, recomputed[field], reported.get(field))
    theirs_levels = reported.get("per_level", reported.get("levels"))
    theirs_levels = theirs_levels if isinstance(theirs_levels, list) else []
    merged["per_level"], source["per_level"] = [], []
    for i, mine in enumerate(recomputed["per_level"]):
        theirs = theirs_levels[i] if i < len(theirs_levels) and isinstance(theirs_levels[i], dict) else {}
        level, level_source = {"level": i}, {}
        for f in _LEVEL_FIELDS:
            level[f], level_source[f] = pick(f"per_level[{i}].{f}", mine[f], theirs.get(f))
        merged["per_level"].append(level)
        source["per_level"].append(level_source)
    merged["source"] = source
    merged["mismatches"] = mismatches
    return merged


class SidTable(NamedTuple):
    health: dict[str, Any]
    counts: list[np.ndarray]  # per level (size,) code usage
    prefixes: list[np.ndarray]  # per depth, rows per distinct prefix


def read_sid_table(path: Path, key: str) -> SidTable:
    """Health (metadata merged with recomputed), code usage and prefix sizes of one semantic-ID table."""
    table = pl.read_parquet(path)
    meta = read_meta(path)
    columns = sid_levels(table, path, key)
    sizes = meta.get("codebook_sizes")
    if isinstance(sizes, list) and len(sizes) == len(columns):
        sizes_source = "metadata"
    else:
        sizes = [int(table[c].max() or 0) + 1 for c in columns]
        sizes_source = "inferred (max code + 1; metadata has no codebook_sizes)"
    too_big = [c for c, s in zip(columns, sizes) if table.height and int(table[c].max()) >= s]
    if too_big or any(table.height and int(table[c].min()) < 0 for c in columns):
        raise InputError(
            f"codes outside 0..codebook_size-1 (codebook_sizes {sizes})",
            file=path,
            column=(too_big or columns)[0],
            fix="rebuild the semantic IDs; the metadata codebook_sizes must match the table",
        )
    recomputed = sid_health(table, columns, sizes)
    health = merge_health(recomputed, meta.get("health") if isinstance(meta.get("health"), dict) else None)
    prefixes = prefix_sizes(table, columns)
    health.update(
        {
            "file": f"{SEMIDS_DIR}/{path.name}",
            "levels": len(columns),
            "codebook_sizes": [int(s) for s in sizes],
            "codebook_sizes_source": sizes_source,
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


# -- plots -------------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_by_bucket(models: dict[str, dict[str, Any]], order: Sequence[str], metric: str, path: Path) -> None:
    """Grouped bars (x = bucket, one bar per model, error bar = std over seeds); item and user panels."""
    plt = _pyplot()
    width = 0.8 / len(order)
    fig, axes = plt.subplots(
        1, 2, figsize=(max(10.0, 1.1 * len(order) * 4 / 2 + 4), 5.0), dpi=120, sharey=True
    )
    tops, bottoms = [], []
    for ax, kind in zip(axes, BUCKET_KINDS):
        x = np.arange(len(schema.BUCKETS))
        for i, name in enumerate(order):
            cells = [models[name][kind][b][metric] for b in schema.BUCKETS]
            mean = np.array([c["mean"] for c in cells])
            std = np.nan_to_num(np.array([c["std"] for c in cells]))
            pos = x + (i - (len(order) - 1) / 2) * width
            bars = ax.bar(pos, np.nan_to_num(mean), width, yerr=std, capsize=3, label=name, color=f"C{i}")
            labels = [f"{m:.3f}" if math.isfinite(m) else "n/a" for m in mean]
            ax.bar_label(bars, labels=labels, fontsize=7, rotation=90, padding=3)
            ok = np.isfinite(mean)
            tops += list(mean[ok] + std[ok])
            bottoms += list(mean[ok] - std[ok])
        n = [models[order[0]][kind][b]["n"] for b in schema.BUCKETS]
        ax.set_xticks(x, [f"{b}\n(n={k:,})" for b, k in zip(schema.BUCKETS, n)])
        ax.set_xlabel(f"{BUCKET_TITLES[kind]} bucket (n = test rows)")
        ax.set_title(f"by {BUCKET_TITLES[kind]}")
        if metric in ("auc", "gauc"):
            ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
        ax.grid(axis="y", alpha=0.3)
    lo = max(0.0, min(bottoms, default=0.0) - 0.05)
    hi = max(tops, default=1.0)
    axes[0].set_ylim(lo, hi + 0.25 * (hi - lo) + 0.01)
    axes[0].set_ylabel(f"{metric.upper()} (mean ± std over seeds)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, title="model", loc="lower center", ncol=min(len(order), 6), fontsize=9)
    fig.suptitle(f"Test {metric.upper()} by activity bucket (y axis does not start at 0; dashed = random)")
    fig.tight_layout(rect=(0, 0.11 + 0.05 * ((len(order) - 1) // 6), 1, 1))
    fig.savefig(path)
    plt.close(fig)


def plot_codebook_usage(tables: dict[str, SidTable], path: Path) -> None:
    """Per table (row) and level (column): code usage counts sorted high to low, with utilization and entropy."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    n_cols = max(len(t.counts) for t in tables.values())
    fig, axes = plt.subplots(
        len(tables), n_cols, figsize=(4.2 * n_cols, 3.4 * len(tables)), dpi=120, squeeze=False
    )
    for r, (name, table) in enumerate(tables.items()):
        for c in range(n_cols):
            ax = axes[r][c]
            if c >= len(table.counts):
                ax.axis("off")
                continue
            counts = np.sort(table.counts[c])[::-1]
            lv = table.health["recomputed"]["per_level"][c]
            ax.bar(np.arange(counts.size), counts, width=1.0, color=f"C{r}")
            ax.axhline(
                counts.sum() / counts.size, color="black", linestyle="--", linewidth=0.8, label="uniform"
            )
            ax.set_title(
                f"{name} level {c}: {lv['used']}/{lv['size']} used ({lv['utilization']:.0%})\n"
                f"entropy {lv['entropy_bits']:.2f} of {math.log2(max(lv['size'], 2)):.2f} bits",
                fontsize=9,
            )
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("code rank (most used first)")
            ax.set_ylabel(f"{name} per code")
            ax.legend(fontsize=7)
    fig.suptitle("Semantic-ID codebook usage per level")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_prefix_sizes(tables: dict[str, SidTable], path: Path) -> None:
    """Per table: log-log histograms of entities per distinct semantic-ID prefix, one line per prefix depth."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tables), figsize=(6.0 * len(tables), 4.5), dpi=120, squeeze=False)
    for ax, (name, table) in zip(axes[0], tables.items()):
        biggest = max((int(p.max()) for p in table.prefixes if p.size), default=1)
        bins = np.unique(np.round(np.logspace(0, math.log10(biggest + 1), 25)).astype(int))
        bins = np.append(bins, bins[-1] + 1) if bins.size < 2 else bins
        for d, sizes in enumerate(table.prefixes):
            ax.hist(
                sizes,
                bins=bins,
                histtype="step",
                linewidth=1.6,
                label=f"depth {d + 1}: {sizes.size:,} prefixes, max {int(sizes.max()) if sizes.size else 0}",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"{name} per prefix (log)")
        ax.set_ylabel("number of prefixes (log)")
        ax.set_title(f"{name}: sizes of semantic-ID prefix buckets")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- markdown ----------------------------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _ms(s: dict[str, Any] | None, digits: int = 4, sign: str = "") -> str:
    if s is None or s["mean"] is None or not math.isfinite(s["mean"]):
        return "n/a"
    # one seed: a std of 0 would claim a precision that was never measured
    if "values" in s and sum(v is not None and math.isfinite(v) for v in s["values"]) < 2:
        return f"{s['mean']:{sign}.{digits}f}"
    return f"{s['mean']:{sign}.{digits}f} ± {s['std']:.{digits}f}"


def _signed(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:+.{digits}f}"


def render_markdown(report: dict[str, Any]) -> str:
    models, target, best = report["models"], report["target"], report["best_baseline"]
    order = report["model_order"]
    lines = [f"# CTR report: {report['run']}", ""]
    if report.get("dataset"):
        lines += [f"Dataset: {report['dataset']}.", ""]
    lines += [summary_paragraph(report), ""]
    lines += [
        "## Models (overall, test)",
        "",
        "Mean ± std over seeds (std with ddof = 1; no std with one seed). "
        f"n = {models[target]['overall']['n']:,} test rows per seed.",
        "",
        "| model | role | seeds | AUC | GAUC | logloss | val GAUC | fit s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in order:
        m = models[name]
        lines.append(
            f"| {name} | {report['roles'][name]} | {len(m['seeds'])} | {_ms(m['overall']['auc'])} "
            f"| {_ms(m['overall']['gauc'])} | {_ms(m['overall']['logloss'])} | {_ms(m['val_gauc'])} "
            f"| {_ms(m['fit_seconds'], 1)} |"
        )
    for kind in BUCKET_KINDS:
        lines += [
            "",
            f"## By {BUCKET_TITLES[kind]} bucket",
            "",
            "| bucket | n | model | AUC | GAUC | logloss |",
            "|---|---|---|---|---|---|",
        ]
        for b in schema.BUCKETS:
            for name in order:
                cell = models[name][kind][b]
                lines.append(
                    f"| {b} | {cell['n']:,} | {name} | {_ms(cell['auc'])} | {_ms(cell['gauc'])} "
                    f"| {_ms(cell['logloss'])} |"
                )
    if best is not None:
        lines += delta_table(report)
    lines += ablation_table(report)
    lines += health_table(report)
    lines += ["", "## Plots", ""]
    lines += [f"- [{p}]({p})" for p in report["plots"]]
    lines += [""]
    lines += [f"![{p}]({p})" for p in report["plots"]]
    return "\n".join(lines) + "\n"


def summary_paragraph(report: dict[str, Any]) -> str:
    target, best = report["target"], report["best_baseline"]
    if best is None:
        return f"Target model `{target}`; the run has no baseline, so no deltas are reported."
    d, sig = report["deltas"], report["significance"]
    paired = sig["paired"]["overall"]["gauc"]
    boot = sig["bootstrap"]["overall"]

    def bucket(b: str) -> str:
        cell = d["item_buckets"][b]
        bs = sig["bootstrap"]["item_buckets"][b]
        return (
            f"{b} items (n = {cell['n']:,}): AUC {_signed(cell['auc'], 2)}, GAUC {_signed(cell['gauc'], 2)} "
            f"(95% CI [{_signed(bs['ci_low'], 2)}, {_signed(bs['ci_high'], 2)}])"
        )

    return (
        f"Target `{target}` vs the best baseline `{best}` ({report['selection_rule_text']}): overall AUC "
        f"{_signed(d['overall']['auc'], 2)} points and GAUC {_signed(d['overall']['gauc'], 2)} points (x100). "
        f"Paired over {paired['n_seeds']} seed(s), the GAUC delta is {_signed(paired['mean'], 2)} ± "
        f"{_f(paired['std'], 2)} and positive in {paired['positive']}/{paired['n_seeds']}; a bootstrap over users "
        f"({report['significance']['bootstrap']['n_boot']} draws, seeds pooled) gives a 95% interval of "
        f"[{_signed(boot['ci_low'], 2)}, {_signed(boot['ci_high'], 2)}] points and P(delta <= 0) = "
        f"{_f(boot['p_le_0'], 3)}. Long tail: {bucket('tail')}; {bucket('cold')}."
    )


def delta_table(report: dict[str, Any]) -> list[str]:
    d, paired, boot = report["deltas"], report["significance"]["paired"], report["significance"]["bootstrap"]
    lines = [
        "",
        f"## Deltas: `{report['target']}` - `{report['best_baseline']}` (points = x100)",
        "",
        f"Best baseline rule: {report['selection_rule_text']}. Paired = per-seed differences over common seeds "
        "(mean ± std, seeds with delta > 0). Bootstrap = users resampled with replacement, GAUC delta of the "
        "seed means, percentile 95% interval.",
        "",
        "| scope | bucket | n | ΔAUC | ΔGAUC | paired ΔAUC | AUC > 0 | paired ΔGAUC | GAUC > 0 "
        "| bootstrap 95% CI ΔGAUC | P(ΔGAUC <= 0) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [("overall", "all", d["overall"], paired["overall"], boot["overall"])]
    rows += [
        (BUCKET_TITLES[k], b, d[k][b], paired[k][b], boot[k][b]) for k in BUCKET_KINDS for b in schema.BUCKETS
    ]
    for scope, b, cell, p, bs in rows:
        lines.append(
            f"| {scope} | {b} | {cell['n']:,} | {_signed(cell['auc'])} | {_signed(cell['gauc'])} "
            f"| {_ms(p['auc'], sign='+')} | {p['auc']['positive']}/{p['auc']['n_seeds']} | {_ms(p['gauc'], sign='+')} "
            f"| {p['gauc']['positive']}/{p['gauc']['n_seeds']} | [{_signed(bs['ci_low'])}, {_signed(bs['ci_high'])}] "
            f"| {_f(bs['p_le_0'], 3)} |"
        )
    return lines


def ablation_table(report: dict[str, Any]) -> list[str]:
    target, models = report["target"], report["models"]
    names = [target, *report["ablations"]["models"]]
    lines = [
        "",
        "## Ablations",
        "",
        f"Deltas vs `{target}` in points (x100) of the seed means.",
        "",
        "| model | seeds | AUC | GAUC | logloss | tail-item GAUC | cold-item GAUC | ΔAUC | ΔGAUC | Δ tail GAUC "
        "| Δ cold GAUC |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        m = models[name]
        dv = report["ablations"]["delta_vs_target"].get(name)
        deltas = (
            "| - | - | - | - |"
            if dv is None
            else f"| {_signed(dv['overall']['auc'])} | {_signed(dv['overall']['gauc'])} "
            f"| {_signed(dv['item_buckets']['tail']['gauc'])} | {_signed(dv['item_buckets']['cold']['gauc'])} |"
        )
        lines.append(
            f"| {name} | {len(m['seeds'])} | {_ms(m['overall']['auc'])} | {_ms(m['overall']['gauc'])} "
            f"| {_ms(m['overall']['logloss'])} | {_ms(m['item_buckets']['tail']['gauc'])} "
            f"| {_ms(m['item_buckets']['cold']['gauc'])} {deltas}"
        )
    if len(names) == 1:
        lines += ["", f"(no ablation runs: model directories named `{target}_*`)"]
    return lines


def health_table(report: dict[str, Any]) -> list[str]:
    lines = ["", "## Semantic-ID health", ""]
    present = {k: v for k, v in report["semid_health"].items() if v is not None}
    if not present:
        return [*lines, f"(no `{SEMIDS_DIR}/` tables in the run)"]
    lines += [
        "Utilization = codes used / codebook size; entropy of code usage in bits (/ log2 size); collision rate = "
        "rows whose code tuple is shared (sid_dedup > 0); largest bucket = most rows on one code tuple.",
        "",
        "| table | rows | codebook sizes | utilization per level | entropy bits per level | normalised entropy "
        "| collision rate | colliding tuples | largest bucket | unique full IDs | source |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, h in present.items():
        per = h["per_level"]
        src = h["source"]
        sources = {v for k, v in src.items() if k != "per_level"} | {
            v for lv in src["per_level"] for v in lv.values()
        }
        source = sources.pop() if len(sources) == 1 else "mixed"
        if h["mismatches"]:
            source += f" (metadata differs from table: {', '.join(h['mismatches'])})"
        lines.append(
            f"| {name} | {h['rows']:,} | {' x '.join(map(str, h['codebook_sizes']))} "
            f"| {' / '.join(_f(lv['utilization']) for lv in per)} | {' / '.join(_f(lv['entropy_bits']) for lv in per)} "
            f"| {' / '.join(_f(lv['entropy_normalized']) for lv in per)} | {_f(h['collision_rate'])} "
            f"| {h['colliding_tuples']} | {h['largest_bucket']} | {_f(h['unique_full_ids'])} | {source} |"
        )
    lines += [
        "",
        "| table | prefix depth | prefixes | mean size | median size | max size |",
        "|---|---|---|---|---|---|",
    ]
    for name, h in present.items():
        for p in h["prefix_sizes"]:
            lines.append(
                f"| {name} | {p['depth']} | {p['n_prefixes']:,} | {_f(p['mean'])} | {_f(p['median'], 1)} | {p['max']} |"
            )
    return lines


# -- the report --------------------------------------------------------------------------------------------------


def _json_safe(obj: Any) -> Any:
    """NaN / inf -> None (strict JSON), numpy scalars -> Python, tuples -> lists."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run ctr.metrics single-threaded, then restore: its sorts and segment sums are memory-bound, and on a busy
    2-core machine torch's intra-op pool made them 30x slower (2.1 s vs 0.07 s per GAUC of 100k rows)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_report(
    run_dir: Path,
    *,
    target: str = "akt",
    baselines: list[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Write <run_dir>/report/{report.md, report.json, *.png} and return the report.json document.

    Args:
        run_dir: the run directory (models/<model>/seed<k>/predictions.parquet, optional semids/).
        target: the model the report is about; models named "<target>_*" are its ablations.
        baselines: models to compare against (default: every model that is neither the target nor an ablation).
        n_boot: bootstrap draws over users for the GAUC-delta interval.
        seed: seed of the bootstrap draws.
    """
    run_dir = Path(run_dir)
    if n_boot < 1:
        raise InputError(f"n_boot must be >= 1, got {n_boot}", fix="pass n_boot=1000")
    found = discover(run_dir)
    role = roles(list(found), target, baselines, run_dir / MODELS_DIR)
    runs = {
        m: [read_seed(m, s, d) for s, d in seeds.items()] for m, seeds in found.items()
    }  # validates all first
    semid_paths = {
        "item": (run_dir / SEMIDS_DIR / schema.ITEM_SIDS_FILE, schema.ITEM),
        "user": (run_dir / SEMIDS_DIR / schema.USER_SIDS_FILE, schema.USER),
    }
    sid_tables = {name: read_sid_table(p, key) for name, (p, key) in semid_paths.items() if p.is_file()}

    with _one_torch_thread():
        scores = {m: [score_predictions(r.predictions) for r in rs] for m, rs in runs.items()}
    summaries = {m: summarise_model(runs[m], scores[m]) for m in runs}
    selection = select_best(role.baselines, summaries)
    order = [*role.baselines, *role.others, role.target, *role.ablations]
    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "run": run_dir.resolve().name,
        "run_dir": str(run_dir.resolve()),
        "dataset": next((read_meta(p).get("dataset") for p, _ in semid_paths.values() if p.is_file()), None),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target": role.target,
        "baselines": role.baselines,
        "best_baseline": selection.best,
        "selection_rule": selection.rule,
        "selection_rule_text": selection.description,
        "model_order": order,
        "roles": {
            **{m: "baseline" for m in role.baselines},
            **{m: "other" for m in role.others},
            role.target: "target",
            **{m: "ablation" for m in role.ablations},
        },
        "models": summaries,
        "deltas": None,
        "significance": None,
    }
    if selection.best is not None:
        a, b = summaries[role.target], summaries[selection.best]
        report["deltas"] = {"units": "points (x100)", "baseline": selection.best, **mean_deltas(a, b)}
        tables_t = [user_auc_table(r.predictions) for r in runs[role.target]]
        tables_b = [user_auc_table(r.predictions) for r in runs[selection.best]]
        report["significance"] = {
            "paired": paired_deltas(a, b),
            "bootstrap": {
                "method": "users resampled with replacement (multinomial counts), same draw for both models and "
                "all seeds; GAUC of each seed re-weighted, delta of the seed means; percentile interval",
                "metric": "gauc",
                "n_boot": n_boot,
                "seed": seed,
                "confidence": 0.95,
                **bootstrap_gauc_delta(tables_t, tables_b, n_boot=n_boot, seed=seed),
            },
        }
    report["ablations"] = {
        "models": role.ablations,
        "delta_vs_target": {m: mean_deltas(summaries[m], summaries[role.target]) for m in role.ablations},
    }
    report["semid_health"] = {
        name: (t.health if (t := sid_tables.get(name)) else None) for name in semid_paths
    }
    plots = list(PLOTS if sid_tables else PLOTS[:2])
    report["plots"] = plots
    report = _json_safe(report)

    with staged_dir(run_dir / REPORT_DIR) as out:
        for metric in ("auc", "gauc"):
            plot_by_bucket(summaries, order, metric, out / f"{metric}_by_bucket.png")
        if sid_tables:
            named = {f"{name}s": t for name, t in sid_tables.items()}
            plot_codebook_usage(named, out / "codebook_usage.png")
            plot_prefix_sizes(named, out / "prefix_sizes.png")
        write_json(report, out / "report.json")
        (out / "report.md").write_text(render_markdown(report))
    return report


def main(args: list[str] | None = None) -> None:
    """`ctr report RUN_DIR [--target akt] [--baselines '[a, b]'] [--n_boot 1000] [--seed 0]`.

    Returns None (not the report) so that `sys.exit(main())` in a console script exits 0."""
    from jsonargparse import CLI

    report = CLI(build_report, args=args)
    print(f"wrote {Path(report['run_dir']) / REPORT_DIR / 'report.md'}")


if __name__ == "__main__":
    main()
