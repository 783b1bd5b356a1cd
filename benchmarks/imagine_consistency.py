"""Measure the semantic consistency of imagined behaviours (semid.imagine) against popularity and random baselines.

For each seed: train the masked discrete-diffusion model on the train positives of a prepared dataset, imagine k
behaviours for users with <= max_history train positives, and score level-1 (sid_0) consistency and exact hit
rate against each user's val + test positives, overall and split into users with no train positive (the model can
only use its prior) and users with 1..max_history. Writes benchmarks/results/imagine_consistency.md.
`--beams 16 64` adds the same model's imagined behaviours with a beam search over the ID prefixes as methods
"diffusion beam=B" (the exact path stays "diffusion").

`--speed` instead times generation alone (untrained model, nothing to prepare) on a synthetic catalogue of
`--items` items with codes of `--sizes` levels, exact against each beam, arms interleaved per round, and writes
benchmarks/results/imagine_speed.md.

    python benchmarks/imagine_consistency.py --data_dir PREPARED --semids SEMIDS [--seeds 0 1 2] [--k 5]
    python benchmarks/imagine_consistency.py --speed [--items 36298] [--sizes 64 64 64 64] [--beams 16 64 256]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import polars as pl
import torch

from semid import schema as S
from semid.data import Prepared, load
from semid.ids import read_table
from semid.imagine import (
    ImagineConfig,
    ItemCodes,
    ModelConfig,
    SIDDiffusion,
    TrainConfig,
    compare,
    future_positives,
    histories,
    imagine,
    imagine_behaviours,
    imagined_frame,
    item_codes,
    popularity_baseline,
    positive_counts,
    prefix_tree,
    random_baseline,
    seen,
)
from semid.io import write_text

RESULTS = Path(__file__).parent / "results" / "imagine_consistency.md"
SPEED = Path(__file__).parent / "results" / "imagine_speed.md"
METRICS = ("consistency", "hit_rate", "users_with_hit")


def _groups(prepared, max_history: int) -> dict[str, pl.DataFrame]:
    counts = positive_counts(prepared.splits["train"], prepared.users)
    return {
        f"<= {max_history} train positives": counts.filter(pl.col("n_positives") <= max_history),
        "0 train positives": counts.filter(pl.col("n_positives") == 0),
        f"1..{max_history} train positives": counts.filter(pl.col("n_positives").is_between(1, max_history)),
    }


def _truncated(
    prepared: Prepared,
    table: pl.DataFrame,
    sizes: list[int],
    model: SIDDiffusion,
    cfg: ImagineConfig,
    future: pl.DataFrame,
    lengths: list[int],
    seed: int,
    beams: list[int],
) -> list[pl.DataFrame]:
    """Simulated short histories: users with more than max_history train positives, the model shown only their
    last m positives (m in `lengths`); everything they saw in train stays excluded, for every method alike."""
    train = prepared.splits["train"]
    n_items = int(prepared.items[S.ITEM].max()) + 1
    catalogue = item_codes(table, n_items, train, sizes)
    tree = prefix_tree(catalogue.codes)
    counts = positive_counts(train, prepared.users)
    users = counts.filter(pl.col("n_positives") > cfg.max_history)[S.USER].to_numpy()
    exclude = seen(train, users, n_items)
    generator = torch.Generator().manual_seed(seed)
    baselines = {
        "popularity": imagined_frame(users, popularity_baseline(exclude, catalogue, cfg.k)),
        "random": imagined_frame(users, random_baseline(exclude, catalogue, cfg.k, generator)),
    }
    out = []
    for m in lengths:
        hist = histories(train, users, catalogue.known, m)
        methods = {}
        for beam in [None, *beams]:
            imagined = imagine(model, hist, exclude, catalogue, tree, k=cfg.k, steps=cfg.steps, beam=beam)
            methods[_name(beam)] = imagined_frame(users, imagined.items)
        methods |= baselines
        out.append(
            compare(methods, future, table).with_columns(
                pl.lit(f"> {cfg.max_history} train positives, model shown the last {m}").alias("group"),
                pl.lit(seed).alias("seed"),
            )
        )
    return out


def _name(beam: int | None) -> str:
    return "diffusion" if beam is None else f"diffusion beam={beam}"


def _beam_methods(
    prepared: Prepared, table: pl.DataFrame, sizes: list[int], model: SIDDiffusion, cfg: ImagineConfig, beams
) -> dict[str, pl.DataFrame]:
    """The imagined behaviours of `imagine_behaviours`' users from the same model, with each beam."""
    train = prepared.splits["train"]
    n_items = int(prepared.items[S.ITEM].max()) + 1
    catalogue = item_codes(table, n_items, train, sizes)
    tree = prefix_tree(catalogue.codes)
    counts = positive_counts(train, prepared.users)
    users = counts.filter(pl.col("n_positives") <= cfg.max_history)[S.USER].to_numpy()
    history = histories(train, users, catalogue.known, cfg.model.max_len - cfg.k)
    exclude = seen(train, users, n_items)
    out = {}
    for beam in beams:
        imagined = imagine(model, history, exclude, catalogue, tree, k=cfg.k, steps=cfg.steps, beam=beam)
        out[_name(beam)] = imagined_frame(users, imagined.items, imagined.confidence)
    return out


def speed(args: argparse.Namespace) -> str:
    """Generation time on a synthetic catalogue: exact and each beam, interleaved, on the same users."""
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    sizes = args.sizes
    codes = torch.stack([torch.randint(0, size, (args.items,), generator=generator) for size in sizes], 1)
    catalogue = ItemCodes(
        codes=codes,
        known=torch.ones(args.items, dtype=torch.bool),
        popularity=torch.zeros(args.items, dtype=torch.long),
        order=torch.arange(args.items),
        sizes=sizes,
    )
    tree = prefix_tree(codes)
    torch.manual_seed(0)
    model = SIDDiffusion.from_config(ModelConfig(max_len=args.max_len), sizes).eval()
    length = args.max_len - args.k
    history = torch.randint(0, args.items, (args.users, length), generator=generator)  # (U, H)
    history[:, length // 2 :] = -1  # half-full histories
    exclude = torch.zeros(args.users, args.items, dtype=torch.bool)
    exclude[torch.arange(args.users)[:, None], history.clamp(min=0)] = True
    arms: list[int | None] = [None, *args.beams]
    seconds: dict[int | None, list[float]] = {arm: [] for arm in arms}
    items: dict[int | None, torch.Tensor] = {}
    for _ in range(args.rounds):
        for arm in arms:
            start = time.perf_counter()
            got = imagine(
                model, history, exclude, catalogue, tree, k=args.k, batch_size=args.batch_size, beam=arm
            )
            seconds[arm].append(time.perf_counter() - start)
            items[arm] = got.items
    lines = [
        "| scoring | seconds per run (each round) | users/s | items equal to exact |",
        "|---|---:|---:|---:|",
    ]
    for arm in arms:
        best = min(seconds[arm])
        same = (items[arm] == items[None]).float().mean().item()
        runs = ", ".join(f"{t:.2f}" for t in seconds[arm])
        label = "exact" if arm is None else f"beam {arm}"
        lines.append(f"| {label} | {runs} | {args.users / best:.1f} | {same:.3f} |")
    head = (
        f"Synthetic catalogue: {args.items:,} items, codes {sizes} (uniform random; distinct prefixes "
        f"{[len(p) for p in tree.prefixes]}), untrained ModelConfig(max_len={args.max_len}) (d_model 64), "
        f"{args.users} users, k={args.k} (one slot per step), batch {args.batch_size}, {args.rounds} rounds with "
        f"the arms interleaved; users/s from each arm's fastest round; {args.threads} thread(s) "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__})."
    )
    return "\n".join([head, "", *lines, ""])


def run(args: argparse.Namespace) -> str:
    prepared = load(args.data_dir)
    semids = Path(args.semids)
    table, meta = read_table(
        semids / S.ITEM_SIDS_FILE if semids.is_dir() else semids,
        key=S.ITEM,
        data_hash=prepared.meta.get("data_hash"),
    )
    model = ModelConfig(max_len=args.max_len)
    rows, seconds, losses = [], [], []
    for seed in args.seeds:
        cfg = ImagineConfig(
            k=args.k,
            max_history=args.max_history,
            model=model,
            train=TrainConfig(epochs=args.epochs, seed=seed, threads=args.threads),
        )
        start = time.perf_counter()
        result = imagine_behaviours(prepared, table, meta["codebook_sizes"], cfg)
        seconds.append(time.perf_counter() - start)
        losses.append(result.losses[-1])
        future = future_positives(prepared.splits)
        beamed = _beam_methods(prepared, table, meta["codebook_sizes"], result.model, cfg, args.beams)
        every = {"diffusion": result.methods["diffusion"], **beamed, **result.methods}
        for group, users in _groups(prepared, args.max_history).items():
            methods = {name: frame.join(users.select(S.USER), on=S.USER) for name, frame in every.items()}
            table_rows = compare(methods, future, table).with_columns(
                pl.lit(group).alias("group"), pl.lit(seed).alias("seed")
            )
            rows.append(table_rows)
        rows += _truncated(
            prepared,
            table,
            meta["codebook_sizes"],
            result.model,
            cfg,
            future,
            args.truncate,
            seed,
            args.beams,
        )
        print(f"seed {seed}: {seconds[-1]:.1f}s, final loss {losses[-1]:.3f}", flush=True)
    results = pl.concat(rows)
    summary = results.group_by("group", "method", maintain_order=True).agg(
        pl.col("users").first(),
        *(pl.col(m).mean().alias(m) for m in METRICS),
        *(pl.col(m).std().alias(f"{m}_std") for m in METRICS),
    )
    lines = [
        "# Imagined behaviours: semantic consistency vs baselines",
        "",
        f"Data: `{args.data_dir}` ({prepared.meta.get('dataset', '?')}, data hash "
        f"{str(prepared.meta.get('data_hash'))[:12]}), item IDs `{args.semids}` (levels "
        f"{meta['codebook_sizes']}). k = {args.k} imagined behaviours per user with <= {args.max_history} train "
        f"positives; model {model}; {args.epochs} epochs; seeds {args.seeds} (mean, +- std over seeds).",
        "",
        "consistency = fraction of imagined items whose sid_0 is the sid_0 of one of the user's val/test positives;",
        "hit rate = fraction that are one of those items; only users with a val/test positive are scored.",
        "",
    ]
    for group in summary["group"].unique(maintain_order=True):
        lines += [
            f"## {group}",
            "",
            "| method | users | level-1 consistency | exact hit rate | users with a hit |",
            "|---|---:|---:|---:|---:|",
        ]
        for row in summary.filter(pl.col("group") == group).iter_rows(named=True):
            cells = " | ".join(f"{row[m]:.4f} +- {row[m + '_std'] or 0:.4f}" for m in METRICS)
            lines.append(f"| {row['method']} | {row['users']} | {cells} |")
        lines.append("")
    lines += [
        f"Train + generate per seed: {sum(seconds) / len(seconds):.1f}s on {args.threads} thread(s) "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}); "
        f"final training loss {sum(losses) / len(losses):.3f}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir")
    parser.add_argument("--semids")
    parser.add_argument("--beams", type=int, nargs="*", default=[])
    parser.add_argument("--speed", action="store_true", help="time generation on a synthetic catalogue")
    parser.add_argument("--items", type=int, default=36298)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 64, 64, 64])
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--max_history", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--max_len", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--truncate", type=int, nargs="*", default=[1, 3, 5])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not args.speed and not (args.data_dir and args.semids):
        parser.error("--data_dir and --semids are needed (or --speed)")
    text = speed(args) if args.speed else run(args)
    write_text(text, args.out or (SPEED if args.speed else RESULTS))
    print(text)


if __name__ == "__main__":
    main()
