"""The report's PNGs: AUC / GAUC by activity bucket per model, AUC by scenario (multi-scenario runs), codebook usage
per level, prefix-bucket sizes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ctr.report.health import SidTable
from ctr.report.stats import BUCKET_KINDS, BUCKET_TITLES
from semid import schema

PLOTS: tuple[str, ...] = ("auc_by_bucket.png", "gauc_by_bucket.png", "codebook_usage.png", "prefix_sizes.png")
"""File names; the last two only when the run has ID tables."""
SCENARIO_PLOT = "auc_by_scenario.png"
"""Only when the run has a scenario table."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_by_bucket(models: dict[str, dict[str, Any]], order: Sequence[str], metric: str, path: Path) -> None:
    """Grouped bars (x = bucket, one bar per model, error bar = std over seeds); item and user panels."""
    plt = _pyplot()
    width = 0.8 / len(order)
    fig, axes = plt.subplots(
        1, 2, figsize=(max(10.0, 1.1 * len(order) * 4 / 2 + 4), 5.0), dpi=120, sharey=True
    )
    tops, bottoms = [], []
    for ax, kind in zip(axes, BUCKET_KINDS):
        x = np.arange(len(schema.BUCKETS))
        for i, name in enumerate(order):
            cells = [models[name][kind][b][metric] for b in schema.BUCKETS]
            mean = np.array([c["mean"] for c in cells])
            std = np.nan_to_num(np.array([c["std"] for c in cells]))
            pos = x + (i - (len(order) - 1) / 2) * width
            bars = ax.bar(pos, np.nan_to_num(mean), width, yerr=std, capsize=3, label=name, color=f"C{i}")
            labels = [f"{m:.3f}" if math.isfinite(m) else "n/a" for m in mean]
            ax.bar_label(bars, labels=labels, fontsize=7, rotation=90, padding=3)
            ok = np.isfinite(mean)
            tops += list(mean[ok] + std[ok])
            bottoms += list(mean[ok] - std[ok])
        n = [models[order[0]][kind][b]["n"] for b in schema.BUCKETS]
        ax.set_xticks(x, [f"{b}\n(n={k:,})" for b, k in zip(schema.BUCKETS, n)])
        ax.set_xlabel(f"{BUCKET_TITLES[kind]} bucket (n = test rows)")
        ax.set_title(f"by {BUCKET_TITLES[kind]}")
        if metric in ("auc", "gauc"):
            ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
        ax.grid(axis="y", alpha=0.3)
    lo = max(0.0, min(bottoms, default=0.0) - 0.05)
    hi = max(tops, default=1.0)
    axes[0].set_ylim(lo, hi + 0.25 * (hi - lo) + 0.01)
    axes[0].set_ylabel(f"{metric.upper()} (mean ± std over seeds)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, title="model", loc="lower center", ncol=min(len(order), 6), fontsize=9)
    fig.suptitle(f"Test {metric.upper()} by activity bucket (y axis does not start at 0; dashed = random)")
    fig.tight_layout(rect=(0, 0.11 + 0.05 * ((len(order) - 1) // 6), 1, 1))
    fig.savefig(path)
    plt.close(fig)


def plot_by_scenario(
    models: dict[str, dict[str, Any]], order: Sequence[str], names: Sequence[str], path: Path
) -> None:
    """Grouped bars (x = overall, then each scenario with its test rows; one bar per model, error bar = std over
    seeds) of test AUC: where a model's gain sits, e.g. in the smallest scenario."""
    plt = _pyplot()
    width = 0.8 / len(order)
    groups = ["overall", *names]
    fig, ax = plt.subplots(figsize=(max(8.0, 0.9 * len(order) * len(groups) / 2 + 3), 5.0), dpi=120)
    x = np.arange(len(groups))
    tops, bottoms = [], []
    for i, name in enumerate(order):
        m = models[name]
        cells = [m["overall"]["auc"], *(m["scenarios"][s]["auc"] for s in names)]
        mean = np.array([c["mean"] for c in cells], dtype=float)
        std = np.nan_to_num(np.array([c["std"] for c in cells], dtype=float))
        pos = x + (i - (len(order) - 1) / 2) * width
        bars = ax.bar(pos, np.nan_to_num(mean), width, yerr=std, capsize=3, label=name, color=f"C{i}")
        labels = [f"{v:.3f}" if math.isfinite(v) else "n/a" for v in mean]
        ax.bar_label(bars, labels=labels, fontsize=7, rotation=90, padding=3)
        ok = np.isfinite(mean)
        tops += list(mean[ok] + std[ok])
        bottoms += list(mean[ok] - std[ok])
    first = models[order[0]]
    n = [first["overall"]["n"], *(first["scenarios"][s]["n"] for s in names)]
    ax.set_xticks(x, [f"{g}\n(n={k:,})" for g, k in zip(groups, n)])
    ax.set_xlabel("scenario (n = test rows)")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
    ax.grid(axis="y", alpha=0.3)
    lo = max(0.0, min(bottoms, default=0.0) - 0.05)
    hi = max(tops, default=1.0)
    ax.set_ylim(lo, hi + 0.25 * (hi - lo) + 0.01)
    ax.set_ylabel("AUC (mean ± std over seeds)")
    ax.legend(title="model", fontsize=8, ncol=min(len(order), 4), loc="upper left")
    ax.set_title("Test AUC overall and by scenario (y axis does not start at 0; dashed = random)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_codebook_usage(tables: dict[str, SidTable], path: Path) -> None:
    """Per table (row) and level (column): code usage counts sorted high to low, with utilization and entropy."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    n_cols = max(len(t.counts) for t in tables.values())
    fig, axes = plt.subplots(
        len(tables), n_cols, figsize=(4.2 * n_cols, 3.4 * len(tables)), dpi=120, squeeze=False
    )
    for r, (name, table) in enumerate(tables.items()):
        for c in range(n_cols):
            ax = axes[r][c]
            if c >= len(table.counts):
                ax.axis("off")
                continue
            counts = np.sort(table.counts[c])[::-1]
            lv = table.health["recomputed"]["per_level"][c]
            ax.bar(np.arange(counts.size), counts, width=1.0, color=f"C{r}")
            ax.axhline(
                counts.sum() / counts.size, color="black", linestyle="--", linewidth=0.8, label="uniform"
            )
            ax.set_title(
                f"{name} level {c}: {lv['used']}/{lv['size']} used ({lv['utilization']:.0%})\n"
                f"entropy {lv['entropy_bits']:.2f} of {math.log2(max(lv['size'], 2)):.2f} bits",
                fontsize=9,
            )
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("code rank (most used first)")
            ax.set_ylabel(f"{name} per code")
            ax.legend(fontsize=7)
    fig.suptitle("Semantic-ID codebook usage per level")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_prefix_sizes(tables: dict[str, SidTable], path: Path) -> None:
    """Per table: log-log histograms of entities per distinct semantic-ID prefix, one line per prefix depth."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tables), figsize=(6.0 * len(tables), 4.5), dpi=120, squeeze=False)
    for ax, (name, table) in zip(axes[0], tables.items()):
        biggest = max((int(p.max()) for p in table.prefixes if p.size), default=1)
        bins = np.unique(np.round(np.logspace(0, math.log10(biggest + 1), 25)).astype(int))
        bins = np.append(bins, bins[-1] + 1) if bins.size < 2 else bins
        for d, sizes in enumerate(table.prefixes):
            ax.hist(
                sizes,
                bins=bins,
                histtype="step",
                linewidth=1.6,
                label=f"depth {d + 1}: {sizes.size:,} prefixes, max {int(sizes.max()) if sizes.size else 0}",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"{name} per prefix (log)")
        ax.set_ylabel("number of prefixes (log)")
        ax.set_title(f"{name}: sizes of semantic-ID prefix buckets")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
