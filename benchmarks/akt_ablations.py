"""AKT's ablations next to what the AKT-Rec paper reports for each part (issue 14), from finished `semid run`s.

    python -m benchmarks.akt_ablations --runs RUN_A RUN_B --out benchmarks/results/akt_ablations.md

Each run directory holds `akt` and its ablations `akt_*` (one switch each, the rest of the config as `akt`'s) and the
report `semid run` wrote (report/report.json): the deltas of the seed means, ablation - `akt`, in points (x100), and
their user-bootstrap 95% intervals (`ctr.report`; the same draws for both models and all seeds). A part the paper
has is expected to cost something when removed (the notes on the paper quote ablation figures for three of them;
the others are parts of its model with no figure). A part that is ours (a deviation from the paper) has no
expected direction. The verdict reads the GAUC interval (overall, or tail items where the paper's figure is a tail
one): "as the paper" when the whole interval is below 0, "opposite" when it is above 0, else "no measurable effect".
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, NamedTuple

TARGET = "akt"
TITLE = "# AKT ablations against the paper (issue 14)"


class Part(NamedTuple):
    removes: str
    origin: str  # "paper" or "ours"
    paper: str  # what the notes on the paper report when it is removed
    scope: str  # "overall" or "tail": which GAUC interval the verdict reads


NO_FIGURE = "a part of the model, no figure"
PARTS: dict[str, Part] = {
    "akt_no_cluster": Part(
        "cluster embedding (level-1 SID)", "paper", "tail AUC -0.44%, tail GAUC -1.20%", "tail"
    ),
    "akt_no_individual": Part("individual (per-id) embedding", "paper", "AUC -0.46%", "overall"),
    "akt_no_instance_view": Part("instance view (target attention)", "paper", "AUC -1.14%", "overall"),
    "akt_mean_instance": Part(
        "target attention of the instance view (a masked mean instead)", "paper", NO_FIGURE, "overall"
    ),
    "akt_no_cluster_view": Part("cluster view (SIM hard search)", "paper", NO_FIGURE, "overall"),
    "akt_no_fusion": Part("view fusion gate (views averaged)", "paper", NO_FIGURE, "overall"),
    "akt_no_gate": Part("activity gate (e = c + v)", "paper", NO_FIGURE, "overall"),
    "akt_no_orth": Part("orthogonality term", "paper", NO_FIGURE, "overall"),
    "akt_convex_gate": Part("our residual gate (the paper's convex gate instead)", "ours", "-", "overall"),
    "akt_no_cold_dropout": Part("cold-path dropout (p_cold = 0)", "ours", "-", "overall"),
    "akt_no_content": Part("content fields and content tower", "ours", "-", "overall"),
    "akt_no_first_order": Part(
        "first-order biases (DeepFM's per-id / per-feature bias)", "ours", "-", "overall"
    ),
    "akt_transfer": Part(
        "no transfer loss (the paper's head -> tail loss turned on instead)", "ours", "-", "overall"
    ),
    "akt_history_content": Part(
        "history items keyed by their IDs only (the content vectors added to their embeddings instead)",
        "ours",
        "-",
        "overall",
    ),
    "akt_transfer_symmetric": Part(
        "no transfer loss (the paper's loss turned on, symmetric: lambda_t2h = lambda_h2t)",
        "ours",
        "-",
        "overall",
    ),
}


def verdict(ci: dict[str, Any] | None, origin: str) -> str:
    """From a {ci_low, ci_high} interval of ablation - akt: what removing the part did, against the paper."""
    if ci is None or not all(
        isinstance(ci.get(k), float) and math.isfinite(ci[k]) for k in ("ci_low", "ci_high")
    ):
        return "n/a"
    if ci["ci_high"] < 0:
        effect = "helps (removing it costs)"
    elif ci["ci_low"] > 0:
        effect = "hurts (removing it gains)"
    else:
        return "no measurable effect"
    if origin == "ours":
        return effect
    return f"{effect}: {'as the paper' if ci['ci_high'] < 0 else 'opposite to the paper'}"


def _p(x: Any) -> str:
    return "n/a" if not isinstance(x, float) or not math.isfinite(x) else f"{x:+.2f}"


def _ci(cell: dict[str, Any] | None) -> str:
    return "n/a" if cell is None else f"[{_p(cell.get('ci_low'))}, {_p(cell.get('ci_high'))}]"


def run_section(run_dir: Path) -> list[str]:
    path = run_dir / "report" / "report.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no report; run `semid run` (or `ctr report`) on {run_dir} first")
    report = json.loads(path.read_text())
    if report.get("target") != TARGET:
        raise SystemExit(f"{path}: the report's target is {report.get('target')!r}, not {TARGET!r}")
    abl = report["ablations"]
    boots = abl.get("bootstrap") or {}
    akt = report["models"][TARGET]
    seeds = akt["seeds"]
    lines = [
        f"## {report['run']}",
        "",
        f"`{TARGET}`: test AUC {akt['overall']['auc']['mean']:.4f}, GAUC {akt['overall']['gauc']['mean']:.4f} on "
        f"{akt['overall']['n_users']:,} users, seeds {seeds}; run `{report['run_dir']}`. Tail = the bottom 50% of "
        "items by train count (the report's percentile bucket).",
        "",
        "| ablation | removes | origin | paper (notes) | seeds | ΔAUC | ΔGAUC | 95% CI | Δ tail GAUC | 95% CI "
        "| verdict (GAUC interval) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in abl["models"]:
        part = PARTS.get(name, Part("(unknown switch)", "ours", "-", "overall"))
        d, b = abl["delta_vs_target"][name], boots.get(name)
        overall = b and b["overall"]
        tail = b and b["item_buckets"]["tail"]
        lines.append(
            f"| {name} | {part.removes} | {part.origin} | {part.paper} | {len(report['models'][name]['seeds'])} "
            f"| {_p(d['overall']['auc'])} | {_p(d['overall']['gauc'])} | {_ci(overall)} "
            f"| {_p(d['item_buckets']['tail']['gauc'])} | {_ci(tail)} "
            f"| {verdict(tail if part.scope == 'tail' else overall, part.origin)} |"
        )
    return [*lines, ""]


def render(run_dirs: list[Path]) -> str:
    lines = [
        TITLE,
        "",
        "Written by `python -m benchmarks.akt_ablations`. Deltas are ablation - `akt` in points (x100) of the seed "
        "means; intervals: users resampled with replacement (`ctr.report`), percentile 95%. The paper's figures "
        "are relative changes from third-party notes on it (Tmall), shown for direction only.",
        "",
    ]
    for run_dir in run_dirs:
        lines += run_section(run_dir)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from semid.io import replaceable, write_text

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--runs", type=Path, nargs="+", required=True, help="semid run directories with akt_* models"
    )
    p.add_argument("--out", type=Path, required=True, help="the Markdown file")
    a = p.parse_args(argv)
    if not replaceable(a.out, TITLE):
        raise SystemExit(
            f"{a.out}: exists and is not an output of this script (it does not start with {TITLE!r}); "
            "pass another --out or move that file away"
        )
    text = render(a.runs)  # every report read before anything is written
    write_text(text, a.out)
    print(f"[akt_ablations] wrote {a.out}", flush=True)


if __name__ == "__main__":
    main()
