"""`build_report`: read a run directory, score every model and seed, compare, and write <run>/report/ atomically."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from ctr.report.health import read_sid_table
from ctr.report.markdown import render_markdown
from ctr.report.plots import (
    PLOTS,
    SCENARIO_PLOT,
    plot_by_bucket,
    plot_by_scenario,
    plot_codebook_usage,
    plot_prefix_sizes,
)
from ctr.report.runs import discover, read_scenarios, read_seed, scenario_codes
from ctr.report.stats import (
    MIN_GAUC_USERS,
    bootstrap_gauc_delta,
    floor_deltas,
    mean_deltas,
    paired_deltas,
    platt_of,
    roles,
    run_monitor,
    scenario_deltas,
    score_predictions,
    score_scenarios,
    select_best,
    summarise_model,
    summarise_scenarios,
    user_auc_table,
)
from semid import schema
from semid.errors import InputError
from semid.io import check_output_dir, owned_output_dir, read_meta, write_json, write_text

REPORT_SCHEMA_VERSION = 1
REPORT_COMMAND = "report"
"""The command name in the report folder's OUTPUT_MARKER (semid.io.owned_output_dir)."""
REPORT_FILES: tuple[str, ...] = ("report.md", "report.json", *PLOTS)
"""What a report folder written before the marker existed may hold (it may still be replaced)."""
CALIBRATION_TEXT = (
    "logloss (cal.) is the test log loss after Platt scaling p' = sigmoid(a * logit(p) + b), one map per (model, "
    f"seed) -- the floor's included -- fitted by least log loss on that seed's own validation predictions "
    f"({schema.VAL_PREDICTIONS_FILE}, from the checkpoint that predicted the test split; a model refit on train + "
    "val uses its selection fit's, which never trained on val) and never on test. The map is increasing (a > 0), so "
    "AUC and GAUC are unchanged; n/a = a seed without validation predictions."
)
"""How the calibrated log loss was obtained, in report.json (`calibration`) and report.md."""
TUNED_DIR = "tuned"
"""<run>/tuned/<model>.json: what `semid run --tune N` found for a model (pipelines.run writes it)."""


def read_tuned(run_dir: Path, models: list[str]) -> dict[str, Any]:
    """The tuning record of every model in `models` that `semid run --tune` tuned (none: {})."""
    import json

    tuned = {}
    for name in models:
        path = run_dir / TUNED_DIR / f"{name}.json"
        if path.is_file():
            try:
                record = json.loads(path.read_text())
            except ValueError:
                raise InputError(
                    "unreadable tuning record",
                    file=path,
                    fix="re-run `semid run --tune N` to redo the tuning",
                ) from None
            tuned[name] = {
                k: record.get(k)
                for k in (
                    "trials",
                    "tpe_seed",
                    "monitor",
                    "max_epochs",
                    "start_from_config",
                    "tuned_config",
                    "best",
                )
            }
    return tuned


def _json_safe(obj: Any) -> Any:
    """NaN / inf -> None (strict JSON), numpy scalars -> Python, tuples -> lists."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
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
    floor: str | None = "floor",
    n_boot: int = 1000,
    seed: int = 0,
    min_gauc_users: int = MIN_GAUC_USERS,
) -> dict[str, Any]:
    """Write <run_dir>/report/{report.md, report.json, *.png} and return the report.json document.

    Args:
        run_dir: the run directory (models/<model>/seed<k>/predictions.parquet with optional metrics.json and
            config/, the frozen fit configs that name the model-selection monitor; optional semids/).
        target: the model the report is about; models named "<target>_*" are its ablations.
        baselines: models to compare against (default: every model that is neither the target, an ablation nor
            the floor).
        floor: name of the trivial model (e.g. bias-only) every other model is shown against; ignored when the
            run has no model of that name; None turns the comparison off.
        n_boot: bootstrap draws over users for the GAUC-delta interval.
        seed: seed of the bootstrap draws.
        min_gauc_users: a GAUC cell resting on fewer users (with both label classes) is marked † in report.md.
    """
    run_dir = Path(run_dir)
    if n_boot < 1:
        raise InputError(f"n_boot must be >= 1, got {n_boot}", fix="pass n_boot=1000")
    if min_gauc_users < 1:
        raise InputError(f"min_gauc_users must be >= 1, got {min_gauc_users}", fix="pass min_gauc_users=50")
    out_dir = run_dir / schema.REPORT_DIR
    owned = {"command": REPORT_COMMAND, "option": "the report folder", "legacy": REPORT_FILES}
    try:  # refuse a folder that is not a report before any work
        check_output_dir(out_dir, **owned)
    except InputError as err:
        raise InputError(
            err.problem,
            file=err.file,
            fix=f"move what you keep in {out_dir} elsewhere (the report is written there), then re-run",
        ) from None
    found = discover(run_dir)
    role = roles(list(found), target, baselines, run_dir / schema.MODELS_DIR, floor=floor)
    runs = {
        m: [read_seed(m, s, d) for s, d in seeds.items()] for m, seeds in found.items()
    }  # validates all first
    monitor = run_monitor(runs, run_dir / schema.MODELS_DIR)
    semid_paths = {
        "item": (run_dir / schema.SEMIDS_DIR / schema.ITEM_SIDS_FILE, schema.ITEM),
        "user": (run_dir / schema.SEMIDS_DIR / schema.USER_SIDS_FILE, schema.USER),
    }
    sid_tables = {name: read_sid_table(p, key) for name, (p, key) in semid_paths.items() if p.is_file()}

    with _one_torch_thread():
        platts = {
            m: [platt_of(r.val_predictions) for r in rs] for m, rs in runs.items()
        }  # on validation only
        scores = {
            m: [score_predictions(r.predictions, c) for r, c in zip(rs, platts[m])] for m, rs in runs.items()
        }
    summaries = {m: summarise_model(runs[m], scores[m], platts[m]) for m in runs}
    scen = read_scenarios(run_dir)
    if scen is not None:  # a multi-scenario run: AUC and log loss per scenario too
        with _one_torch_thread():
            for m, rs in runs.items():
                per_seed = [
                    score_scenarios(
                        r.predictions,
                        scenario_codes(r.predictions, scen, found[m][r.seed] / schema.PREDICTIONS_FILE),
                        scen.names,
                        platt,
                    )
                    for r, platt in zip(rs, platts[m])
                ]
                summaries[m]["scenarios"] = summarise_scenarios(per_seed)
    selection = select_best(role.baselines, summaries, monitor)
    floor_first = [role.floor] if role.floor is not None and role.floor not in role.baselines else []
    order = [*floor_first, *role.baselines, *role.others, role.target, *role.ablations]
    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "run": run_dir.resolve().name,
        "run_dir": str(run_dir.resolve()),
        "dataset": next((read_meta(p).get("dataset") for p, _ in semid_paths.values() if p.is_file()), None),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target": role.target,
        "baselines": role.baselines,
        "monitor": monitor,
        "best_baseline": selection.best,
        "selection_rule": selection.rule,
        "selection_rule_text": selection.description,
        "selection_excluded": selection.excluded,
        "model_order": order,
        "roles": {
            **{m: "floor" for m in floor_first},
            **{m: "baseline" for m in role.baselines},
            **{m: "other" for m in role.others},
            role.target: "target",
            **{m: "ablation" for m in role.ablations},
        },
        "min_gauc_users": min_gauc_users,
        "calibration": CALIBRATION_TEXT,
        "models": summaries,
        "floor": None,
        "deltas": None,
        "significance": None,
    }
    if role.floor is not None:
        report["floor"] = {
            "model": role.floor,
            "rule": "A model beats the floor when its overall AUC and GAUC (seed means) are both above the floor's "
            "(a GAUC undefined for either model is not held against it). Calibrated log loss (each model and the "
            "floor calibrated on their own validation predictions) is compared separately.",
            "models": floor_deltas(summaries, role.floor),
        }
    tables_t: list[pl.DataFrame] = []
    if selection.best is not None or role.ablations:
        with _one_torch_thread():
            tables_t = [user_auc_table(r.predictions) for r in runs[role.target]]
    if selection.best is not None:
        a, b = summaries[role.target], summaries[selection.best]
        report["deltas"] = {"units": "points (x100)", "baseline": selection.best, **mean_deltas(a, b)}
        with _one_torch_thread():
            tables_b = [user_auc_table(r.predictions) for r in runs[selection.best]]
            boot = bootstrap_gauc_delta(tables_t, tables_b, n_boot=n_boot, seed=seed)
        report["significance"] = {
            "paired": paired_deltas(a, b),
            "bootstrap": {
                "method": "users resampled with replacement (multinomial counts), same draw for both models and "
                "all seeds; GAUC of each seed re-weighted, delta of the seed means; percentile interval",
                "metric": "gauc",
                "n_boot": n_boot,
                "seed": seed,
                "confidence": 0.95,
                **boot,
            },
        }
    ablation_boot: dict[str, Any] = {}
    with _one_torch_thread():
        for m in role.ablations:  # ablation - target: the same user draws as the target-vs-baseline interval
            tables_a = [user_auc_table(r.predictions) for r in runs[m]]
            ablation_boot[m] = bootstrap_gauc_delta(tables_a, tables_t, n_boot=n_boot, seed=seed)
    report["ablations"] = {
        "models": role.ablations,
        "delta_vs_target": {m: mean_deltas(summaries[m], summaries[role.target]) for m in role.ablations},
        "bootstrap": ablation_boot,
    }
    report["tuned"] = read_tuned(run_dir, order)
    report["semid_health"] = {
        name: (t.health if (t := sid_tables.get(name)) else None) for name in semid_paths
    }
    report["plots"] = list(PLOTS if sid_tables else PLOTS[:2])
    if scen is not None:
        rows = summaries[role.target]["scenarios"]
        report["scenarios"] = {
            "names": list(scen.names),
            "key": scen.key,
            "n": {name: rows[name]["n"] for name in scen.names},
            "smallest": min(scen.names, key=lambda name: rows[name]["n"]),
            "deltas": None
            if selection.best is None
            else {
                "baseline": selection.best,
                "units": "points (x100)",
                **scenario_deltas(summaries[role.target], summaries[selection.best]),
            },
        }
        report["plots"].append(SCENARIO_PLOT)
    report = _json_safe(report)

    with owned_output_dir(out_dir, **owned) as out:
        for metric in ("auc", "gauc"):
            plot_by_bucket(summaries, order, metric, out / f"{metric}_by_bucket.png")
        if sid_tables:
            named = {f"{name}s": t for name, t in sid_tables.items()}
            plot_codebook_usage(named, out / "codebook_usage.png")
            plot_prefix_sizes(named, out / "prefix_sizes.png")
        if scen is not None:
            plot_by_scenario(summaries, order, list(scen.names), out / SCENARIO_PLOT)
        write_json(report, out / "report.json")
        write_text(render_markdown(report), out / "report.md")
    return report
