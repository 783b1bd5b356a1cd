"""Back-fill of validation predictions for (model, seed) fits that finished before `semid run` wrote them, so that the
report can calibrate every model (ctr.calibration): the fit's checkpoint predicts the validation split, no training.

`semid run` calls `backfill_run` before its report; stage fingerprints are untouched, so no fit re-runs. For a run
directory on its own (the same, then the report rebuilt with the settings of its current report.json):

    python -m pipelines.calibrate RUN_DIR
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

from semid import schema as S
from semid.errors import InputError

FIX = "re-fit it with `semid run` (delete its seed folder first); until then the report shows it uncalibrated"


def calibration_checkpoint(seed_dir: Path, metrics: dict) -> Path:
    """The checkpoint whose validation predictions calibrate a finished fit: its best one (metrics.json
    `best_checkpoint`), or for a refit its selection fit's (`selection_checkpoint`: the refit trained on val,
    pipelines/refit.py); looked up in the seed's own checkpoints folder when the run directory has moved since."""
    key = "selection_checkpoint" if "refit" in metrics else "best_checkpoint"
    recorded = metrics.get(key)
    if not recorded:
        raise InputError(f"the fit recorded no {key}", file=seed_dir / S.METRICS_FILE, fix=FIX)
    for path in (Path(recorded), seed_dir / S.CHECKPOINTS_DIR / Path(recorded).name):
        if path.is_file():
            return path
    raise InputError("the fit's checkpoint is missing", file=recorded, fix=FIX)


def backfill_val_predictions(seed_dir: Path) -> Path:
    """Write `<seed_dir>/val_predictions.parquet` (atomically, semid.schema.PREDICTIONS) from the checkpoint of a
    finished fit -> its path; nothing else in the folder is written.

    The network and the data module are rebuilt from the checkpoint's own hyper-parameters, i.e. exactly the
    network arguments and data files the fit was given, side inputs (scenario table, imagined behaviours, RGCD IDs,
    knowledge vectors, intents) included, which the frozen configs in `<seed>/config/` alone do not name. No trainer
    setting of those configs changes a prediction (none sets a precision). InputError when the fit is unfinished, its
    checkpoint is gone, or the data it read no longer matches it."""
    import lightning as L
    import torch

    from ctr.data import CTRDataModule
    from ctr.module import CTRTask, as_spec
    from ctr.predict import predict_split
    from ctr.report.runs import read_metrics_json

    metrics = read_metrics_json(seed_dir / S.METRICS_FILE)
    if metrics is None:
        raise InputError("the fit has not finished (no metrics.json)", file=seed_dir, fix=FIX)
    checkpoint = calibration_checkpoint(seed_dir, metrics)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    data_args = {
        k: v for k, v in (ckpt.get("datamodule_hyper_parameters") or {}).items() if not k.startswith("_")
    }
    if not data_args:
        raise InputError(
            "the checkpoint does not record the data module it was trained with", file=checkpoint, fix=FIX
        )
    data = CTRDataModule(**data_args)
    if as_spec((ckpt.get("hyper_parameters") or {}).get("spec")) != data.spec:
        raise InputError(
            "the data the fit read has changed since (its DataSpec differs from the checkpoint's)",
            file=checkpoint,
            fix=FIX,
        )
    task = CTRTask.load_from_checkpoint(checkpoint, map_location="cpu")
    trainer = L.Trainer(
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=seed_dir,
    )
    out = seed_dir / S.VAL_PREDICTIONS_FILE
    # the weights are all it needs of the checkpoint, not its training callbacks: Lightning's warning means nothing
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`")
        predict_split(trainer, task, data, split="val", output=out, ckpt_path=str(checkpoint))
    return out


def backfill_run(run_dir: Path) -> list[Path]:
    """Every finished (model, seed) of a run (metrics.json and test predictions written) without validation
    predictions gets them -> the seed folders back-filled. One that cannot be (say its checkpoint was deleted) gets
    one line saying why, and stays uncalibrated in the report."""
    from ctr.report.runs import seed_of

    models = Path(run_dir) / S.MODELS_DIR
    todo = [
        seed_dir
        for model_dir in sorted(models.iterdir() if models.is_dir() else [])
        if model_dir.is_dir()
        for seed_dir in sorted(model_dir.iterdir())
        if seed_of(seed_dir.name) is not None
        and (seed_dir / S.METRICS_FILE).is_file()
        and (seed_dir / S.PREDICTIONS_FILE).is_file()
        and not (seed_dir / S.VAL_PREDICTIONS_FILE).is_file()
    ]
    done = []
    for seed_dir in todo:
        start, what = time.perf_counter(), f"{seed_dir.parent.name} {seed_dir.name}"
        try:
            backfill_val_predictions(seed_dir)
        except InputError as err:
            print(f"[calibrate] {what}: not calibrated ({err.problem}; fix: {err.fix})", flush=True)
            continue
        done.append(seed_dir)
        print(
            f"[calibrate] {what}: validation predictions from its checkpoint "
            f"({time.perf_counter() - start:.1f}s)",
            flush=True,
        )
    return done


def calibrate_run(run_dir: str, report: bool = True) -> None:
    """Back-fill the validation predictions of a finished run directory (under its lock), then, with `report`,
    rebuild `<run_dir>/report/` with the target, baselines, floor and GAUC-user mark of its current report.json, so
    that only the calibrated numbers are new.

    Args:
        run_dir: a `semid run` directory.
        report: rebuild the report afterwards (it must already have one).
    """
    from ctr.report import build_report
    from semid.io import dir_lock

    run = Path(run_dir)
    if not (run / S.MODELS_DIR).is_dir():
        raise InputError(
            "not a `semid run` directory (it has no models/ folder)",
            file=run,
            fix="pass the --run_dir of a finished `semid run`",
        )
    previous = run / S.REPORT_DIR / "report.json"
    if report and not previous.is_file():
        raise InputError(
            "the run has no report.json to take the report settings from",
            file=previous,
            fix="pass --report false and run `ctr report RUN_DIR --target ...` yourself",
        )
    with dir_lock(run):
        backfill_run(run)
        if not report:
            return
        settings = json.loads(previous.read_text())
        floor = settings.get("floor") or {}
        build_report(
            run,
            target=settings["target"],
            baselines=settings.get("baselines"),
            floor=floor.get("model"),
            min_gauc_users=settings.get("min_gauc_users", 50),
        )
    print(f"[calibrate] {run / S.REPORT_DIR / 'report.md'}", flush=True)


def main(args: list[str] | None = None) -> None:
    """`python -m pipelines.calibrate RUN_DIR [--report true]`."""
    from jsonargparse import CLI

    from semid.errors import user_errors

    with user_errors("calibrate"):
        CLI(calibrate_run, args=args)


if __name__ == "__main__":
    main()
