"""The whole chain on tiny synthetic data and tiny models: every artifact, the report schema, and crash-resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from ctr.module import DEFAULT_MONITOR
from pipelines.calibrate import backfill_run
from pipelines.cli import check_checkpoint
from pipelines.run import main as run_main
from semid import schema as S
from semid.io import read_meta

MODELS = ("deepfm", "akt", "akt_no_gate")


@pytest.fixture(scope="module")
def pipeline_config(tmp_path_factory, synthetic_raw, tiny_bert_dir) -> Path:
    root = tmp_path_factory.mktemp("pipeline_cfg")
    (root / "columns.yaml").write_text(
        yaml.safe_dump(
            {
                "item_text_template": "{title}. Genres: {genre}.",
                "item_features": ["genre"],
                "multi_valued": ["genre"],
                "user_features": ["age", "gender"],
            }
        )
    )
    # A tiny random BERT gives nearly parallel vectors whose spread depends on float details (thread count):
    # the collapse check is tested on controlled vectors in test_ids.py, so here it only guards against 1 code.
    rq = {"levels": 2, "codebook_size": 4, "max_epochs": 15, "batch_size": 32, "min_level0_utilization": 0.3}
    (root / "semid.yaml").write_text(
        yaml.safe_dump(
            {
                "encoder": {"model": str(tiny_bert_dir), "batch_size": 32, "max_length": 32},
                "align_config": {"max_epochs": 1, "max_pairs": 400, "batch_size": 64, "user_max_length": 32},
                "item_rqvae": rq,
                # user texts list a user's history: with a random BERT their mean-pooled vectors are nearly one
                # point, so level 0 may use a single code; the check itself is tested in test_ids.py
                "user_rqvae": {**rq, "min_level0_utilization": 0.0},
            }
        )
    )
    (root / "common.yaml").write_text(
        yaml.safe_dump(
            {
                "trainer": {"max_epochs": 2, "enable_progress_bar": False, "enable_model_summary": False},
                "data": {"batch_size": 256, "history_len": 5},
            }
        )
    )
    small = {"embed_dim": 8}
    model_cfgs = {
        "deepfm": {"class_path": "ctr.models.deepfm.DeepFM", "init_args": {**small, "mlp_dims": [16]}},
        "akt": {
            "class_path": "ctr.models.akt.AKT",
            "init_args": {**small, "mlp_dims": [16]},
        },
        "akt_no_gate": {
            "class_path": "ctr.models.akt.AKT",
            "init_args": {**small, "mlp_dims": [16], "use_gate": False},
        },
    }
    for name, cfg in model_cfgs.items():  # the task's `net` is the network (ctr.module.CTRTask)
        (root / f"{name}.yaml").write_text(yaml.safe_dump({"model": {"net": cfg}}))
    pipeline = {
        "name": "synthetic",
        "prepare": {
            "dataset": None,
            "interactions": str(synthetic_raw["inter"]),
            "items": str(synthetic_raw["item"]),
            "users": str(synthetic_raw["user"]),
            "columns": str(root / "columns.yaml"),
        },
        "semids": str(root / "semid.yaml"),
        "common": [str(root / "common.yaml")],
        "models": [{"name": n, "config": str(root / f"{n}.yaml")} for n in MODELS],
        "seeds": [0],
        "target": "akt",
    }
    (root / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    return root / "pipeline.yaml"


@pytest.fixture(scope="module")
def finished_run(pipeline_config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "full"
    run_main(["--config", str(pipeline_config), "--run_dir", str(out)])
    return out


def _predictions(run: Path) -> dict[str, pl.DataFrame]:
    return {m: pl.read_parquet(run / "models" / m / "seed0" / S.PREDICTIONS_FILE) for m in MODELS}


def test_every_artifact(finished_run):
    run = finished_run
    for f in (S.ITEMS_FILE, S.USERS_FILE, *(S.split_file(s) for s in S.SPLITS)):
        assert (run / "prepared" / f).exists()
    items = pl.read_parquet(run / "prepared" / S.ITEMS_FILE)
    users = pl.read_parquet(run / "prepared" / S.USERS_FILE)
    for table, key, n in ((S.ITEM_SIDS_FILE, S.ITEM, items.height), (S.USER_SIDS_FILE, S.USER, users.height)):
        df = pl.read_parquet(run / "semids" / table)
        assert df.schema == S.sid_schema(key, 2)
        assert df.height == n and df[key].to_list() == list(range(n))
        assert df.select(pl.all().exclude(key)).is_duplicated().sum() == 0  # full IDs unique
        meta = read_meta(run / "semids" / table)
        assert meta["codebook_sizes"] == [4, 4] and "health" in meta and meta["stage_hash"]
    test = pl.read_parquet(run / "prepared" / S.split_file("test"))
    for name, pred in _predictions(run).items():
        assert pred.schema == S.PREDICTIONS, name
        assert pred.height == test.height
        assert pred[S.SCORE].is_between(0, 1).all()
        metrics = json.loads((run / "models" / name / "seed0" / "metrics.json").read_text())
        assert {"val", "test", "stage_hash", "fit_seconds", "best_checkpoint"} <= set(metrics)
        assert 0 <= metrics["test"]["auc"] <= 1
        # how the epoch budget ended (the report's still-improving check): a budget, the epochs run within it, and
        # the epochs since the monitor's last improvement, which early stopping caps at its patience
        assert 1 <= metrics["epochs"] <= metrics["max_epochs"]
        assert (
            isinstance(metrics["epochs_since_best"], int)
            and 0 <= metrics["epochs_since_best"] < metrics["epochs"]
        )
        check_checkpoint(metrics["best_checkpoint"])  # a real checkpoint passes the CLI's pre-check
        frozen = sorted((run / "models" / name / "seed0" / "config").iterdir())
        assert [p.name for p in frozen] == ["00_common.yaml", f"01_{name}.yaml"]
        val = pl.read_parquet(
            run / "models" / name / "seed0" / S.VAL_PREDICTIONS_FILE
        )  # the calibration's input
        assert (
            val.schema == S.PREDICTIONS
            and val.height
            == pl.scan_parquet(run / "prepared" / S.split_file("val")).select(pl.len()).collect().item()
        )
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["schema_version"] == 1 and report["target"] == "akt"
    assert set(report["models"]) == set(MODELS)
    assert report["best_baseline"] == "deepfm"  # akt_no_gate is an ablation, not a baseline
    for png in report["plots"]:
        assert (run / "report" / png).stat().st_size > 1000
    assert "| deepfm" in (run / "report" / "report.md").read_text()
    assert all(report["models"][m]["calibration"]["seeds"] == [0] for m in MODELS)
    assert "| logloss (cal.) |" in (run / "report" / "report.md").read_text()


def test_backfill_predicts_validation_from_the_checkpoint_and_touches_nothing_else(finished_run, tmp_path):
    run = Path(shutil.copytree(finished_run, tmp_path / "old"))
    seed_dir = run / "models" / "deepfm" / "seed0"
    written = pl.read_parquet(seed_dir / S.VAL_PREDICTIONS_FILE)
    (seed_dir / S.VAL_PREDICTIONS_FILE).unlink()  # a fit from before validation predictions were written
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert backfill_run(run) == [seed_dir]
    assert {p for p in run.rglob("*") if p.is_file()} - set(before) == {seed_dir / S.VAL_PREDICTIONS_FILE}
    assert all(p.read_bytes() == data for p, data in before.items())  # no other file written
    again = pl.read_parquet(seed_dir / S.VAL_PREDICTIONS_FILE)
    assert again.drop(S.SCORE).equals(written.drop(S.SCORE))  # the fit's own validation rows, in order
    assert again[S.SCORE].to_list() == pytest.approx(written[S.SCORE].to_list(), abs=1e-6)  # same checkpoint
    assert backfill_run(run) == []  # nothing left to do


def test_rerun_skips_every_stage(finished_run, pipeline_config, capsys):
    before = {m: p[S.SCORE].to_list() for m, p in _predictions(finished_run).items()}
    run_main(["--config", str(pipeline_config), "--run_dir", str(finished_run)])
    out = capsys.readouterr().out
    assert "[prepare] synthetic: up to date" in out
    assert "[semids] up to date" in out
    assert all(f"[fit] {m} seed 0: up to date" in out for m in MODELS)
    assert {m: p[S.SCORE].to_list() for m, p in _predictions(finished_run).items()} == before


def test_killed_run_resumes_with_the_same_result(finished_run, pipeline_config, tmp_path, capsys):
    out = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "pipelines.semid_cli",
        "run",
        "--config",
        str(pipeline_config),
        "--run_dir",
        str(out),
    ]
    console = tmp_path / "console.txt"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=console.open("w"))
    first_done = out / "models" / MODELS[0] / "seed0" / "metrics.json"
    deadline = time.monotonic() + 300
    while not first_done.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-way: the first model is done, the next one is being fitted
    proc.wait()
    assert first_done.exists(), console.read_text()[-3000:]
    assert not (out / "report" / "report.json").exists()

    run_main(["--config", str(pipeline_config), "--run_dir", str(out)])
    log = capsys.readouterr().out
    assert f"[fit] {MODELS[0]} seed 0: up to date" in log
    resumed, reference = _predictions(out), _predictions(finished_run)
    for m in MODELS:
        assert resumed[m][S.SCORE].to_list() == pytest.approx(reference[m][S.SCORE].to_list(), abs=1e-6), m
    assert (out / "report" / "report.json").exists()


def test_changed_model_config_reruns_only_that_model(finished_run, pipeline_config, tmp_path, capfd):
    import shutil

    run = tmp_path / "changed"
    shutil.copytree(finished_run, run)
    cfg_dir = tmp_path / "cfg"
    shutil.copytree(pipeline_config.parent, cfg_dir)
    pipeline = yaml.safe_load((cfg_dir / "pipeline.yaml").read_text())
    for m in pipeline["models"]:
        m["config"] = str(cfg_dir / Path(m["config"]).name)
    (cfg_dir / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    deepfm = yaml.safe_load((cfg_dir / "deepfm.yaml").read_text())
    deepfm["model"]["net"]["init_args"]["mlp_dims"] = [12]
    (cfg_dir / "deepfm.yaml").write_text(yaml.safe_dump(deepfm))
    run_main(["--config", str(cfg_dir / "pipeline.yaml"), "--run_dir", str(run)])
    captured = capfd.readouterr()
    log = captured.out
    assert "[semids] up to date" in log
    assert "[fit] deepfm seed 0: up to date" not in log
    assert "[fit] akt seed 0: up to date" in log
    # a quiet console: library chatter of the deepfm fit went to the run log, not to the terminal
    console = captured.out + captured.err
    for noise in ("GPU available", "litlogger", "LightningCLI's args", "Restoring states"):
        assert noise not in console, noise
    assert "GPU available" in (run / "run.log").read_text()
    assert [line for line in log.splitlines() if line.startswith("[fit] deepfm")]  # its one summary line


def test_missing_model_config_is_a_clear_error_before_any_work(pipeline_config, tmp_path, capsys):
    pipeline = yaml.safe_load(pipeline_config.read_text())
    pipeline["models"].append({"name": "ghost", "config": str(tmp_path / "nope.yaml")})
    bad = tmp_path / "pipeline.yaml"
    bad.write_text(yaml.safe_dump(pipeline))
    with pytest.raises(SystemExit) as exc:
        run_main(["--config", str(bad), "--run_dir", str(tmp_path / "run")])
    assert exc.value.code == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert not (tmp_path / "run" / "prepared").exists()


def test_assign_gives_new_items_ids_and_keeps_old_ones(finished_run, tmp_path, capsys):
    import shutil

    from pipelines.semid_cli import main as semid_main

    semids = tmp_path / "semids"  # a copy: the in-place assign below must not change the shared finished run
    shutil.copytree(finished_run / "semids", semids)
    old = pl.read_parquet(semids / S.ITEM_SIDS_FILE)
    new_items = pl.DataFrame(
        {
            S.ITEM: [old.height, old.height + 1],
            S.TEXT: ["The robot of space 7. Genres: robot space.", "A love war."],
        }
    )
    new_items.write_parquet(tmp_path / "new.parquet")
    out = tmp_path / "item_sids_v2.parquet"
    semid_main(
        ["assign", "--semids", str(semids), "--items", str(tmp_path / "new.parquet"), "--out", str(out)]
    )
    table = pl.read_parquet(out)
    assert table.head(old.height).equals(old)  # existing IDs untouched
    assert table[S.ITEM].to_list()[-2:] == new_items[S.ITEM].to_list()
    assert table.drop(S.ITEM).is_duplicated().sum() == 0
    assert read_meta(out)["version"] == read_meta(semids / S.ITEM_SIDS_FILE)["version"] + 1
    semid_main(["assign", "--semids", str(semids), "--items", str(tmp_path / "new.parquet")])  # in place
    assert pl.read_parquet(semids / S.ITEM_SIDS_FILE).equals(table)
    # the same items again are refused: an item already in the table keeps its ID
    with pytest.raises(SystemExit):
        semid_main(["assign", "--semids", str(semids), "--items", str(tmp_path / "new.parquet")])
    assert pl.read_parquet(semids / S.ITEM_SIDS_FILE).equals(table)
    semid_main(["inspect", "--table", str(semids / S.ITEM_SIDS_FILE)])
    assert "collision" in capsys.readouterr().out.lower()


def test_tune_fits_seeds_from_the_tuned_config_and_the_report_lists_it(
    finished_run, pipeline_config, tmp_path, capsys
):
    import shutil

    run = tmp_path / "tuned"
    shutil.copytree(finished_run, run)
    args = ["--config", str(pipeline_config), "--run_dir", str(run), "--only_models", "[deepfm]"]
    tune_args = ["--tune", "1", "--tuning.max_epochs", "1"]
    run_main([*args, *tune_args])
    log = capsys.readouterr().out
    assert "[semids] up to date" in log and "[tune] deepfm:" in log
    record = json.loads((run / "tuned" / "deepfm.json").read_text())
    # no common config sets a monitor: trials are ranked on CTRTask's default, the number the other models'
    # (untuned) fits were selected on, so the report ranks every model on one number
    assert record["trials"] == 1 and record["monitor"] == DEFAULT_MONITOR
    tuned = yaml.safe_load((run / "tuned" / "deepfm.yaml").read_text())
    assert tuned["trainer"]["max_epochs"] == 1 and tuned["model"]["monitor"] == DEFAULT_MONITOR
    assert record["best"]["params"]["model.lr"] == pytest.approx(tuned["model"]["lr"])
    frozen = sorted((run / "models" / "deepfm" / "seed0" / "config").iterdir())
    assert yaml.safe_load(frozen[-1].read_text()) == tuned  # the seed trained from the tuned config
    report = json.loads((run / "report" / "report.json").read_text())
    assert set(report["tuned"]) == {"deepfm"} and report["tuned"]["deepfm"]["trials"] == 1
    assert "## Tuned configurations" in (run / "report" / "report.md").read_text()
    assert not list((run / "tuned").glob(".*"))  # no scratch left
    run_main([*args, *tune_args])
    log = capsys.readouterr().out
    assert "[tune] deepfm: up to date" in log and "[fit] deepfm seed 0: up to date" in log


def _reuse_stages(finished: Path, out: Path) -> None:
    """A run folder holding `finished`'s prepared data and semantic IDs (up to date), without any fit."""
    import shutil

    out.mkdir(parents=True)
    for part in ("prepared", "semids"):
        shutil.copytree(finished / part, out / part)


def test_parallel_fits_give_the_same_models(finished_run, pipeline_config, tmp_path, capsys):
    out = tmp_path / "jobs2"
    _reuse_stages(finished_run, out)
    run_main(["--config", str(pipeline_config), "--run_dir", str(out), "--jobs", "2"])
    log = capsys.readouterr().out
    assert "[semids] up to date" in log and all(f"[fit] {m} seed 0:" in log for m in MODELS)
    assert "up to date" not in log.split("[semids]")[1].split("\n", 1)[1]  # every fit ran, in the workers
    parallel, reference = _predictions(out), _predictions(finished_run)
    for m in MODELS:  # the same seeded fits (one torch thread each here and in this test process)
        assert parallel[m][S.SCORE].to_list() == pytest.approx(reference[m][S.SCORE].to_list(), abs=1e-5), m
    assert (out / "report" / "report.json").exists()


def test_a_bad_config_in_a_worker_is_one_clear_error(finished_run, pipeline_config, tmp_path, capsys):
    cfg = yaml.safe_load(pipeline_config.read_text())
    bad = tmp_path / "akt_bad.yaml"
    net = {"class_path": "ctr.models.akt.AKT", "init_args": {"embed_dim": 8, "mlp_dims": [16], "p_cold": 1.5}}
    bad.write_text(yaml.safe_dump({"model": {"net": net}}))
    cfg["models"] = [cfg["models"][0], {"name": "akt", "config": str(bad)}]
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "bad"
    _reuse_stages(finished_run, out)
    with pytest.raises(SystemExit) as err:
        run_main(["--config", str(tmp_path / "pipeline.yaml"), "--run_dir", str(out), "--jobs", "2"])
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert "p_cold=1.5" in msg and "fix: set model.net.p_cold in [0, 1)" in msg
    assert "Traceback" not in msg
    assert not (out / "report" / "report.json").exists()


def test_only_models_without_the_target_fits_them_and_skips_the_report(
    finished_run, pipeline_config, tmp_path, capsys
):
    """A first invocation that fits only some models (not yet the report's target) ends without an error: the
    report needs the target, and is written once a later invocation (or `ctr report`) has it."""
    out = tmp_path / "partial"
    _reuse_stages(finished_run, out)
    run_main(["--config", str(pipeline_config), "--run_dir", str(out), "--only_models", "[deepfm]"])
    log = capsys.readouterr().out
    assert "[fit] deepfm seed 0:" in log and "[report] skipped: the target 'akt' has no finished fit" in log
    assert (out / "models" / "deepfm" / "seed0" / S.PREDICTIONS_FILE).is_file()
    assert not (out / "report").exists()
    # a target that is no model at all (a typo) is said the same way, after the fits, which stay
    run_main(
        [
            "--config",
            str(pipeline_config),
            "--run_dir",
            str(out),
            "--only_models",
            "[deepfm]",
            "--target",
            "akkt",
        ]
    )
    assert "[report] skipped: the target 'akkt' has no finished fit" in capsys.readouterr().out


def test_jobs_below_one_is_refused_before_any_work(pipeline_config, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_main(["--config", str(pipeline_config), "--run_dir", str(tmp_path / "r"), "--jobs", "0"])
    assert "jobs=0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
