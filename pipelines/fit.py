"""The fit stage of `semid run`: one (model, seed) fitted, validated, tested and predicted in its own folder, from
exactly the config texts the stage fingerprint hashed (frozen into `<seed>/config/`); metrics.json is written last
and marks the stage done. With `refit_train_val`, pipelines/refit.py runs this fit under other file names and then
the refit on train + val."""

from __future__ import annotations

import importlib
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from semid import schema as S
from semid.errors import InputError
from semid.io import check_output_dir, write_json, write_text

FIT_COMMAND = "semid run fit"
FIT_LEGACY = (S.METRICS_FILE, S.PREDICTIONS_FILE, S.CHECKPOINTS_DIR, S.LOGS_DIR, S.FIT_CONFIG_DIR)
"""What a (model, seed) folder written before the output marker existed holds."""


class ConfigText(NamedTuple):
    """One config file as read once: its path, exact text and parsed content."""

    path: Path
    text: str
    parsed: Any


def read_config(path: str | Path, what: str) -> ConfigText:
    """Read a YAML config once (InputError naming the file when it is missing, a folder or not YAML)."""
    path = Path(path)
    fix = "check the path (relative to the working directory)"
    if not path.exists():
        raise InputError(f"{what} config not found", file=path, fix=fix)
    if not path.is_file():
        raise InputError(f"{what} config is a folder, not a YAML file", file=path, fix=fix)
    text = path.read_text()
    try:
        parsed = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise InputError(
            f"{what} config is not valid YAML ({err})", file=path, fix="fix the YAML syntax"
        ) from None
    return ConfigText(path, text, parsed)


def inside(path: Path, root: Path) -> Path:
    """`path` resolved, after checking it lies strictly inside `root` (a guard before anything is removed)."""
    resolved, root = path.resolve(), root.resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise RuntimeError(f"refusing to touch {resolved}: not inside the run directory {root}")
    return resolved


def fresh_fit_dir(out: Path, run_dir: Path) -> None:
    """Empty the (model, seed) folder for a new attempt: only a folder of ours, only inside the run dir."""
    inside(out, run_dir / S.MODELS_DIR)
    if out.exists():  # a crashed earlier attempt or an outdated result: start this (model, seed) over
        check_output_dir(out, FIT_COMMAND, option="the model folder", legacy=FIT_LEGACY)
        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_json({"command": FIT_COMMAND, "version": 1}, out / S.OUTPUT_MARKER)


# CTRDataModule argument -> the `semid build` output file in semids/ it reads (IDs, aligned content vectors)
SEMIDS_DATA = {
    "item_sids": S.ITEM_SIDS_FILE,
    "user_sids": S.USER_SIDS_FILE,
    "item_content": S.ITEM_EMB_FILE,
    "user_content": S.USER_EMB_FILE,
}


def data_args(prepared: Path, semids: Path) -> list[str]:
    """The data arguments every fit of a run gets: the prepared data and the `semid build` outputs (IDs, and the
    aligned content vectors that content models read)."""
    args = ["--data.data_dir", str(prepared)]
    for key, name in SEMIDS_DATA.items():
        args += [f"--data.{key}", str(semids / name)]
    return args


def freeze_configs(configs: list[ConfigText], out: Path) -> list[str]:
    """Write the config texts hashed into a fit's stage hash into `<out>/config/` -> their `--config` arguments, in
    the order they apply."""
    args: list[str] = []
    for i, cfg in enumerate(configs):
        frozen = out / S.FIT_CONFIG_DIR / (f"{i:02d}_{cfg.path.name}")
        write_text(cfg.text, frozen)
        args += ["--config", str(frozen)]
    return args


def fit_one(
    name: str,
    seed: int,
    configs: list[ConfigText],
    prepared: Path,
    semids: Path,
    out: Path,
    stage_hash: str,
    extra_args: Sequence[str] = (),
    *,
    record: str = S.METRICS_FILE,
    predictions: str = S.PREDICTIONS_FILE,
) -> dict[str, Any]:
    """Fit, validate, test and predict one (model, seed) from exactly the config texts that were hashed.
    `extra_args`: more `ctr fit` arguments, last (the scenario table and knowledge vectors of pipelines/scenarios.py,
    the imagined behaviours of pipelines/imagine_stage.py; their contents are in `stage_hash`). `record` and
    `predictions`: the names of the metrics JSON (written last) and the test predictions file in `out` (a refit run
    names this first fit's files apart: pipelines/refit.py). The best checkpoint predicts the validation split too,
    into `<out>/val_predictions.parquet` (semid.schema.VAL_PREDICTIONS_FILE, under that name in a refit run as well):
    the report's calibration is fitted on it."""
    from ctr.predict import predict_split
    from pipelines.console import plain_argv
    from pipelines.train import cli, default_loggers

    args = [
        *freeze_configs(configs, out),  # the texts hashed into stage_hash, frozen into the model folder
        *data_args(prepared, semids),
        "--seed_everything", str(seed),
        "--trainer.default_root_dir", str(out),
        "--trainer.logger", json.dumps(default_loggers(str(out / S.LOGS_DIR))),
        "--checkpoint.dirpath", str(out / S.CHECKPOINTS_DIR),
        *extra_args,
    ]  # fmt: skip
    start = time.perf_counter()
    with plain_argv():
        c = cli(args, run=False)
    c.trainer.fit(c.model, datamodule=c.datamodule)
    fit_seconds = time.perf_counter() - start
    budget = budget_record(c.trainer)  # before validate / test touch the trainer's state
    best = c.trainer.checkpoint_callback.best_model_path or None
    val = c.trainer.validate(c.model, datamodule=c.datamodule, ckpt_path=best, verbose=False)[0]
    test = c.trainer.test(c.model, datamodule=c.datamodule, ckpt_path=best, verbose=False)[0]
    for split, path in (("test", out / predictions), ("val", out / S.VAL_PREDICTIONS_FILE)):
        predict_split(c.trainer, c.model, c.datamodule, split=split, output=path, ckpt_path=best)
    metrics = {
        "model": name,
        "seed": seed,
        "stage_hash": stage_hash,
        "val": {k.removeprefix("val/"): float(v) for k, v in val.items()},
        "test": {k.removeprefix("test/"): float(v) for k, v in test.items()},
        "fit_seconds": fit_seconds,
        "epochs": int(c.trainer.current_epoch),
        "best_checkpoint": best,
        **budget,
    }
    write_json(metrics, out / record)  # written last: its presence marks the stage done
    return metrics


def budget_record(trainer: Any) -> dict[str, Any]:
    """How the fit ended, for the report's under-training check: `max_epochs` (the epoch budget) and
    `epochs_since_best` (epochs after the monitor's last improvement by early stopping's min_delta; 0 = the last epoch
    was the best; None without early stopping). A fit that used its whole budget with `epochs_since_best == 0` was
    still improving when it was cut off."""
    stopper = trainer.early_stopping_callback
    return {
        "max_epochs": trainer.max_epochs,
        "epochs_since_best": int(stopper.wait_count) if stopper is not None else None,
    }


def net_class(configs: Sequence[Any]) -> str | None:
    """The network class path a fit from these parsed `ctr fit` configs (applied in order) builds: the last
    `model.net.class_path` they set (in its defining module's spelling), None when none sets one."""
    from ctr.module import class_path

    found: str | None = None
    for cfg in configs:
        model = cfg.get("model") if isinstance(cfg, Mapping) else None
        net = model.get("net") if isinstance(model, Mapping) else None
        if isinstance(net, Mapping) and net.get("class_path"):
            found = class_path(str(net["class_path"]))
    return found


def net_is(configs: Sequence[Any], *bases: type) -> bool:
    """Whether the network these parsed configs build is one of `bases` or a subclass (False for an unknown class:
    the fit itself reports it)."""
    path = net_class(configs)
    if path is None:
        return False
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, bases)
