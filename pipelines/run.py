"""The main job: prepare -> build semantic IDs -> fit/test every configured model for every seed -> report.

Every stage writes its outputs atomically with a fingerprint of its inputs and config; a stage whose output exists
with the same fingerprint is skipped, so a re-run after a crash resumes at the first unfinished (model, seed) and a
changed config re-runs only what depends on it.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from semid import schema as S
from semid.errors import InputError
from semid.io import read_meta, sha256_json, write_json


@dataclass(frozen=True)
class PrepareStage:
    dataset: str | None = "ml-100k"
    interactions: str | None = None
    items: str | None = None
    users: str | None = None
    columns: str | None = None
    """YAML file with the column mapping for your own files."""


@dataclass(frozen=True)
class ModelStage:
    name: str
    config: str
    """A `ctr fit` YAML (configs/ctr/<model>.yaml)."""


def _load_yaml(path: str | Path, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise InputError(
            f"{what} config not found", file=path, fix="check the path (relative to the working directory)"
        )
    return yaml.safe_load(path.read_text()) or {}


def _stage_line(stage: str, message: str, seconds: float) -> None:
    print(f"[{stage}] {message} ({seconds:.1f}s)", flush=True)


def run_prepare(stage: PrepareStage, run_dir: Path, cache: str | None, name: str) -> Path:
    from pipelines.prepare import prepare
    from semid.datasets import Columns

    columns = None
    if stage.columns is not None:
        columns = Columns(**_load_yaml(stage.columns, "column mapping"))
    return prepare(
        dataset=stage.dataset,
        interactions=stage.interactions,
        items=stage.items,
        users=stage.users,
        columns=columns,
        out=str(run_dir / "prepared"),
        cache=cache,
        name=name,
    )


def run_semids(prepared: Path, config: str, run_dir: Path, cache: str | None) -> tuple[Path, str]:
    from pipelines.build_semids import build_from_config

    out = run_dir / "semids"
    return build_from_config(config, data_dir=prepared, out=out, cache=cache)


def _fit_one(
    model: ModelStage, seed: int, common: list[str], prepared: Path, semids: Path, out: Path, stage_hash: str
) -> dict[str, Any]:
    from ctr.module import PredictionWriter
    from pipelines.train import cli, default_loggers

    if out.exists():  # a crashed earlier attempt: start this (model, seed) over, deterministically
        shutil.rmtree(out)
    out.mkdir(parents=True)
    args = [*(a for c in common for a in ("--config", c)), "--config", model.config]
    args += [
        "--data.data_dir", str(prepared),
        "--data.item_sids", str(semids / S.ITEM_SIDS_FILE),
        "--data.user_sids", str(semids / S.USER_SIDS_FILE),
        "--seed_everything", str(seed),
        "--trainer.default_root_dir", str(out),
        "--trainer.logger", json.dumps(default_loggers(str(out / "logs"))),
        "--checkpoint.dirpath", str(out / "checkpoints"),
    ]  # fmt: skip
    start = time.perf_counter()
    c = cli(args, run=False)
    c.trainer.fit(c.model, datamodule=c.datamodule)
    fit_seconds = time.perf_counter() - start
    best = c.trainer.checkpoint_callback.best_model_path or None
    val = c.trainer.validate(c.model, datamodule=c.datamodule, ckpt_path=best, verbose=False)[0]
    test = c.trainer.test(c.model, datamodule=c.datamodule, ckpt_path=best, verbose=False)[0]
    c.trainer.callbacks.append(PredictionWriter(out / S.PREDICTIONS_FILE))
    c.trainer.predict(c.model, datamodule=c.datamodule, ckpt_path=best, return_predictions=False)
    metrics = {
        "model": model.name,
        "seed": seed,
        "stage_hash": stage_hash,
        "val": {k.removeprefix("val/"): float(v) for k, v in val.items()},
        "test": {k.removeprefix("test/"): float(v) for k, v in test.items()},
        "fit_seconds": fit_seconds,
        "epochs": int(c.trainer.current_epoch),
        "best_checkpoint": best,
    }
    write_json(metrics, out / "metrics.json")  # written last: its presence marks the stage done
    return metrics


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
) -> Path:
    """Run the whole chain and write <run_dir>/report/{report.md,report.json,*.png}.

    Args:
        name: run name; the run directory defaults to runs/<name>.
        prepare: the dataset (built-in or your files).
        semids: the `semid build` YAML (encoder, alignment, RQ-VAE, ID settings).
        models: (name, ctr YAML) for every model to fit; names are the report's model names.
        common: ctr YAML files applied before each model's (trainer and data settings shared by all models).
        seeds: every model is fitted and tested once per seed.
        target: the model the report compares with the best baseline (ablations are named <target>_*).
        run_dir: where everything goes (default runs/<name>).
        cache: cache directory for fetched data and embeddings.
        only_models: restrict this invocation to these model names (the report still covers every finished one).
    """
    from ctr.report import build_report

    common, seeds = common or [], seeds if seeds is not None else [0]
    if not models:
        raise InputError("no models to fit", fix="list models (name + config) in the pipeline config")
    for path in [semids, *common, *(m.config for m in models)]:
        _load_yaml(path, "stage")  # fail before any work on a missing file
    out = (Path(run_dir) if run_dir is not None else Path("runs") / name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    total = time.perf_counter()

    prepared = run_prepare(prepare, out, cache, name)  # prints its own summary line
    data_hash = read_meta(prepared / S.ITEMS_FILE)["data_hash"]

    start = time.perf_counter()
    semid_dir, semid_hash = run_semids(prepared, semids, out, cache)
    _stage_line("semids", f"{semid_dir}", time.perf_counter() - start)

    common_cfg = [_load_yaml(c, "common") for c in common]
    for model in models:
        if only_models and model.name not in only_models:
            continue
        model_cfg = _load_yaml(model.config, "model")
        for seed in seeds:
            stage_hash = sha256_json(
                {
                    "data": data_hash,
                    "semids": semid_hash,
                    "common": common_cfg,
                    "model": model_cfg,
                    "seed": seed,
                }
            )
            model_dir = out / "models" / model.name / f"seed{seed}"
            done = model_dir / "metrics.json"
            if done.exists() and json.loads(done.read_text()).get("stage_hash") == stage_hash:
                print(f"[fit] {model.name} seed {seed}: up to date", flush=True)
                continue
            start = time.perf_counter()
            m = _fit_one(model, seed, common, prepared, semid_dir, model_dir, stage_hash)
            _stage_line(
                "fit",
                f"{model.name} seed {seed}: {m['epochs']} epochs, val GAUC {m['val'].get('gauc', float('nan')):.4f}, "
                f"test AUC {m['test'].get('auc', float('nan')):.4f} GAUC {m['test'].get('gauc', float('nan')):.4f}",
                time.perf_counter() - start,
            )

    start = time.perf_counter()
    build_report(out, target=target)
    _stage_line("report", f"{out / 'report' / 'report.md'}", time.perf_counter() - start)
    print(f"[run] {name} done in {time.perf_counter() - total:.0f}s -> {out}", flush=True)
    return out


def main(args: list[str] | None = None) -> None:
    import sys

    from jsonargparse import CLI

    try:
        CLI(run, args=args)
    except InputError as err:
        print(f"run: error: {err}", file=sys.stderr)
        sys.exit(2)
