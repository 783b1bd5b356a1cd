"""Reading a run directory for the report: which models and seeds exist, their validated predictions and metrics.json.

Layout (names from semid.schema): <run>/MODELS_DIR/<model>/seed<k>/PREDICTIONS_FILE [+ METRICS_FILE].
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from semid import schema
from semid.errors import InputError

_TRAILING_INT = re.compile(r"^\D*(\d+)$")


def seed_of(name: str) -> int | None:
    """The seed of a seed directory name (the inverse of semid.schema.seed_dir_name), None for any other name."""
    match = _TRAILING_INT.match(name)
    if match and schema.seed_dir_name(int(match.group(1))) == name:
        return int(match.group(1))
    return None


@dataclass(frozen=True)
class SeedRun:
    """One trained model at one seed: its validated predictions and (optional) metrics.json."""

    model: str
    seed: int
    predictions: pl.DataFrame
    metrics: dict[str, Any] | None


def discover(run_dir: Path) -> dict[str, dict[int, Path]]:
    """model name -> seed -> seed directory holding a predictions file; errors for no models / a model without any."""
    models_dir = run_dir / schema.MODELS_DIR
    model_dirs = sorted(p for p in models_dir.iterdir() if p.is_dir()) if models_dir.is_dir() else []
    if not model_dirs:
        raise InputError(
            "the run directory has no trained models",
            file=models_dir,
            fix=f"train and predict first, so that {schema.MODELS_DIR}/<model>/{schema.seed_dir_name(0)}/"
            f"{schema.PREDICTIONS_FILE} exists",
        )
    found: dict[str, dict[int, Path]] = {}
    for model_dir in model_dirs:
        seeds = {}
        for seed_dir in model_dir.iterdir():
            seed = seed_of(seed_dir.name)
            if seed is not None and (seed_dir / schema.PREDICTIONS_FILE).is_file():
                seeds[seed] = seed_dir
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
    score = frame[schema.SCORE]
    bad = score.is_null() | ~score.is_finite().fill_null(False)
    if bool(bad.any()):
        raise InputError(
            f"{int(bad.sum())} of {frame.height} scores are null, NaN or inf; no metric is computed from them",
            file=path,
            column=schema.SCORE,
            fix="the model diverged or the file is corrupt: re-train (e.g. with a lower learning rate) and re-run "
            "`ctr predict`",
        )
    if bool(((score < 0) | (score > 1)).any()):
        raise InputError(
            f"scores must be probabilities in [0, 1]; found {float(score.min()):.4g}..{float(score.max()):.4g}",
            file=path,
            column=schema.SCORE,
            fix="write click probabilities (after the sigmoid) with `ctr predict`",
        )
    if not bool(frame[schema.LABEL].is_in([0, 1]).all()):
        raise InputError(
            "labels must be 0 or 1", file=path, column=schema.LABEL, fix="binarise labels in prepare"
        )
    for column in (schema.ITEM_BUCKET, schema.USER_BUCKET):
        values = frame[column].unique()
        wrong = values.filter(values.is_null() | ~values.is_in(schema.BUCKETS))
        if wrong.len():
            raise InputError(
                f"bucket names must be one of {list(schema.BUCKETS)}; found {wrong.to_list()[:5]}",
                file=path,
                column=column,
                fix="write predictions with ctr.module.predictions_frame (it maps bucket indices to names)",
            )
    return frame


def read_metrics_json(path: Path) -> dict[str, Any] | None:
    """A seed's metrics.json as a dict, None if absent; InputError naming the file if it is not a JSON object."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(
            f"not valid JSON ({err})",
            file=path,
            fix="delete it and re-run the fit (`semid run` re-fits a seed without it), or restore the file",
        ) from None
    if not isinstance(value, dict):
        raise InputError(
            f"expected a JSON object, found {type(value).__name__}",
            file=path,
            fix="delete it and re-run the fit, or restore the file",
        )
    return value


def read_seed(model: str, seed: int, seed_dir: Path) -> SeedRun:
    return SeedRun(
        model,
        seed,
        read_predictions(seed_dir / schema.PREDICTIONS_FILE),
        read_metrics_json(seed_dir / schema.METRICS_FILE),
    )


def val_gauc(metrics_json: dict[str, Any] | None) -> float | None:
    """Overall validation GAUC from a metrics.json ("val": {"gauc"} or {"val/gauc"}), None if absent."""
    val = (metrics_json or {}).get("val") or {}
    if not isinstance(val, dict):
        return None
    for key in ("gauc", "val/gauc"):
        if isinstance(val.get(key), (int, float)) and math.isfinite(val[key]):
            return float(val[key])
    return None
