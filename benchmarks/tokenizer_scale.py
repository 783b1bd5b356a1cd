"""Measure the semantic-ID tokenizer at catalogue scale (issue 18): text encoding, RQ-VAE training, ID tables and
`semid assign` on a seeded synthetic catalogue, with each size's peak memory, and extrapolate to 1M items / 24 GiB.

Every measurement runs in a fresh process on one torch thread (forked from a multiprocessing forkserver that has only
imported the libraries, so the imports are paid once), and its peak RSS (ru_maxrss) is that measurement's alone
plus the import baseline:

- encode: `semid.encoder.encode` against the bare tokenizer + forward (benchmarks/encoder_speed.py `bare_forward`)
  over the same texts (encoder_speed's `synthetic_item_texts`), `--repeats` interleaved runs, median; the model is
  loaded once, outside both timings. Hours for 1M texts are extrapolated from the measured items/s.
- rqvae, per N in `--sizes`: seeded 384-d Gaussian-mixture vectors (a shared direction plus one of 4,096 centres,
  L2-normalised, like the encoder's anisotropic output); the real `train_rqvae` with the item RQ-VAE config the
  shipped pipeline builds with (`item_rqvae` of configs/semid/amazon-kitchen.yaml, the largest catalogue), run for
  1 and for `--epochs` epochs, so that s/epoch = the difference / (epochs - 1) and the rest is the fixed cost
  (standardiser, k-means init, Trainer); the default max_epochs is extrapolated from those two. Then the codes of all
  N items, `make_table` (dedup suffix) and `health` of the `--epochs` model.
- assign, per N: what `semid assign` (pipelines/assign.py) does after encoding the new texts, on `--assign_n` new
  synthetic vectors: read the N-item table, load the RQ-VAE checkpoint, quantise, `assign_new`, write the table.
  Text encoding of the new items is not in it: it runs at the encode rate measured above.

Peak RSS ~ a + b * N is fitted by least squares over the sizes; the N where it reaches 24 GiB is an extrapolation.
Writes benchmarks/results/tokenizer_scale.md (the default run takes ~30 min on one core).

    python -m benchmarks.tokenizer_scale                      # sizes 100k, 300k, 1M
    python -m benchmarks.tokenizer_scale --sizes 100000,1000000 --epochs 3 --encode_sample 4000 --assign_n 100000
    python -m benchmarks.tokenizer_scale --quick --out /tmp/tokenizer_scale.md   # tiny sizes: wiring only
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml

from semid.io import replaceable, write_text

if TYPE_CHECKING:
    from semid.rqvae import RQVAEConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "tokenizer_scale.md"
ITEM_RQVAE_YAML = ROOT / "configs" / "semid" / "amazon-kitchen.yaml"
LIMIT_GIB = 24.0
TITLE = "# Tokenizer at catalogue scale"  # first line of the report: --out replaces only such a file
GIB = 1 << 30
TARGET_N = 1_000_000
DIM, CENTRES = 384, 4096
CHILD_TIMEOUT_S = 3 * 3600
PRELOAD = ("benchmarks.encoder_speed", "semid.encoder", "semid.ids", "semid.rqvae")
"""What the forkserver imports once for every measurement (not this module: a worker re-runs the main module)."""


@dataclass(frozen=True)
class Options:
    sizes: list[int]
    epochs: int
    encode_sample: int
    assign_n: int
    repeats: int
    seed: int = 0


QUICK = Options(sizes=[2000, 4000], epochs=1, encode_sample=64, assign_n=500, repeats=1)


def item_rqvae_config(path: Path = ITEM_RQVAE_YAML) -> RQVAEConfig:
    """The item RQ-VAE config of a `semid build` YAML: RQVAEConfig defaults + its `item_rqvae` block."""
    from semid.rqvae import RQVAEConfig  # imports Lightning: only where it is used

    block = (yaml.safe_load(path.read_text()) or {}).get("item_rqvae") or {}
    return RQVAEConfig(**block)


def synthetic_vectors(n: int, *, seed: int, dim: int = DIM, centres: int = CENTRES) -> torch.Tensor:
    """(n, dim) float32 unit vectors: shared direction + one of `centres` fixed random centres + noise.

    The mixture (shared direction and centres) depends on nothing but `dim` and `centres`, so two seeds give two
    samples of the same catalogue (the trained one and the new items of `assign`). Built in chunks in float32.
    """
    mix = np.random.default_rng(12345)
    common = mix.standard_normal(dim).astype(np.float32)
    common /= np.linalg.norm(common)
    means = mix.standard_normal((centres, dim)).astype(np.float32)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    means += 0.8 * common  # an anisotropic cone, as sentence embeddings are
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 65536):
        hi = min(n, lo + 65536)
        label = rng.integers(0, centres, hi - lo)
        noise = rng.standard_normal((hi - lo, dim), dtype=np.float32) * np.float32(0.6 / np.sqrt(dim))
        chunk = means[label] + noise  # (chunk, dim)
        out[lo:hi] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return torch.from_numpy(out)


def _peak_gib() -> float:
    """This process's peak resident set so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def _clock(fn, *args, **kwargs) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


# -- child measurements ----------------------------------------------------------------------------------------


def measure_encode(n_texts: int, repeats: int) -> dict[str, Any]:
    """items/s of `encode` and of the bare HF tokenizer + forward on the same synthetic texts (interleaved)."""
    from benchmarks.encoder_speed import bare_forward, synthetic_item_texts
    from semid.encoder import ContentEncoder, EncoderConfig, encode

    texts = synthetic_item_texts(n_texts)
    cfg = EncoderConfig()
    encoder, load_s = _clock(ContentEncoder, cfg)
    tokens = encoder.tokenizer(texts, truncation=True, max_length=cfg.max_length)["input_ids"]
    bare_forward(encoder, texts[: 2 * cfg.batch_size])  # warm-up
    runs: dict[str, list[float]] = {"bare": [], "encode": []}
    for _ in range(repeats):  # interleaved so background load hits both alike
        runs["bare"].append(_clock(bare_forward, encoder, texts)[1])
        runs["encode"].append(_clock(encode, texts, cfg, encoder=encoder, progress=False)[1])
    return {
        "texts": n_texts,
        "tokens": sum(map(len, tokens)),
        "batch_size": cfg.batch_size,
        "max_length": cfg.max_length,
        "load_s": load_s,
        "runs": runs,
        "peak_rss_gib": _peak_gib(),
    }


def measure_size(n: int, epochs: int, assign_n: int, seed: int, work: Path) -> dict[str, Any]:
    """RQ-VAE training, codes, ID table, health and the `semid assign` path for a catalogue of `n` vectors."""
    from semid import schema as S
    from semid.ids import assign_new, health, make_table, read_table, table_meta, write_table
    from semid.rqvae import load_rqvae, resolve_codebook_sizes, save_rqvae, train_rqvae

    cfg = item_rqvae_config()
    peaks: dict[str, float] = {"start": _peak_gib()}
    x, gen_s = _clock(synthetic_vectors, n, seed=seed)  # (n, 384)
    peaks["vectors"] = _peak_gib()
    sizes = resolve_codebook_sizes(cfg, n)
    train_s: dict[int, float] = {}
    model = None
    for e in sorted({1, epochs}):
        model, train_s[e] = _clock(train_rqvae, x, replace(cfg, max_epochs=e), progress_bar=False)
    peaks["train"] = _peak_gib()
    codes, codes_s = _clock(model.encode, x)  # (n, L)
    keys = np.arange(n, dtype=np.int64)
    table, table_s = _clock(make_table, keys, codes, key=S.ITEM)
    h, health_s = _clock(health, table, sizes)
    peaks["table"] = _peak_gib()

    # `semid assign` after its text encoding: the build's table and checkpoint on disk, new vectors in memory
    table_file, model_file = work / S.ITEM_SIDS_FILE, work / S.ITEM_RQVAE_FILE
    meta = table_meta(
        key=S.ITEM,
        codebook_sizes=sizes,
        health=h,
        encoder="synthetic vectors",
        seed=seed,
        data_hash="synthetic",
    )
    write_table(table, table_file, meta)
    save_rqvae(model, cfg, model_file, meta={"codebook_sizes": sizes})
    del table, codes, model
    new = synthetic_vectors(assign_n, seed=seed + 1)  # (assign_n, 384)
    new_keys = np.arange(n, n + assign_n, dtype=np.int64)
    (old, old_meta), read_s = _clock(read_table, table_file, key=S.ITEM)
    loaded, load_s = _clock(load_rqvae, model_file)
    new_codes, quantise_s = _clock(loaded.encode, new)  # (assign_n, L)
    (merged, new_meta), assign_s = _clock(
        assign_new, old, old_meta, new_keys, new_codes, source=loaded.build_meta
    )
    _, write_s = _clock(write_table, merged, table_file, new_meta)
    peaks["assign"] = _peak_gib()
    level0 = h["levels"][0]
    return {
        "n": n,
        "config": asdict(cfg),
        "codebook_sizes": sizes,
        "generate_s": gen_s,
        "train_s": {str(e): s for e, s in train_s.items()},
        "epochs": epochs,
        "codes_s": codes_s,
        "make_table_s": table_s,
        "health_s": health_s,
        "level0_utilization": level0["utilization"],
        "utilization": h["utilization"],
        "collision_rate": h["collision_rate"],
        "largest_bucket": h["largest_bucket"],
        "unique_full_ids": h["unique_full_ids"],
        "health_ok": h["unique_full_ids"] == 1.0 and level0["utilization"] >= cfg.min_level0_utilization,
        "assign": {
            "new": assign_n,
            "read_table_s": read_s,
            "load_rqvae_s": load_s,
            "quantise_s": quantise_s,
            "assign_new_s": assign_s,
            "write_table_s": write_s,
            "rows_after": merged.height,
            "version_after": new_meta["version"],
        },
        "peak_rss_gib": peaks,
    }


def _in_child(measure: str, kwargs: dict[str, Any], log: str) -> dict[str, Any]:
    """Run `measure(**kwargs)` in this fresh worker on one torch thread, library output (Lightning, the model
    loading bar) into the file `log`."""
    torch.set_num_threads(1)
    with open(log, "ab") as sink:
        saved = [os.dup(1), os.dup(2)]
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            if measure == "size":
                with tempfile.TemporaryDirectory(prefix="semid-tokscale-") as work:
                    return measure_size(**kwargs, work=Path(work))
            return measure_encode(**kwargs)
        finally:
            for fd, old in zip((1, 2), saved):
                os.dup2(old, fd)
                os.close(old)


def run_child(measure: str, log: Path, **kwargs: Any) -> dict[str, Any]:
    """One measurement in a fresh process: forked from a server that has only imported the libraries (so the
    imports are paid once, and each measurement's ru_maxrss is its own plus that import baseline). RuntimeError
    with the tail of its log if it fails."""
    from benchmarks import tokenizer_scale as this  # by module name, also when run as __main__ (pickling)

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx, max_tasks_per_child=1) as pool:
        future = pool.submit(this._in_child, measure, kwargs, str(log))
        try:
            return future.result(timeout=CHILD_TIMEOUT_S)
        except Exception as err:
            tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
            raise RuntimeError(f"{measure} {kwargs} failed: {err!r}\n{tail}") from err


# -- derived figures -------------------------------------------------------------------------------------------


def encode_figures(enc: dict[str, Any]) -> dict[str, float]:
    """Median seconds and items/s of both paths, their ratio, and the extrapolated hours for 1M texts."""
    med = {name: statistics.median(values) for name, values in enc["runs"].items()}
    rate = {name: enc["texts"] / s for name, s in med.items()}
    return {
        "bare_s": med["bare"],
        "encode_s": med["encode"],
        "bare_items_s": rate["bare"],
        "encode_items_s": rate["encode"],
        "ratio": rate["encode"] / rate["bare"],
        "hours_1m_1thread": TARGET_N / rate["encode"] / 3600,
        "hours_1m_2threads": TARGET_N / rate["encode"] / 3600 / 2,
    }


def train_figures(r: dict[str, Any]) -> dict[str, float]:
    """s/epoch and fixed seconds from the 1- and E-epoch runs; the extrapolated time of the config's max_epochs.

    With E = 1 there is one run: s/epoch is its whole time (an upper bound: the fixed cost is in it)."""
    times = {int(e): s for e, s in r["train_s"].items()}
    e = r["epochs"]
    per_epoch = (times[e] - times[1]) / (e - 1) if e > 1 else times[1]
    fixed = max(times[1] - per_epoch, 0.0) if e > 1 else 0.0
    default_epochs = r["config"]["max_epochs"]
    return {
        "per_epoch_s": per_epoch,
        "fixed_s": fixed,
        "default_epochs": default_epochs,
        "default_total_s": fixed + per_epoch * default_epochs,
    }


def assign_figures(a: dict[str, Any]) -> dict[str, float]:
    total = a["read_table_s"] + a["load_rqvae_s"] + a["quantise_s"] + a["assign_new_s"] + a["write_table_s"]
    return {
        "total_s": total,
        "items_s": a["new"] / total,
        "quantise_items_s": a["new"] / a["quantise_s"],
    }


def fit_memory(results: list[dict[str, Any]], limit_gib: float = LIMIT_GIB) -> dict[str, float] | None:
    """Least squares peak RSS (GiB) = a + b * N over the sizes and the N where it reaches `limit_gib` (None with
    fewer than two sizes; inf when it does not grow)."""
    if len(results) < 2:
        return None
    n = np.array([float(r["n"]) for r in results])
    y = np.array([r["peak_rss_gib"]["assign"] for r in results])
    (b, a), *_ = np.linalg.lstsq(np.c_[n, np.ones_like(n)], y, rcond=None)
    return {
        "a_gib": float(a),
        "gib_per_million": float(b) * 1e6,
        "n_at_limit": (limit_gib - float(a)) / float(b) if b > 0 else float("inf"),
    }


# -- report ----------------------------------------------------------------------------------------------------


def _versions() -> str:
    names = ("torch", "transformers", "lightning", "vector-quantize-pytorch", "polars", "numpy")
    return ", ".join(f"{name} {version(name)}" for name in names)


def report(
    opts: Options, command: str, enc: dict[str, Any], sizes: list[dict[str, Any]], loads: tuple[float, float]
) -> str:
    ef = encode_figures(enc)
    runs = {k: ", ".join(f"{v:.1f}" for v in vs) for k, vs in enc["runs"].items()}
    cfg = sizes[0]["config"] if sizes else asdict(item_rqvae_config())
    fit = fit_memory(sizes)
    met = "met" if ef["ratio"] >= 0.95 else "NOT met"
    lines = [
        f"{TITLE}: encode, RQ-VAE, ID table, `semid assign`, peak memory (issue 18)",
        "",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Command: `{command}`.  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared: another job "
        f"runs on the other core), Python {platform.python_version()}, {_versions()}.  ",
        "Threads: 1 torch thread in every measurement, each in a fresh process (forked from a forkserver that only "
        "imported the libraries). "
        f"1-minute load average: {loads[0]:.1f} at the start, {loads[1]:.1f} at the end.",
        "",
        f"## Encoding item texts ({enc['texts']:,} synthetic texts, all-MiniLM-L6-v2)",
        "",
        f"Texts from `benchmarks/encoder_speed.py` `synthetic_item_texts` ({enc['tokens']:,} tokens, "
        f"{enc['tokens'] / enc['texts']:.1f} per text), batch size {enc['batch_size']}, max_length "
        f"{enc['max_length']}; median of {opts.repeats} interleaved runs (all runs in brackets). The model is loaded "
        f"once ({enc['load_s']:.1f} s) outside both timings.",
        "",
        "| path | seconds | items/s | tokens/s |",
        "|---|---:|---:|---:|",
        f"| bare HF tokenizer + forward (`bare_forward`) | {ef['bare_s']:.2f} ({runs['bare']}) "
        f"| {ef['bare_items_s']:.1f} | {enc['tokens'] / ef['bare_s']:.0f} |",
        f"| `semid.encoder.encode` | {ef['encode_s']:.2f} ({runs['encode']}) | {ef['encode_items_s']:.1f} "
        f"| {enc['tokens'] / ef['encode_s']:.0f} |",
        "",
        f"encode / bare items/s: x{ef['ratio']:.3f} (goal >= 0.95x: {met}). Peak RSS of the encode process: "
        f"{enc['peak_rss_gib']:.2f} GiB.",
        "",
        f"Extrapolated, not measured: {TARGET_N:,} texts at the measured `encode` rate take "
        f"{ef['hours_1m_1thread']:.1f} h on 1 thread and {ef['hours_1m_2threads']:.1f} h on 2 threads if the "
        "rate scaled linearly (it did not on this shared machine: benchmarks/results/encoder_speed_ddp.md measured "
        "x0.88 for 2 processes with one core busy elsewhere). Their output alone is 1M x 384 float32 = 1.43 GiB.",
        "",
        f"## RQ-VAE training, codes, ID table (synthetic {DIM}-d vectors)",
        "",
        f"Vectors: a seeded mixture of {CENTRES:,} Gaussian centres around a shared direction, L2-normalised. Config: "
        f"`item_rqvae` of {ITEM_RQVAE_YAML.relative_to(ROOT)} on the RQVAEConfig defaults (levels {cfg['levels']}, "
        f"codebook_size {cfg['codebook_size']}, batch {cfg['batch_size']}, max_epochs {cfg['max_epochs']}, k-means "
        f"init on <= 100k vectors), real `train_rqvae`. "
        + (
            f"Measured: one run of 1 epoch and one of {opts.epochs} epochs per N; s/epoch = the difference / "
            f"{opts.epochs - 1}, fixed = the rest of the 1-epoch run (standardiser, k-means init, Trainer set-up). "
            if opts.epochs > 1
            else "Measured: one 1-epoch run per N; s/epoch = its whole time (fixed cost included: an upper bound). "
        )
        + f"The codes, table and health are those of the {opts.epochs}-epoch model, not of a fully trained one.",
        "",
        "| N | codebook sizes | fixed s | s/epoch | measured train s (epochs) "
        f"| extrapolated train, {cfg['max_epochs']} epochs | codes s | make_table s | health s "
        "| level utilization | collision rate | unique IDs | health ok |",
        "|---:|---|---:|---:|---|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in sizes:
        tf = train_figures(r)
        measured = ", ".join(f"{s:.1f} ({e})" for e, s in r["train_s"].items())
        lines.append(
            f"| {r['n']:,} | {'x'.join(map(str, r['codebook_sizes']))} | {tf['fixed_s']:.1f} "
            f"| {tf['per_epoch_s']:.1f} | {measured} | {tf['default_total_s'] / 3600:.2f} h "
            f"| {r['codes_s']:.2f} | {r['make_table_s']:.2f} | {r['health_s']:.2f} "
            f"| {' / '.join(f'{u:.2f}' for u in r['utilization'])} | {r['collision_rate']:.2%} "
            f"| {r['unique_full_ids']:.3f} | {'yes' if r['health_ok'] else 'no'} |"
        )
    lines += [
        "",
        f"## `semid assign` path: {opts.assign_n:,} new items into a table of N",
        "",
        "What pipelines/assign.py does once the new texts are encoded: read and validate the N-row table "
        "(`read_table`), load the RQ-VAE checkpoint, quantise the new vectors, `assign_new` (suffixes, merged "
        "table, new health), `write_table`. Text encoding is not included: the CLI encodes the new texts first, at "
        "about the `encode` rate above (the aligned encoder is the same MiniLM), which dominates.",
        "",
        "| N | read table s | load model s | quantise s (items/s) | assign_new s | write table s | total s "
        "| items/s without text encoding | items/s with text encoding (extrapolated) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sizes:
        a, af = r["assign"], assign_figures(r["assign"])
        with_text = a["new"] / (af["total_s"] + a["new"] / ef["encode_items_s"])
        lines.append(
            f"| {r['n']:,} | {a['read_table_s']:.2f} | {a['load_rqvae_s']:.2f} | {a['quantise_s']:.2f} "
            f"({af['quantise_items_s']:,.0f}) | {a['assign_new_s']:.2f} | {a['write_table_s']:.2f} "
            f"| {af['total_s']:.2f} | {af['items_s']:,.0f} | {with_text:.1f} |"
        )
    lines += [
        "",
        "## Peak memory",
        "",
        "Peak RSS (ru_maxrss) of each size's process after each step (cumulative: a step's figure is the peak "
        "so far).",
        "",
        "| N | at start | vectors | + training | + codes, table, health | + assign (peak) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sizes:
        p = r["peak_rss_gib"]
        lines.append(
            f"| {r['n']:,} | {p['start']:.2f} | {p['vectors']:.2f} | {p['train']:.2f} | {p['table']:.2f} "
            f"| {p['assign']:.2f} |"
        )
    if fit is not None:
        lines += [
            "",
            f"Least-squares fit over the {len(sizes)} sizes: peak RSS = {fit['a_gib']:.2f} GiB + "
            f"{fit['gib_per_million']:.2f} GiB per million items. Extrapolated, not measured: it reaches "
            f"{LIMIT_GIB:.0f} GiB at N = {fit['n_at_limit'] / 1e6:,.1f}M items (a linear extrapolation beyond "
            f"{max(r['n'] for r in sizes):,}).",
        ]
    largest = max(sizes, key=lambda r: r["n"]) if sizes else None
    lines += [
        "",
        "## Measured vs extrapolated",
        "",
        f"Measured: encode and bare-forward items/s on {enc['texts']:,} texts; for each N in "
        f"{', '.join(f'{n:,}' for n in opts.sizes)}: the time of {'1- and ' if opts.epochs > 1 else ''}{opts.epochs}-epoch `train_rqvae` runs, "
        f"the codes, table, health and `semid assign` (without text encoding) of {opts.assign_n:,} new items, and "
        "each process's peak RSS. Extrapolated: encoding 1M texts (from the sample's rate; 2 threads assumes linear "
        f"scaling), training for the config's {cfg['max_epochs']} epochs (fixed + epochs x s/epoch: later epochs "
        "cost what the first ones did), `semid assign` with text encoding, and the N where peak RSS reaches "
        f"{LIMIT_GIB:.0f} GiB (linear fit)."
        + (
            f" At N = {largest['n']:,} the tokenizer's whole chain (vectors -> IDs) peaked at "
            f"{largest['peak_rss_gib']['assign']:.2f} GiB, measured."
            if largest
            else ""
        ),
        "",
    ]
    return "\n".join(lines)


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100000,300000,1000000", help="catalogue sizes N, comma-separated")
    p.add_argument("--epochs", type=int, default=2, help="epochs of the longer timed run (the other runs 1)")
    p.add_argument("--encode_sample", "--encode-sample", type=int, default=4000)
    p.add_argument("--assign_n", "--assign-n", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the wiring, not real figures")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--log", type=Path, default=None, help="library output of the measurements (default: a temp file)"
    )
    a = p.parse_args(argv)
    if a.quick:
        opts = replace(QUICK, seed=a.seed)
    else:
        sizes = sorted({int(s) for s in a.sizes.split(",") if s.strip()})
        opts = Options(sizes, a.epochs, a.encode_sample, a.assign_n, a.repeats, a.seed)
    if (
        opts.epochs < 1
        or not opts.sizes
        or min(opts.sizes) < 2
        or opts.encode_sample < 1
        or opts.assign_n < 1
    ):
        p.error("--epochs, --encode_sample and --assign_n must be >= 1 and every size >= 2")
    if not replaceable(a.out, TITLE):
        p.error(
            f"--out {a.out} is not an earlier report of this benchmark: pick a new path (nothing was written)"
        )
    log = a.log or Path(tempfile.gettempdir()) / f"semid-tokscale-{os.getpid()}.log"
    command = " ".join(["python -m benchmarks.tokenizer_scale", *argv])
    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    enc = run_child("encode", log, n_texts=opts.encode_sample, repeats=opts.repeats)
    ef = encode_figures(enc)
    print(
        f"[tokscale] encode: {ef['encode_items_s']:.1f} items/s vs bare {ef['bare_items_s']:.1f} "
        f"(x{ef['ratio']:.3f}) ({time.perf_counter() - start:.0f}s)",
        flush=True,
    )
    results = []
    for n in opts.sizes:
        r = run_child("size", log, n=n, epochs=opts.epochs, assign_n=opts.assign_n, seed=opts.seed)
        tf = train_figures(r)
        print(
            f"[tokscale] N={n:,}: {tf['per_epoch_s']:.1f} s/epoch, fixed {tf['fixed_s']:.1f} s, assign "
            f"{assign_figures(r['assign'])['items_s']:,.0f} items/s, peak RSS {r['peak_rss_gib']['assign']:.2f} GiB "
            f"({time.perf_counter() - start:.0f}s)",
            flush=True,
        )
        results.append(r)
    text = report(opts, command, enc, results, (load_start, os.getloadavg()[0]))
    write_text(text, a.out)
    print(text)
    print(f"[tokscale] wrote {a.out}; library output in {log}")


if __name__ == "__main__":
    main()
