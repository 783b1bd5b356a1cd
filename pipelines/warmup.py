"""`ctr warmup`: the new-item warm-up protocol (ctr.warmup) on a `semid run` directory whose prepared data holds items
out of train (`split.cold_items`). Every chosen model's fitted seeds are rebuilt from their frozen configs, loaded
from their best checkpoint, scored cold and after each warm-up batch for every K, and the results are written as a
JSON and a Markdown table beside it (`<out>.json`, `<out>.md`; library logs go to `<out>.log`).

    ctr warmup --run_dir runs/ml-1m-coldstart --models deepfm,akt --k 5,10,20 --out runs/ml-1m-coldstart/warmup.json
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import polars as pl
import torch

from ctr.data import CTRDataModule
from ctr.module import CTRTask, as_spec, class_path
from ctr.warmup import (
    SOURCE_SPLITS,
    STAGES,
    Update,
    WarmupPlan,
    WarmupSettings,
    new_item_rows,
    plan_warmup,
    run_warmup,
    select_lr,
)
from pipelines.fit import data_args
from semid import schema as S
from semid.data.config import BucketConfig
from semid.errors import InputError
from semid.io import read_meta, write_json, write_text

DEFAULT_OUT = "warmup.json"
"""<run>/warmup.json (and warmup.md) unless --out says otherwise."""
MIN_GAUC_USERS = 50
"""A GAUC resting on fewer users is marked (as the report marks its cells)."""
STAGE_TITLES = {"cold": "cold", "warm_a": "warm-a", "warm_b": "warm-b", "warm_c": "warm-c"}


def _comma_list(text: str, what: str) -> list[str]:
    items = [part.strip() for part in str(text).strip("[]").split(",") if part.strip()]
    if not items:
        raise InputError(f"--{what} is empty", fix=f"give --{what} as a comma-separated list")
    return items


def fit_args(run_dir: Path) -> list[str]:
    """The data arguments `semid run` gives every fit, for a run directory."""
    return data_args(run_dir / S.PREPARED_DIR, run_dir / S.SEMIDS_DIR)


def best_checkpoint(seed_dir: Path) -> Path:
    """The checkpoint the fit was tested with (metrics.json `best_checkpoint`; looked up in the seed's own
    checkpoints folder when the run directory has moved since)."""
    metrics_file = seed_dir / S.METRICS_FILE
    fix = "re-run `semid run` for this model so that its fit finishes"
    try:
        recorded = json.loads(metrics_file.read_text()).get("best_checkpoint")
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(
            f"cannot read the fit record ({type(err).__name__})", file=metrics_file, fix=fix
        ) from None
    if not recorded:
        raise InputError("the fit recorded no best checkpoint", file=metrics_file, fix=fix)
    for path in (Path(recorded), seed_dir / S.CHECKPOINTS_DIR / Path(recorded).name):
        if path.is_file():
            return path
    raise InputError("the fit's best checkpoint is missing", file=recorded, fix=fix)


SIDE_FILES = ("scenarios", "source_history", "imagined")
"""Data-module files a fit may have been given on its command line beside the run layout (pipelines.fit's
`extra_args`); they are taken from the checkpoint's data-module arguments."""


def load_fit(run_dir: Path, seed_dir: Path) -> tuple[CTRTask, CTRDataModule]:
    """The fitted task (best checkpoint's weights) and its data module, built from the seed's frozen configs and
    the run layout (`fit_args`), plus any SIDE_FILES the checkpoint's data module was given."""
    from pipelines.console import plain_argv
    from pipelines.train import cli

    configs = sorted(p for p in (seed_dir / S.FIT_CONFIG_DIR).glob("*.yaml"))
    if not configs:
        raise InputError(
            "the fit has no frozen configs",
            file=seed_dir / S.FIT_CONFIG_DIR,
            fix="re-fit it with `semid run`",
        )
    checkpoint = best_checkpoint(seed_dir)
    ckpt = torch.load(checkpoint, weights_only=True, map_location="cpu")
    data_hparams = ckpt.get("datamodule_hyper_parameters") or {}
    side = [
        arg
        for key in SIDE_FILES
        if data_hparams.get(key)
        for arg in (f"--data.{key}", str(data_hparams[key]))
    ]
    args = [arg for c in configs for arg in ("--config", str(c))]
    args += [*fit_args(run_dir), *side, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    with plain_argv():
        c = cli(args, run=False)
    task, data = c.model, c.datamodule
    hparams = ckpt.get("hyper_parameters") or {}
    stored = (hparams.get("net") or {}).get("class_path")
    if stored is None or class_path(str(stored)) != task.hparams["net"]["class_path"]:
        raise InputError(
            f"the checkpoint holds a {stored} network, the frozen configs build {task.hparams['net']['class_path']}",
            file=checkpoint,
            fix="re-fit this model with `semid run`",
        )
    if as_spec(hparams.get("spec")) != task.spec:
        raise InputError(
            "the checkpoint was trained on other data than the run's prepared data and IDs (its DataSpec differs)",
            file=checkpoint,
            fix="re-fit this model with `semid run` on this run directory",
        )
    task.check_checkpoint(ckpt, checkpoint)
    task.load_state_dict(ckpt["state_dict"])
    return task, data


def fitted_seeds(run_dir: Path, models: list[str] | None) -> dict[str, dict[int, Path]]:
    """model -> seed -> seed folder with a finished fit (metrics.json), for `models` (default: every model)."""
    from ctr.report.runs import seed_of

    root = run_dir / S.MODELS_DIR
    if models:
        names = models
    else:
        names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    found: dict[str, dict[int, Path]] = {}
    for name in names:
        folder = root / name
        seeds = {
            seed: d
            for d in sorted(folder.iterdir() if folder.is_dir() else [])
            if (seed := seed_of(d.name)) is not None and (d / S.METRICS_FILE).is_file()
        }
        if not seeds:
            raise InputError(
                f"model {name!r} has no finished fit in the run",
                file=folder,
                fix="name a model of the run's pipeline config whose `semid run` fit finished",
            )
        found[name] = seeds
    if not found:
        raise InputError("the run directory has no fitted models", file=root, fix="run `semid run` first")
    return found


def read_plan(run_dir: Path, ks: list[int], min_eval_rows: int) -> tuple[WarmupPlan, BucketConfig]:
    """The protocol's rows for the run's held-out items and the bucket settings the data was prepared with."""
    prepared = run_dir / S.PREPARED_DIR
    items_file = prepared / S.ITEMS_FILE
    if not items_file.is_file():
        raise InputError(
            "not a `semid run` directory (no prepared data)", file=items_file, fix="pass --run_dir"
        )
    meta = read_meta(items_file)
    held_out = meta.get("held_out_items") or []
    if not held_out:
        raise InputError(
            "the run's prepared data holds no items out of train: there are no new items to warm up",
            file=items_file,
            fix="run a cold-start pipeline config (prepare: split: cold_items: 0.1), e.g. "
            "configs/pipeline/ml-1m-coldstart.yaml",
        )
    cfg = BucketConfig(**(meta.get("config") or {}).get("buckets", {}))
    splits = {s: pl.read_parquet(prepared / S.split_file(s)) for s in SOURCE_SPLITS}
    plan = plan_warmup(
        new_item_rows(splits, held_out), ks, held_out=len(held_out), min_eval_rows=min_eval_rows
    )
    if plan.rows.is_empty():
        raise InputError(
            f"none of the {len(held_out)} held-out items has {plan.eval_from + min_eval_rows} val/test rows "
            f"(3 x the largest K, {max(ks)}, plus {min_eval_rows} to score)",
            file=prepared,
            fix="use smaller --k",
        )
    return plan, cfg


def _mean(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "-"
    text = f"{statistics.fmean(finite):.4f}"
    return text + (f" ± {statistics.stdev(finite):.4f}" if len(finite) > 1 else "")


def markdown(result: dict[str, Any]) -> str:
    """The tables of a warm-up result: per metric, one row per (model, K), one column per stage (mean ± std over
    seeds)."""
    p, s = result["protocol"], result["settings"]
    kept = p["kept_items"] + p.get("tune_items", 0)
    lines = [
        "# New-item warm-up (Meta-Embedding / MWUF protocol, ctr/warmup.py)",
        "",
        f"Run `{result['run_dir']}`. Held-out items {p['held_out_items']}; kept {kept} (at least "
        f"{p['eval_from_rank']} + {s['min_eval_rows']} val/test rows)"
        + (
            f", {p['tune_items']} of them choose the warm-up lr, {p['kept_items']} reported"
            if "tune_items" in p
            else ""
        )
        + f"; dropped {p['dropped_items']}. Evaluation "
        f"(fixed for every stage and K): each reported item's rows from rank {p['eval_from_rank']} on, {p['eval_rows']} "
        f"rows, {p['eval_users']} users ({p['eval_gauc_users']} with both labels: GAUC rests on them), positive rate "
        f"{p['eval_positive_rate']:.3f}. Warm-up rows per stage: "
        + ", ".join(f"K={k}: {n}" for k, n in p["warmup_rows_per_stage"].items())
        + ".",
        f"Update: {s['update']}, AdamW lr {'chosen per model (below)' if s.get('lr_grid') else s['lr'] or 'of the fit'}, batch {s['batch_size']}, {s['epochs']} epoch(s) "
        f"per stage, network in eval mode. Values: mean ± std over seeds.",
    ]
    if s.get("lr_grid"):
        runs = [(m, r) for m, seeds in result["models"].items() for r in seeds.values()]
        tune_items = runs[0][1]["tune_items"] if runs else 0
        chosen = "; ".join(
            m + " " + ", ".join(f"{r['lr']:g}" for r in seeds.values())
            for m, seeds in result["models"].items()
        )
        lines.append(
            f"Warm-up lr chosen per model (and seed) from {{{', '.join(f'{v:g}' for v in s['lr_grid'])}}} by the mean "
            f"warm AUC over stages and K on {tune_items} other held-out items (tune share {s['tune_share']}); the "
            f"tables are the remaining items, warmed up with it (ctr.warmup.select_lr). Chosen: {chosen}."
        )
    admitted = sorted(
        m for m, seeds in result["models"].items() if any(r.get("admitted") for r in seeds.values())
    )
    if admitted:
        lines.append(
            "Warm-started rows (`admit`: each new item's row starts at the value its network gave it cold instead "
            "of its random init): " + ", ".join(admitted) + "."
        )
    few = p["eval_gauc_users"] < MIN_GAUC_USERS
    users = p["eval_gauc_users"]
    gauc_title = f"GAUC (on {users} user{'' if users == 1 else 's'} at every stage" + (
        f"; † fewer than {MIN_GAUC_USERS}: read with care)" if few else ")"
    )
    for key, title in (("auc", "AUC"), ("gauc", gauc_title), ("logloss", "Log loss")):
        mark = " †" if key == "gauc" and few else ""
        lines += ["", f"## {title}", "", "| model | seeds | K | " + " | ".join(STAGE_TITLES.values()) + " |"]
        lines.append("|---|---|---|" + "---|" * len(STAGES))
        for model, seeds in result["models"].items():
            runs = list(seeds.values())
            for k in p["ks"]:
                cells = [_mean([r["cold"][key] for r in runs]) + mark]
                cells += [_mean([r["k"][str(k)][stage][key] for r in runs]) + mark for stage in STAGES[1:]]
                lines.append(f"| {model} | {len(runs)} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def warmup(
    run_dir: str,
    models: str | None = None,
    k: str = "5,10,20",
    out: str | None = None,
    update: Update = "new_item_rows",
    lr: float | None = None,
    lr_grid: str | None = None,
    tune_share: float = 0.5,
    batch_size: int = 32,
    epochs: int = 1,
    min_eval_rows: int = 1,
    seed: int = 0,
    admit: bool = True,
    verbose: bool = False,
) -> Path:
    """Run the new-item warm-up protocol on a run directory and write `<out>` (JSON) and its `.md` table.

    Args:
        run_dir: a `semid run` directory whose prepared data holds items out of train (split.cold_items).
        models: comma-separated model names of the run (default: every model with a finished fit); every finished
            seed of each is used.
        k: comma-separated K: interactions each new item reveals per warm-up batch (3 batches).
        out: the JSON file to write (default <run_dir>/warmup.json); the Markdown table goes beside it (.md).
        update: new_item_rows (the papers' rule: only the new items' rows of the item-id tables move) or all.
        lr: the warm-up learning rate (default: the fit's model.lr).
        lr_grid: comma-separated learning rates: each model's warm-up lr is chosen among them on a random
            `tune_share` of the kept items (best mean warm AUC), and the other items, warmed up with it, are
            reported (ctr.warmup.select_lr). Excludes --lr.
        tune_share: share of the kept items that choose the lr (with --lr_grid).
        batch_size: warm-up rows per update step.
        epochs: passes over each warm-up batch.
        min_eval_rows: rows an item must have beyond its 3 x max(K) warm-up rows to be kept.
        seed: seeds the order of the warm-up rows.
        admit: warm-start the new items' rows of a network that can (AKT: its cold-path value f(x) or 0) before
            the first update; false leaves every network's rows at their random init.
        verbose: show library logs on the console too (they always go to <out>.log).
    """
    from pipelines.console import quiet_console

    run = Path(run_dir).resolve()
    try:
        ks = [int(v) for v in _comma_list(k, "k")]
    except ValueError:
        raise InputError(f"--k {k!r} is not a list of whole numbers", fix="give e.g. --k 5,10,20") from None
    json_path = Path(out) if out is not None else run / DEFAULT_OUT
    if json_path.is_dir():
        raise InputError("--out names a folder", file=json_path, fix="pass a file name, e.g. warmup.json")
    settings = WarmupSettings(
        update=update, lr=lr, batch_size=batch_size, epochs=epochs, seed=seed, admit=admit
    )
    if lr_grid is not None and lr is not None:
        raise InputError("--lr and --lr_grid both given", fix="give one learning rate or a grid, not both")
    try:
        grid = [float(v) for v in _comma_list(lr_grid, "lr_grid")] if lr_grid is not None else None
    except ValueError:
        raise InputError(
            f"--lr_grid {lr_grid!r} is not a list of numbers", fix="give e.g. --lr_grid 0.001,0.005"
        ) from None
    plan, cfg = read_plan(run, ks, min_eval_rows)
    full = plan
    if grid is not None:
        _, plan = full.split(tune_share, seed)  # the reported items, as select_lr splits them
    fits = fitted_seeds(run, _comma_list(models, "models") if models is not None else None)
    p = plan.summary()
    if grid is not None:  # the reported items' rows; the rest choose the lr
        p |= {"dropped_items": full.dropped, "tune_items": len(full.items) - len(plan.items)}
    print(
        f"warmup: {p['kept_items']} of {p['held_out_items']} held-out items kept, {p['eval_rows']} evaluation rows, "
        f"{p['eval_users']} users, K = {plan.ks}",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    total = time.perf_counter()
    with quiet_console(json_path.with_suffix(".log"), verbose=verbose):
        for name, seeds in fits.items():
            results[name] = {}
            for s, seed_dir in seeds.items():
                start = time.perf_counter()
                task, data = load_fit(run, seed_dir)
                data.setup()
                if grid is None:
                    res = run_warmup(
                        task,
                        data.tables,
                        plan,
                        cfg,
                        settings,
                        history_len=data.history_len,
                        history_content=data.history_content,
                    )
                else:
                    res = select_lr(
                        task,
                        data.tables,
                        full,
                        cfg,
                        settings,
                        grid,
                        share=tune_share,
                        history_len=data.history_len,
                        history_content=data.history_content,
                    )
                res["seconds"] = time.perf_counter() - start
                results[name][str(s)] = res
                curve = "; ".join(
                    f"K={kk} " + "/".join(f"{res['k'][str(kk)][st]['auc']:.4f}" for st in STAGES[1:])
                    for kk in plan.ks
                )
                print(
                    f"warmup {name} seed {s}: AUC cold {res['cold']['auc']:.4f}, warm-a/b/c {curve}"
                    + (f", lr {res['lr']:g} " if "lr" in res else " ")
                    + f"({res['seconds']:.1f}s)",
                    flush=True,
                )
    result = {
        "run_dir": str(run),
        "protocol": p,
        "settings": {
            "update": update,
            "lr": lr,
            "lr_grid": grid,
            "tune_share": tune_share if grid is not None else None,
            "batch_size": batch_size,
            "epochs": epochs,
            "min_eval_rows": min_eval_rows,
            "seed": seed,
            "admit": admit,
        },
        "models": results,
        "seconds": time.perf_counter() - total,
    }
    write_json(result, json_path)
    write_text(markdown(result), json_path.with_suffix(".md"))
    print(f"wrote {json_path} and {json_path.with_suffix('.md')} ({result['seconds']:.0f}s)", flush=True)
    return json_path


def main(args: list[str] | None = None) -> None:
    """`ctr warmup ...` = `python -m pipelines.warmup ...`. Returns None so a console script exits 0."""
    from jsonargparse import CLI

    from semid.errors import user_errors

    with user_errors("ctr"):
        CLI(warmup, args=args, as_positional=False)


if __name__ == "__main__":
    main()
