"""`semid run --refit_train_val`: one (model, seed) fitted as usual for model selection, then fitted again from
scratch on train + val for the epochs the selection chose, and tested with that refit.

The selection fit is the normal fit (train, validation, early stopping, best checkpoint): its validation metrics are
the ones model selection and the report's best-baseline rule read. The refit trains the same frozen configs with the
same seed from scratch on the train and val rows (`data.train_splits: [train, val]`; ctr.data.tables.load_tables
says what that means for histories and activity buckets) for exactly the epochs the selection's best checkpoint had
seen (its epoch + 1), with no validation and no early stopping; its last weights are tested and predict the test
split. The seed folder then holds

    config/                            the frozen configs both fits trained from
    checkpoints/, logs/                the selection fit's
    selection_metrics.json             the selection fit's metrics (val, test, best checkpoint); marks it done
    selection_predictions.parquet      the selection fit's test predictions
    val_predictions.parquet            the selection fit's validation predictions (its best checkpoint)
    refit/checkpoints/refit-<e>.ckpt   the refit's last weights (the checkpoint the test numbers come from)
    refit/logs/
    predictions.parquet                the refit's test predictions: what the report scores
    metrics.json                       val = the selection's, test = the refit's, test_selection = the selection's
                                       test, refit = how the refit ran; written last, marks the (model, seed) done

A run killed during the refit resumes at the refit: the selection fit is kept when its record holds the stage hash.

Calibration (ctr.calibration, fitted by the report): the refit has no held-out rows -- its validation predictions
would be predictions on its own training data, and a map fitted on them would be fitted on training data. So a refit
(model, seed) is calibrated with the map fitted on its *selection* fit's validation predictions
(`val_predictions.parquet` above; same configs, seed and epoch count, trained on train only) and applied to the
refit's test predictions. The report says so beside the calibrated numbers.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipelines.fit import ConfigText, data_args, fit_one, freeze_configs, fresh_fit_dir, inside
from semid import schema as S
from semid.errors import InputError
from semid.io import stage_done, write_json

REFIT_DIR = "refit"
SELECTION_RECORD = "selection_metrics.json"
SELECTION_PREDICTIONS = "selection_predictions.parquet"
TRAIN_SPLITS = ("train", "val")
CHECKPOINT_NAME = "refit-{epoch}"


def selected_epochs(checkpoint: str | None, seed_dir: Path) -> int:
    """The number of epochs the selection fit's best checkpoint had trained (its epoch + 1; the checkpoint is looked
    up in the seed's own checkpoints folder when the run directory has moved since)."""
    fix = "keep checkpoint.save_top_k >= 1 in the model configs: the refit trains as many epochs as the best one saw"
    found = [
        p
        for p in (
            [Path(checkpoint), seed_dir / S.CHECKPOINTS_DIR / Path(checkpoint).name] if checkpoint else []
        )
        if p.is_file()
    ]
    if not found:
        raise InputError(
            "the selection fit left no best checkpoint to count its epochs",
            file=seed_dir / SELECTION_RECORD,
            fix=fix,
        )
    state = torch.load(found[0], map_location="cpu", weights_only=True)
    return int(state["epoch"]) + 1


def refit_args(epochs: int, out: Path) -> list[str]:
    """The `ctr fit` arguments that turn a selection fit into its refit (after the same configs and inputs): train
    + val rows, exactly `epochs` epochs, no validation, and a checkpoint of the last weights under `out`."""
    return [
        "--data.train_splits", json.dumps(list(TRAIN_SPLITS)),
        "--trainer.max_epochs", str(epochs),
        "--trainer.min_epochs", str(epochs),
        "--trainer.limit_val_batches", "0",
        "--trainer.num_sanity_val_steps", "0",
        "--checkpoint.dirpath", str(out / S.CHECKPOINTS_DIR),
        "--checkpoint.monitor", "null",
        "--checkpoint.save_top_k", "1",
        "--checkpoint.save_last", "false",
        "--checkpoint.filename", CHECKPOINT_NAME,
    ]  # fmt: skip


def refit_one(
    seed: int,
    configs: list[ConfigText],
    prepared: Path,
    semids: Path,
    seed_dir: Path,
    epochs: int,
    extra_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Train the frozen configs from scratch on train + val for `epochs` epochs into `<seed_dir>/refit/`, test the
    last weights and write the test predictions to `<seed_dir>/predictions.parquet` -> how it ran and its test
    metrics."""
    from lightning.pytorch.callbacks import EarlyStopping

    from ctr.predict import predict_split
    from pipelines.console import plain_argv
    from pipelines.train import cli, default_loggers

    out = seed_dir / REFIT_DIR
    args = [
        *freeze_configs(configs, seed_dir),  # the selection fit's frozen texts (rewritten identically)
        *data_args(prepared, semids),
        "--seed_everything", str(seed),
        "--trainer.default_root_dir", str(out),
        "--trainer.logger", json.dumps(default_loggers(str(out / S.LOGS_DIR))),
        *extra_args,
        *refit_args(epochs, out),
    ]  # fmt: skip
    start = time.perf_counter()
    with plain_argv():
        c = cli(args, run=False)
    # no early stopping: the epoch count is the selection's; nothing is validated that could stop it
    c.trainer.callbacks[:] = [cb for cb in c.trainer.callbacks if not isinstance(cb, EarlyStopping)]
    c.trainer.fit(c.model, datamodule=c.datamodule)
    fit_seconds = time.perf_counter() - start
    ran = int(c.trainer.current_epoch)
    if ran != epochs:
        raise InputError(
            f"the refit stopped after {ran} of the {epochs} epochs the selection fit chose",
            fix="remove trainer.max_steps / trainer.max_time from the configs of a run with refit_train_val",
        )
    last = c.trainer.checkpoint_callback.best_model_path
    test = c.trainer.test(c.model, datamodule=c.datamodule, ckpt_path=last, verbose=False)[0]
    predict_split(
        c.trainer, c.model, c.datamodule, split="test", output=seed_dir / S.PREDICTIONS_FILE, ckpt_path=last
    )
    return {
        "test": {k.removeprefix("test/"): float(v) for k, v in test.items()},
        "refit": {
            "train_splits": list(TRAIN_SPLITS),
            "train_rows": len(c.datamodule.dataset("train")),
            "epochs": ran,
            "steps": int(c.trainer.global_step),
            "fit_seconds": fit_seconds,
            "checkpoint": last,
        },
    }


def fit_and_refit(
    name: str,
    seed: int,
    configs: list[ConfigText],
    prepared: Path,
    semids: Path,
    seed_dir: Path,
    run_dir: Path,
    stage_hash: str,
    extra_args: Sequence[str] = (),
) -> dict[str, Any]:
    """The selection fit (kept from an earlier attempt when its record holds `stage_hash`), then the refit, then
    `<seed_dir>/metrics.json` (last: it marks the (model, seed) done) -> that metrics record."""
    record = seed_dir / SELECTION_RECORD
    if stage_done(record, stage_hash) and (seed_dir / SELECTION_PREDICTIONS).is_file():
        selection = json.loads(record.read_text())
        print(f"[fit] {name} seed {seed}: selection fit up to date, refitting", flush=True)
    else:
        fresh_fit_dir(seed_dir, run_dir)
        selection = fit_one(
            name,
            seed,
            configs,
            prepared,
            semids,
            seed_dir,
            stage_hash,
            extra_args,
            record=SELECTION_RECORD,
            predictions=SELECTION_PREDICTIONS,
        )
    epochs = selected_epochs(selection["best_checkpoint"], seed_dir)
    shutil.rmtree(inside(seed_dir / REFIT_DIR, seed_dir), ignore_errors=True)  # a killed earlier refit
    for stale in (S.METRICS_FILE, S.PREDICTIONS_FILE):
        (seed_dir / stale).unlink(missing_ok=True)
    refit = refit_one(seed, configs, prepared, semids, seed_dir, epochs, extra_args)
    metrics = {
        **selection,
        "test": refit["test"],
        "test_selection": selection["test"],
        "best_checkpoint": refit["refit"]["checkpoint"],
        "selection_checkpoint": selection["best_checkpoint"],
        "refit": refit["refit"],
    }
    write_json(metrics, seed_dir / S.METRICS_FILE)  # written last: its presence marks the stage done
    return metrics
