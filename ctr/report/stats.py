"""The report's numbers: per-seed scores (ctr.metrics), mean ± std over seeds, model roles and the best-baseline
rule (the run's model-selection monitor on validation, never test), deltas (mean, paired per seed, vs the floor)
and the user bootstrap of the GAUC delta. Log loss is reported raw and calibrated: each (model, seed)'s own Platt map
(ctr.calibration), fitted on its validation predictions, applied to its test predictions.

Every AUC / GAUC comes from ctr.metrics (`user_auc` + `gauc_from_users` are the one GAUC implementation); the
bootstrap re-weights the per-user AUCs computed once per model and seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import torch

from ctr import metrics
from ctr.calibration import Platt, fit_platt
from ctr.report.runs import SeedRun, val_gauc
from semid import schema
from semid.errors import InputError

METRIC_NAMES: tuple[str, ...] = ("auc", "gauc", "logloss", "logloss_cal")
"""logloss_cal: the test log loss after the seed's Platt map (NaN for a seed without validation predictions)."""
DELTA_METRICS: tuple[str, ...] = ("auc", "gauc")
BUCKET_KINDS: dict[str, str] = {"item_buckets": schema.ITEM_BUCKET, "user_buckets": schema.USER_BUCKET}
BUCKET_TITLES: dict[str, str] = {"item_buckets": "item popularity", "user_buckets": "user activity"}
MIN_GAUC_USERS = 50
"""A GAUC cell resting on fewer users (with both label classes) than this is marked in report.md."""


# -- per-seed scores ---------------------------------------------------------------------------------------------


def _tensors(frame: pl.DataFrame) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    preds = torch.tensor(frame[schema.SCORE].to_numpy(), dtype=torch.float32)  # (n,)
    target = torch.tensor(frame[schema.LABEL].to_numpy(), dtype=torch.float32)  # (n,)
    user = torch.tensor(frame[schema.USER].to_numpy(), dtype=torch.long)  # (n,)
    return preds, target, user


def _masks(frame: pl.DataFrame) -> list[tuple[str, str, torch.Tensor | None]]:
    """(scope, bucket, row mask) for overall (mask None, bucket "all") and every item / user bucket."""
    out: list[tuple[str, str, torch.Tensor | None]] = [("overall", "all", None)]
    for kind, column in BUCKET_KINDS.items():
        names = frame[column].to_numpy()
        out += [(kind, b, torch.from_numpy(names == b)) for b in schema.BUCKETS]
    return out


def platt_of(frame: pl.DataFrame | None) -> Platt | None:
    """A seed's calibration map, fitted on its validation predictions `frame` only (never on test); None without
    them or when they hold a single label class."""
    if frame is None or frame[schema.LABEL].n_unique() < 2:
        return None
    preds, target, _ = _tensors(frame)
    return fit_platt(preds, target)


def score_predictions(frame: pl.DataFrame, platt: Platt | None = None) -> dict[str, Any]:
    """AUC, GAUC (groups = user), log loss raw and after `platt` (NaN without one), n, positives and GAUC users:
    overall and per item / user bucket. The map is increasing, so AUC and GAUC are the raw scores' either way."""
    preds, target, user = _tensors(frame)
    calibrated = None if platt is None else platt.apply(preds)  # (n,) float64
    out: dict[str, Any] = {}
    for scope, bucket, mask in _masks(frame):
        p, y, u = (preds, target, user) if mask is None else (preds[mask], target[mask], user[mask])
        parts = metrics.user_auc(p, y, u)
        cal = math.nan
        if calibrated is not None:
            cal = metrics.logloss(calibrated if mask is None else calibrated[mask], y)
        cell = {
            "auc": metrics.auc(p, y),
            "gauc": float(metrics.gauc_from_users(parts.auc, parts.n)),
            "logloss": metrics.logloss(p, y),
            "logloss_cal": cal,
            "n": int(p.numel()),
            "n_pos": int(y.sum()),
            "n_users": int(torch.isfinite(parts.auc).sum()),
        }
        _put(out, scope, None if mask is None else bucket, cell)
    return out


SCENARIO_METRICS: tuple[str, ...] = ("auc", "logloss", "logloss_cal")
"""Per scenario: AUC, log loss and calibrated log loss (GAUC overall only: ctr.metrics.scenario_scores)."""


def score_scenarios(
    frame: pl.DataFrame, codes: np.ndarray, names: Sequence[str], platt: Platt | None = None
) -> dict[str, dict[str, Any]]:
    """AUC, log loss raw and after the seed's `platt` map (NaN without one; the map is the one fitted on the whole
    validation split, as overall) and rows of every scenario (ctr.metrics.scenario_scores); `codes` (n,) per
    prediction row."""
    preds, target, _ = _tensors(frame)
    scenario = torch.tensor(codes)  # a copy: the codes may be a read-only view of a polars column
    got = metrics.scenario_scores(preds, target, scenario, names)
    cal = {} if platt is None else metrics.scenario_scores(platt.apply(preds), target, scenario, names)
    return {
        name: {
            "auc": got[f"scenario/{name}/auc"],
            "logloss": got[f"scenario/{name}/logloss"],
            "logloss_cal": cal.get(f"scenario/{name}/logloss", math.nan),
            "n": int(got[f"scenario/{name}/n"]),
        }
        for name in names
    }


def summarise_scenarios(scores: Sequence[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per-seed scenario scores of one model folded into {mean, std, values} per metric, with the rows."""
    names = list(scores[0])
    return {
        name: {
            **{m: stat([s[name][m] for s in scores]) for m in SCENARIO_METRICS},
            "n": scores[0][name]["n"],
            "n_values": [s[name]["n"] for s in scores],
        }
        for name in names
    }


def scenario_deltas(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Model a - model b in points (x100), overall and per scenario: the delta of the seed means and the paired
    per-seed deltas (mean, std, seeds with delta > 0) of AUC and of log loss (lower is better: < 0 is a gain)."""
    seeds = sorted(set(a["seeds"]) & set(b["seeds"]))
    ia = [a["seeds"].index(s) for s in seeds]
    ib = [b["seeds"].index(s) for s in seeds]

    def delta(cell: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
        value: dict[str, Any] = {"n": cell["n"]}
        for m in SCENARIO_METRICS:
            d = [100.0 * (cell[m]["values"][i] - other[m]["values"][j]) for i, j in zip(ia, ib)]
            finite = [x for x in d if math.isfinite(x)]
            value[m] = {
                "mean_delta": 100.0 * (cell[m]["mean"] - other[m]["mean"]),
                "paired": {**stat(d), "positive": sum(x > 0 for x in finite), "n_seeds": len(finite)},
            }
        return value

    return {
        "seeds": seeds,
        "overall": delta(a["overall"], b["overall"]),
        "scenarios": {name: delta(cell, b["scenarios"][name]) for name, cell in a["scenarios"].items()},
    }


def user_auc_table(frame: pl.DataFrame) -> pl.DataFrame:
    """Per-user AUC (null for a one-class user) and impressions for every scope (ctr.metrics.user_auc):
    columns scope ("overall" | kind), bucket ("all" | bucket name), user_id, auc, n."""
    preds, target, user = _tensors(frame)
    parts = []
    for scope, bucket, mask in _masks(frame):
        p, y, u = (preds, target, user) if mask is None else (preds[mask], target[mask], user[mask])
        got = metrics.user_auc(p, y, u)
        parts.append(
            pl.DataFrame(
                {
                    "scope": [scope] * got.group.numel(),
                    "bucket": [bucket] * got.group.numel(),
                    schema.USER: got.group.numpy().astype(np.int32),
                    "auc": got.auc.numpy(),
                    "n": got.n.numpy(),
                },
                schema={
                    "scope": pl.String,
                    "bucket": pl.String,
                    schema.USER: pl.Int32,
                    "auc": pl.Float64,
                    "n": pl.Float64,
                },
            ).with_columns(pl.col("auc").fill_nan(None))
        )
    return pl.concat(parts)


def stat(values: Sequence[float | None]) -> dict[str, Any]:
    """mean and std (ddof=1 with >= 2 finite values, else 0) over seeds, ignoring NaN; keeps the values."""
    vals = [math.nan if v is None else float(v) for v in values]
    finite = np.asarray([v for v in vals if math.isfinite(v)], dtype=np.float64)
    mean = float(finite.mean()) if finite.size else math.nan
    std = float(finite.std(ddof=1)) if finite.size >= 2 else (0.0 if finite.size else math.nan)
    return {"mean": mean, "std": std, "values": vals}


def calibration_summary(runs: Sequence[SeedRun], platts: Sequence[Platt | None]) -> dict[str, Any]:
    """What a model's calibration was fitted on, its seeds with a map, and the maps' a, b and validation rows."""
    refit = any("refit" in (r.metrics or {}) for r in runs)
    return {
        "method": "platt",
        "fitted_on": "val_of_selection_fit" if refit else "val",
        "seeds": [r.seed for r, c in zip(runs, platts) if c is not None],
        "a": stat([None if c is None else c.a for c in platts]),
        "b": stat([None if c is None else c.b for c in platts]),
        "n_val": [None if c is None else c.n for c in platts],
    }


def summarise_model(
    runs: Sequence[SeedRun], scores: Sequence[dict[str, Any]], platts: Sequence[Platt | None] | None = None
) -> dict[str, Any]:
    """Per-seed scores of one model folded into {mean, std, values} per metric, overall and per bucket, with the
    seeds' calibration maps (`platts`, one per run; default none)."""

    def fold(cells: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {m: stat([c[m] for c in cells]) for m in METRIC_NAMES}
        out["n"] = cells[0]["n"]
        out["n_values"] = [c["n"] for c in cells]
        out["n_pos_values"] = [c["n_pos"] for c in cells]
        out["n_users"] = min(c["n_users"] for c in cells)
        out["n_users_values"] = [c["n_users"] for c in cells]
        return out

    summary: dict[str, Any] = {
        "seeds": [r.seed for r in runs],
        "overall": fold([s["overall"] for s in scores]),
    }
    for kind in BUCKET_KINDS:
        summary[kind] = {b: fold([s[kind][b] for s in scores]) for b in schema.BUCKETS}
    has_metrics = [r.metrics is not None for r in runs]
    summary["val_gauc"] = stat([val_gauc(r.metrics) for r in runs]) if any(has_metrics) else None
    monitors = {r.monitor for r in runs if r.monitor is not None}
    summary["monitor"] = monitors.pop() if len(monitors) == 1 else None
    has_monitor = [r.val_monitor is not None for r in runs]
    summary["val_monitor"] = stat([r.val_monitor for r in runs]) if any(has_monitor) else None
    for key in ("fit_seconds", "epochs"):
        got = [(r.metrics or {}).get(key) for r in runs]
        summary[key] = stat(got) if any(isinstance(v, (int, float)) for v in got) else None
    summary["calibration"] = calibration_summary(runs, platts or [None] * len(runs))
    summary["still_improving"] = still_improving(runs)
    return summary


def cut_off_improving(metrics: Mapping[str, Any] | None) -> bool | None:
    """Whether a fit was still improving when its epoch budget ended: it ran all `max_epochs` and its last epoch
    was its best (`epochs_since_best` 0; pipelines.fit.budget_record). None when metrics.json predates those
    fields or the fit had no early stopping."""
    m = metrics or {}
    budget, since, ran = m.get("max_epochs"), m.get("epochs_since_best"), m.get("epochs")
    if not all(isinstance(v, int) for v in (budget, since, ran)) or budget < 1:
        return None
    return ran >= budget and since == 0


def still_improving(runs: Sequence[SeedRun]) -> dict[str, Any] | None:
    """{"seeds": the seeds cut off while still improving, "known": how many seeds record it}; None when none does."""
    known = [(r.seed, cut_off_improving(r.metrics)) for r in runs]
    known = [(seed, cut) for seed, cut in known if cut is not None]
    if not known:
        return None
    return {"seeds": [seed for seed, cut in known if cut], "known": len(known)}


# -- roles and the best baseline ---------------------------------------------------------------------------------


class Roles(NamedTuple):
    target: str
    baselines: list[str]
    ablations: list[str]
    others: list[str]  # neither: models left out of an explicit `baselines` list
    floor: str | None  # the trivial model every other one is shown against, when it is in the run


def roles(
    models: Sequence[str],
    target: str,
    baselines: Sequence[str] | None,
    where: Path,
    floor: str | None = "floor",
) -> Roles:
    """Split the run's models: the target, its ablations (`<target>_*`), baselines (every other model, or the
    given list), others, and the floor (a model named `floor`; a baseline only when listed in `baselines`)."""
    if target not in models:
        raise InputError(
            f"target model {target!r} is not in the run (models: {list(models)})",
            file=where,
            fix=f"pass target=<one of {list(models)}>",
        )
    floor_model = floor if floor is not None and floor in models else None
    if floor_model == target:
        raise InputError(
            f"the target {target!r} is also the floor model", file=where, fix="pass another target or floor"
        )
    ablations = sorted(m for m in models if m.startswith(f"{target}_") and m != floor_model)
    auto = sorted(m for m in models if m not in (target, floor_model) and m not in ablations)
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
    others = [m for m in models if m not in chosen and m not in (target, floor_model) and m not in ablations]
    return Roles(target, chosen, ablations, others, floor_model)


def run_monitor(runs: Mapping[str, Sequence[SeedRun]], where: Path) -> str | None:
    """The one model-selection monitor of the run (every seed that records one), None when no seed records one;
    InputError naming the models and monitors when they differ, since one number must rank every baseline."""
    used: dict[str, dict[str, list[int]]] = {}  # monitor -> model -> seeds
    for model, seed_runs in runs.items():
        for r in seed_runs:
            if r.monitor is not None:
                used.setdefault(r.monitor, {}).setdefault(model, []).append(r.seed)
    if len(used) > 1:
        listing = "; ".join(
            f"{monitor}: "
            + ", ".join(f"{m} (seed {', '.join(map(str, s))})" for m, s in sorted(models.items()))
            for monitor, models in sorted(used.items())
        )
        raise InputError(
            f"the models of this run were selected on different monitors ({listing}); the best baseline must be "
            "chosen by the one validation number every model was early-stopped and tuned on",
            file=where,
            fix="set one model.monitor in the common config (configs/ctr/common/) and re-run `semid run`, which "
            "re-fits the seeds whose config changed",
        )
    return next(iter(used), None)


class Selection(NamedTuple):
    best: str | None
    rule: str  # "val_monitor" | "none"
    description: str
    # baselines left out of the choice: the monitor's validation value is missing in some seed
    excluded: tuple[str, ...] = ()


def _missing_seeds(summary: dict[str, Any]) -> list[int]:
    """Seeds of a model summary without a finite validation value of the monitor."""
    got = summary["val_monitor"]
    if got is None:
        return list(summary["seeds"])
    return [s for s, v in zip(summary["seeds"], got["values"]) if v is None or not math.isfinite(v)]


def select_best(
    baselines: Sequence[str], summaries: dict[str, dict[str, Any]], monitor: str | None
) -> Selection:
    """The baseline with the highest mean (over seeds) validation value of the run's model-selection `monitor`
    (ties: first name in sorted order), among the baselines that have it in every seed; no best baseline when
    none has it. Never chosen on test: a best baseline picked by test numbers would flatter the target's deltas.
    """
    never = "no best baseline is chosen (never on test), so deltas are not reported"
    if not baselines:
        return Selection(None, "none", "no baseline in the run: deltas are not reported")
    if monitor is None:
        return Selection(
            None,
            "none",
            "no seed records the model-selection monitor it was fitted with (its frozen configs in "
            f"models/<model>/seed<k>/config/, written by `semid run`): {never}",
            tuple(baselines),
        )
    gaps = {b: _missing_seeds(summaries[b]) for b in baselines}
    excluded = tuple(b for b in baselines if gaps[b])
    left_out = "; ".join(f"{b} (seed {', '.join(map(str, gaps[b]))})" for b in excluded)
    what = f"validation {monitor}"
    if len(excluded) == len(baselines):
        return Selection(
            None,
            "none",
            f"no baseline has {what} (the run's model-selection monitor) in metrics.json for every seed, "
            f"missing for {left_out}: {never}",
            excluded,
        )
    best = max(sorted(set(baselines) - set(excluded)), key=lambda b: summaries[b]["val_monitor"]["mean"])
    text = (
        f"highest mean {what} over seeds among the baselines, the number every model was early-stopped and "
        "tuned on, from metrics.json"
    )
    if excluded:
        text += f"; left out for lacking {what} in metrics.json: {left_out}"
    return Selection(best, "val_monitor", text, excluded)


# -- deltas ------------------------------------------------------------------------------------------------------


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
    """100 * (mean of a - mean of b) for AUC and GAUC, overall and per bucket (points), with a's n and GAUC users."""
    out: dict[str, Any] = {}
    cells_b = {(s, k): c for s, k, c in _cells(b)}
    for scope, bucket, cell in _cells(a):
        other = cells_b[(scope, bucket)]
        value: dict[str, Any] = {m: 100.0 * (cell[m]["mean"] - other[m]["mean"]) for m in DELTA_METRICS}
        value["n"] = cell["n"]
        value["n_users"] = cell["n_users"]
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


def floor_deltas(summaries: dict[str, dict[str, Any]], floor: str) -> dict[str, Any]:
    """Every other model vs the floor: `mean_deltas` plus `beats_floor` = overall ΔAUC > 0 and ΔGAUC > 0 (a GAUC
    that is undefined for either model is not held against it), `logloss_cal` = 100 x (model - floor) of the mean
    calibrated log loss overall (< 0: better) and `beats_floor_logloss_cal` = that delta < 0 (None when either model
    is uncalibrated)."""
    out: dict[str, Any] = {}
    for name, summary in summaries.items():
        if name == floor:
            continue
        d = mean_deltas(summary, summaries[floor])
        auc_ok = math.isfinite(d["overall"]["auc"]) and d["overall"]["auc"] > 0
        g = d["overall"]["gauc"]
        d["beats_floor"] = bool(auc_ok and (not math.isfinite(g) or g > 0))
        ll = 100.0 * (
            summary["overall"]["logloss_cal"]["mean"] - summaries[floor]["overall"]["logloss_cal"]["mean"]
        )
        d["logloss_cal"] = ll
        d["beats_floor_logloss_cal"] = bool(ll < 0) if math.isfinite(ll) else None
        out[name] = d
    return out


# -- bootstrap ---------------------------------------------------------------------------------------------------


def _dense(
    tables: Sequence[pl.DataFrame], users: np.ndarray, scope: str, bucket: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, S) per-user AUC (NaN where undefined or absent) and impressions per seed for one scope."""
    auc_us = torch.full((users.size, len(tables)), math.nan, dtype=torch.float64)  # (U, S)
    n_us = torch.zeros((users.size, len(tables)), dtype=torch.float64)  # (U, S)
    for s, table in enumerate(tables):
        rows = table.filter(
            (pl.col("scope") == scope) & (pl.col("bucket") == bucket) & pl.col("auc").is_not_null()
        )
        idx = torch.tensor(np.searchsorted(users, rows[schema.USER].to_numpy()))  # (G,)
        auc_us[idx, s] = torch.tensor(rows["auc"].to_numpy())
        n_us[idx, s] = torch.tensor(rows["n"].to_numpy())
    return auc_us, n_us


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
    counts from a numpy Generator seeded by `seed`, the same draw for both models, all seeds and scopes); a draw's
    GAUC is ctr.metrics.gauc_from_users with the counts as weights, so per-user AUCs are computed only once.
    Returns {scope: value} or {scope: {bucket: value}}, value = {estimate, ci_low, ci_high, p_le_0, n_valid}.
    """
    all_tables = [*target_tables, *base_tables]
    users = np.unique(np.concatenate([t[schema.USER].to_numpy() for t in all_tables]))  # (U,)
    scopes = [("overall", "all")] + [(kind, b) for kind in BUCKET_KINDS for b in schema.BUCKETS]
    dense = {key: (_dense(target_tables, users, *key), _dense(base_tables, users, *key)) for key in scopes}

    def delta(
        counts: torch.Tensor, t: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        # (B, S) GAUC per draw and seed -> mean over seeds (NaN if a seed has no weight left) -> (B,)
        return 100.0 * (
            metrics.gauc_from_users(*t, counts).mean(1) - metrics.gauc_from_users(*b, counts).mean(1)
        )

    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, max_cells // max(users.size, 1)))
    draws: dict[tuple[str, str], list[np.ndarray]] = {key: [] for key in scopes}
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        counts = torch.from_numpy(
            rng.multinomial(users.size, np.full(users.size, 1.0 / users.size), size=b).astype(np.float64)
        )  # (B, U)
        for key, (t, base) in dense.items():
            draws[key].append(delta(counts, t, base).numpy())
        done += b
    ones = torch.ones((1, users.size), dtype=torch.float64)  # (1, U) the sample itself
    alpha = (1.0 - confidence) / 2.0
    out: dict[str, Any] = {}
    for key, (t, base) in dense.items():
        estimate = float(delta(ones, t, base)[0])
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
