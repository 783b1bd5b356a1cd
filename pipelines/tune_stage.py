"""The tuning stage of `semid run`: every model tuned with the same number of Optuna trials on validation (`ctr tune`,
pipelines/tune.py) before its seeds, skipped when an earlier attempt tuned it from the same inputs; and what one
model's fits and trials read from the optional stages (scenarios, imagine, crossdomain)."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from ctr.module import Monitor
from pipelines.crossdomain_stage import NO_CROSS, CrossInputs
from pipelines.fit import ConfigText, inside, read_config
from pipelines.imagine_stage import ImaginedInput
from pipelines.scenarios import FitInputs
from semid import schema as S
from semid.io import sha256_json, stage_done, write_json, write_text

TUNE_RECORD = "{name}.json"
"""`<run>/tuned/<model>.json`: the tuning stage's fingerprint and result, written last (its presence marks it done)."""


@dataclass(frozen=True)
class TuneStage:
    """How `tune` trials run (their number is `run`'s `tune`, the same for every model)."""

    seed: int = 0
    """Seeds the TPE sampler and every trial's training."""
    monitor: Monitor | None = None
    """What trials are ranked on; None = the common configs' `model.monitor`, else CTRTask's default
    (`ctr.module.DEFAULT_MONITOR`): always the number the fits are selected on, so the report can rank every model
    on it. Set model.monitor in the common config (val/gauc_warm on temporal splits, val/auc on leave-last-out)."""
    max_epochs: int = 20
    """The largest epoch budget a trial may draw (early-stopping patience and min_delta are searched too)."""
    start_from_config: bool = True
    """Trial 1 of every model trains its own configuration (moved into the search space), the rest are TPE's:
    with a small budget no model loses to its untuned self through unlucky draws (`ctr tune --start_from_config`)."""


class ModelInputs(NamedTuple):
    """What one model's fit (or tuning trial) reads from the optional stages (scenarios, imagine, crossdomain)."""

    scenario: FitInputs
    imagined: ImaginedInput
    cross: CrossInputs = NO_CROSS

    def args(self) -> list[str]:
        return [*self.scenario.args(), *self.imagined.args(), *self.cross.args()]

    @property
    def fingerprint(self) -> dict[str, str]:
        """Joins the fit's stage hash; {} without the optional stages, so that hash is what it was before them."""
        return {**self.scenario.fingerprint, **self.imagined.fingerprint, **self.cross.fingerprint}


class Tuning(NamedTuple):
    trials: int
    stage: TuneStage


def tune_monitor(stage: TuneStage, common_cfg: list[ConfigText]) -> str:
    """The number trials are ranked on: the stage's, else what the common configs select fits on
    (`ctr.module.configured_monitor`) -- the number the untuned fits of the run are selected on."""
    from ctr.module import configured_monitor

    return stage.monitor if stage.monitor is not None else configured_monitor(c.parsed for c in common_cfg)


def best_trial(trials_csv: Path) -> dict[str, Any]:
    """The winning row of a `ctr tune` trials table: its value, epochs and searched parameters."""
    import polars as pl

    frame = pl.read_csv(trials_csv).filter((pl.col("state") == "COMPLETE") & pl.col("value").is_not_nan())
    row = frame.sort("value", descending=True).row(0, named=True)
    fixed = {"trial", "state", "value", "epochs", "seconds"}
    return {
        "trial": int(row["trial"]),
        "value": float(row["value"]),
        "epochs": int(row["epochs"]),
        "params": {k: v for k, v in row.items() if k not in fixed and v is not None},
    }


def _path_arg(path: Path | None) -> str | None:
    return None if path is None else str(path)


def tuned_config(
    name: str,
    base: ConfigText,
    common_cfg: list[ConfigText],
    tuning: Tuning,
    prepared: Path,
    semids: Path,
    data_hash: str,
    semid_hash: str,
    out: Path,
    inputs: ModelInputs,
) -> ConfigText:
    """Tune `model` (or reuse the tuning of an earlier attempt with the same inputs) -> its tuned config."""
    from pipelines.tune import TUNED_DIR, tune

    folder = out / TUNED_DIR
    monitor = tune_monitor(tuning.stage, common_cfg)
    stage_hash = sha256_json(
        {
            "data": data_hash,
            "semids": semid_hash,
            "common": [c.parsed for c in common_cfg],
            "model": base.parsed,
            "trials": tuning.trials,
            "seed": tuning.stage.seed,
            "monitor": monitor,
            "max_epochs": tuning.stage.max_epochs,
            "start_from_config": tuning.stage.start_from_config,
            **inputs.fingerprint,
        }
    )
    record = folder / TUNE_RECORD.format(name=name)
    if stage_done(record, stage_hash) and (folder / f"{name}.yaml").is_file():
        print(f"[tune] {name}: up to date", flush=True)
        return read_config(folder / f"{name}.yaml", "tuned model")
    start = time.perf_counter()
    # the frozen texts: the trials train from exactly what was hashed
    frozen = folder / f".{name}.inputs"
    paths = []
    for i, cfg in enumerate([*common_cfg, base]):
        paths.append(frozen / f"{i:02d}_{cfg.path.name}")
        write_text(cfg.text, paths[-1])
    cross = inputs.cross.config()
    if cross:  # `ctr tune` takes no source history / intents argument: a config just before the model's own
        paths.insert(-1, frozen / "crossdomain_inputs.yaml")
        write_text(yaml.safe_dump(cross, sort_keys=False), paths[-2])
    tuned = tune(
        str(paths[-1]),
        str(prepared),
        str(out),
        name=name,
        common=[str(p) for p in paths[:-1]],
        n_trials=tuning.trials,
        seed=tuning.stage.seed,
        monitor=monitor,
        max_epochs=tuning.stage.max_epochs,
        item_sids=str(inputs.cross.item_sids or semids / S.ITEM_SIDS_FILE),
        user_sids=str(semids / S.USER_SIDS_FILE),
        item_content=str(semids / S.ITEM_EMB_FILE),
        user_content=str(semids / S.USER_EMB_FILE),
        scenarios=_path_arg(inputs.scenario.scenarios),
        user_vectors=_path_arg(inputs.scenario.user_vectors),
        scenario_vectors=_path_arg(inputs.scenario.scenario_vectors),
        imagined=_path_arg(inputs.imagined.path),
        start_from_config=tuning.stage.start_from_config,
    )
    shutil.rmtree(inside(frozen, out), ignore_errors=True)
    best = best_trial(folder / f"{name}_trials.csv")
    write_json(
        {
            "stage_hash": stage_hash,
            "model": name,
            "base_config": str(base.path),
            "tuned_config": str(tuned),
            "trials": tuning.trials,
            "tpe_seed": tuning.stage.seed,
            "monitor": monitor,
            "max_epochs": tuning.stage.max_epochs,
            "start_from_config": tuning.stage.start_from_config,
            "best": best,
        },
        record,
    )  # last: its presence marks the tuning of this model done
    seconds = time.perf_counter() - start
    print(
        f"[tune] {name}: best {monitor} {best['value']:.4f} ({tuning.trials} trials) ({seconds:.1f}s)",
        flush=True,
    )
    return read_config(tuned, "tuned model")
