"""Reading a run directory for the report: which models and seeds exist, their validated predictions, metrics.json
and the model-selection monitor each seed was fitted with.

Layout (names from semid.schema): <run>/MODELS_DIR/<model>/seed<k>/PREDICTIONS_FILE [+ METRICS_FILE]
[+ VAL_PREDICTIONS_FILE, the calibration's input] [+ config/*.yaml (semid.schema.FIT_CONFIG_DIR), the configs `semid run` froze for the fit]; optional
<run>/scenarios.parquet (semid.scenarios, written by the `scenarios:` stage of `semid run`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
import polars as pl
import yaml

from ctr.module import MONITOR_KEY, Monitor, configured_monitor
from semid import scenarios as SC
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
    """One trained model at one seed: its validated predictions, (optional) metrics.json, the monitor its fit
    selected the checkpoint on (None when the seed has no frozen config to say so), that monitor's validation
    value from metrics.json (None when unknown or absent) and its validation predictions (None when absent)."""

    model: str
    seed: int
    predictions: pl.DataFrame
    metrics: dict[str, Any] | None
    monitor: str | None
    val_monitor: float | None
    val_predictions: pl.DataFrame | None = None


def finished_seeds(model_dir: Path) -> dict[int, Path]:
    """seed -> seed directory of `model_dir` holding a predictions file (none when the folder does not exist)."""
    if not model_dir.is_dir():
        return {}
    seeds = {}
    for seed_dir in model_dir.iterdir():
        seed = seed_of(seed_dir.name)
        if seed is not None and (seed_dir / schema.PREDICTIONS_FILE).is_file():
            seeds[seed] = seed_dir
    return seeds


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
        seeds = finished_seeds(model_dir)
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


def read_monitor(seed_dir: Path) -> str | None:
    """The `model.monitor` a seed was fitted with: the last of its frozen configs (semid.schema.FIT_CONFIG_DIR, applied in name
    order as `ctr fit --config` applies them) that sets it, else CTRTask's default; None without that folder.

    The frozen configs are the record of the fit (its stage hash covers their text), so the report reads the rule
    the checkpoint and early stopping used from them rather than asking the user to repeat it.
    """
    config_dir = seed_dir / schema.FIT_CONFIG_DIR
    if not config_dir.is_dir():
        return None
    parsed = []
    for path in sorted(p for p in config_dir.iterdir() if p.suffix in (".yaml", ".yml")):
        try:
            parsed.append(yaml.safe_load(path.read_text()))
        except (UnicodeDecodeError, yaml.YAMLError) as err:
            raise InputError(
                f"frozen fit config is not valid YAML ({str(err).splitlines()[0]})",
                file=path,
                fix="delete the seed folder and re-run `semid run` to re-fit it, or restore the file",
            ) from None
        monitor = configured_monitor(parsed[-1:])
        if monitor not in get_args(Monitor):
            raise InputError(
                f"model.monitor is {monitor!r}, not one of {list(get_args(Monitor))}",
                file=path,
                fix="restore the config the seed was fitted with, or re-fit it with `semid run`",
            )
    return configured_monitor(parsed)


def read_seed(model: str, seed: int, seed_dir: Path) -> SeedRun:
    """Everything the report needs of one seed directory, validated (InputError naming the file otherwise)."""
    metrics_path = seed_dir / schema.METRICS_FILE
    metrics_json = read_metrics_json(metrics_path)
    monitor = read_monitor(seed_dir)
    value = None if monitor is None else monitor_value(metrics_json, monitor, metrics_path)
    return SeedRun(
        model,
        seed,
        read_predictions(seed_dir / schema.PREDICTIONS_FILE),
        metrics_json,
        monitor,
        value,
        read_val_predictions(seed_dir),
    )


def read_val_predictions(seed_dir: Path) -> pl.DataFrame | None:
    """A seed's validation predictions (semid.schema.VAL_PREDICTIONS_FILE, checked as `read_predictions` checks the
    test ones), None when the seed has none (a fit from before they were written: pipelines/calibrate.py)."""
    path = seed_dir / schema.VAL_PREDICTIONS_FILE
    return read_predictions(path) if path.is_file() else None


def _val_number(metrics_json: dict[str, Any] | None, name: str) -> float | None:
    """metrics.json `val.<name>` (or `val["val/<name>"]`) as a finite float, None if absent, NaN or not a number."""
    val = (metrics_json or {}).get("val") or {}
    if not isinstance(val, dict):
        return None
    for key in (name, f"val/{name}"):
        value = val.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def val_gauc(metrics_json: dict[str, Any] | None) -> float | None:
    """Overall validation GAUC from a metrics.json ("val": {"gauc"} or {"val/gauc"}), None if absent."""
    return _val_number(metrics_json, "gauc")


def monitor_value(metrics_json: dict[str, Any] | None, monitor: str, where: Path) -> float | None:
    """The validation number the fit selected its checkpoint on, from metrics.json: `val.monitor` (the logged
    ctr.module.MONITOR_KEY: the value of `monitor`, or val/auc where that GAUC was undefined on the validation
    split), else `val.<monitor>` for a file without it; None when neither is there (never a test number).

    When both are there they must agree: a disagreement means the frozen config is not the one the fit ran with.
    """
    logged = _val_number(metrics_json, MONITOR_KEY.removeprefix("val/"))
    named = _val_number(metrics_json, monitor.removeprefix("val/"))
    if logged is not None and named is not None and not math.isclose(logged, named, rel_tol=1e-6):
        raise InputError(
            f"val.{MONITOR_KEY.removeprefix('val/')} = {logged:.6g} is not val.{monitor.removeprefix('val/')} = "
            f"{named:.6g}, yet the seed's frozen config says model.monitor is {monitor}",
            file=where,
            fix="the config and the metrics come from different fits: re-fit the seed with `semid run`",
        )
    return logged if logged is not None else named


def read_scenarios(run_dir: Path) -> SC.Scenarios | None:
    """The run's scenario table (`<run>/scenarios.parquet`, validated by semid.scenarios.read), None without one."""
    path = run_dir / SC.SCENARIOS_FILE
    return SC.read(path) if path.is_file() else None


def scenario_codes(frame: pl.DataFrame, scenarios: SC.Scenarios, where: Path) -> np.ndarray:
    """(n,) int64 scenario code of every prediction row, by its user / item; InputError for ids the table lacks."""
    codes = frame.select(scenarios.key).join(
        scenarios.table, on=scenarios.key, how="left", maintain_order="left"
    )[SC.SCENARIO]
    if codes.null_count():
        raise InputError(
            f"{codes.null_count()} prediction rows have a {scenarios.key} without a scenario",
            file=where,
            column=scenarios.key,
            fix="rebuild scenarios.parquet from the run's prepared data (re-run `semid run`)",
        )
    return codes.cast(pl.Int64).to_numpy()
