"""`ctr tune`: the same Optuna budget for every model on the validation split, then the best config as a YAML.

    ctr tune --model configs/ctr/deepfm.yaml --data_dir data/ml-1m --out runs/ml-1m \
        --common '[configs/ctr/common/ml-1m.yaml]' --n_trials 20 --seed 0

Each trial trains through the `ctr fit` CLI itself (common configs, the model YAML, then the trial's values as one
more YAML), so the winner is written as exactly the YAML that trial trained with: `<out>/tuned/<name>.yaml`, which
`ctr fit --config <common> --config <out>/tuned/<name>.yaml --data.data_dir ...` accepts, and the table of every
trial, `<out>/tuned/<name>_trials.csv`. The search space is `ctr.tune` (one place for every family).
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import yaml

from ctr.module import MONITOR_KEY, Monitor, configured_monitor
from semid.errors import InputError
from semid.io import write_text

TUNED_DIR = "tuned"


def _read_config(path: str | Path, what: str) -> dict:
    """A YAML mapping; InputError naming the file when it is missing, unreadable or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found", file=path, fix=f"pass an existing {what} YAML")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise InputError(f"{what} is not valid YAML ({err})", file=path, fix="fix the YAML") from None
    if not isinstance(config, dict):
        raise InputError(f"{what} is not a mapping of settings", file=path, fix="fix the YAML")
    return config


def _read_yaml(path: str | Path) -> dict:
    config = _read_config(path, "model config")
    net = config.get("model", {}).get("net") if isinstance(config.get("model"), dict) else None
    if not isinstance(net, dict) or "class_path" not in net:
        raise InputError(
            "the model config names no network (model.net.class_path)",
            file=path,
            column="model.net.class_path",
            fix="pass a model YAML such as configs/ctr/deepfm.yaml",
        )
    return config


def tune(
    model: str,
    data_dir: str,
    out: str,
    *,
    name: str | None = None,
    common: list[str] | None = None,
    n_trials: int = 20,
    seed: int = 0,
    monitor: Monitor | None = None,
    max_epochs: int = 20,
    item_sids: str | None = None,
    user_sids: str | None = None,
    item_content: str | None = None,
    user_content: str | None = None,
    scenarios: str | None = None,
    user_vectors: str | None = None,
    scenario_vectors: str | None = None,
    imagined: str | None = None,
    start_from_config: bool = True,
    verbose: bool = False,
) -> Path:
    """Tune one model on validation and write `<out>/tuned/<name>.yaml` and `<out>/tuned/<name>_trials.csv`.

    Args:
        model: the model YAML to start from (configs/ctr/<model>.yaml); its values are the base, each trial
            overrides the knobs of `ctr.tune` for its network class.
        data_dir: the prepared dataset (`semid prepare` output).
        out: the run folder; the tuned config goes to its `tuned/` folder.
        name: the file name of the tuned config (default: the model YAML's stem).
        common: configs applied first to every trial (trainer and data settings, e.g. configs/ctr/common/*.yaml).
        n_trials: trials per model: give every model the same number.
        seed: seeds the TPE sampler and every trial's training (`seed_everything`).
        monitor: what trials are ranked on (see CTRTask.monitor); default: the `model.monitor` of the common configs
            and the model YAML (the last that sets it), else CTRTask's default -- the number the model's fits are
            selected on (set val/gauc_warm on temporal splits, val/auc where validation GAUC is undefined).
        max_epochs: the largest epoch budget a trial may draw.
        start_from_config: trial 1 trains the model's own configuration (the common configs, the model YAML and
            the defaults, each value moved into its knob's range: `ctr.tune.config_params`), the later trials are
            TPE's. Every model gets the same first trial, so a small budget cannot rank a model below its untuned
            self through unlucky draws of its extra knobs. False: every trial is TPE's.
        item_sids, user_sids, item_content, user_content, scenarios, imagined: passed to the data module
            (`data.*`; imagined: `semid imagine`'s imagined.parquet, for ImaginedDeepFM / ImaginedDIN).
        user_vectors, scenario_vectors: knowledge vector files of a MetaLayers network with source llm /
            prompt_text (`model.net.init_args.*`; semid.knowledge.msr), given to every trial, never written into
            the tuned YAML.
        verbose: show Lightning's console output (default: it goes to `<out>/tuned/<name>.log`).
    """
    import optuna

    from ctr import tune as space
    from pipelines.console import plain_argv, quiet_console
    from pipelines.train import cli

    if n_trials < 1:
        raise InputError(f"n_trials={n_trials}", fix="give --n_trials of at least 1")
    base = _read_yaml(model)
    if monitor is None:
        monitor = configured_monitor([*(_read_config(c, "common config") for c in common or []), base])
    name = name or Path(model).stem
    net = base["model"]["net"]
    knobs = space.knobs_for(net["class_path"], max_epochs, fixed=(net.get("init_args") or {}).keys())
    folder = Path(out) / TUNED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    work = folder / f".{name}.work"
    shutil.rmtree(work, ignore_errors=True)  # our own scratch folder from an interrupted tune
    work.mkdir()
    input_args = ["--data.data_dir", str(data_dir)]
    for key, value in (
        ("item_sids", item_sids),
        ("user_sids", user_sids),
        ("item_content", item_content),
        ("user_content", user_content),
        ("scenarios", scenarios),
        ("imagined", imagined),
    ):
        if value is not None:
            input_args += [f"--data.{key}", str(value)]
    for key, value in (("user_vectors", user_vectors), ("scenario_vectors", scenario_vectors)):
        if value is not None:
            input_args += [f"--model.net.init_args.{key}", str(value)]
    fixed = [
        *input_args,
        "--seed_everything", str(seed),
        "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(work),
        "--checkpoint.save_top_k", "0",
        "--checkpoint.save_last", "false",
        "--checkpoint.monitor", MONITOR_KEY,
        "--early_stopping.monitor", MONITOR_KEY,
    ]  # fmt: skip
    common_args = [arg for c in common or [] for arg in ("--config", str(c))]
    configs: dict[int, dict] = {}

    def objective(trial: optuna.Trial) -> float:
        config = space.trial_config(trial, base, knobs, monitor)
        configs[trial.number] = config
        path = work / f"trial_{trial.number}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        with plain_argv():
            c = cli([*common_args, "--config", str(path), *fixed], run=False)
        pruning = space.PruningCallback(trial)
        c.trainer.callbacks.append(pruning)
        try:
            c.trainer.fit(c.model, datamodule=c.datamodule)
        except InputError as err:
            if "non-finite" not in str(err):
                raise
            trial.set_user_attr("error", str(err))  # a diverged trial (e.g. too high lr) fails alone
            return math.nan
        trial.set_user_attr("epochs", pruning.epochs)
        if pruning.pruned:
            raise optuna.TrialPruned()
        return pruning.best if math.isfinite(pruning.best) else math.nan

    start = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = space.study(seed)
    log = folder / f"{name}.log"
    with quiet_console(log, verbose=verbose):
        if start_from_config:  # the model's own config, resolved by the CLI its trials train through
            with plain_argv():
                resolved = cli([*common_args, "--config", str(model), *fixed], run=False).config
            study.enqueue_trial(space.config_params(knobs, resolved.get))
        for _ in range(n_trials):  # one line per trial on the console
            study.optimize(objective, n_trials=1)
            t = study.trials[-1]
            value = "-" if t.value is None else f"{t.value:.4f}"
            print(f"tune {name}: trial {t.number + 1}/{n_trials} {t.state.name.lower()} {monitor}={value}")
    shutil.rmtree(work, ignore_errors=True)
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not finished:
        raise InputError(
            f"none of the {n_trials} trials of {name} finished (all pruned or diverged)",
            file=log,
            fix="raise --n_trials or --max_epochs, or check the model on `ctr fit` first",
        )
    best = study.best_trial
    trials_csv = folder / f"{name}_trials.csv"
    write_text(space.trials_frame(study).write_csv(), trials_csv)
    header = (
        f"# ctr tune: best of {n_trials} trials (TPE seed {seed}) on validation {monitor}: "
        f"{best.value:.6f} (row trial={best.number} of {trials_csv.name})\n"
    )
    out_yaml = folder / f"{name}.yaml"
    write_text(header + yaml.safe_dump(configs[best.number], sort_keys=False), out_yaml)
    print(
        f"tune {name}: best {monitor}={best.value:.4f} (trial {best.number + 1}/{n_trials}, "
        f"{time.perf_counter() - start:.0f}s) -> {out_yaml}"
    )
    return out_yaml


def main(args: list[str] | None = None) -> None:
    """`ctr tune ...` = `python -m pipelines.tune ...`."""
    from jsonargparse import CLI

    from semid.errors import user_errors

    with user_errors("ctr"):
        CLI(tune, args=args)


if __name__ == "__main__":
    main()
