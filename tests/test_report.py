"""ctr.report on a synthetic run directory: files, documented JSON keys, values against ctr.metrics, deltas, the
baseline rule (the run's monitor on validation, never test), the floor, GAUC user counts, the bootstrap, input
errors and hand-computed semantic-ID health."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from ctr import metrics
from ctr.calibration import fit_platt
from ctr.module import DEFAULT_MONITOR
from ctr.report import build_report
from ctr.report.health import merge_health, read_sid_table, sid_health
from ctr.report.markdown import render_markdown
from ctr.report.runs import monitor_value, read_monitor
from ctr.report.stats import BUCKET_KINDS, bootstrap_gauc_delta, roles, select_best, user_auc_table
from pipelines.fit import budget_record
from pipelines.report import main
from semid import ids, schema
from semid.errors import InputError
from semid.io import write_parquet

DOCS = Path(__file__).resolve().parents[1] / "docs" / "report.md"
STRENGTH = {
    "akt": 1.6,
    "akt_no_gate": 1.2,
    "deepfm": 1.0,
    "dcnv2": 0.8,
    "floor": 0.9,
}  # label signal in score
VAL_GAUC = {
    "akt": 0.75,
    "akt_no_gate": 0.72,
    "deepfm": 0.70,
    "dcnv2": 0.71,
    "floor": 0.69,
}  # dcnv2 wins on val GAUC, deepfm on test GAUC; dcnv2 does not beat the floor
VAL_AUC = {
    "akt": 0.76,
    "akt_no_gate": 0.74,
    "deepfm": 0.73,
    "dcnv2": 0.72,
    "floor": 0.70,
}  # deepfm wins on val AUC: the monitor decides between deepfm and dcnv2
VAL = {"val/gauc": VAL_GAUC, "val/auc": VAL_AUC}
MONITOR = "val/gauc"
SEEDS = (0, 1)


def write_fit_record(seed_dir: Path, model: str, seed: int, monitor: str | None) -> None:
    """What `semid run` leaves beside a seed's predictions: the frozen configs (a common one naming the monitor,
    then the model's, which does not) and metrics.json with every val number and `val.monitor`, the logged value
    of the monitor. monitor None: no frozen configs, and metrics.json without `val.monitor`."""
    val = {"gauc": VAL_GAUC[model] + 0.001 * seed, "auc": VAL_AUC[model] + 0.001 * seed}
    config = seed_dir / schema.FIT_CONFIG_DIR
    shutil.rmtree(config, ignore_errors=True)
    if monitor is not None:
        val["monitor"] = val[monitor.removeprefix("val/")]
        config.mkdir()
        (config / "00_common.yaml").write_text(yaml.safe_dump({"model": {"monitor": monitor}}))
        (config / f"01_{model}.yaml").write_text(yaml.safe_dump({"model": {"lr": 0.001}}))
    metrics_json = {"val": val, "test": {}, "fit_seconds": 10.0, "epochs": 3}
    (seed_dir / "metrics.json").write_text(json.dumps(metrics_json))


def set_monitor(run: Path, monitor: str | None, models: tuple[str, ...] = tuple(STRENGTH)) -> None:
    """Re-record `models` of a run as fitted with `monitor` (configs and metrics.json consistent, as a fit writes)."""
    for model in models:
        for seed in SEEDS:
            write_fit_record(run / "models" / model / f"seed{seed}", model, seed, monitor)


def make_run(root: Path, *, n_users: int = 100, per_user: int = 20, n_items: int = 300) -> Path:
    """5 models x 2 seeds of 2,000 predictions (scores rounded: ties), one-class users, ID tables with metadata,
    fit records with the monitor MONITOR. Users >= 90 are in the "cold" user bucket only: few GAUC users there
    (the † mark)."""
    rng = np.random.default_rng(0)
    n = n_users * per_user
    user = np.repeat(np.arange(n_users), per_user).astype(np.int32)
    item = rng.integers(0, n_items, n).astype(np.int32)
    label = (rng.random(n) < 0.35).astype(np.int8)
    label[user % 17 == 0] = 1  # users with one label class: no AUC, left out of GAUC
    names = np.array(schema.BUCKETS)
    for s_i, seed in enumerate(SEEDS):
        for m, k in STRENGTH.items():
            noise = np.random.default_rng(100 * s_i + len(m)).normal(size=n)
            score = np.round(1 / (1 + np.exp(-(2 * k * (label - 0.5) + noise))), 2)
            d = root / "models" / m / f"seed{seed}"
            d.mkdir(parents=True)
            frame = pl.DataFrame(
                {
                    schema.USER: user,
                    schema.ITEM: item,
                    schema.LABEL: label,
                    schema.SCORE: score,
                    schema.ITEM_BUCKET: names[item % 4],
                    schema.USER_BUCKET: np.where(user >= 90, "cold", names[np.minimum(user % 5, 2)]),
                }
            ).cast(dict(schema.PREDICTIONS))
            write_parquet(frame, d / schema.PREDICTIONS_FILE)
            # validation predictions of the same model, over-confident: what each seed's calibration is fitted on
            val_noise = np.random.default_rng(7 + 100 * s_i + len(m)).normal(size=n)
            val_score = np.round(1 / (1 + np.exp(-(3 * k * (label - 0.5) + val_noise))), 2)
            val = frame.with_columns(pl.Series(schema.SCORE, val_score, dtype=pl.Float32))
            write_parquet(val, d / schema.VAL_PREDICTIONS_FILE)
            write_fit_record(d, m, seed, MONITOR)
    sizes = [16, 8, 4]
    for key, n_ent, file in (
        (schema.ITEM, n_items, schema.ITEM_SIDS_FILE),
        (schema.USER, n_users, schema.USER_SIDS_FILE),
    ):
        codes = np.stack([np.minimum(rng.zipf(1.5, n_ent) - 1, s - 1) for s in sizes], 1).astype(np.int32)
        table = ids.make_table(np.arange(n_ent), codes, key=key)
        meta = ids.table_meta(
            key=key,
            codebook_sizes=sizes,
            health=ids.health(table, sizes),
            encoder="tiny",
            seed=0,
            data_hash="h",
        )
        (root / "semids").mkdir(exist_ok=True)
        ids.write_table(table, root / "semids" / file, meta)
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("run") / "synthetic-run")
    return run, build_report(run, n_boot=300, seed=0)


def predictions(run: Path, model: str, seed: int) -> pl.DataFrame:
    return pl.read_parquet(run / "models" / model / f"seed{seed}" / schema.PREDICTIONS_FILE)


def tensors(frame: pl.DataFrame) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.tensor(frame[schema.SCORE].to_numpy()),
        torch.tensor(frame[schema.LABEL].to_numpy()),
        torch.tensor(frame[schema.USER].to_numpy()),
    )


def close(a: float | None, b: float, tol: float = 1e-9) -> bool:
    return (a is None and math.isnan(b)) or (a is not None and abs(a - b) <= tol)


# -- files and schema --------------------------------------------------------------------------------------------


def test_files_written_and_pngs_valid(built):
    run, report = built
    out = run / "report"
    assert (out / "report.md").stat().st_size > 1000
    assert json.loads((out / "report.json").read_text()) == report
    assert report["plots"] == [
        "auc_by_bucket.png",
        "gauc_by_bucket.png",
        "codebook_usage.png",
        "prefix_sizes.png",
    ]
    import matplotlib.image

    for name in report["plots"]:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 300 and image.shape[1] > 500 and image.std() > 0.01  # not a blank canvas
    assert not [p for p in run.iterdir() if p.name.startswith(".report")]  # no staging leftovers
    md = (out / "report.md").read_text()
    assert md.startswith("# CTR report: synthetic-run")
    for needle in (
        "| model | role |",
        "## By item popularity bucket",
        "## Deltas",
        "## Ablations",
        "(auc_by_bucket.png)",
    ):
        assert needle in md
    assert f"{report['models']['akt']['overall']['gauc']['mean']:.4f} ± " in md


def documented_paths() -> list[list[str]]:
    schema_section = DOCS.read_text().split("## report.json", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \|", schema_section, flags=re.M)
    assert len(rows) > 50
    return [row.replace("[]", ".[]").split(".") for row in rows]


PLACEHOLDERS = {
    "<metric>": ("auc", "gauc", "logloss"),
    "<dmetric>": ("auc", "gauc"),
    "<kind>": ("item_buckets", "user_buckets"),
    "<bucket>": schema.BUCKETS,
    "<table>": ("item", "user"),
    "<model>": None,  # every key of the dict
    "<other>": None,  # every key of the dict (models other than the floor)
}


def resolve(node, path: list[str], where: str) -> None:
    """Every documented path exists: a placeholder = each of its documented keys (<model>: every key of a
    non-empty dict), [] = every list element; a key with more path below it is not null in a full run."""
    if not path:
        return
    head, rest = path[0], path[1:]
    if head.startswith("<"):
        assert isinstance(node, dict) and node, f"{where}: expected a non-empty dict for {head}"
        keys = PLACEHOLDERS[head] or list(node)
        for key in keys:
            assert key in node, f"{where}: {head} key {key!r} missing"
            if rest:
                assert node[key] is not None, f"{where}.{key} is null in a fully populated run"
            resolve(node[key], rest, f"{where}.{key}")
    elif head == "[]":
        assert isinstance(node, list) and node, f"{where}: expected a non-empty list"
        for i, value in enumerate(node):
            resolve(value, rest, f"{where}[{i}]")
    else:
        assert isinstance(node, dict) and head in node, f"{where}: documented key {head!r} missing"
        if rest:
            assert node[head] is not None, f"{where}.{head} is null in a fully populated run"
        resolve(node[head], rest, f"{where}.{head}")


def test_report_json_has_every_documented_key(built):
    _, report = built
    paths = documented_paths()
    for path in paths:
        resolve(report, path, "report")
    assert set(report) == {p[0] for p in paths}  # and nothing undocumented at the top level
    assert report["schema_version"] == 1
    assert report["monitor"] == MONITOR and report["selection_excluded"] == []
    assert all(report["models"][m]["monitor"] == MONITOR for m in STRENGTH)
    assert set(report["models"]) == set(STRENGTH) and report["models"]["akt"]["seeds"] == list(SEEDS)
    assert report["roles"] == {
        "akt": "target",
        "akt_no_gate": "ablation",
        "deepfm": "baseline",
        "dcnv2": "baseline",
        "floor": "floor",
    }
    json.loads((built[0] / "report" / "report.json").read_text(), parse_constant=lambda c: pytest.fail(c))


# -- values --------------------------------------------------------------------------------------------------------


def test_per_seed_values_equal_ctr_metrics(built):
    run, report = built
    for model in STRENGTH:
        summary = report["models"][model]
        for i, seed in enumerate(SEEDS):
            frame = predictions(run, model, seed)
            cells = [(summary["overall"], frame)]
            for kind, column in BUCKET_KINDS.items():
                cells += [(summary[kind][b], frame.filter(pl.col(column) == b)) for b in schema.BUCKETS]
            for cell, rows in cells:
                p, y, u = tensors(rows)
                assert cell["n_values"][i] == rows.height
                assert close(cell["auc"]["values"][i], metrics.auc(p, y))
                assert close(cell["gauc"]["values"][i], metrics.gauc(p, y, u))
                assert close(cell["logloss"]["values"][i], metrics.logloss(p, y))


def test_calibrated_logloss_is_each_seeds_own_validation_map_on_its_test_predictions(built, tmp_path):
    run, report = built
    for model in STRENGTH:
        summary = report["models"][model]
        assert summary["calibration"]["seeds"] == list(SEEDS) and summary["calibration"]["fitted_on"] == "val"
        for i, seed in enumerate(SEEDS):
            val = pl.read_parquet(run / "models" / model / f"seed{seed}" / schema.VAL_PREDICTIONS_FILE)
            platt = fit_platt(*tensors(val)[:2])  # fitted on validation only
            # Newton stops once |gradient| < 1e-10, which pins `a` to about 1e-9: a refit whose float64 sums run in
            # another order (another CPU's vector width, another thread count) may stop one step apart
            assert close(summary["calibration"]["a"]["values"][i], platt.a, tol=1e-7) and platt.a > 0
            frame = predictions(run, model, seed)
            for cell, rows in (
                (summary["overall"], frame),
                (summary["item_buckets"]["cold"], frame.filter(pl.col(schema.ITEM_BUCKET) == "cold")),
            ):
                p, y, _ = tensors(rows)
                assert close(cell["logloss_cal"]["values"][i], metrics.logloss(platt.apply(p), y))
    d = report["floor"]["models"]["akt"]
    want = 100 * (
        report["models"]["akt"]["overall"]["logloss_cal"]["mean"]
        - report["models"]["floor"]["overall"]["logloss_cal"]["mean"]
    )
    assert close(d["logloss_cal"], want) and d["beats_floor_logloss_cal"] == (want < 0)
    md = (run / "report" / "report.md").read_text()
    assert "| logloss (cal.) |" in md and "Calibration: " in md and "validation predictions" in md
    main_row = next(line for line in md.splitlines() if line.startswith("| akt | target | 2 |"))
    assert f"{report['models']['akt']['overall']['logloss_cal']['mean']:.4f} ± " in main_row
    # a seed without validation predictions is uncalibrated, and the mean says over how many seeds it is
    copy = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("report"))
    (copy / "models" / "deepfm" / "seed1" / schema.VAL_PREDICTIONS_FILE).unlink()
    partial = build_report(copy, n_boot=10)
    assert partial["models"]["deepfm"]["calibration"]["seeds"] == [0]
    assert partial["models"]["deepfm"]["overall"]["logloss_cal"]["values"][1] is None
    assert "(1/2 seeds)" in (copy / "report" / "report.md").read_text()


def test_mean_and_std_over_seeds(built):
    _, report = built
    for model in STRENGTH:
        for cell in [report["models"][model]["overall"], report["models"][model]["item_buckets"]["tail"]]:
            for m in ("auc", "gauc", "logloss"):
                values = np.array(cell[m]["values"])
                assert close(cell[m]["mean"], values.mean())
                assert close(cell[m]["std"], values.std(ddof=1))
        assert close(report["models"][model]["val_gauc"]["mean"], VAL_GAUC[model] + 0.0005)
        assert close(report["models"][model]["val_monitor"]["mean"], VAL[MONITOR][model] + 0.0005)


def test_deltas_are_differences_of_means(built):
    _, report = built
    best = report["best_baseline"]
    a, b = report["models"]["akt"], report["models"][best]
    for m in ("auc", "gauc"):
        expected = 100 * (a["overall"][m]["mean"] - b["overall"][m]["mean"])
        assert close(report["deltas"]["overall"][m], expected)
        paired = report["significance"]["paired"]["overall"][m]
        assert close(paired["mean"], expected, 1e-7)  # same seeds on both sides
        per_seed = 100 * (np.array(a["overall"][m]["values"]) - np.array(b["overall"][m]["values"]))
        assert close(paired["std"], per_seed.std(ddof=1), 1e-7) and paired["positive"] == int(
            (per_seed > 0).sum()
        )
        for kind in BUCKET_KINDS:
            for bucket in schema.BUCKETS:
                want = 100 * (a[kind][bucket][m]["mean"] - b[kind][bucket][m]["mean"])
                assert close(report["deltas"][kind][bucket][m], want)
    abl = report["ablations"]["delta_vs_target"]["akt_no_gate"]["overall"]["gauc"]
    assert close(
        abl, 100 * (report["models"]["akt_no_gate"]["overall"]["gauc"]["mean"] - a["overall"]["gauc"]["mean"])
    )
    assert report["ablations"]["models"] == ["akt_no_gate"]


def test_best_baseline_by_the_run_monitor_never_by_test(built, tmp_path):
    run, report = built
    models = report["models"]
    # the synthetic data make val GAUC, val AUC and test GAUC disagree, so the test can tell the rules apart
    assert models["dcnv2"]["val_gauc"]["mean"] > models["deepfm"]["val_gauc"]["mean"]
    assert VAL_AUC["deepfm"] > VAL_AUC["dcnv2"]
    assert models["deepfm"]["overall"]["gauc"]["mean"] > models["dcnv2"]["overall"]["gauc"]["mean"]
    assert (report["selection_rule"], report["best_baseline"], report["monitor"]) == (
        "val_monitor",
        "dcnv2",
        "val/gauc",
    )
    md = (run / "report" / "report.md").read_text()
    assert "highest mean validation val/gauc" in md and "| val/gauc | fit s |" in md

    # the same run, its models fitted with val/auc as the monitor: the val-AUC winner is the best baseline
    copy = shutil.copytree(run, tmp_path / "auc", ignore=shutil.ignore_patterns("report"))
    set_monitor(copy, "val/auc")
    again = build_report(copy, n_boot=20)
    assert again["best_baseline"] == "deepfm" and again["deltas"]["baseline"] == "deepfm"
    assert (again["monitor"], again["selection_rule"]) == ("val/auc", "val_monitor")
    assert close(again["models"]["deepfm"]["val_monitor"]["mean"], VAL_AUC["deepfm"] + 0.0005)
    assert "| val/auc | fit s |" in (copy / "report" / "report.md").read_text()

    # an explicit baseline list: the others are reported with role "other" and not compared
    chosen = roles(list(models), "akt", ["dcnv2"], copy)
    assert (
        chosen.baselines == ["dcnv2"] and chosen.others == ["deepfm"] and chosen.ablations == ["akt_no_gate"]
    )
    assert chosen.floor == "floor"
    assert select_best(chosen.baselines, again["models"], "val/auc").best == "dcnv2"
    with pytest.raises(InputError, match="baselines"):
        roles(list(models), "akt", ["akt"], copy)


def test_a_missing_monitor_value_never_falls_back_to_test(built, tmp_path):
    run, _ = built
    copy = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("report"))
    set_monitor(copy, "val/auc")  # deepfm leads on val AUC and on test GAUC
    (copy / "models" / "deepfm" / "seed1" / "metrics.json").unlink()
    report = build_report(copy, n_boot=20)
    # deepfm lacks val/auc in seed 1: chosen among the others (dcnv2), never deepfm by its better test GAUC
    assert (report["selection_rule"], report["best_baseline"]) == ("val_monitor", "dcnv2")
    assert report["selection_excluded"] == ["deepfm"] and report["deltas"]["baseline"] == "dcnv2"
    assert (
        "left out for lacking validation val/auc in metrics.json: deepfm (seed 1)"
        in report["selection_rule_text"]
    )
    assert report["models"]["deepfm"]["val_monitor"]["values"][1] is None

    # no baseline has it in every seed (dcnv2 seed 0 logged NaN): no best baseline and no deltas, not test
    path = copy / "models" / "dcnv2" / "seed0" / "metrics.json"
    record = json.loads(path.read_text())
    record["val"]["auc"] = record["val"]["monitor"] = math.nan
    path.write_text(json.dumps(record))
    none = build_report(copy, n_boot=20)
    assert (none["best_baseline"], none["selection_rule"]) == (None, "none")
    assert none["deltas"] is None and none["significance"] is None
    assert none["selection_excluded"] == ["dcnv2", "deepfm"]
    text = none["selection_rule_text"]
    assert "dcnv2 (seed 0)" in text and "deepfm (seed 1)" in text and "never on test" in text
    md = (copy / "report" / "report.md").read_text()
    assert "## Deltas" not in md and text in md

    # seeds that do not record their monitor (no frozen configs): nothing to rank by, so no best baseline
    set_monitor(copy, None)
    unknown = build_report(copy, n_boot=20)
    assert (unknown["monitor"], unknown["best_baseline"], unknown["deltas"]) == (None, None, None)
    assert "no seed records the model-selection monitor" in unknown["selection_rule_text"]


def test_models_fitted_with_different_monitors_are_refused(built, tmp_path):
    run, _ = built
    copy = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("report"))
    set_monitor(copy, "val/auc", ("deepfm",))
    with pytest.raises(InputError, match="different monitors") as err:
        build_report(copy, n_boot=10)
    message = str(err.value)
    assert "val/auc: deepfm (seed 0, 1)" in message and "val/gauc: akt (seed 0, 1)" in message
    assert "dcnv2" in message and "model.monitor" in err.value.fix
    assert not (copy / "report").exists()
    # one seed of one model is enough
    set_monitor(copy, MONITOR, ("deepfm",))
    write_fit_record(copy / "models" / "akt" / "seed1", "akt", 1, "val/auc")
    with pytest.raises(InputError, match=r"val/auc: akt \(seed 1\); val/gauc: akt \(seed 0\)"):
        build_report(copy, n_boot=10)


def test_the_monitor_is_read_from_the_frozen_configs(tmp_path):
    assert read_monitor(tmp_path) is None  # no frozen configs: the seed does not say
    config = tmp_path / schema.FIT_CONFIG_DIR
    config.mkdir()
    (config / "00_common.yaml").write_text("trainer: {max_epochs: 2}\n")
    assert read_monitor(tmp_path) == DEFAULT_MONITOR == "val/gauc"  # CTRTask's default
    (config / "00_common.yaml").write_text("model: {monitor: val/gauc_warm}\n")
    (config / "01_tuned.yaml").write_text("model: {monitor: val/auc}\n")
    assert read_monitor(tmp_path) == "val/auc"  # applied in name order, as `ctr fit --config` applies them
    (config / "01_tuned.yaml").write_text("model: {monitor: val/logloss}\n")
    with pytest.raises(InputError, match="val/logloss") as err:
        read_monitor(tmp_path)
    assert err.value.file == str(config / "01_tuned.yaml")
    (config / "01_tuned.yaml").write_text("model: [\n")
    with pytest.raises(InputError, match="not valid YAML"):
        read_monitor(tmp_path)


def test_the_monitor_value_is_the_number_the_fit_selected_on(tmp_path):
    where = tmp_path / "metrics.json"
    # a GAUC monitor undefined on the validation split: the fit selected on val/auc, logged as val/monitor
    fell_back = {"val": {"gauc_warm": math.nan, "auc": 0.71, "monitor": 0.71}}
    assert monitor_value(fell_back, "val/gauc_warm", where) == 0.71
    assert monitor_value({"val": {"gauc_warm": 0.66}}, "val/gauc_warm", where) == 0.66  # no val.monitor
    assert monitor_value({"val": {"val/auc": 0.7}}, "val/auc", where) == 0.7
    assert monitor_value({"val": {"gauc": 0.7}, "test": {"auc": 0.9}}, "val/auc", where) is None  # never test
    assert monitor_value(None, "val/auc", where) is None
    with pytest.raises(InputError, match="different fits|not val.gauc") as err:
        monitor_value({"val": {"gauc": 0.70, "auc": 0.72, "monitor": 0.72}}, "val/gauc", where)
    assert err.value.file == str(where)


def test_bootstrap_interval_contains_the_estimate(built):
    _, report = built
    boot = report["significance"]["bootstrap"]
    cells = [boot["overall"]] + [boot[k][b] for k in BUCKET_KINDS for b in schema.BUCKETS]
    for cell in cells:
        assert cell["n_valid"] == 300
        assert cell["ci_low"] < cell["estimate"] < cell["ci_high"]
    assert close(boot["overall"]["estimate"], report["deltas"]["overall"]["gauc"], 1e-7)
    assert close(
        boot["item_buckets"]["tail"]["estimate"], report["deltas"]["item_buckets"]["tail"]["gauc"], 1e-7
    )
    assert boot["overall"]["p_le_0"] == 0.0  # akt is far better than the baseline on every user sample


def test_ablation_intervals_are_the_bootstrap_of_ablation_minus_target(built):
    run, report = built
    boot = report["ablations"]["bootstrap"]["akt_no_gate"]
    delta = report["ablations"]["delta_vs_target"]["akt_no_gate"]
    assert close(boot["overall"]["estimate"], delta["overall"]["gauc"], 1e-7)
    assert close(boot["item_buckets"]["tail"]["estimate"], delta["item_buckets"]["tail"]["gauc"], 1e-7)
    assert boot["overall"]["ci_low"] < boot["overall"]["estimate"] < boot["overall"]["ci_high"]
    tables = {m: [user_auc_table(predictions(run, m, s)) for s in SEEDS] for m in ("akt", "akt_no_gate")}
    again = bootstrap_gauc_delta(tables["akt_no_gate"], tables["akt"], n_boot=300, seed=0)
    # the report's draws: the same n_boot and seed as the main interval
    assert again["overall"] == boot["overall"]
    md = (run / "report" / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith(f"| akt_no_gate | {len(SEEDS)} |"))
    assert f"[{boot['overall']['ci_low']:+.4f}, {boot['overall']['ci_high']:+.4f}]" in row


def test_bootstrap_is_seeded_and_centred_on_a_null_delta(built):
    run, _ = built
    tables = [user_auc_table(predictions(run, "dcnv2", s)) for s in SEEDS]
    one = bootstrap_gauc_delta(tables, tables, n_boot=50, seed=3)
    assert one == bootstrap_gauc_delta(tables, tables, n_boot=50, seed=3)
    assert one["overall"]["estimate"] == 0.0 and one["overall"]["ci_low"] == one["overall"]["ci_high"] == 0.0
    assert one["overall"]["p_le_0"] == 1.0


def test_per_user_auc_reproduces_gauc_with_ties_and_one_class_users():
    g = torch.Generator().manual_seed(0)
    n = 3000
    user = torch.randint(0, 150, (n,), generator=g) * 3 + 1
    label = (torch.rand(n, generator=g) < 0.4).to(torch.int8)
    label[user % 7 == 0] = 0
    score = torch.round(torch.rand(n, generator=g) * 10 + 3 * label) / 13  # heavy ties
    names = np.array(schema.BUCKETS)
    frame = pl.DataFrame(
        {
            schema.USER: user.numpy().astype(np.int32),
            schema.ITEM: np.arange(n, dtype=np.int32),
            schema.LABEL: label.numpy(),
            schema.SCORE: score.numpy().astype(np.float32),
            schema.ITEM_BUCKET: names[np.arange(n) % 4],
            schema.USER_BUCKET: names[user.numpy() % 4],
        }
    )
    table = user_auc_table(frame)

    def weighted(rows: pl.DataFrame) -> float:
        rows = rows.filter(pl.col("auc").is_not_null())
        return float((rows["auc"] * rows["n"]).sum() / rows["n"].sum())

    p, y, u = tensors(frame)
    assert close(weighted(table.filter(pl.col("scope") == "overall")), metrics.gauc(p, y, u))
    for kind, column in BUCKET_KINDS.items():
        for b in schema.BUCKETS:
            p, y, u = tensors(frame.filter(pl.col(column) == b))
            got = weighted(table.filter((pl.col("scope") == kind) & (pl.col("bucket") == b)))
            assert close(got, metrics.gauc(p, y, u))
    assert (
        table.filter(pl.col("scope") == "overall")["auc"].null_count() > 0
    )  # one-class users are kept, as null


# -- errors ------------------------------------------------------------------------------------------------------


def test_missing_column_names_it_and_writes_nothing(built, tmp_path):
    run, _ = built
    copy = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("report"))
    path = copy / "models" / "dcnv2" / "seed0" / schema.PREDICTIONS_FILE
    write_parquet(pl.read_parquet(path).drop(schema.ITEM_BUCKET), path)
    with pytest.raises(InputError, match="item_bucket") as err:
        build_report(copy, n_boot=10)
    assert err.value.column == schema.ITEM_BUCKET and err.value.file == str(path)
    assert not (copy / "report").exists()


def test_run_without_models_or_predictions(tmp_path):
    with pytest.raises(InputError, match="no trained models"):
        build_report(tmp_path, n_boot=10)
    (tmp_path / "models" / "akt" / "seed0").mkdir(parents=True)
    with pytest.raises(InputError, match="no predictions") as err:
        build_report(tmp_path, n_boot=10)
    assert err.value.file == str(tmp_path / "models" / "akt")


def test_unknown_target(built, tmp_path):
    run, _ = built
    with pytest.raises(InputError, match="'nope' is not in the run"):
        build_report(run, target="nope", n_boot=10)


# -- semantic-ID health ------------------------------------------------------------------------------------------


def hand_table() -> pl.DataFrame:
    # tuples (0,0) x2, (0,1), (1,2) x2, (2,2); sizes 4 and 3
    return pl.DataFrame(
        {
            schema.ITEM: [0, 1, 2, 3, 4, 5],
            "sid_0": [0, 0, 0, 1, 1, 2],
            "sid_1": [0, 0, 1, 2, 2, 2],
            schema.SID_DEDUP: [0, 1, 0, 0, 1, 0],
        }
    ).cast(dict(schema.sid_schema(schema.ITEM, 2)))


def test_health_equals_hand_computed():
    h = sid_health(hand_table(), [4, 3])
    bits = -(0.5 * math.log2(0.5) + 2 / 6 * math.log2(2 / 6) + 1 / 6 * math.log2(1 / 6))  # counts 3, 2, 1
    assert [lv["used"] for lv in h["per_level"]] == [3, 3]
    assert [lv["utilization"] for lv in h["per_level"]] == [0.75, 1.0]
    assert all(abs(lv["entropy_bits"] - bits) < 1e-12 for lv in h["per_level"])
    assert abs(h["per_level"][0]["entropy_normalized"] - bits / 2) < 1e-12
    assert abs(h["per_level"][1]["entropy_normalized"] - bits / math.log2(3)) < 1e-12
    assert h["collision_rate"] == 2 / 6 and h["colliding_tuples"] == 2 and h["largest_bucket"] == 2
    assert h["unique_full_ids"] == 1.0 and h["rows"] == 6


def test_metadata_health_wins_and_disagreement_is_flagged(tmp_path):
    recomputed = sid_health(hand_table(), [4, 3])
    merged = merge_health(recomputed, {"collision_rate": 0.5, "levels": [{"utilization": 0.75}]})
    assert merged["collision_rate"] == 0.5 and merged["source"]["collision_rate"] == "metadata"
    assert merged["largest_bucket"] == 2 and merged["source"]["largest_bucket"] == "recomputed"
    assert merged["source"]["per_level"][0]["utilization"] == "metadata"
    assert merged["mismatches"] == ["collision_rate"]
    # read from a file (through semid.ids.read_table): metadata health as written, sizes from the metadata
    path = tmp_path / schema.ITEM_SIDS_FILE
    meta = ids.table_meta(
        key=schema.ITEM, codebook_sizes=[4, 3], health={}, encoder="tiny", seed=0, data_hash="h"
    )
    ids.write_table(hand_table(), path, meta)
    table = read_sid_table(path, schema.ITEM)
    assert table.health["collision_rate"] == 2 / 6 and table.health["codebook_sizes"] == [4, 3]
    assert table.health["source"]["collision_rate"] == "recomputed"
    assert [p["n_prefixes"] for p in table.health["prefix_sizes"]] == [3, 4]
    assert sorted(table.prefixes[0].tolist()) == [1, 2, 3] and table.counts[0].tolist() == [3, 2, 1, 0]


def test_id_tables_are_validated_by_the_one_reader(tmp_path):
    """The report has no validation of its own: semid.ids.read_table's errors (file + column) reach the user."""
    path = tmp_path / schema.ITEM_SIDS_FILE
    meta = ids.table_meta(
        key=schema.ITEM, codebook_sizes=[4, 3], health={}, encoder="tiny", seed=0, data_hash="h"
    )
    write_parquet(hand_table().drop(schema.SID_DEDUP), path, meta)
    with pytest.raises(InputError, match="sid_dedup") as err:
        read_sid_table(path, schema.ITEM)
    assert err.value.file == str(path)
    write_parquet(hand_table(), path, {**meta, "codebook_sizes": [2, 3]})  # code 2 at level 0 is out of range
    with pytest.raises(InputError, match="codes outside") as err:
        read_sid_table(path, schema.ITEM)
    assert err.value.column == "sid_0"
    ids.write_table(hand_table(), path, meta)
    with pytest.raises(InputError, match="user_id"):  # an item table where the user table belongs
        read_sid_table(path, schema.USER)


def test_main_cli(built, tmp_path):
    run, _ = built
    copy = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("report"))
    assert (
        main([str(copy), "--target", "akt", "--baselines", "[deepfm]", "--n_boot", "20", "--seed", "1"])
        is None
    )
    report = json.loads((copy / "report" / "report.json").read_text())
    assert report["best_baseline"] == "deepfm" and report["roles"]["dcnv2"] == "other"
    assert (
        report["significance"]["bootstrap"]["n_boot"] == 20
        and report["significance"]["bootstrap"]["seed"] == 1
    )
    assert (copy / "report" / "report.json").is_file()


# -- GAUC users, the floor (issue 13) ----------------------------------------------------------------------------


def gauc_user_count(rows: pl.DataFrame) -> int:
    both = rows.group_by(schema.USER).agg(pl.col(schema.LABEL).n_unique() == 2)
    return int(both[schema.LABEL].sum())


def test_every_gauc_cell_counts_its_users_and_marks_few(built):
    run, report = built
    assert report["min_gauc_users"] == 50
    for model in STRENGTH:
        summary = report["models"][model]
        for i, seed in enumerate(SEEDS):
            frame = predictions(run, model, seed)
            assert summary["overall"]["n_users_values"][i] == gauc_user_count(frame)
            for kind, column in BUCKET_KINDS.items():
                for b in schema.BUCKETS:
                    rows = frame.filter(pl.col(column) == b)
                    assert summary[kind][b]["n_users_values"][i] == gauc_user_count(rows)
    akt = report["models"]["akt"]
    assert akt["overall"]["n_users"] == 94 and akt["user_buckets"]["cold"]["n_users"] < 50
    assert report["deltas"]["user_buckets"]["cold"]["n_users"] == akt["user_buckets"]["cold"]["n_users"]
    md = (run / "report" / "report.md").read_text()
    main_row = next(line for line in md.splitlines() if line.startswith("| akt | target |"))
    assert f"(u={akt['overall']['n_users']})" in main_row and "†" not in main_row  # 94 users: not marked
    cold = akt["user_buckets"]["cold"]
    cold_row = next(line for line in md.splitlines() if line.startswith(f"| cold | {cold['n']:,} | akt |"))
    assert f"(u={cold['n_users']} †)" in cold_row  # few users: shown and marked
    assert "† fewer than 50 users" in md


def test_models_are_shown_against_the_floor_and_losers_flagged(built):
    run, report = built
    floor = report["floor"]
    assert floor["model"] == "floor" and report["roles"]["floor"] == "floor"
    assert "floor" not in report["baselines"] and report["model_order"][0] == "floor"
    assert set(floor["models"]) == set(STRENGTH) - {"floor"}
    models = report["models"]
    for name, d in floor["models"].items():
        for m in ("auc", "gauc"):
            want = 100 * (models[name]["overall"][m]["mean"] - models["floor"]["overall"][m]["mean"])
            assert close(d["overall"][m], want)
        assert d["beats_floor"] == (d["overall"]["auc"] > 0 and d["overall"]["gauc"] > 0)
    # dcnv2 carries less signal than the floor in the synthetic scores (same noise): it must be flagged
    assert floor["models"]["dcnv2"]["beats_floor"] is False and floor["models"]["akt"]["beats_floor"] is True
    md = (run / "report" / "report.md").read_text()
    assert "## Against the floor `floor`" in md
    section = md.split("## Against the floor", 1)[1].split("\n## ", 1)[0]
    dcnv2_row = next(line for line in section.splitlines() if line.startswith("| dcnv2 | baseline | "))
    akt_row = next(line for line in section.splitlines() if line.startswith("| akt | target | "))
    assert "**NO**" in dcnv2_row and "| yes |" in akt_row and "**`dcnv2` does not beat it**" in md
    # no floor in the run (or floor=None): no comparison, "floor" is then an ordinary baseline
    assert roles(list(models), "akt", None, run, floor=None).floor is None
    assert "floor" in roles(list(models), "akt", None, run, floor=None).baselines
    assert roles(list(models), "akt", None, run, floor="bias_only").floor is None
    with pytest.raises(InputError, match="also the floor"):
        roles(list(models), "floor", None, run)


def test_fits_cut_off_while_still_improving_are_named(built, tmp_path):
    """A fit that ran all its epochs and was best at the last one may be under-trained: the report names it, and a
    floor in that state gets a warning (a floor that had not converged flatters every model shown against it)."""
    run, report = built
    assert all(m["still_improving"] is None for m in report["models"].values())  # records without the fields
    assert "Still improving when the epoch budget ended" not in render_markdown(report)
    copy = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("report"))

    def record(model: str, seed: int, **fields: int) -> None:
        path = copy / "models" / model / f"seed{seed}" / "metrics.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | fields))

    record("floor", 0, epochs=3, max_epochs=3, epochs_since_best=0)  # cut off while improving
    record("floor", 1, epochs=3, max_epochs=3, epochs_since_best=1)  # its best was an epoch earlier
    record("akt", 0, epochs=2, max_epochs=3, epochs_since_best=0)  # early stopping ended it before the budget
    again = build_report(copy, n_boot=20)
    models = again["models"]
    assert models["floor"]["still_improving"] == {"seeds": [0], "known": 2}
    assert models["akt"]["still_improving"] == {"seeds": [], "known": 1}
    assert models["deepfm"]["still_improving"] is None
    md = render_markdown(again)
    assert "its best): `floor` 1/2 seeds. Such a model may be under-trained" in md
    assert "**The floor was still improving when its epoch budget ended (1/2 seeds)**" in md
    floor_section = md.split("## Against the floor", 1)[1].split("\n## ", 1)[0]
    assert "⚠ The floor was still improving when its epoch budget ended (1/2 seeds)" in floor_section


def test_a_fit_records_how_its_epoch_budget_ended():
    """pipelines.fit.budget_record reads the trainer after fit: the budget and the epochs since the last improvement."""

    class Stopper:
        wait_count = 2

    class Trainer:
        max_epochs, early_stopping_callback = 5, Stopper()

    assert budget_record(Trainer()) == {"max_epochs": 5, "epochs_since_best": 2}
    Trainer.early_stopping_callback = None
    assert budget_record(Trainer()) == {"max_epochs": 5, "epochs_since_best": None}


# -- bad inputs (issue 11) ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ['{"val": {"gauc": 0.7', "", "[1, 2]", "\xff\xfe"])
def test_corrupt_metrics_json_is_one_input_error(built, tmp_path, text):
    run, _ = built
    copy = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("report"))
    path = copy / "models" / "deepfm" / "seed1" / "metrics.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(InputError, match="JSON") as err:
        build_report(copy, n_boot=10)
    assert err.value.file == str(path) and "re-run the fit" in err.value.fix
    assert not (copy / "report").exists()


@pytest.mark.parametrize("bad", [math.nan, math.inf, None, 1.5])
def test_predictions_with_non_finite_or_impossible_scores_are_refused(built, tmp_path, bad):
    run, _ = built
    copy = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("report"))
    path = copy / "models" / "akt" / "seed0" / schema.PREDICTIONS_FILE
    frame = pl.read_parquet(path)
    scores = frame[schema.SCORE].to_list()
    scores[7] = bad
    write_parquet(frame.with_columns(pl.Series(schema.SCORE, scores, dtype=pl.Float32)), path)
    with pytest.raises(InputError) as err:
        build_report(copy, n_boot=10)
    assert err.value.file == str(path) and err.value.column == schema.SCORE
    assert not (copy / "report").exists()


def test_a_report_folder_that_is_not_a_report_is_never_replaced(built, tmp_path):
    run, _ = built
    copy = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("report"))
    (copy / "report").mkdir()
    (copy / "report" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty and was not written by `report`"):
        build_report(copy, n_boot=10)
    assert [p.name for p in (copy / "report").iterdir()] == ["notes.txt"]
    assert (copy / "report" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in copy.iterdir()) == ["models", "report", "semids"]  # no staging left behind


def test_ctr_report_command_turns_a_corrupt_run_into_one_line(built, tmp_path, capsys):
    from pipelines.cli import main as cli_main

    run, _ = built
    copy = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("report"))
    (copy / "models" / "akt" / "seed0" / "metrics.json").write_text('{"val": ')
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["ctr", "report", str(copy), "--n_boot", "5"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "metrics.json" in err and "fix:" in err
