"""The two optional alignment objectives after AKT-Rec (issue 14), measured on the alignment's retrieval probes.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python -m benchmarks.align_objectives \\
        [--prepared runs/longtail/ml-1m/prepared] [--config configs/semid/ml-1m.yaml] \\
        [--category-weight 0.5] [--max-pairs N] --out benchmarks/results/align_objectives.md

Runs `semid.align.align` on a prepared ML-1M folder (items.parquet with the list[str] `genre` column, users.parquet,
train.parquet) with the encoder and `align_config` of a `semid build` config, four times: base, + user categories
(`user_category_weight`, categories = `genre`), + item stats (`item_stats`), both. Everything else (pairs, splits,
seed, threads) is the same, so the probe sets are the same. The table after each run (written as each finishes):
item recall@10 on held-out co-engagement pairs and user next-item hit@10 on held-out users, before (plain encoder
on that variant's texts) and after alignment; the held-out InfoNCE loss, before training and at the kept (best)
epoch (with categories on: the total minus weight x the category BCE, so it is comparable across variants); the
held-out category BCE of the head (starts at the genre prior); wall time of the whole `align` call.

Weight 0.5 for the category objective: its BCE (mean over 18 genres) starts at the prior's entropy, 0.31 nats on
ML-1M, against a held-out InfoNCE near 10 (items + users), so at 0.5 it cannot outweigh the next-item objective the
probe measures; it is a pull on the user vectors toward genre-predictive directions, not a rival objective. A
larger weight trades next-item InfoNCE for genre prediction, which the probe does not reward.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import yaml

TITLE = "# Alignment objectives from AKT-Rec on ML-1M (issue 14)"
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PREPARED = ROOT / "runs" / "longtail" / "ml-1m" / "prepared"  # benchmarks.longtail's ML-1M run
DEFAULT_CONFIG = ROOT / "configs" / "semid" / "ml-1m.yaml"
VARIANTS = ("base", "+user categories", "+item stats", "both")


def _f(x: Any, digits: int = 4) -> str:
    return "n/a" if not isinstance(x, float) or not math.isfinite(x) else f"{x:.{digits}f}"


def _row(name: str, probe: dict[str, float], weight: float, k: int) -> str:
    """One table row; the held-out InfoNCE is the held-out loss less weight x category BCE where that is on."""
    on = "val_category_best" in probe
    cat_before = probe["val_category_before"] if on else math.nan
    cat_best = probe["val_category_best"] if on else math.nan
    nce_before = probe["val_loss_before"] - (weight * cat_before if on else 0.0)
    nce_best = probe["val_loss_best"] - (weight * cat_best if on else 0.0)
    return (
        f"| {name} | {_f(probe[f'item_recall@{k}_before'])} → {_f(probe[f'item_recall@{k}_after'])} "
        f"| {_f(probe[f'user_hit@{k}_before'])} → {_f(probe[f'user_hit@{k}_after'])} "
        f"| {_f(nce_before, 3)} → {_f(nce_best, 3)} | {_f(cat_before, 4)} → {_f(cat_best, 4)} "
        f"| {int(probe['epochs'])} | {probe['seconds_total']:.0f} |"
    )


def render(header: list[str], rows: list[str], k: int) -> str:
    lines = [
        TITLE,
        "",
        *header,
        "",
        f"| variant | item recall@{k} before → after | user hit@{k} before → after "
        "| held-out InfoNCE before → best | held-out category BCE before → best | epochs | wall s |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from semid import data
    from semid.align import AlignConfig, align, item_categories, user_texts
    from semid.encoder import EncoderConfig
    from semid.io import replaceable, write_text
    from semid.schema import TEXT

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepared", type=Path, default=DEFAULT_PREPARED, help="a prepared ML-1M folder")
    p.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="a `semid build` YAML (encoder, align)"
    )
    p.add_argument("--category-column", default="genre")
    p.add_argument("--category-weight", type=float, default=0.5)
    p.add_argument("--max-pairs", type=int, default=None, help="override align max_pairs (all variants)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--out", type=Path, required=True, help="the Markdown file")
    a = p.parse_args(argv)
    if not replaceable(a.out, TITLE):
        raise SystemExit(f"{a.out}: exists and is not an earlier output of this script; choose another --out")

    raw = yaml.safe_load(a.config.read_text()) or {}
    enc_cfg = EncoderConfig(**raw.get("encoder", {}))
    base = AlignConfig(**raw.get("align_config", {}))
    if a.max_pairs is not None:
        base = replace(base, max_pairs=a.max_pairs)
    prepared = data.load(a.prepared)
    items, users, train = prepared.items, prepared.users, prepared.splits["train"]
    categories = item_categories(items, a.category_column)
    u_texts, _ = user_texts(users, items, train, n_recent=base.user_history)
    i_texts = items[TEXT].cast(pl.String).to_list()
    with_categories = {"user_category_weight": a.category_weight, "category_column": a.category_column}
    configs = {
        "base": base,
        "+user categories": replace(base, **with_categories),
        "+item stats": replace(base, item_stats=True),
        "both": replace(base, item_stats=True, **with_categories),
    }
    k = base.probe_k
    header = [
        f"Written by `python -m benchmarks.align_objectives` on `{a.prepared}` ({len(i_texts):,} items, "
        f"{len(u_texts):,} users, {train.height:,} train rows), encoder and align settings of `{a.config.name}` "
        f"(max_pairs {base.max_pairs:,}{' -- reduced for time, equally for all variants' if a.max_pairs else ''}, "
        f"max_epochs {base.max_epochs}, patience {base.patience}, train_layers {base.train_layers}, seed "
        f"{base.seed}, {base.threads} thread). Categories: `{a.category_column}` "
        f"({len({c for row in categories for c in row})} values), weight {a.category_weight}, head rate "
        f"{base.category_lr}. Item stats: "
        "train popularity tercile as a word in the item text.",
    ]
    rows: list[str] = []
    for name in a.variants:
        with tempfile.TemporaryDirectory() as work:
            result = align(
                i_texts,
                u_texts,
                train,
                enc_cfg,
                configs[name],
                work_dir=Path(work),
                progress=False,
                item_categories=categories,
            )
        probe = result.probe
        if not rows:  # the probe sets are the same for every variant
            header.append(
                f"Probes: {int(probe['probe_pairs']):,} held-out co-engagement pairs (recall@{k}), "
                f"{int(probe['probe_users']):,} held-out users (hit@{k}; one standard error ~ "
                f"{math.sqrt(0.05 * 0.95 / max(1, probe['probe_users'])):.3f} at a 5% hit rate); "
                f"{int(probe['train_pairs']):,} training pairs."
            )
        rows.append(_row(name, probe, a.category_weight, k))
        print(rows[-1], flush=True)
        write_text(render(header, rows, k), a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
