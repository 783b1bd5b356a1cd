"""report.md: the summary paragraph and every table (models, buckets, floor, deltas, ablations, ID health)."""

from __future__ import annotations

import math
from typing import Any

from ctr.report.stats import BUCKET_KINDS, BUCKET_TITLES
from semid import schema


def _f(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _ms(s: dict[str, Any] | None, digits: int = 4, sign: str = "") -> str:
    if s is None or s["mean"] is None or not math.isfinite(s["mean"]):
        return "n/a"
    # one seed: a std of 0 would claim a precision that was never measured
    if "values" in s and sum(v is not None and math.isfinite(v) for v in s["values"]) < 2:
        return f"{s['mean']:{sign}.{digits}f}"
    return f"{s['mean']:{sign}.{digits}f} ± {s['std']:.{digits}f}"


def _cal(s: dict[str, Any] | None) -> str:
    """A calibrated log loss: mean ± std, and "(k/n seeds)" when only k of the n seeds had a calibration map."""
    text = _ms(s)
    if s is None or text == "n/a":
        return text
    k = sum(v is not None and math.isfinite(v) for v in s["values"])
    return text if k == len(s["values"]) else f"{text} ({k}/{len(s['values'])} seeds)"


def _users(cell: dict[str, Any], min_users: int) -> str:
    """ " (u=85)" or " (u=12 †)": the users a GAUC rests on (fewest over seeds), marked below `min_users`."""
    n = cell.get("n_users")
    if n is None:
        return ""
    return f" (u={n:,}{' †' if n < min_users else ''})"


def _gauc(cell: dict[str, Any], min_users: int) -> str:
    """A GAUC cell: mean ± std and the users it rests on."""
    return f"{_ms(cell['gauc'])}{_users(cell, min_users)}"


def _users_note(min_users: int, marked: bool) -> list[str]:
    note = "GAUC: u = users it rests on (users with both label classes; the fewest over seeds)." + (
        f" † fewer than {min_users} users: the GAUC is an average of few per-user AUCs and noisy; read it "
        "with care (it is shown, not hidden)."
        if marked
        else ""
    )
    return ["", note]


def _any_marked(cells: list[dict[str, Any]], min_users: int) -> bool:
    return any(c.get("n_users") is not None and c["n_users"] < min_users for c in cells)


def _signed(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:+.{digits}f}"


def render_markdown(report: dict[str, Any]) -> str:
    models, target, best = report["models"], report["target"], report["best_baseline"]
    order = report["model_order"]
    k = report["min_gauc_users"]
    lines = [f"# CTR report: {report['run']}", ""]
    if report.get("dataset"):
        lines += [f"Dataset: {report['dataset']}.", ""]
    lines += [summary_paragraph(report), ""]
    lines += [
        "## Models (overall, test)",
        "",
        "Mean ± std over seeds (std with ddof = 1; no std with one seed). "
        f"n = {models[target]['overall']['n']:,} test rows per seed.",
        "",
        f"| model | role | seeds | AUC | GAUC | logloss | logloss (cal.) | {_monitor_header(report)} | fit s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in order:
        m = models[name]
        lines.append(
            f"| {name} | {report['roles'][name]} | {len(m['seeds'])} | {_ms(m['overall']['auc'])} "
            f"| {_gauc(m['overall'], k)} | {_ms(m['overall']['logloss'])} | {_cal(m['overall'].get('logloss_cal'))} "
            f"| {_ms(m['val_monitor'])} "
            f"| {_ms(m['fit_seconds'], 1)} |"
        )
    lines += _users_note(k, _any_marked([models[n]["overall"] for n in order], k))
    lines += [
        "",
        f"{_monitor_header(report)}: the validation number every model was early-stopped and tuned on (the run's "
        "`model.monitor`, from metrics.json); the best baseline is chosen by it, never by a test number.",
    ]
    lines += _still_improving_note(report)
    if report.get("calibration"):
        lines += ["", f"Calibration: {report['calibration']}"]
    for kind in BUCKET_KINDS:
        lines += [
            "",
            f"## By {BUCKET_TITLES[kind]} bucket",
            "",
            "| bucket | n | model | AUC | GAUC | logloss | logloss (cal.) |",
            "|---|---|---|---|---|---|---|",
        ]
        for b in schema.BUCKETS:
            for name in order:
                cell = models[name][kind][b]
                lines.append(
                    f"| {b} | {cell['n']:,} | {name} | {_ms(cell['auc'])} | {_gauc(cell, k)} "
                    f"| {_ms(cell['logloss'])} | {_cal(cell.get('logloss_cal'))} |"
                )
        lines += _users_note(k, _any_marked([models[n][kind][b] for n in order for b in schema.BUCKETS], k))
    lines += scenario_table(report)
    lines += floor_table(report)
    if best is not None:
        lines += delta_table(report)
    lines += ablation_table(report)
    lines += tuned_table(report)
    lines += health_table(report)
    lines += ["", "## Plots", ""]
    lines += [f"- [{p}]({p})" for p in report["plots"]]
    lines += [""]
    lines += [f"![{p}]({p})" for p in report["plots"]]
    return "\n".join(lines) + "\n"


def _monitor_header(report: dict[str, Any]) -> str:
    """The main table's column of the model-selection monitor, e.g. "val/gauc_warm" ("val monitor" when unknown)."""
    return report.get("monitor") or "val monitor"


def _cut_off(report: dict[str, Any], name: str) -> str | None:
    """ "2/3 seeds" when some seeds of `name` ran out of epochs while still improving, else None."""
    cut = report["models"][name].get("still_improving")
    return f"{len(cut['seeds'])}/{cut['known']} seeds" if cut and cut["seeds"] else None


def _still_improving_note(report: dict[str, Any]) -> list[str]:
    """Models whose fits used their whole epoch budget and were best at its last epoch: maybe under-trained."""
    cut = [(name, _cut_off(report, name)) for name in report["model_order"]]
    cut = [f"`{name}` {seeds}" for name, seeds in cut if seeds]
    if not cut:
        return []
    return [
        "",
        "Still improving when the epoch budget ended (the fit ran all `trainer.max_epochs` and its last epoch was "
        f"its best): {', '.join(cut)}. Such a model may be under-trained; more epochs or a larger `model.lr` (knobs "
        "of every model's tuning budget) may change its numbers.",
    ]


def summary_paragraph(report: dict[str, Any]) -> str:
    target, best = report["target"], report["best_baseline"]
    floor = report["floor"]
    floor_text = ""
    if floor is not None:
        losers = [m for m, d in floor["models"].items() if not d["beats_floor"]]
        floor_text = f" Against the floor `{floor['model']}`: " + (
            f"**{', '.join(f'`{m}`' for m in losers)} {'does' if len(losers) == 1 else 'do'} not beat it**."
            if losers
            else "every model beats it."
        )
        floor_cut = _cut_off(report, floor["model"])
        if floor_cut:
            floor_text += f" **The floor was still improving when its epoch budget ended ({floor_cut})**."
    if best is None and not report["baselines"]:
        return f"Target model `{target}`; the run has no baseline, so no deltas are reported.{floor_text}"
    if best is None:
        return f"Target model `{target}`; {report['selection_rule_text']}.{floor_text}"
    d, sig = report["deltas"], report["significance"]
    paired = sig["paired"]["overall"]["gauc"]
    boot = sig["bootstrap"]["overall"]

    def bucket(b: str) -> str:
        cell = d["item_buckets"][b]
        bs = sig["bootstrap"]["item_buckets"][b]
        return (
            f"{b} items (n = {cell['n']:,}): AUC {_signed(cell['auc'], 2)}, GAUC {_signed(cell['gauc'], 2)} "
            f"(95% CI [{_signed(bs['ci_low'], 2)}, {_signed(bs['ci_high'], 2)}])"
        )

    return (
        f"Target `{target}` vs the best baseline `{best}` ({report['selection_rule_text']}): overall AUC "
        f"{_signed(d['overall']['auc'], 2)} points and GAUC {_signed(d['overall']['gauc'], 2)} points (x100). "
        f"Paired over {paired['n_seeds']} seed(s), the GAUC delta is {_signed(paired['mean'], 2)} ± "
        f"{_f(paired['std'], 2)} and positive in {paired['positive']}/{paired['n_seeds']}; a bootstrap over users "
        f"({report['significance']['bootstrap']['n_boot']} draws, seeds pooled) gives a 95% interval of "
        f"[{_signed(boot['ci_low'], 2)}, {_signed(boot['ci_high'], 2)}] points and P(delta <= 0) = "
        f"{_f(boot['p_le_0'], 3)}. Long tail: {bucket('tail')}; {bucket('cold')}.{floor_text}"
    )


def delta_table(report: dict[str, Any]) -> list[str]:
    d, paired, boot = report["deltas"], report["significance"]["paired"], report["significance"]["bootstrap"]
    lines = [
        "",
        f"## Deltas: `{report['target']}` - `{report['best_baseline']}` (points = x100)",
        "",
        f"Best baseline rule: {report['selection_rule_text']}. Paired = per-seed differences over common seeds "
        "(mean ± std, seeds with delta > 0). Bootstrap = users resampled with replacement, GAUC delta of the "
        "seed means, percentile 95% interval.",
        "",
        "| scope | bucket | n | users | ΔAUC | ΔGAUC | paired ΔAUC | AUC > 0 | paired ΔGAUC | GAUC > 0 "
        "| bootstrap 95% CI ΔGAUC | P(ΔGAUC <= 0) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    k = report["min_gauc_users"]
    rows = [("overall", "all", d["overall"], paired["overall"], boot["overall"])]
    rows += [
        (BUCKET_TITLES[k], b, d[k][b], paired[k][b], boot[k][b]) for k in BUCKET_KINDS for b in schema.BUCKETS
    ]
    for scope, b, cell, p, bs in rows:
        lines.append(
            f"| {scope} | {b} | {cell['n']:,} | {cell['n_users']:,}{' †' if cell['n_users'] < k else ''} "
            f"| {_signed(cell['auc'])} | {_signed(cell['gauc'])} "
            f"| {_ms(p['auc'], sign='+')} | {p['auc']['positive']}/{p['auc']['n_seeds']} | {_ms(p['gauc'], sign='+')} "
            f"| {p['gauc']['positive']}/{p['gauc']['n_seeds']} | [{_signed(bs['ci_low'])}, {_signed(bs['ci_high'])}] "
            f"| {_f(bs['p_le_0'], 3)} |"
        )
    lines += [
        "",
        f"users = GAUC users of the target (both label classes, fewest over seeds); † fewer than {k}: the GAUC "
        "delta of that row rests on few users.",
    ]
    return lines


def scenario_table(report: dict[str, Any]) -> list[str]:
    """A multi-scenario run: AUC and log loss per scenario and overall, GAUC overall, each scenario's test rows;
    then the target against the best baseline per scenario (nothing for a run without scenarios)."""
    scen = report.get("scenarios")
    if not scen:
        return []
    models, names, k = report["models"], scen["names"], report["min_gauc_users"]
    sizes = ", ".join(f"`{n}` {scen['n'][n]:,}" for n in names)
    head = "".join(f" {n} AUC | {n} logloss | {n} logloss (cal.) |" for n in names)
    lines = [
        "",
        "## By scenario (test)",
        "",
        f"Each test row's scenario from its `{scen['key']}`; test rows: {sizes} (smallest: `{scen['smallest']}`). "
        "Mean ± std over seeds; GAUC overall only (a scenario's users are few in the small scenarios). Calibrated: "
        "each seed's Platt map, fitted on its whole validation split, applied to the scenario's test rows.",
        "",
        f"| model | role | AUC | GAUC | logloss | logloss (cal.) |{head}",
        "|---|---|---|---|---|---|" + "---|---|---|" * len(names),
    ]
    for name in report["model_order"]:
        m = models[name]
        cells = "".join(
            f" {_ms(m['scenarios'][n]['auc'])} | {_ms(m['scenarios'][n]['logloss'])} "
            f"| {_cal(m['scenarios'][n].get('logloss_cal'))} |"
            for n in names
        )
        lines.append(
            f"| {name} | {report['roles'][name]} | {_ms(m['overall']['auc'])} | {_gauc(m['overall'], k)} "
            f"| {_ms(m['overall']['logloss'])} | {_cal(m['overall'].get('logloss_cal'))} |{cells}"
        )
    d = scen.get("deltas")
    if d is None:
        return lines
    lines += [
        "",
        f"`{report['target']}` - `{d['baseline']}` (the best baseline) in points (x100): delta of the seed means, "
        "and paired per-seed deltas (mean ± std, seeds with delta > 0). Log loss: lower is better.",
        "",
        "| scope | n | ΔAUC | paired ΔAUC | AUC > 0 | Δlogloss | paired Δlogloss | Δlogloss (cal.) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for scope, cell in (("overall", d["overall"]), *d["scenarios"].items()):
        a, ll, cal = cell["auc"], cell["logloss"], cell.get("logloss_cal")
        lines.append(
            f"| {scope}{' (smallest)' if scope == scen['smallest'] else ''} | {cell['n']:,} "
            f"| {_signed(a['mean_delta'])} | {_ms(a['paired'], sign='+')} | {a['paired']['positive']}/"
            f"{a['paired']['n_seeds']} | {_signed(ll['mean_delta'])} | {_ms(ll['paired'], sign='+')} "
            f"| {_signed(cal['mean_delta'] if cal else None)} |"
        )
    return lines


def floor_table(report: dict[str, Any]) -> list[str]:
    """Every model against the trivial floor (a bias-only model); a model that does not beat it is flagged."""
    floor = report["floor"]
    if floor is None:
        return []
    k = report["min_gauc_users"]
    lines = [
        "",
        f"## Against the floor `{floor['model']}` (points = x100)",
        "",
        f"Deltas of the seed means vs the floor. {floor['rule']}",
        "",
    ]
    floor_cut = _cut_off(report, floor["model"])
    if floor_cut:
        lines += [
            f"⚠ The floor was still improving when its epoch budget ended ({floor_cut}): every model here is "
            "compared with a floor that had not converged, which flatters them. Give the floor more epochs or a "
            "larger `model.lr` (configs/ctr/floor.yaml trains at 1e-2).",
            "",
        ]
    lines += [
        "| model | role | ΔAUC | ΔGAUC | Δ tail-item GAUC | Δ cold-item GAUC | beats the floor "
        "| Δ logloss (cal.) | cal. logloss below the floor's |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, d in floor["models"].items():
        tail, cold = d["item_buckets"]["tail"], d["item_buckets"]["cold"]
        lines.append(
            f"| {name} | {report['roles'][name]} | {_signed(d['overall']['auc'])} "
            f"| {_signed(d['overall']['gauc'])}{_users(d['overall'], k)} | {_signed(tail['gauc'])}{_users(tail, k)} "
            f"| {_signed(cold['gauc'])}{_users(cold, k)} | {'yes' if d['beats_floor'] else '**NO** ⚠'} "
            f"| {_signed(d.get('logloss_cal'))} | {_verdict(d.get('beats_floor_logloss_cal'))} |"
        )
    return lines


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "no")


def _ci(cell: dict[str, Any] | None) -> str:
    """ "[-0.42, +0.10]": a bootstrap percentile interval, n/a when none."""
    if cell is None:
        return "n/a"
    return f"[{_signed(cell['ci_low'])}, {_signed(cell['ci_high'])}]"


def ablation_table(report: dict[str, Any]) -> list[str]:
    target, models = report["target"], report["models"]
    names = [target, *report["ablations"]["models"]]
    boots = report["ablations"].get("bootstrap", {})
    k = report["min_gauc_users"]
    lines = [
        "",
        "## Ablations",
        "",
        f"Deltas vs `{target}` in points (x100) of the seed means (ablation - `{target}`: negative = the removed "
        "part helped). CI = users resampled with replacement, the same draws for both models and all seeds, "
        "percentile 95% interval of the GAUC delta of the seed means.",
        "",
        "| model | seeds | AUC | GAUC | logloss | logloss (cal.) | tail-item GAUC | cold-item GAUC | ΔAUC | ΔGAUC "
        "| ΔGAUC 95% CI | Δ tail GAUC | Δ tail GAUC 95% CI | Δ cold GAUC |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        m = models[name]
        dv = report["ablations"]["delta_vs_target"].get(name)
        bs = boots.get(name)
        deltas = (
            "| - | - | - | - | - | - |"
            if dv is None
            else f"| {_signed(dv['overall']['auc'])} | {_signed(dv['overall']['gauc'])} "
            f"| {_ci(bs and bs['overall'])} | {_signed(dv['item_buckets']['tail']['gauc'])} "
            f"| {_ci(bs and bs['item_buckets']['tail'])} | {_signed(dv['item_buckets']['cold']['gauc'])} |"
        )
        lines.append(
            f"| {name} | {len(m['seeds'])} | {_ms(m['overall']['auc'])} | {_gauc(m['overall'], k)} "
            f"| {_ms(m['overall']['logloss'])} | {_cal(m['overall'].get('logloss_cal'))} "
            f"| {_gauc(m['item_buckets']['tail'], k)} "
            f"| {_gauc(m['item_buckets']['cold'], k)} {deltas}"
        )
    cells = [
        c
        for n in names
        for c in (models[n]["overall"], *(models[n]["item_buckets"][b] for b in ("tail", "cold")))
    ]
    lines += _users_note(k, _any_marked(cells, k))
    if len(names) == 1:
        lines += ["", f"(no ablation runs: model directories named `{target}_*`)"]
    return lines


def tuned_table(report: dict[str, Any]) -> list[str]:
    """The configuration each tuned model's seeds trained from (`semid run --tune N`); nothing when untuned."""
    tuned = report.get("tuned") or {}
    if not tuned:
        return []
    lines = [
        "",
        "## Tuned configurations",
        "",
        "Every model had the same number of Optuna trials (TPE, seeded) on validation; its seeds trained from the "
        "best trial's config.",
        "",
        "| model | trials | monitor | best val | epochs | parameters | config |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in tuned.items():
        best = t.get("best") or {}
        params = ", ".join(
            f"{k}={f'{v:.3g}' if isinstance(v, float) else v}" for k, v in (best.get("params") or {}).items()
        )
        lines.append(
            f"| {name} | {t.get('trials')} | {t.get('monitor')} | {_f(best.get('value'))} | {best.get('epochs')} "
            f"| {params} | {t.get('tuned_config')} |"
        )
    return lines


def health_table(report: dict[str, Any]) -> list[str]:
    lines = ["", "## Semantic-ID health", ""]
    present = {k: v for k, v in report["semid_health"].items() if v is not None}
    if not present:
        return [*lines, f"(no `{schema.SEMIDS_DIR}/` tables in the run)"]
    lines += [
        "Utilization = codes used / codebook size; entropy of code usage in bits (/ log2 size); collision rate = "
        "rows whose code tuple is shared (sid_dedup > 0); largest bucket = most rows on one code tuple.",
        "",
        "| table | rows | codebook sizes | utilization per level | entropy bits per level | normalised entropy "
        "| collision rate | colliding tuples | largest bucket | unique full IDs | source |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, h in present.items():
        per = h["per_level"]
        src = h["source"]
        sources = {v for k, v in src.items() if k != "per_level"} | {
            v for lv in src["per_level"] for v in lv.values()
        }
        source = sources.pop() if len(sources) == 1 else "mixed"
        if h["mismatches"]:
            source += f" (metadata differs from table: {', '.join(h['mismatches'])})"
        lines.append(
            f"| {name} | {h['rows']:,} | {' x '.join(map(str, h['codebook_sizes']))} "
            f"| {' / '.join(_f(lv['utilization']) for lv in per)} | {' / '.join(_f(lv['entropy_bits']) for lv in per)} "
            f"| {' / '.join(_f(lv['entropy_normalized']) for lv in per)} | {_f(h['collision_rate'])} "
            f"| {h['colliding_tuples']} | {h['largest_bucket']} | {_f(h['unique_full_ids'])} | {source} |"
        )
    lines += [
        "",
        "| table | prefix depth | prefixes | mean size | median size | max size |",
        "|---|---|---|---|---|---|",
    ]
    for name, h in present.items():
        for p in h["prefix_sizes"]:
            lines.append(
                f"| {name} | {p['depth']} | {p['n_prefixes']:,} | {_f(p['mean'])} | {_f(p['median'], 1)} | {p['max']} |"
            )
    return lines
