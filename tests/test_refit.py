"""`semid run --refit_train_val` (issue 13) on tiny synthetic data: the data module trains on train + val rows with
leak-free histories; each (model, seed) is refitted from scratch on train + val for the epochs its best checkpoint
saw, the report scores the refit's test predictions and the selection fit's validation numbers, toggling the option
re-fits, a re-run skips, and a run killed during the refit resumes at the refit."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pipeline_cfg as pc
import polars as pl
import pytest
import torch

from ctr.data import CTRDataModule
from pipelines.refit import REFIT_DIR, SELECTION_PREDICTIONS, SELECTION_RECORD
from pipelines.run import main as run_main
from semid import data, synthetic
from semid import schema as S
from semid.errors import InputError
from semid.io import read_meta

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = ("deepfm", "din")
BATCH = 256
HISTORY = 4


def _whole(dm: CTRDataModule, split: str):
    ds = dm.dataset(split)
    return ds[torch.arange(len(ds))]


def _oracle_history(rows: pl.DataFrame, positives: pl.DataFrame, length: int) -> list[list[int]]:
    """Brute force: per row, item id + 1 of the user's last `length` positives strictly before its timestamp, most
    recent first (ties: larger item id first), 0-padded."""
    by_user: dict[int, list[tuple[int, int]]] = {}
    for u, i, t in positives.select(S.USER, S.ITEM, S.TIMESTAMP).iter_rows():
        by_user.setdefault(u, []).append((t, i))
    out = []
    for u, t in rows.select(S.USER, S.TIMESTAMP).iter_rows():
        past = sorted(e for e in by_user.get(u, []) if e[0] < t)[::-1][:length]
        out.append([i + 1 for _, i in past] + [0] * (length - len(past)))
    return out


@pytest.mark.parametrize("mode", ["temporal", "random"])
def test_train_val_rows_train_with_their_validation_history(synthetic_raw, tmp_path, mode):
    files = data.RawFiles(synthetic_raw["inter"], synthetic_raw["item"], synthetic_raw["user"])
    cfg = data.PrepareConfig(split=data.SplitConfig(mode=mode, seed=1))
    prepared = data.write(data.build(files, synthetic.columns(), cfg, name="synthetic"), tmp_path / mode)
    frames = {s: pl.read_parquet(prepared / S.split_file(s)) for s in S.SPLITS}
    base = CTRDataModule(str(prepared), history_len=HISTORY)
    both = CTRDataModule(str(prepared), history_len=HISTORY, train_splits=("train", "val"))
    n_train, n_val = frames["train"].height, frames["val"].height
    assert len(both.dataset("train")) == n_train + n_val and len(base.dataset("train")) == n_train
    got, val = _whole(both, "train"), _whole(base, "val")
    # the val rows train exactly as they are validated: every field, history included
    for field in ("user", "item", "label", "hist_item", "hist_item_sid", "user_count", "item_bucket"):
        assert torch.equal(getattr(got, field)[n_train:], getattr(val, field)), field
    # every training row's history: train + val positives strictly before it (brute force)
    rows = pl.concat([frames["train"], frames["val"]], how="vertical_relaxed")
    positives = rows.filter(pl.col(S.LABEL) == 1)
    assert got.hist_item.tolist() == _oracle_history(rows, positives, HISTORY)
    # counts and buckets stay the prepared (train) ones: the other splits are untouched
    for split in ("val", "test"):
        assert torch.equal(_whole(both, split).hist_item, _whole(base, split).hist_item)
    train_rows = _whole(base, "train")
    seen_val = not torch.equal(got.hist_item[:n_train], train_rows.hist_item)
    if mode == "temporal":  # the val period follows train: a train row's history is what it was
        assert not seen_val
    else:  # a random split puts val positives before some train rows: the refit may read them
        assert seen_val


@pytest.mark.parametrize("bad", [(), ("val",), ("train", "train"), ("train", "test"), ("test",)])
def test_train_splits_other_than_train_then_val_are_refused(prepared_dir, bad):
    with pytest.raises(InputError, match="train_splits"):
        CTRDataModule(str(prepared_dir), train_splits=bad)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, synthetic_raw, tiny_bert_dir) -> Path:
    root = tmp_path_factory.mktemp("refit_cfg")
    common = {
        "model": {"monitor": "val/auc", "lr": 0.01},
        "trainer": {"max_epochs": 8, "enable_progress_bar": False, "enable_model_summary": False},
        "early_stopping": {"patience": 1},
        "data": {"batch_size": BATCH, "history_len": HISTORY},
    }
    nets = {
        "deepfm": {"class_path": "ctr.models.deepfm.DeepFM", "init_args": {"embed_dim": 8, "mlp_dims": [16]}},
        "din": {"class_path": "ctr.models.din.DIN", "init_args": {"embed_dim": 8, "mlp_dims": [16]}},
    }
    pc.write_files(root, tiny_bert_dir, nets, common)
    prepare = pc.synthetic_prepare(root, synthetic_raw)
    return pc.write(pc.pipeline("refit", root, prepare, MODELS, "din"), "pipeline.yaml")


@pytest.fixture(scope="module")
def plain_and_refit(pipeline, tmp_path_factory) -> tuple[Path, Path, str]:
    """A run without the option, then the same run folder (a copy) with it: (plain, refit, console of the latter)."""
    plain = tmp_path_factory.mktemp("refit_run") / "plain"
    run_main(["--config", str(pipeline), "--run_dir", str(plain)])
    refit = plain.parent / "refit"
    shutil.copytree(plain, refit)
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        run_main(["--config", str(pipeline), "--run_dir", str(refit), "--refit_train_val", "true"])
    return plain, refit, console.getvalue()


def _seed(run: Path, model: str) -> Path:
    return run / "models" / model / "seed0"


def _auc(pred: pl.DataFrame) -> float:
    p, y = pred[S.SCORE].to_numpy().astype(np.float64), pred[S.LABEL].to_numpy()
    pos, neg = p[y == 1], p[y == 0]
    return float(((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean())


def test_toggling_the_option_refits_and_leaves_the_earlier_stages_alone(plain_and_refit):
    plain, refit, out = plain_and_refit
    assert "[prepare] refit: up to date" in out and "[semids] up to date" in out
    for m in MODELS:
        assert f"[fit] {m} seed 0: up to date" not in out
        assert f"[fit] {m} seed 0: " in out and "refit on train+val" in out
        before = json.loads((_seed(plain, m) / S.METRICS_FILE).read_text())
        after = json.loads((_seed(refit, m) / S.METRICS_FILE).read_text())
        assert before["stage_hash"] != after["stage_hash"]
        assert "refit" not in before and not (_seed(plain, m) / REFIT_DIR).exists()  # off: as before


def test_the_refit_trains_on_train_and_val_for_the_selected_epochs(plain_and_refit):
    plain, run, _ = plain_and_refit
    n = {s: pl.read_parquet(run / "prepared" / S.split_file(s)).height for s in S.SPLITS}
    for m in MODELS:
        seed_dir = _seed(run, m)
        metrics = json.loads((seed_dir / S.METRICS_FILE).read_text())
        selection = json.loads((seed_dir / SELECTION_RECORD).read_text())
        best = torch.load(selection["best_checkpoint"], map_location="cpu", weights_only=True)
        epochs = best["epoch"] + 1
        refit = metrics["refit"]
        assert refit["epochs"] == epochs and refit["train_splits"] == ["train", "val"]
        assert refit["train_rows"] == n["train"] + n["val"]
        assert refit["steps"] == epochs * math.ceil((n["train"] + n["val"]) / BATCH)
        last = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)
        assert Path(metrics["best_checkpoint"]).parent == seed_dir / REFIT_DIR / S.CHECKPOINTS_DIR
        assert last["epoch"] == epochs - 1 and last["global_step"] == refit["steps"]
        assert list(last["datamodule_hyper_parameters"]["train_splits"]) == ["train", "val"]
        # the selection fit is the plain run's fit (same configs, seed and data); its numbers stay visible
        plain_metrics = json.loads((_seed(plain, m) / S.METRICS_FILE).read_text())
        assert selection["val"] == pytest.approx(plain_metrics["val"], abs=1e-6, nan_ok=True)
        assert metrics["val"] == selection["val"] and metrics["test_selection"] == selection["test"]
        assert metrics["selection_checkpoint"] == selection["best_checkpoint"]


def test_the_report_scores_the_refits_test_predictions_and_the_selections_val(plain_and_refit):
    _, run, _ = plain_and_refit
    report = json.loads((run / "report" / "report.json").read_text())
    test = pl.read_parquet(run / "prepared" / S.split_file("test"))
    for m in MODELS:
        seed_dir = _seed(run, m)
        metrics = json.loads((seed_dir / S.METRICS_FILE).read_text())
        pred = pl.read_parquet(seed_dir / S.PREDICTIONS_FILE)
        first = pl.read_parquet(seed_dir / SELECTION_PREDICTIONS)
        assert pred.height == first.height == test.height
        assert pred[S.SCORE].to_list() != first[S.SCORE].to_list()
        assert _auc(pred) == pytest.approx(metrics["test"]["auc"], abs=1e-4)  # the refit's own test number
        assert _auc(first) == pytest.approx(metrics["test_selection"]["auc"], abs=1e-4)
        cell = report["models"][m]
        assert cell["overall"]["auc"]["values"][0] == pytest.approx(_auc(pred), abs=1e-6)
        assert cell["val_monitor"]["values"][0] == pytest.approx(metrics["val"]["auc"], abs=1e-9)
        assert cell["epochs"]["values"][0] == metrics["epochs"]  # the selection fit's epochs
        # calibrated on the selection fit's validation predictions: the refit trained on val
        val_meta = read_meta(seed_dir / S.VAL_PREDICTIONS_FILE)
        assert val_meta["checkpoint"] == metrics["selection_checkpoint"]
        assert cell["calibration"]["fitted_on"] == "val_of_selection_fit"
        assert cell["calibration"]["seeds"] == [0]


def test_a_rerun_skips_and_a_killed_refit_resumes_at_the_refit(plain_and_refit, pipeline, tmp_path, capsys):
    _, finished, _ = plain_and_refit
    args = ["--config", str(pipeline), "--refit_train_val", "true"]
    capsys.readouterr()
    run_main([*args, "--run_dir", str(finished)])
    out = capsys.readouterr().out
    assert all(f"[fit] {m} seed 0: up to date" in out for m in MODELS)
    run = tmp_path / "killed"
    shutil.copytree(finished, run)
    seed_dir = _seed(run, "deepfm")
    (
        seed_dir / S.METRICS_FILE
    ).unlink()  # killed during the refit: the selection fit is done, the refit is not
    shutil.rmtree(seed_dir / REFIT_DIR / S.CHECKPOINTS_DIR)
    selection_ckpts = sorted((seed_dir / S.CHECKPOINTS_DIR).iterdir())
    run_main([*args, "--run_dir", str(run)])
    out = capsys.readouterr().out
    assert "[fit] deepfm seed 0: selection fit up to date, refitting" in out
    assert "[fit] din seed 0: up to date" in out
    assert sorted((seed_dir / S.CHECKPOINTS_DIR).iterdir()) == selection_ckpts
    resumed = pl.read_parquet(seed_dir / S.PREDICTIONS_FILE)[S.SCORE].to_list()
    reference = pl.read_parquet(_seed(finished, "deepfm") / S.PREDICTIONS_FILE)[S.SCORE].to_list()
    assert resumed == pytest.approx(reference, abs=1e-6)
