"""The long-tail benchmark of issue 13: every protocol through `semid run --tune N`, summarised in benchmarks/LONGTAIL.md.

    python -m benchmarks.longtail                                  # ml-1m, ml-1m-coldstart, amazon-kitchen
    python -m benchmarks.longtail --trials 20 --seeds 0,1,2 --protocols ml-1m,amazon-kitchen
    python -m benchmarks.longtail --protocols ml-100k --trials 1 --seeds 0 --models floor,deepfm,akt   # smoke
    python -m benchmarks.longtail --protocols ml-1m-coldstart --tuned_from ml-1m   # ml-1m's tuned configs, no tuning
    python -m benchmarks.longtail --protocols ml-1m,ml-1m-coldstart,amazon-kitchen --tuned_from ml-1m-coldstart=ml-1m
                                                    # all three in one table; cold start from ml-1m's tuned configs

A protocol is a pipeline config, configs/pipeline/<protocol>.yaml. Each runs as one `semid run` (a subprocess, so a
failed protocol does not stop the others) into <runs>/<protocol>: prepare -> semantic IDs -> every model tuned
with the same number of Optuna trials on validation -> the seeds of each tuned config -> report. Re-running resumes:
finished stages are skipped (the wall time then says so). The table is computed from the predictions themselves:
AUC / GAUC / logloss overall and per bucket under both tail definitions -- the percentile buckets (head 20% /
torso 30% / tail by train count rank) and AKT-Rec's absolute ones (item tail < 10 train interactions, user tail
< 5; a sample is tail when either side is) -- with the users each GAUC rests on, the floor verdict and the tuned
configuration of every model. Log loss is shown raw and calibrated: each (model, seed)'s own Platt map, fitted on its
validation predictions (ctr.calibration, as `ctr report` does), applied to its test predictions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = ("ml-1m", "ml-1m-coldstart", "amazon-kitchen")
DEFINITIONS = ("percentile", "absolute")
SIDES = ("item", "user", "sample")
"""Bucket sides: the item's, the user's, and (absolute definition only) the sample's: cold if either side is cold,
else tail if either side is tail (AKT-Rec), else head."""
MIN_USERS = 50
BUCKET_ORDER = ("head", "torso", "tail", "cold")
TITLE = "# Long-tail benchmark (issue 13)"  # first line of --out: only such a file is replaced
TRANSFER_HEADER = (
    "# written by benchmarks.longtail --tuned_from"  # first line of a transferred pipeline config
)


@dataclass(frozen=True)
class Options:
    protocols: tuple[str, ...] = PROTOCOLS
    trials: int = 20
    seeds: tuple[int, ...] = (0, 1, 2)
    models: tuple[str, ...] | None = None
    """Restrict every protocol to these model names (default: every model of its config)."""
    max_epochs: int | None = None
    """The largest epoch budget a trial may draw (default: `semid run`'s)."""
    runs: Path = ROOT / "runs" / "longtail"
    configs: Path = ROOT / "configs" / "pipeline"
    out: Path = ROOT / "benchmarks" / "LONGTAIL.md"
    jobs: int = 1
    """`semid run --jobs`: the seeds' fits run this many at once (tuning trials always run one after another)."""
    tuned_from: str | None = None
    """Skip tuning: every model trains from the config tuned for it on this protocol's validation
    (<runs>/<tuned_from>/tuned/<model>.yaml, from an earlier run of this benchmark), the same budget for all. Or,
    per protocol, "P=SOURCE[,P2=SOURCE2]": only P trains from SOURCE's tuned configs; SOURCE may be an earlier
    protocol of the same invocation (see `source`)."""


class ProtocolRun(NamedTuple):
    protocol: str
    run_dir: Path
    seconds: float
    returncode: int
    command: list[str]


class Cell(NamedTuple):
    """One metric cell over seeds: mean and std of AUC / GAUC / logloss / calibrated logloss, rows, and the fewest
    GAUC users."""

    auc: tuple[float, float]
    gauc: tuple[float, float]
    logloss: tuple[float, float]
    logloss_cal: tuple[float, float]
    n: int
    users: int


def protocol_models(protocol: str, opts: Options) -> list[str]:
    """`--models` restricted to the models this protocol's config lists (the protocols list different ablations),
    in the given order; a name no protocol lists is an error."""
    assert opts.models
    listed = [m["name"] for m in yaml.safe_load((opts.configs / f"{protocol}.yaml").read_text())["models"]]
    return [m for m in opts.models if m in listed]


def sources(tuned_from: str | None, protocols: Sequence[str]) -> dict[str, str]:
    """`--tuned_from` -> {protocol: the protocol whose tuned configs it trains from}: a bare name applies to every
    protocol; "P=SOURCE,..." to the named ones only."""
    if not tuned_from:
        return {}
    if "=" not in tuned_from:
        return dict.fromkeys(protocols, tuned_from)
    pairs = [part.split("=", 1) for part in tuned_from.split(",") if part.strip()]
    if any(len(pair) != 2 or not all(x.strip() for x in pair) for pair in pairs):
        raise ValueError(f"--tuned_from {tuned_from!r}: give SOURCE or P=SOURCE[,P2=SOURCE2]")
    return {target.strip(): src.strip() for target, src in pairs}


def source(protocol: str, opts: Options) -> str | None:
    """The protocol whose tuned configs `protocol` trains from (no tuning of its own), or None: it is tuned."""
    return sources(opts.tuned_from, opts.protocols).get(protocol)


def transferred_config_path(protocol: str, opts: Options) -> Path:
    return opts.runs / f"{protocol}.tuned-from-{source(protocol, opts)}.yaml"


def transferred_config(protocol: str, opts: Options) -> dict[str, Any]:
    """The protocol's pipeline config with every (selected) model's YAML replaced by the one tuned for it on
    its source protocol (`source`); SystemExit naming the missing files when a model was not tuned there."""
    cfg = yaml.safe_load((opts.configs / f"{protocol}.yaml").read_text())
    origin = source(protocol, opts)
    tuned = opts.runs / str(origin) / "tuned"
    models = [m for m in cfg["models"] if not opts.models or m["name"] in opts.models]
    missing = [
        str(tuned / f"{m['name']}.yaml") for m in models if not (tuned / f"{m['name']}.yaml").is_file()
    ]
    if missing:
        raise SystemExit(
            f"--tuned_from {opts.tuned_from}: no tuned config {missing}; run that protocol first "
            f"(python -m benchmarks.longtail --protocols {origin} --runs {opts.runs} ...)"
        )
    cfg["models"] = [
        {"name": m["name"], "config": str((tuned / f"{m['name']}.yaml").resolve())} for m in models
    ]
    return cfg


def command(protocol: str, opts: Options) -> list[str]:
    """The `semid run` command line of one protocol (with `tuned_from`: of its transferred config, no tuning)."""
    tuned_here = source(protocol, opts) is None
    config = opts.configs / f"{protocol}.yaml" if tuned_here else transferred_config_path(protocol, opts)
    cmd = [
        sys.executable, "-m", "pipelines.semid_cli", "run",
        "--config", str(config),
        "--run_dir", str(opts.runs / protocol),
        "--seeds", json.dumps(list(opts.seeds)),
    ]  # fmt: skip
    if tuned_here:
        cmd += ["--tune", str(opts.trials)]
    if opts.models:
        cmd += ["--only_models", json.dumps(protocol_models(protocol, opts))]
    if opts.max_epochs is not None and tuned_here:
        cmd += ["--tuning.max_epochs", str(opts.max_epochs)]
    if opts.jobs != 1:
        cmd += ["--jobs", str(opts.jobs)]
    return cmd


def run_protocol(protocol: str, opts: Options) -> ProtocolRun:
    cmd = command(protocol, opts)
    print(f"[longtail] {protocol}: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    rc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False).returncode
    seconds = time.perf_counter() - start
    print(f"[longtail] {protocol}: exit {rc} after {seconds:.0f}s", flush=True)
    return ProtocolRun(protocol, opts.runs / protocol, seconds, rc, cmd)


# -- scoring -------------------------------------------------------------------------------------------------------


def _buckets(run_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(item_id, item_abs), (user_id, user_abs): the absolute buckets the prepared data recorded."""
    from semid import schema as S
    from semid.data import ABS_BUCKET

    prepared = run_dir / S.PREPARED_DIR
    items = pl.read_parquet(prepared / S.ITEMS_FILE, columns=[S.ITEM, ABS_BUCKET])
    users = pl.read_parquet(prepared / S.USERS_FILE, columns=[S.USER, ABS_BUCKET])
    return items.rename({ABS_BUCKET: "item_abs"}), users.rename({ABS_BUCKET: "user_abs"})


def with_abs_buckets(pred: pl.DataFrame, items: pl.DataFrame, users: pl.DataFrame) -> pl.DataFrame:
    """Predictions + item_abs, user_abs and sample_abs (cold if either side is cold, else tail if either is)."""
    from semid import schema as S

    frame = pred.join(items, on=S.ITEM, how="left").join(users, on=S.USER, how="left")
    either = pl.lit("head")
    for level in ("tail", "cold"):  # the later, stronger level wins
        either = (
            pl.when((pl.col("item_abs") == level) | (pl.col("user_abs") == level))
            .then(pl.lit(level))
            .otherwise(either)
        )
    return frame.with_columns(either.alias("sample_abs"))


def bucket_column(definition: str, side: str) -> str | None:
    from semid import schema as S

    if definition == "percentile":
        return {"item": S.ITEM_BUCKET, "user": S.USER_BUCKET}.get(side)
    return f"{side}_abs"


def bucket_names(definition: str) -> tuple[str, ...]:
    from semid import schema as S
    from semid.data import ABS_BUCKETS

    return S.BUCKETS if definition == "percentile" else ABS_BUCKETS


SCORE_CAL = "score_cal"
"""The calibrated probability of a prediction row (NaN for a seed without validation predictions)."""


def with_calibrated(pred: pl.DataFrame, val: pl.DataFrame | None) -> pl.DataFrame:
    """Predictions + SCORE_CAL: the scores through the seed's Platt map, fitted on its validation predictions `val`
    (ctr.report.stats.platt_of, as the report fits it); NaN when there is no map."""
    from ctr.report.stats import platt_of
    from semid import schema as S

    platt = platt_of(val)
    if platt is None:
        return pred.with_columns(pl.lit(math.nan, dtype=pl.Float64).alias(SCORE_CAL))
    scores = torch.tensor(pred[S.SCORE].to_numpy())  # (n,)
    return pred.with_columns(pl.Series(SCORE_CAL, platt.apply(scores).numpy()))


def score(frame: pl.DataFrame) -> dict[str, float]:
    """AUC, GAUC (groups = users), logloss (raw, and of SCORE_CAL when the frame has it), rows and GAUC users of one
    prediction frame (ctr.metrics)."""
    from ctr import metrics
    from semid import schema as S

    p = torch.tensor(frame[S.SCORE].to_numpy(), dtype=torch.float32)  # (n,)
    y = torch.tensor(frame[S.LABEL].to_numpy(), dtype=torch.float32)  # (n,)
    u = torch.tensor(frame[S.USER].to_numpy(), dtype=torch.long)  # (n,)
    nan = math.nan
    if p.numel() == 0:
        return {"auc": nan, "gauc": nan, "logloss": nan, "logloss_cal": nan, "n": 0, "users": 0}
    parts = metrics.user_auc(p, y, u)
    cal = torch.tensor(frame[SCORE_CAL].to_numpy()) if SCORE_CAL in frame.columns else None  # (n,)
    return {
        "auc": metrics.auc(p, y),
        "gauc": float(metrics.gauc_from_users(parts.auc, parts.n)),
        "logloss": metrics.logloss(p, y),
        "logloss_cal": nan if cal is None or bool(cal.isnan().any()) else metrics.logloss(cal, y),
        "n": int(p.numel()),
        "users": int(torch.isfinite(parts.auc).sum()),
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else math.nan
    return mean, std


def fold(scores: list[dict[str, float]]) -> Cell:
    return Cell(
        *(_mean_std([s[k] for s in scores]) for k in ("auc", "gauc", "logloss", "logloss_cal")),
        n=scores[0]["n"],
        users=min(s["users"] for s in scores),
    )


def summarise(run_dir: Path) -> dict[str, dict[str, Cell]]:
    """model -> {"overall" | "<definition>/<side>/<bucket>": Cell over seeds}, from every seed's predictions."""
    from ctr.report.runs import discover, read_val_predictions
    from semid import schema as S

    items, users = _buckets(run_dir)
    torch.set_num_threads(1)  # memory-bound sorts: faster single-threaded on a busy machine
    out: dict[str, dict[str, Cell]] = {}
    for model, seeds in discover(run_dir).items():
        frames = [
            with_calibrated(
                with_abs_buckets(pl.read_parquet(d / S.PREDICTIONS_FILE), items, users),
                read_val_predictions(d),
            )
            for _, d in sorted(seeds.items())
        ]
        cells = {"overall": fold([score(f) for f in frames])}
        for definition in DEFINITIONS:
            for side in SIDES:
                column = bucket_column(definition, side)
                if column is None:
                    continue
                for bucket in bucket_names(definition):
                    cells[f"{definition}/{side}/{bucket}"] = fold(
                        [score(f.filter(pl.col(column) == bucket)) for f in frames]
                    )
        out[model] = cells
    return out


# -- LONGTAIL.md ---------------------------------------------------------------------------------------------------


def _ms(x: tuple[float, float], digits: int = 4) -> str:
    mean, std = x
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if math.isfinite(std) else "")


def _users(n: int) -> str:
    return f"{n:,}" + (" †" if n < MIN_USERS else "")


def _report(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "report" / "report.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def target_lines(report: dict[str, Any]) -> list[str]:
    """The target vs the best baseline by validation (`ctr report`'s deltas and user-bootstrap intervals, in
    points), overall and per percentile bucket; [] when the report names no target or baseline."""
    deltas, boot = report.get("deltas") or {}, (report.get("significance") or {}).get("bootstrap") or {}
    if not deltas.get("baseline") or not report.get("target"):
        return []
    lines = [
        "",
        f"### `{report['target']}` - `{deltas['baseline']}` (best baseline by {report.get('monitor', 'validation')})",
        "",
        "Points (x100) of the seed means; GAUC 95% interval: users resampled, 1,000 draws (`ctr report`).",
        "",
        "| scope | bucket | rows | users | ΔAUC | ΔGAUC | 95% CI ΔGAUC |",
        "|---|---|---|---|---|---|---|",
    ]
    scopes = [("overall", "all", deltas.get("overall"), boot.get("overall"))]
    for scope, key in (("item", "item_buckets"), ("user", "user_buckets")):
        found = deltas.get(key) or {}
        for bucket in sorted(found, key=lambda b: (BUCKET_ORDER.index(b) if b in BUCKET_ORDER else 99, b)):
            scopes.append((scope, bucket, found[bucket], (boot.get(key) or {}).get(bucket)))

    def pts(x: Any) -> str:
        return "n/a" if x is None else f"{x:+.2f}"

    for scope, bucket, d, b in scopes:
        if not d or not d.get("n"):
            continue
        ci = "n/a" if not b or b.get("ci_low") is None else f"[{b['ci_low']:+.2f}, {b['ci_high']:+.2f}]"
        lines.append(
            f"| {scope} | {bucket} | {d['n']:,} | {_users(d.get('n_users') or 0)} | {pts(d.get('auc'))} "
            f"| {pts(d.get('gauc'))} | {ci} |"
        )
    return lines


def protocol_section(run: ProtocolRun, opts: Options) -> list[str]:
    lines = [
        f"## {run.protocol}",
        "",
        f"`{' '.join(['semid', *run.command[3:]])}` -- wall time {run.seconds / 60:.1f} min "
        f"(this invocation, tuning included; stages already up to date are skipped), exit {run.returncode}.",
        "",
    ]
    report = _report(run.run_dir)
    if run.returncode != 0 or not report:
        return [*lines, f"**Failed**: see {run.run_dir / 'run.log'}.", ""]
    cells = summarise(run.run_dir)
    order = [m for m in report.get("model_order", []) if m in cells] or sorted(cells)
    roles = report.get("roles", {})
    floor = report.get("floor") or {}
    verdict = {m: ("yes" if d["beats_floor"] else "**no**") for m, d in (floor.get("models") or {}).items()}
    if floor:
        verdict[floor["model"]] = "(floor)"
    floor_cal = cells[floor["model"]]["overall"].logloss_cal[0] if floor.get("model") in cells else math.nan
    lines += [
        f"Test split, mean ± std over seeds {list(opts.seeds)}; GAUC users = users with both labels (fewest over "
        f"seeds; † fewer than {MIN_USERS}). Beats floor: overall AUC and GAUC above the floor "
        f"`{floor.get('model', 'none')}`'s. logloss (cal.): after each (model, seed)'s own Platt map "
        "sigmoid(a logit p + b), fitted on its validation predictions only (the floor's too; AUC / GAUC unchanged); "
        "cal. < floor: the mean calibrated logloss is below the floor's.",
        "",
        "| model | role | AUC | GAUC | GAUC users | logloss | logloss (cal.) | beats floor | cal. < floor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in order:
        c = cells[m]["overall"]
        below = (
            "n/a"
            if not (math.isfinite(c.logloss_cal[0]) and math.isfinite(floor_cal))
            else ("yes" if c.logloss_cal[0] < floor_cal else "no")
        )
        lines.append(
            f"| {m} | {roles.get(m, '')} | {_ms(c.auc)} | {_ms(c.gauc)} | {_users(c.users)} | {_ms(c.logloss)} "
            f"| {_ms(c.logloss_cal)} | {verdict.get(m, 'n/a')} | {below if m != floor.get('model') else '(floor)'} |"
        )
    for definition in DEFINITIONS:
        title = (
            "percentile buckets (head = top 20% by train count, torso = next 30%, tail = rest; cold = no train row)"
            if definition == "percentile"
            else "absolute buckets (AKT-Rec: item tail < 10 train interactions, user tail < 5; cold = none; a sample "
            "is tail / cold when either side is)"
        )
        lines += ["", f"### Long tail, {title}", ""]
        lines += [
            "| side | bucket | rows | model | AUC | GAUC | GAUC users | logloss | logloss (cal.) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for side in SIDES:
            if bucket_column(definition, side) is None:
                continue
            for bucket in bucket_names(definition):
                for m in order:
                    c = cells[m][f"{definition}/{side}/{bucket}"]
                    if c.n == 0:
                        continue
                    lines.append(
                        f"| {side} | {bucket} | {c.n:,} | {m} | {_ms(c.auc)} | {_ms(c.gauc)} | {_users(c.users)} "
                        f"| {_ms(c.logloss)} | {_ms(c.logloss_cal)} |"
                    )
    lines += target_lines(report)
    tuned = report.get("tuned") or {}
    lines += ["", "### Tuned configurations", ""]
    origin = source(run.protocol, opts)
    if origin is not None:
        lines += [
            f"Not tuned on this protocol: every model trained from the config tuned for it on `{origin}` "
            f"(`{opts.runs / origin / 'tuned'}`; its trials and best values are in that protocol's table)."
        ]
    elif not tuned:
        lines += ["(not tuned)"]
    else:
        lines += [
            "Best trial 1 = the model's own config won (`ctr tune` starts every model from it when "
            "`start_from_config`).",
            "",
            "| model | trials | best trial | monitor | best val | params | config |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in order:
            t = tuned.get(m)
            if t is None:
                continue
            best = t.get("best") or {}
            params = ", ".join(
                f"{k}={f'{v:.3g}' if isinstance(v, float) else v}"
                for k, v in (best.get("params") or {}).items()
            )
            value = best.get("value")
            lines.append(
                f"| {m} | {t.get('trials')} | {'n/a' if best.get('trial') is None else best['trial'] + 1} "
                f"| {t.get('monitor')} | {'n/a' if value is None else f'{value:.4f}'} "
                f"| {params} | {t.get('tuned_config')} |"
            )
    return [*lines, ""]


def render(runs: list[ProtocolRun], opts: Options) -> str:
    lines = [
        TITLE,
        "",
        f"Written by `python -m benchmarks.longtail` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.node() or 'this machine'} ({os.cpu_count()} CPUs, torch {torch.__version__}). "
        f"Protocols {list(opts.protocols)}; "
        + "; ".join(
            f"{p}: {opts.trials} Optuna trials per model on validation (TPE, seeded; the same for every model), "
            f"then seeds {list(opts.seeds)} of each tuned config"
            if source(p, opts) is None
            else f"{p}: no tuning, each model's config tuned on `{source(p, opts)}`'s validation, then seeds "
            f"{list(opts.seeds)} of it"
            for p in opts.protocols
        )
        + "."
        + (f" Models restricted to {list(opts.models)}." if opts.models else ""),
        "",
    ]
    for run in runs:
        lines += protocol_section(run, opts)
    return "\n".join(lines) + "\n"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def parse(argv: list[str] | None = None) -> Options:
    d = Options()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--protocols", type=_names, default=d.protocols, help="comma-separated configs/pipeline names"
    )
    p.add_argument("--trials", type=int, default=d.trials, help="Optuna trials per model (the same for all)")
    p.add_argument(
        "--seeds", type=_ints, default=d.seeds, help="comma-separated seeds fitted per tuned config"
    )
    p.add_argument(
        "--models", type=_names, default=None, help="restrict to these model names (comma-separated)"
    )
    p.add_argument("--max_epochs", type=int, default=None, help="largest epoch budget a trial may draw")
    p.add_argument("--runs", type=Path, default=d.runs, help="run directories go to <runs>/<protocol>")
    p.add_argument("--configs", type=Path, default=d.configs, help="folder of the pipeline configs")
    p.add_argument("--out", type=Path, default=d.out, help="the Markdown table")
    p.add_argument(
        "--jobs", type=int, default=d.jobs, help="fits of the seeds run at once (semid run --jobs)"
    )
    p.add_argument(
        "--tuned_from",
        default=None,
        help="no tuning: every model trains from its config tuned on this protocol (<runs>/<it>/tuned/)",
    )
    a = p.parse_args(argv)
    if a.jobs < 1:
        p.error("--jobs must be >= 1")
    if a.trials < 1:
        p.error("--trials must be >= 1: the benchmark compares tuned models")
    if not a.seeds:
        p.error("--seeds: give at least one seed")
    missing = [x for x in a.protocols if not (a.configs / f"{x}.yaml").is_file()]
    if missing:
        p.error(f"no pipeline config for {missing} in {a.configs}")
    opts = Options(
        a.protocols, a.trials, a.seeds, a.models, a.max_epochs, a.runs, a.configs, a.out, a.jobs, a.tuned_from
    )
    try:
        mapping = sources(opts.tuned_from, opts.protocols)
    except ValueError as err:
        p.error(str(err))
    for target, origin in mapping.items():
        if target not in opts.protocols:
            p.error(f"--tuned_from {opts.tuned_from}: {target} is not one of --protocols")
        if origin in opts.protocols and (
            origin == target
            or opts.protocols.index(origin) > opts.protocols.index(target)
            or origin in mapping
        ):
            p.error(
                f"--tuned_from {opts.tuned_from}: {target}'s configs come from {origin}, which must be tuned "
                "earlier in --protocols (or in an earlier run)"
            )
    if opts.models:
        unknown = set(opts.models) - {m for p in opts.protocols for m in protocol_models(p, opts)}
        if unknown:
            p.error(f"--models names {sorted(unknown)} that no protocol of {list(opts.protocols)} lists")
        empty = [proto for proto in opts.protocols if not protocol_models(proto, opts)]
        if empty:  # `semid run --only_models []` would run every model
            p.error(f"protocols {empty} list none of --models")
    return opts


def check_outputs(opts: Options) -> dict[Path, dict[str, Any]]:
    """Before anything runs: --out and every transferred config may be (re)written (SystemExit naming the file
    otherwise), and every model of a protocol whose source ran before this invocation was tuned there.
    -> {config path: transferred config} for those; a source tuned in this invocation is read after it ran."""
    from semid.io import replaceable

    later = [p for p in opts.protocols if source(p, opts) is not None]
    transferred = {
        transferred_config_path(p, opts): transferred_config(p, opts)
        for p in later
        if source(p, opts) not in opts.protocols
    }
    owned = [(opts.out, TITLE), *((transferred_config_path(p, opts), TRANSFER_HEADER) for p in later)]
    for path, first_line in owned:
        if not replaceable(path, first_line):
            raise SystemExit(
                f"{path}: exists and is not an output of this benchmark (it does not start with {first_line!r}); "
                "move it away or pass other --out / --runs (nothing was run or written)"
            )
    return transferred


def main(argv: list[str] | None = None) -> None:
    from semid.io import write_text

    opts = parse(argv)
    for path, config in check_outputs(opts).items():
        write_text(f"{TRANSFER_HEADER}\n{yaml.safe_dump(config, sort_keys=False)}", path)
    runs: list[ProtocolRun] = []
    for protocol in opts.protocols:
        origin = source(protocol, opts)
        if origin in opts.protocols:  # tuned earlier in this invocation: its configs exist now
            if next(r for r in runs if r.protocol == origin).returncode != 0:
                print(f"[longtail] {protocol}: skipped, {origin} (its tuned configs) failed", flush=True)
                runs.append(ProtocolRun(protocol, opts.runs / protocol, 0.0, 1, []))
                continue
            config = transferred_config(protocol, opts)
            write_text(
                f"{TRANSFER_HEADER}\n{yaml.safe_dump(config, sort_keys=False)}",
                transferred_config_path(protocol, opts),
            )
        runs.append(run_protocol(protocol, opts))
    write_text(render(runs, opts), opts.out)
    print(f"[longtail] wrote {opts.out}", flush=True)
    if any(r.returncode != 0 for r in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
