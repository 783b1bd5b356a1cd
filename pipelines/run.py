"""The main job: prepare -> build semantic IDs -> [tune every model] -> fit/test every model for every seed -> report.

Every stage writes its outputs atomically with a fingerprint of its inputs and config; a stage whose output exists
with the same fingerprint is skipped (`semid.io.stage_done`), so a re-run after a crash resumes at the first
unfinished (model, seed) and a changed config re-runs only what depends on it. Each config file is read once: its
text is hashed and the very same text is what the fit trains from. The run directory is locked while a run uses it.

With `tune: N` (`semid run --tune N`, off by default) every model is first tuned with the same N Optuna trials on
validation (`ctr tune`, pipelines/tune.py); its seeds are then fitted from the tuned config written to
`<run>/tuned/<model>.yaml`, and the report lists every tuned configuration.

With a `scenarios:` section (pipelines/scenarios.py) a stage after the semantic IDs writes the scenario table and the
LLM4MSR knowledge vectors; every fit and tuning trial then reads the table, and a MetaLayers model its vectors.
With an `imagine:` section (pipelines/imagine_stage.py) `semid imagine` runs once after them, and the models whose
network reads imagined behaviours (ImaginedDeepFM, ImaginedDIN) get its file in every fit and tuning trial.

With a `crossdomain:` section (pipelines/crossdomain_stage.py) RGCD-Rep cross-domain IDs (`semid rgcd`) and AIR
intent paths (`semid intents`) are built once after them; a model entry's `inputs:` (source_history, rgcd_ids,
rgcd_ids_no_routing) say which cross-domain inputs its fits and trials read, and an AIRNet model gets the intents.

With `refit_train_val: true` (pipelines/refit.py) every (model, seed) is fitted as usual for model selection, then
refitted from scratch on train + val for the epochs its best checkpoint had seen; the report reads the refit's test
predictions and the selection fit's validation numbers.

Before the report, every finished (model, seed) without validation predictions (a fit from before they were written)
gets them from its checkpoint (pipelines/calibrate.py), so the report calibrates every model on validation.
"""

from __future__ import annotations

import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.calibrate import backfill_run
from pipelines.crossdomain_stage import (
    CrossDomainStage,
    CrossInput,
    CrossOutputs,
    check_crossdomain,
    cross_inputs,
    rgcd_folders,
    run_crossdomain,
)
from pipelines.fit import ConfigText, inside, read_config
from pipelines.fit_pool import FitTask, run_fits
from pipelines.imagine_stage import (
    ImagineOutputs,
    ImagineStage,
    check_imagined,
    imagined_input,
    run_imagine,
)
from pipelines.scenarios import (
    ScenarioOutputs,
    ScenarioStage,
    check_sources,
    fit_inputs,
    run_scenarios,
)
from pipelines.tune_stage import ModelInputs, TuneStage, Tuning, tuned_config
from semid import data
from semid import schema as S
from semid.errors import InputError
from semid.io import dir_lock, read_meta, sha256_json, stage_done

RUN_LOG = "run.log"
MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class PrepareStage:
    """Every `semid prepare` option; `dataset` defaults to ml-100k only when no `interactions` file is given."""

    dataset: str | None = None
    interactions: str | None = None
    items: str | None = None
    users: str | None = None
    columns: str | None = None
    """YAML file with the column mapping for your own files."""
    label_threshold: float = 4.0
    split: data.SplitConfig = field(default_factory=data.SplitConfig)
    buckets: data.BucketConfig = field(default_factory=data.BucketConfig)
    negatives: data.NegativeConfig = field(default_factory=data.NegativeConfig)
    source: str | None = None
    """The amazon-food-kitchen release folder (dataset: amazon-food-kitchen)."""
    domains: list[str] | None = None
    """dataset amazon-food-kitchen: the domains whose events are CTR rows (default [kitchen]; [food, kitchen] for
    the two-scenario protocol, configs/pipeline/amazon-scenarios.yaml)."""
    force: bool = False

    def resolved_dataset(self) -> str | None:
        if self.dataset is None and self.interactions is None:
            return "ml-100k"
        return self.dataset


@dataclass(frozen=True)
class ModelStage:
    name: str
    """Folder name under <run>/models: letters, digits, '_', '.', '-' only."""
    config: str
    """A `ctr fit` YAML (configs/ctr/<model>.yaml)."""
    inputs: list[CrossInput] = field(default_factory=list)
    """Cross-domain inputs its fits read (pipelines/crossdomain_stage.py): source_history (the prepared Food
    events join the history), rgcd_ids / rgcd_ids_no_routing (the `crossdomain: rgcd:` item IDs replace the
    `semid build` ones). Empty (default): none, and the fit is what it was without them."""


@dataclass(frozen=True)
class ReportStage:
    """What `build_report` is told."""

    floor: str | None = "floor"
    """The trivial model every other one is shown against (ignored when no model has that name)."""
    min_gauc_users: int = 50
    """A GAUC cell resting on fewer users is marked in report.md."""
    baselines: list[str] | None = None
    """Models the target is compared with (default: every model that is not the target, an ablation or the floor)."""


def validate_model_names(models: list[ModelStage], only: list[str] | None) -> None:
    names = [m.name for m in models]
    for name in names:
        if not MODEL_NAME.fullmatch(name) or name in (".", ".."):
            raise InputError(
                f"model name {name!r} is not a plain folder name",
                fix="use only letters, digits, '_', '.' and '-' (no '/', not '.' or '..') in `models: - name:`",
            )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"model names {dupes} are listed twice", fix="give every model its own name")
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise InputError(f"only_models names {unknown} are not in `models`", fix=f"use some of {names}")


def _stage_line(stage: str, message: str, seconds: float) -> None:
    print(f"[{stage}] {message} ({seconds:.1f}s)", flush=True)


def run_prepare(stage: PrepareStage, run_dir: Path, cache: str | None, name: str) -> Path:
    from pipelines.prepare import prepare
    from semid.datasets import Columns

    columns = None
    if stage.columns is not None:
        mapping = read_config(stage.columns, "column mapping").parsed
        try:
            columns = Columns(**mapping)
        except TypeError as err:
            raise InputError(
                f"not a column mapping ({err})",
                file=stage.columns,
                fix="use the fields of semid.datasets.Columns",
            ) from None
    return prepare(
        dataset=stage.resolved_dataset(),
        interactions=stage.interactions,
        items=stage.items,
        users=stage.users,
        columns=columns,
        out=str(run_dir / S.PREPARED_DIR),
        label_threshold=stage.label_threshold,
        split=stage.split,
        buckets=stage.buckets,
        negatives=stage.negatives,
        source=stage.source,
        domains=stage.domains,
        cache=cache,
        force=stage.force,
        name=name,
    )


def run_semids(prepared: Path, config: str, run_dir: Path, cache: str | None) -> tuple[Path, str]:
    from pipelines.build_semids import build_from_config

    return build_from_config(config, data_dir=prepared, out=run_dir / S.SEMIDS_DIR, cache=cache)


def run(
    name: str,
    prepare: PrepareStage = PrepareStage(),
    semids: str = "configs/semid/ml-100k.yaml",
    models: list[ModelStage] | None = None,
    common: list[str] | None = None,
    seeds: list[int] | None = None,
    target: str = "akt",
    run_dir: str | None = None,
    cache: str | None = None,
    only_models: list[str] | None = None,
    verbose: bool = False,
    tune: int = 0,
    tuning: TuneStage = TuneStage(),  # noqa: B008 -- a frozen config dataclass
    report: ReportStage = ReportStage(),
    scenarios: ScenarioStage | None = None,
    imagine: ImagineStage | None = None,
    crossdomain: CrossDomainStage | None = None,
    refit_train_val: bool = False,
    jobs: int = 1,
) -> Path:
    """Run the whole chain and write <run_dir>/report/{report.md,report.json,*.png}.

    Args:
        name: run name; the run directory defaults to runs/<name>.
        prepare: the dataset (built-in or your files) and every `semid prepare` option (split, label threshold,
            buckets); with `interactions` given, `dataset` is not needed.
        semids: the `semid build` YAML (encoder, alignment, RQ-VAE, ID settings).
        models: (name, ctr YAML) for every model to fit; names are the report's model names and folder names.
        common: ctr YAML files applied before each model's (trainer and data settings shared by all models).
        seeds: every model is fitted and tested once per seed.
        target: the model the report compares with the best baseline (ablations are named <target>_*).
        run_dir: where everything goes (default runs/<name>); one run at a time may use it (<run_dir>/.lock).
        cache: cache directory for fetched data and embeddings.
        only_models: restrict this invocation to these model names (the report still covers every finished one).
        verbose: show library logs and warnings on the console too (they always go to <run_dir>/run.log).
        tune: Optuna trials per model on validation before the seeds (0 = off, the default): every model gets
            the same number; its seeds then train from <run_dir>/tuned/<model>.yaml.
        tuning: how the trials run (TPE seed, the monitored number, the largest epoch budget).
        report: what the report is told (floor model, the user count under which a GAUC cell is marked).
        scenarios: multi-scenario CTR (pipelines/scenarios.py): the scenario rule and the knowledge vectors to
            build; every fit then reads `<run_dir>/scenarios.parquet`. None (default): no scenarios.
        imagine: imagined behaviours (pipelines/imagine_stage.py): the `semid imagine` arguments; the stage writes
            `<run_dir>/imagined/` once, and every model whose network reads it (ImaginedDeepFM, ImaginedDIN) gets
            its imagined.parquet. None (default): no stage; such a model is then refused before any work.
        crossdomain: cross-domain inputs (pipelines/crossdomain_stage.py): `rgcd:` (the `semid rgcd` arguments)
            writes `<run_dir>/rgcd/`, `intents:` (the `semid intents` arguments) `<run_dir>/intents/`, each once;
            a model reads the RGCD IDs when its `inputs:` say so, and an AIRNet model gets the intents. None
            (default): no stage; a model asking for one of its inputs is then refused before any work.
        refit_train_val: after each (model, seed)'s normal fit, refit the same configs from scratch on train + val
            for the epochs its best checkpoint had seen, and test that refit (pipelines/refit.py): the report's
            test numbers are the refit's, its validation numbers the first fit's. Off by default.
        jobs: (model, seed) fits run at once, each in its own process with cores / jobs torch threads
            (pipelines/fit_pool.py); 1 (default) = one after another in this process. The results are the same
            fits; only floating-point summation order can differ with the thread count.
    """
    from pipelines.console import quiet_console

    common, seeds = common or [], seeds if seeds is not None else [0]
    if tune < 0:
        raise InputError(f"tune={tune}", fix="give --tune a number of trials per model (0 = no tuning)")
    if jobs < 1:
        raise InputError(
            f"jobs={jobs}", fix="give --jobs a number of fits to run at once (1 = one after another)"
        )
    if not models:
        raise InputError("no models to fit", fix="list models (name + config) in the pipeline config")
    validate_model_names(models, only_models)
    # every config file is read once, before any work: a missing file fails fast, and a mid-run edit cannot be
    # recorded under the fingerprint of the text that was read
    read_config(semids, "semid build")
    common_cfg = [read_config(c, "common") for c in common]
    model_cfg = {m.name: read_config(m.config, "model") for m in models}
    parsed = {n: [*(c.parsed for c in common_cfg), m.parsed] for n, m in model_cfg.items()}
    # the stages' inputs are checked for the models this invocation fits: one left out by --only_models may need a
    # stage input the others do not (a knowledge source, say), and it is checked when it is run
    picked = {n: p for n, p in parsed.items() if not only_models or n in only_models}
    if scenarios is not None:
        check_sources(scenarios, picked)
    check_imagined(imagine, picked)
    wants = {m.name: list(dict.fromkeys(m.inputs)) for m in models}
    picked_wants = {n: w for n, w in wants.items() if n in picked}
    check_crossdomain(crossdomain, prepare.resolved_dataset(), picked_wants, picked)
    out = (Path(run_dir) if run_dir is not None else Path("runs") / name).resolve()
    if out.exists() and not out.is_dir():
        raise InputError("--run_dir names a file, not a folder", file=out, fix="pass a folder for --run_dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(
            f"cannot create the run folder ({err.strerror})",
            file=out,
            fix="choose --run_dir under a writable folder",
        ) from None
    try:
        with dir_lock(out), quiet_console(out / RUN_LOG, verbose=verbose):
            _run_stages(
                name,
                prepare,
                semids,
                models,
                common_cfg,
                model_cfg,
                seeds,
                target,
                out,
                cache,
                only_models,
                Tuning(tune, tuning),
                report,
                scenarios,
                imagine,
                crossdomain,
                wants,
                refit_train_val,
                jobs,
                verbose,
            )
    except SystemExit as err:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(err, SIGTERMException):  # Lightning's: a SystemExit without a code, i.e. exit status 0
            raise SystemExit(128 + signal.SIGTERM) from None
        raise
    return out


def _run_stages(
    name: str,
    prepare: PrepareStage,
    semids: str,
    models: list[ModelStage],
    common_cfg: list[ConfigText],
    model_cfg: dict[str, ConfigText],
    seeds: list[int],
    target: str,
    out: Path,
    cache: str | None,
    only_models: list[str] | None,
    tuning: Tuning,
    report: ReportStage,
    scenarios: ScenarioStage | None = None,
    imagine: ImagineStage | None = None,
    crossdomain: CrossDomainStage | None = None,
    wants: dict[str, list[CrossInput]] | None = None,
    refit_train_val: bool = False,
    jobs: int = 1,
    verbose: bool = False,
) -> None:
    from ctr.report import build_report
    from ctr.report.runs import finished_seeds

    total = time.perf_counter()
    prepared = run_prepare(prepare, out, cache, name)  # prints its own summary line
    data_hash = read_meta(prepared / S.ITEMS_FILE)["data_hash"]

    start = time.perf_counter()
    semid_dir, semid_hash = run_semids(prepared, semids, out, cache)
    _stage_line("semids", f"{semid_dir}", time.perf_counter() - start)
    outputs: ScenarioOutputs | None = None
    if scenarios is not None:
        outputs = run_scenarios(scenarios, prepared, out, cache)  # prints its own lines
    imagined: ImagineOutputs | None = None
    if imagine is not None:
        imagined = run_imagine(imagine, prepared, semid_dir, out)  # prints its own lines
    selected = [m for m in models if not only_models or m.name in only_models]
    wants = {m.name: (wants or {}).get(m.name, []) for m in selected}
    cross: CrossOutputs | None = None
    if crossdomain is not None or any(wants.values()):
        cross = run_crossdomain(  # prints its own lines
            crossdomain,
            prepared,
            semid_dir,
            out,
            rgcd_readers=rgcd_folders(wants),
            source_history=any("source_history" in w for w in wants.values()),
        )

    def inputs(model: ModelStage, cfg: ConfigText) -> ModelInputs:
        parsed = [*(c.parsed for c in common_cfg), cfg.parsed]
        return ModelInputs(
            fit_inputs(outputs, parsed),
            imagined_input(imagined, parsed),
            cross_inputs(cross, wants[model.name], parsed),
        )

    if tuning.trials:
        model_cfg = dict(model_cfg)
        for model in selected:  # every model's trials before any seed: the same budget for all
            model_cfg[model.name] = tuned_config(
                model.name,
                model_cfg[model.name],
                common_cfg,
                tuning,
                prepared,
                semid_dir,
                data_hash,
                semid_hash,
                out,
                inputs(model, model_cfg[model.name]),
            )
    tasks: list[FitTask] = []
    for model in selected:
        configs = [*common_cfg, model_cfg[model.name]]
        extra = inputs(model, model_cfg[model.name])
        for seed in seeds:
            stage_hash = sha256_json(
                {
                    "data": data_hash,
                    "semids": semid_hash,
                    "common": [c.parsed for c in common_cfg],
                    "model": model_cfg[model.name].parsed,
                    "seed": seed,
                    **extra.fingerprint,
                    **({"refit_train_val": True} if refit_train_val else {}),
                }
            )
            model_dir = inside(out / S.MODELS_DIR / model.name / S.seed_dir_name(seed), out / S.MODELS_DIR)
            if stage_done(model_dir / S.METRICS_FILE, stage_hash):
                print(f"[fit] {model.name} seed {seed}: up to date", flush=True)
                continue
            tasks.append(
                FitTask(
                    model.name,
                    seed,
                    tuple(configs),
                    prepared,
                    semid_dir,
                    model_dir,
                    out,
                    stage_hash,
                    tuple(extra.args()),
                    refit_train_val,
                )
            )

    def fitted(task: FitTask, m: dict, seconds: float) -> None:
        refit = f", refit on train+val {m['refit']['epochs']} epochs" if task.refit_train_val else ""
        _stage_line(
            "fit",
            f"{task.name} seed {task.seed}: {m['epochs']} epochs{refit}, "
            f"val GAUC {m['val'].get('gauc', float('nan')):.4f}, "
            f"test AUC {m['test'].get('auc', float('nan')):.4f} GAUC {m['test'].get('gauc', float('nan')):.4f}",
            seconds,
        )

    run_fits(tasks, jobs=jobs, log_file=out / RUN_LOG, verbose=verbose, done=fitted)
    backfill_run(out)  # fits finished before validation predictions were written: calibrated without a re-fit

    start = time.perf_counter()
    # the target is not fitted yet: left out by --only_models or by a config that lists only other models (a later
    # invocation fits it; a config may also leave out a target an earlier invocation fitted in this folder)
    if not finished_seeds(out / S.MODELS_DIR / target):
        _stage_line(
            "report",
            f"skipped: the target {target!r} has no finished fit in this run yet (fit it too, e.g. with --only_models "
            f"'[{target}]', or set --target to a fitted model; `ctr report {out}` then writes the report)",
            0.0,
        )
        print(f"[run] {name} done in {time.perf_counter() - total:.0f}s -> {out}", flush=True)
        return
    build_report(
        out,
        target=target,
        baselines=report.baselines,
        floor=report.floor,
        min_gauc_users=report.min_gauc_users,
    )
    _stage_line("report", f"{out / S.REPORT_DIR / 'report.md'}", time.perf_counter() - start)
    print(f"[run] {name} done in {time.perf_counter() - total:.0f}s -> {out}", flush=True)


def main(args: list[str] | None = None) -> None:
    """`python -m pipelines.run ...` = `semid run ...` (without `--debug`)."""
    from jsonargparse import CLI

    from pipelines.console import plain_argv
    from semid.errors import user_errors

    with user_errors("semid"), plain_argv():
        CLI(run, args=args)


if __name__ == "__main__":
    main()
