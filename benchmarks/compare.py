"""Measure semid-ctr side by side with FuxiCTR, DeepCTR-Torch and torch-rechub in one run; write RESULTS.md.

One run, one machine, one prepared ML-1M temporal split. Figures (each a ratio measured in this run):
  1. CTR train / predict samples/s: our DeepFM (Lightning) and AKT vs each peer's DeepFM, plus our bare PyTorch loop.
  2. Test AUC / GAUC of every model, all scored by `ctr.metrics` on the predictions each one wrote.
  3. GAUC time: `ctr.metrics.gauc` vs FuxiCTR's gAUC on the same predictions (and their values).
  4. Semantic IDs: our builder (train_rqvae + encode + make_table + health) vs torch-rechub's RQ-VAE builder on the same
     item embeddings, same architecture / codebook sizes / epochs.
  5. Encoder: `semid.encoder.encode` vs a bare Hugging Face forward on the same texts (benchmarks/encoder_speed.py).
  6. Scaling: AKT on synthetic data of growing size (benchmarks/scaling.py).
Peers run in their own venvs (benchmarks/setup_peers.sh) as subprocesses (benchmarks/peers/*_run.py).

    bash benchmarks/run_all.sh [--quick]          # peer venvs + this script (from the repository root)
    python -m benchmarks.compare                  # the full run (the lead runs it; ~30-45 min on 2 cores)
    python -m benchmarks.compare --quick          # a tiny subset to check the wiring (a few minutes; figures meaningless)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import lightning as L
import numpy as np
import polars as pl
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import peer_data, scaling
from benchmarks.machine import cpu_model
from ctr.data import CTRDataModule
from ctr.metrics import auc, gauc, logloss
from ctr.module import CTRTask
from pipelines.fit import SEMIDS_DATA
from semid import schema as S
from semid.encoder import ContentEncoder, EncoderConfig, encode
from semid.ids import health, make_table, table_meta, write_table
from semid.io import cache_dir, read_meta, replaceable, write_json, write_text
from semid.rqvae import RQVAEConfig, resolve_codebook_sizes, train_rqvae

HERE = Path(__file__).resolve().parent
PEERS = ("deepctr_torch", "torch_rechub", "fuxictr")
PEER_NAMES = {"deepctr_torch": "DeepCTR-Torch", "torch_rechub": "torch-rechub", "fuxictr": "FuxiCTR"}
GOALS = {
    "train_vs_peer": 1.5,
    "predict_vs_peer": 2.0,
    "akt_train_vs_peer": 1.0,
    "akt_predict_vs_peer": 2.0,
    "gauc_speedup": 100.0,
}
QUALITY_TOL = 0.001  # issue 18: our DeepFM not below a peer's same-architecture DeepFM by more than 0.1 pt
# our DeepFM row with each peer's architecture: torch-rechub's MLP is Linear-BatchNorm-ReLU and its first order a linear
# layer over the field embeddings (its `LR`); the others' MLPs have no BatchNorm and their first order is a 1-d table
SAME_ARCH = {"deepctr_torch": "deepfm", "torch_rechub": "deepfm_bn", "fuxictr": "deepfm"}
GAUC_TOL = 1e-9
TITLE = "# semid-ctr vs FuxiCTR, DeepCTR-Torch, torch-rechub"  # the first line of every RESULTS.md it writes
ENCODE_OVERHEAD_BUDGET = 0.10


@dataclass(frozen=True)
class Profile:
    """Everything that differs between the full run and --quick."""

    quick: bool
    train_rows: int  # 0 = the whole split
    eval_rows: int
    steps: int  # train steps per throughput repetition
    repeats: int
    epochs: int  # epochs of the quality runs (fixed for every model, no early stopping)
    quality_seeds: int  # quality runs per model (seeds seed, seed + 1, ...; init and shuffling): mean +- std
    rqvae_epochs: int
    sid_repeats: int
    encoder_texts: int  # 0 = all item texts
    encoder_repeats: int
    gauc_repeats: int
    scaling_sizes: tuple[scaling.Size, ...]
    scaling_steps: int
    scaling_warmup: int


FULL = Profile(
    quick=False,
    train_rows=0,
    eval_rows=0,
    steps=150,
    repeats=3,
    epochs=1,
    quality_seeds=5,
    rqvae_epochs=100,
    sid_repeats=1,
    encoder_texts=0,
    encoder_repeats=3,
    gauc_repeats=3,
    scaling_sizes=(
        scaling.Size(1_000_000, 100_000, 50_000),
        scaling.Size(4_000_000, 100_000, 200_000),
        scaling.Size(16_000_000, 100_000, 800_000),
        scaling.Size(4_000_000, 10_000, 200_000),
        scaling.Size(4_000_000, 1_000_000, 200_000),
    ),
    scaling_steps=40,
    scaling_warmup=5,
)
QUICK = Profile(
    quick=True,
    train_rows=30_000,
    eval_rows=6_000,
    steps=6,
    repeats=3,
    epochs=1,
    quality_seeds=2,
    rqvae_epochs=3,
    sid_repeats=1,
    encoder_texts=128,
    encoder_repeats=1,
    gauc_repeats=3,
    scaling_sizes=(
        scaling.Size(100_000, 2_000, 5_000),
        scaling.Size(200_000, 2_000, 10_000),
        scaling.Size(200_000, 8_000, 10_000),
    ),
    scaling_steps=8,
    scaling_warmup=2,
)


# -- machine and environment --------------------------------------------------------------------------------


def machine() -> dict:
    mem_kb = next(
        int(ln.split()[1])
        for ln in Path("/proc/meminfo").read_text().splitlines()
        if ln.startswith("MemTotal")
    )
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kb / (1 << 20), 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_avg_1min_start": os.getloadavg()[0],
    }


def our_versions() -> dict:
    names = (
        "semid-ctr",
        "torch",
        "lightning",
        "torchmetrics",
        "polars",
        "transformers",
        "vector-quantize-pytorch",
    )
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE.parent
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=HERE.parent
    ).stdout
    return done.stdout.strip() + (" (+ uncommitted changes)" if dirty.strip() else "")


# -- helpers ------------------------------------------------------------------------------------------------


def trainer(**overrides) -> L.Trainer:
    opts = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    opts.update(overrides)
    return L.Trainer(**opts)


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def scores_of(predictions: list[dict]) -> np.ndarray:
    return torch.cat([p["score"] for p in predictions]).numpy().astype(np.float64)


def mean_quality(runs: list[dict]) -> tuple[dict, dict]:
    """Per-metric mean and standard deviation (0 for one run) over the quality runs of several seeds."""
    mean = {k: statistics.fmean(r[k] for r in runs) for k in runs[0]}
    std = {k: statistics.stdev(r[k] for r in runs) if len(runs) > 1 else 0.0 for k in runs[0]}
    return mean, std


def quality(scores: np.ndarray, test: pl.DataFrame) -> dict:
    s = torch.from_numpy(np.asarray(scores, dtype=np.float64))
    y = torch.from_numpy(test["label"].to_numpy().astype(np.float64))
    g = torch.from_numpy(test[S.USER].to_numpy().astype(np.int64))
    return {"auc": auc(s, y), "gauc": gauc(s, y, g), "logloss": logloss(s, y)}


def run_cmd(cmd: list[str], *, log: Path, env: dict | None = None, timeout: int = 3600) -> str:
    """Run a peer subprocess; its stderr goes to `log`; raise (non-zero exit) with the log tail on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    print(f"[compare] $ {shlex.join(cmd)}", flush=True)
    with log.open("w") as err:
        done = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=full_env, timeout=timeout
        )
    if done.returncode != 0:
        tail = log.read_text()[-4000:]
        raise RuntimeError(f"{cmd[1]} failed with exit code {done.returncode}; log {log}:\n{tail}")
    return done.stdout


def last_json(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON line in the output:\n{stdout[-2000:]}")


# -- sections -----------------------------------------------------------------------------------------------


@dataclass
class Ctx:
    profile: Profile
    prepared: Path
    work: Path
    venvs: Path
    threads: int
    batch_size: int
    eval_batch_size: int
    seed: int
    peers: tuple[str, ...]
    semids: Path | None = None
    source: Path | None = (
        None  # the prepared data --prepared named (ctx.prepared is a subset of it in --quick)
    )

    def thread_env(self) -> dict:
        t = str(self.threads)
        return {"OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}


def item_embeddings(ctx: Ctx) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, (N, 384) vectors) of every item's `text` by the default encoder, cached under the work dir."""
    items = pl.read_parquet(ctx.prepared / S.ITEMS_FILE, columns=[S.ITEM, S.TEXT]).sort(S.ITEM)
    emb = encode(items[S.TEXT].to_list(), EncoderConfig(), cache=ctx.work / "embedding-cache", progress=False)
    return items[S.ITEM].to_numpy(), emb.numpy()


def semantic_ids(ctx: Ctx, ids: np.ndarray, emb: np.ndarray) -> tuple[dict, Path]:
    """Figure 4; also returns the ID table AKT trains with."""
    cfg = RQVAEConfig(max_epochs=ctx.profile.rqvae_epochs, seed=ctx.seed)
    sizes = resolve_codebook_sizes(cfg, len(emb))
    x = torch.from_numpy(emb)

    def ours():
        model = train_rqvae(x, cfg, progress_bar=False, num_threads=ctx.threads)
        codes = model.encode(x)  # (N, L)
        table = make_table(ids, codes, key=S.ITEM)
        return table, health(table, sizes)

    runs = [timed(ours) for _ in range(ctx.profile.sid_repeats)]
    table, h = runs[-1][1]
    sid_path = ctx.work / "item_sids.parquet"
    meta = table_meta(
        key=S.ITEM,
        codebook_sizes=sizes,
        health=h,
        encoder="all-MiniLM-L6-v2 (default)",
        seed=ctx.seed,
        data_hash=read_meta(ctx.prepared / S.ITEMS_FILE).get("data_hash", ""),
    )
    write_table(table, sid_path, meta)

    emb_path = ctx.work / "item_emb.npy"
    np.save(emb_path, emb)
    out = {
        "items": int(len(emb)),
        "sizes": sizes,
        "config": dataclasses.asdict(cfg),
        "ours": {
            "build_seconds": statistics.median(r[0] for r in runs),
            "build_runs": [r[0] for r in runs],
            "health": h,
        },
    }
    if "torch_rechub" in ctx.peers:
        cmd = [
            str(ctx.venvs / "torch_rechub" / "bin" / "python"),
            str(HERE / "peers" / "torch_rechub_rqvae.py"),
        ]
        cmd += [
            "--emb",
            str(emb_path),
            "--out",
            str(ctx.work / "rechub-rqvae"),
            "--sizes",
            ",".join(map(str, sizes)),
        ]
        cmd += ["--latent-dim", str(cfg.latent_dim), "--hidden", ",".join(map(str, cfg.hidden_dims))]
        cmd += ["--epochs", str(cfg.max_epochs), "--batch-size", str(cfg.batch_size), "--lr", str(cfg.lr)]
        cmd += [
            "--repeats",
            str(ctx.profile.sid_repeats),
            "--threads",
            str(ctx.threads),
            "--seed",
            str(ctx.seed),
        ]
        res = last_json(run_cmd(cmd, log=ctx.work / "logs" / "torch_rechub_rqvae.log", env=ctx.thread_env()))
        codes = np.load(res["codes"])
        out["torch_rechub"] = {
            "build_seconds": res["build_seconds_median"],
            "build_runs": res["build_seconds"],
            "train_seconds": res["train_seconds"],
            "health_raw": health(make_table(ids, codes["raw"], key=S.ITEM), sizes),
            "health_final": health(make_table(ids, codes["final"], key=S.ITEM), sizes),
            "versions": {"torch-rechub": res["torch-rechub"], "scikit-learn": res["scikit-learn"]},
        }
    return out, sid_path


def akt_inputs(ctx: Ctx, built: Path) -> tuple[dict, str]:
    """The data AKT is fitted on: a `semid build` output of this prepared data (--semids: item and user IDs, the
    aligned content vectors that configs/ctr/akt.yaml's content tower and content fields read), else the item IDs
    built in figure 4 and no content (AKT is then built without its content parts)."""
    if ctx.semids is None:
        return {
            "item_sids": str(built)
        }, "item IDs built in this run (figure 4, our builder); no content vectors"
    want = read_meta((ctx.source or ctx.prepared) / S.ITEMS_FILE).get("data_hash")
    out = {}
    for key, name in SEMIDS_DATA.items():
        path = ctx.semids / name
        if not path.is_file():
            sys.exit(
                f"--semids {ctx.semids} has no {name}: give the semids/ folder of a `semid run` on this data"
            )
        got = read_meta(path).get("data_hash")
        if want and got != want:
            sys.exit(
                f"{path} was built from other prepared data (data_hash {got}, {ctx.prepared} has {want}): give the "
                "semids/ folder of a run on this --prepared"
            )
        out[key] = str(path)
    return (
        out,
        f"`{ctx.semids}` (item and user IDs, aligned content vectors; a `semid run` build of this data)",
    )


def shipped_net(name: str, **overrides) -> dict:
    """`configs/ctr/<name>.yaml`'s model.net ({class_path, init_args}) with `overrides` on its init_args."""
    net = yaml.safe_load((HERE.parent / "configs" / "ctr" / f"{name}.yaml").read_text())["model"]["net"]
    return {"class_path": net["class_path"], "init_args": {**(net.get("init_args") or {}), **overrides}}


def matmul_flops(model: CTRTask, batch) -> dict[str, float]:
    """Matrix-multiply FLOPs per sample of one train step (forward + backward of the task's loss) and of one predict
    forward, as `torch.utils.flop_counter` counts them: mm / addmm / bmm and the like. Gathers, elementwise ops
    and the optimiser are not counted, so this is the work a step cannot avoid, not its time."""
    n = len(batch.label)
    model.train()
    with FlopCounterMode(display=False) as train:
        loss, _ = model.loss(batch, model(batch))
        loss.backward()
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as predict:
        model(batch)
    return {"train": train.get_total_flops() / n, "predict": predict.get_total_flops() / n}


def ctr_section(ctx: Ctx, peer_dir: Path, akt_data: dict) -> dict:
    """Figures 1 and 2: our DeepFM (plain and in torch-rechub's form: BatchNorm MLP, linear first order) / AKT /
    bare loop in this process, every peer in its venv. Every network is wrapped in `CTRTask` (loss, fused Adam, lr 1e-3), as `ctr fit` does."""
    p, bs = ctx.profile, ctx.batch_size
    test = pl.read_parquet(peer_dir / "test.parquet", columns=[S.USER, "label"])
    common = dict(batch_size=bs, eval_batch_size=ctx.eval_batch_size, seed=ctx.seed)
    # the peers' features: ids + side features, no history (history_len=0 leaves DeepFM's history field at zero)
    dm_fm = CTRDataModule(str(ctx.prepared), history_len=0, **common)
    dm_akt = CTRDataModule(str(ctx.prepared), history_len=20, **akt_data, **common)
    dm_fm.setup()
    dm_akt.setup()
    n_train = len(dm_fm.dataset("train"))
    steps = min(p.steps, n_train // bs)

    fm_args = dict(embed_dim=16, mlp_dims=[256, 128], dropout=0.0)
    # AKT as configs/ctr/akt.yaml ships it (content tower + content fields when --semids gives content), at the
    # DeepFM rows' embed size and dropout
    has_content = "item_content" in akt_data
    akt_net = shipped_net("akt", embed_dim=16, dropout=0.0)
    if not has_content:
        akt_net["init_args"].update(content_tower=False, content_fields=False)

    def task(net: dict, spec, seed: int) -> CTRTask:
        torch.manual_seed(seed)
        return CTRTask(net, spec, lr=1e-3)

    def deepfm(seed: int = ctx.seed):
        return task({"class_path": "ctr.models.deepfm.DeepFM", "init_args": fm_args}, dm_fm.spec, seed)

    def deepfm_bn(seed: int = ctx.seed):
        init = {**fm_args, "batch_norm": True, "first_order": "linear"}
        return task({"class_path": "ctr.models.deepfm.DeepFM", "init_args": init}, dm_fm.spec, seed)

    def akt(seed: int = ctx.seed):
        model = task(akt_net, dm_akt.spec, seed)
        model.index_sids(dm_akt.tables)  # as a Trainer given the DataModule does in CTRTask.setup
        return model

    def lightning_steps(model, dm, n=steps):
        sec, _ = timed(lambda: trainer(max_steps=n).fit(model, train_dataloaders=dm.train_dataloader()))
        return n * bs / sec

    def lightning_predict(model, dm):
        loader = dm.loader("test", shuffle=False)
        sec, _ = timed(lambda: trainer().predict(model, dataloaders=loader))
        return len(test) / sec

    def bare_steps(model, dm, n=steps):
        """What CTRTask.training_step does, in a plain loop over the same DataModule batches."""
        model.train()
        opt = model.configure_optimizers()
        start = time.perf_counter()
        for i, batch in enumerate(dm.loader("train", shuffle=True)):
            if i == n:
                break
            loss, _ = model.loss(batch, model(batch))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return n * bs / (time.perf_counter() - start)

    def bare_predict(model, dm):
        model.eval()
        start = time.perf_counter()
        with torch.inference_mode():
            for batch in dm.loader("test", shuffle=False):
                torch.sigmoid(model(batch).logit)
        return len(test) / (time.perf_counter() - start)

    warm = min(steps, 10)
    (
        lightning_steps(deepfm(), dm_fm, warm),
        bare_steps(deepfm(), dm_fm, warm),
        lightning_steps(akt(), dm_akt, warm),
        lightning_steps(deepfm_bn(), dm_fm, warm),
    )
    runs: dict[str, dict[str, list[float]]] = {
        k: {"train": [], "predict": []} for k in ("deepfm", "bare", "akt", "deepfm_bn")
    }
    for _ in range(p.repeats):  # interleaved so that background load hits all alike
        m = deepfm()
        runs["deepfm"]["train"].append(lightning_steps(m, dm_fm))
        runs["deepfm"]["predict"].append(lightning_predict(m, dm_fm))
        m = deepfm()
        runs["bare"]["train"].append(bare_steps(m, dm_fm))
        runs["bare"]["predict"].append(bare_predict(m, dm_fm))
        m = akt()
        runs["akt"]["train"].append(lightning_steps(m, dm_akt))
        runs["akt"]["predict"].append(lightning_predict(m, dm_akt))
        m = deepfm_bn()
        runs["deepfm_bn"]["train"].append(lightning_steps(m, dm_fm))
        runs["deepfm_bn"]["predict"].append(lightning_predict(m, dm_fm))

    seeds = [ctx.seed + i for i in range(p.quality_seeds)]

    def reseeded(dm: CTRDataModule, seed: int) -> CTRDataModule:
        again = CTRDataModule(**{**dm.hparams, "seed": seed})
        again.setup()
        return again

    models: dict[str, dict] = {}
    for key, build, dm, label in (
        ("deepfm", deepfm, dm_fm, "semid-ctr DeepFM (Lightning)"),
        ("akt", akt, dm_akt, "semid-ctr AKT (Lightning)"),
        ("deepfm_bn", deepfm_bn, dm_fm, "semid-ctr DeepFM + BatchNorm MLP + linear first order (Lightning)"),
    ):
        runs_q, secs = [], []
        for seed in seeds:
            # another seed: another init and another shuffling, as each peer's --seed gives
            data = dm if seed == ctx.seed else reseeded(dm, seed)
            model = build(seed)
            sec, _ = timed(
                lambda m=model, d=data: trainer(max_epochs=p.epochs).fit(
                    m, train_dataloaders=d.train_dataloader()
                )
            )
            scores = scores_of(trainer().predict(model, dataloaders=data.loader("test", shuffle=False)))
            if seed == ctx.seed:
                np.save(ctx.work / f"{key}_test_pred.npy", scores)
            runs_q.append(quality(scores, test))
            secs.append(sec)
        mean, std = mean_quality(runs_q)
        models[key] = {
            "label": label,
            "train_samples_per_s": statistics.median(runs[key]["train"]),
            "train_runs": runs[key]["train"],
            "predict_samples_per_s": statistics.median(runs[key]["predict"]),
            "predict_runs": runs[key]["predict"],
            "epoch_samples_per_s": p.epochs * n_train / secs[0],
            "quality": mean,
            "quality_std": std,
            "quality_runs": runs_q,
            "quality_seeds": seeds,
        }
    models["akt"]["net"] = akt_net
    for key, build, dm in (("deepfm", deepfm, dm_fm), ("akt", akt, dm_akt)):
        models[key]["matmul_flops_per_sample"] = matmul_flops(
            build(), next(iter(dm.loader("train", shuffle=True)))
        )
    models["bare"] = {
        "label": "semid-ctr DeepFM, bare PyTorch loop",
        "train_samples_per_s": statistics.median(runs["bare"]["train"]),
        "train_runs": runs["bare"]["train"],
        "predict_samples_per_s": statistics.median(runs["bare"]["predict"]),
        "predict_runs": runs["bare"]["predict"],
    }

    for peer in ctx.peers:
        out = ctx.work / "peers" / peer
        cmd = [str(ctx.venvs / peer / "bin" / "python"), str(HERE / "peers" / f"{peer}_run.py")]
        cmd += ["--data", str(peer_dir), "--out", str(out), "--threads", str(ctx.threads)]
        cmd += ["--batch-size", str(bs), "--eval-batch-size", str(ctx.eval_batch_size), "--steps", str(steps)]
        cmd += ["--repeats", str(p.repeats), "--epochs", str(p.epochs), "--seed", str(ctx.seed)]
        res = last_json(run_cmd(cmd, log=ctx.work / "logs" / f"{peer}.log", env=ctx.thread_env()))
        runs_q = [quality(pl.read_parquet(res["predictions"])["score"].to_numpy(), test)]
        for seed in seeds[1:]:  # the quality run only (--repeats 0: no throughput runs)
            again = [*cmd[:-6], "--repeats", "0", "--epochs", str(p.epochs), "--seed", str(seed)]
            again[again.index("--out") + 1] = str(out.with_name(f"{peer}-seed{seed}"))
            log = ctx.work / "logs" / f"{peer}-seed{seed}.log"
            other = last_json(run_cmd(again, log=log, env=ctx.thread_env()))
            runs_q.append(quality(pl.read_parquet(other["predictions"])["score"].to_numpy(), test))
        res["label"] = f"{PEER_NAMES[peer]} DeepFM"
        res["quality"], res["quality_std"] = mean_quality(runs_q)
        res["quality_runs"], res["quality_seeds"] = runs_q, seeds
        res["epoch_samples_per_s"] = p.epochs * n_train / res["quality_train_seconds"]
        models[peer] = res
    return {"steps": steps, "n_train": n_train, "n_test": len(test), "models": models}


def gauc_speed(ctx: Ctx, peer_dir: Path) -> dict:
    """Figure 3 on our DeepFM's test predictions."""
    test = pl.read_parquet(peer_dir / "test.parquet", columns=[S.USER, "label"])
    scores = np.load(ctx.work / "deepfm_test_pred.npy")
    path = ctx.work / "gauc_input.parquet"
    test.with_columns(pl.Series("score", scores)).write_parquet(path)
    s = torch.from_numpy(scores)
    y = torch.from_numpy(test["label"].to_numpy().astype(np.float64))
    g = torch.from_numpy(test[S.USER].to_numpy().astype(np.int64))
    gauc(s, y, g)  # warm-up
    ours = [timed(lambda: gauc(s, y, g)) for _ in range(ctx.profile.gauc_repeats)]
    out = {
        "rows": len(test),
        "groups": int(test[S.USER].n_unique()),
        "ours_seconds": [r[0] for r in ours],
        "ours_value": ours[0][1],
    }
    if "fuxictr" in ctx.peers:
        cmd = [str(ctx.venvs / "fuxictr" / "bin" / "python"), str(HERE / "peers" / "fuxictr_gauc.py")]
        cmd += ["--preds", str(path), "--repeats", str(ctx.profile.gauc_repeats)]
        res = last_json(run_cmd(cmd, log=ctx.work / "logs" / "fuxictr_gauc.log", env=ctx.thread_env()))
        out["fuxictr_seconds"] = res["seconds"]
        out["fuxictr_value"] = res["gauc"]
        out["speedup"] = statistics.median(res["seconds"]) / statistics.median(out["ours_seconds"])
        out["abs_diff"] = abs(res["gauc"] - out["ours_value"])
    return out


def encoder(ctx: Ctx) -> dict:
    """Figure 5 with benchmarks/encoder_speed.py's own functions (its results file is left alone)."""
    from benchmarks.encoder_speed import bare_forward, ml1m_item_texts

    texts = ml1m_item_texts(ctx.prepared)
    texts = texts[: ctx.profile.encoder_texts] if ctx.profile.encoder_texts else texts
    cfg = EncoderConfig()
    enc = ContentEncoder(cfg)
    bare_forward(enc, texts[: cfg.batch_size])  # warm-up
    runs: dict[str, list[float]] = {"bare": [], "ours": []}
    for _ in range(ctx.profile.encoder_repeats):
        runs["bare"].append(timed(lambda: bare_forward(enc, texts))[0])
        runs["ours"].append(timed(lambda: encode(texts, cfg, progress=False))[0])
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "texts": len(texts),
        "batch_size": cfg.batch_size,
        "bare_seconds": runs["bare"],
        "ours_seconds": runs["ours"],
        "bare_items_per_s": len(texts) / med["bare"],
        "ours_items_per_s": len(texts) / med["ours"],
        "ratio": med["bare"] / med["ours"],
    }


# -- report -------------------------------------------------------------------------------------------------


def mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def flop_lines(models: dict) -> list[str]:
    """AKT's matmul work against our DeepFM's, and the throughput AKT would have at DeepFM's rate per FLOP (issue
    18's AKT goals): what a speed-up that keeps AKT's computation reaches if it runs it as efficiently as DeepFM,
    not a hard bound (skinny matrices could in principle run faster per FLOP)."""
    ours, akt = models["deepfm"], models["akt"]
    if "matmul_flops_per_sample" not in ours or "matmul_flops_per_sample" not in akt:
        return []
    f_fm, f_akt = ours["matmul_flops_per_sample"], akt["matmul_flops_per_sample"]
    lines = [
        "",
        "Matrix-multiply work per sample (`torch.utils.flop_counter` on one train batch: mm / addmm / bmm; gathers, "
        "elementwise ops and the optimiser are not counted), and what it implies for AKT's speed:",
        "",
        "| | DeepFM kFLOP / sample | AKT kFLOP / sample | AKT / DeepFM work | measured AKT / DeepFM speed | "
        "AKT's rate per FLOP vs DeepFM's | AKT at DeepFM's rate per FLOP, vs each peer's DeepFM |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for phase, rate in (("train", "train_samples_per_s"), ("predict", "predict_samples_per_s")):
        work = f_akt[phase] / f_fm[phase]
        speed = akt[rate] / ours[rate]
        peers = ", ".join(
            f"{PEER_NAMES[peer]} {ours[rate] / work / models[peer][rate]:.2f}x"
            for peer in PEERS
            if peer in models
        )
        lines.append(
            f"| {phase} | {f_fm[phase] / 1e3:.1f} | {f_akt[phase] / 1e3:.1f} | {work:.2f}x | {speed:.2f}x | "
            f"{speed * work:.2f}x | {peers or 'no peer run'} |"
        )
    return lines


def refuse_foreign_outputs(out_md: Path, out_json: Path) -> None:
    """Before any work: --out-md / --out-json may only replace an earlier output of this script (a RESULTS.md that
    starts with TITLE, a results.json with its "machine" and "profile" sections), never another file."""
    if not replaceable(out_md, TITLE):
        sys.exit(f"{out_md}: exists and is not a table this benchmark wrote; pass another --out-md")
    if out_json.exists():
        try:
            doc = json.loads(out_json.read_text()) if out_json.is_file() else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            doc = None
        if not (isinstance(doc, dict) and {"machine", "profile"} <= doc.keys()):
            sys.exit(
                f"{out_json}: exists and is not a results.json this benchmark wrote; pass another --out-json"
            )


def render(results: dict) -> str:
    m, p = results["machine"], results["profile"]
    lines = [TITLE, ""]
    if p["quick"]:
        lines += [
            "> **QUICK RUN (`--quick`): a tiny subset to check the wiring. These numbers are NOT benchmark figures.**",
            "",
        ]
    lines += [
        f"Date: {results['date']}  ",
        f"Command: `{results['command']}` (commit {results['commit']}), total {results['wall_seconds'] / 60:.1f} min  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['os']}; 1-min load average "
        f"{m['load_avg_1min_start']:.1f} at start, {m.get('load_avg_1min_end', float('nan')):.1f} at end "
        "(other jobs may share the CPU).  ",
        f"Threads: torch.set_num_threads({results['threads']}) and OMP/MKL_NUM_THREADS={results['threads']} in every "
        "process (ours and each peer).  ",
        "Ours: " + ", ".join(f"{k} {v}" for k, v in results["versions"]["ours"].items()) + "  ",
    ]
    for peer, v in results["versions"].get("peers", {}).items():
        lines.append(
            f"{PEER_NAMES.get(peer, peer)} venv: " + ", ".join(f"{k} {x}" for k, x in v.items()) + "  "
        )
    d = results["data"]
    lines += [
        f"Data: `{d['prepared']}` (ML-1M temporal split, label = rating >= 4): {d['rows']['train']:,} train / "
        f"{d['rows']['val']:,} val / {d['rows']['test']:,} test rows. Every model sees the same fields: user id, item "
        f"id, age, gender, occupation, zip code, multi-valued genre (each peer's sequence / var-len feature with mean "
        "pooling; ours: mean-pooled EmbeddingBag) and the label, tokenised once by us and exported to each peer "
        "(`benchmarks/peer_data.py`).",
        "",
        "## Goals",
        "",
        "| goal | measured | status |",
        "|---|---|---|",
    ]
    lines += [f"| {g['goal']} | {g['measured']} | {mark(g['ok'])} |" for g in results["goals"]]

    if "ctr" in results:
        c = results["ctr"]
        lines += [
            "",
            "## 1-2. CTR throughput and quality (DeepFM: embed 16, MLP 256-128, dropout 0, Adam lr 1e-3, batch "
            f"{results['batch_size']})",
            "",
            f"Train samples/s: median of {p['repeats']} runs of {c['steps']} steps (wall time of the toolkit's own "
            "training call over its own data loader, after one warm-up; ours = `Trainer.fit(max_steps)` including "
            "its setup). Predict samples/s: the toolkit's predict call over the test split (batch "
            f"{results['eval_batch_size']}). Full epoch: the quality run ({p['epochs']} epoch(s) over all "
            "train rows, FuxiCTR's including its end-of-epoch validation; first seed). Quality: test AUC / GAUC (by "
            "user) / log loss, all computed by `ctr.metrics` from each toolkit's saved predictions, mean ± std over "
            f"{p.get('quality_seeds', 1)} seeds (each its own init and shuffling: `torch.manual_seed` and our "
            "loader's seed here, the peer script's --seed there); the deltas below compare these means.",
            "",
            "| model | train samples/s (runs) | predict samples/s (runs) | full-epoch samples/s | AUC | GAUC | logloss |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in c["models"].values():
            q = r.get("quality")
            runs_t = ", ".join(f"{x:,.0f}" for x in r["train_runs"])
            runs_p = ", ".join(f"{x:,.0f}" for x in r["predict_runs"])
            ep = f"{r['epoch_samples_per_s']:,.0f}" if "epoch_samples_per_s" in r else "-"
            sd = r.get("quality_std") or {}
            qs = (
                " | ".join(
                    f"{q[k]:.4f}" + (f" ± {sd[k]:.4f}" if sd else "") for k in ("auc", "gauc", "logloss")
                )
                if q
                else "- | - | -"
            )
            lines.append(
                f"| {r['label']} | {r['train_samples_per_s']:,.0f} ({runs_t}) | "
                f"{r['predict_samples_per_s']:,.0f} ({runs_p}) | {ep} | {qs} |"
            )
        lines += [
            "",
            "Ratios (ours / peer); quality deltas of our DeepFM with the peer's architecture (torch-rechub: the "
            "BatchNorm MLP + linear first order row, the others: plain DeepFM) and of AKT:",
            "",
        ]
        lines += [
            "| peer | DeepFM train | DeepFM predict | AKT train | AKT predict | ours (same arch.) | ΔAUC | ΔGAUC | ΔAUC (AKT) | ΔGAUC (AKT) |"
        ]
        lines += ["|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
        ours, akt = c["models"]["deepfm"], c["models"]["akt"]
        for peer in PEERS:
            if peer not in c["models"]:
                continue
            r = c["models"][peer]
            same = c["models"].get(SAME_ARCH[peer], ours)
            lines.append(
                f"| {PEER_NAMES[peer]} | {ours['train_samples_per_s'] / r['train_samples_per_s']:.2f}x | "
                f"{ours['predict_samples_per_s'] / r['predict_samples_per_s']:.2f}x | "
                f"{akt['train_samples_per_s'] / r['train_samples_per_s']:.2f}x | "
                f"{akt['predict_samples_per_s'] / r['predict_samples_per_s']:.2f}x | "
                f"{same['label'].replace('semid-ctr ', '').replace(' (Lightning)', '')} | "
                f"{same['quality']['auc'] - r['quality']['auc']:+.4f} | {same['quality']['gauc'] - r['quality']['gauc']:+.4f} | "
                f"{akt['quality']['auc'] - r['quality']['auc']:+.4f} | {akt['quality']['gauc'] - r['quality']['gauc']:+.4f} |"
            )
        bare = c["models"]["bare"]
        lines += [
            "",
            f"Lightning vs bare PyTorch loop over the same model and batches: train "
            f"{ours['train_samples_per_s'] / bare['train_samples_per_s']:.2f}x, predict "
            f"{ours['predict_samples_per_s'] / bare['predict_samples_per_s']:.2f}x.",
            f"AKT: inputs from {c['akt_item_sids']}; history length 20 (AKT's own input; the DeepFM rows use no "
            "history); built as configs/ctr/akt.yaml ships it, at embed 16 and dropout 0: `"
            + json.dumps(akt.get("net", {}).get("init_args", {}), sort_keys=True)
            + "` (the rest its constructor defaults).",
        ]
        lines += flop_lines(c["models"])
        notes = {peer: c["models"][peer].get("notes", []) for peer in PEERS if peer in c["models"]}
        for peer, ns in notes.items():
            if ns:
                lines.append(f"{PEER_NAMES[peer]}: " + "; ".join(ns) + ".")

    if "gauc" in results and "fuxictr_value" in results["gauc"]:
        g = results["gauc"]
        lines += [
            "",
            "## 3. GAUC computation time",
            "",
            f"Same predictions (our DeepFM on test: {g['rows']:,} rows, {g['groups']:,} users); median of "
            f"{len(g['ours_seconds'])}.",
            "",
            "| implementation | seconds (runs) | GAUC |",
            "|---|---:|---:|",
            f"| `ctr.metrics.gauc` (vectorised torch) | {statistics.median(g['ours_seconds']):.4f} "
            f"({', '.join(f'{x:.4f}' for x in g['ours_seconds'])}) | {g['ours_value']:.12f} |",
            f"| FuxiCTR `evaluate_metrics(['gAUC'])` (polars partition + sklearn per user, mp.Pool) | "
            f"{statistics.median(g['fuxictr_seconds']):.4f} ({', '.join(f'{x:.4f}' for x in g['fuxictr_seconds'])}) | "
            f"{g['fuxictr_value']:.12f} |",
            "",
            f"Speed-up {g['speedup']:.0f}x; |difference| {g['abs_diff']:.1e}.",
        ]

    if "semantic_ids" in results:
        s = results["semantic_ids"]
        cfg = s["config"]
        lines += [
            "",
            "## 4. Semantic IDs on the same item embeddings",
            "",
            f"{s['items']:,} items, all-MiniLM-L6-v2 text embeddings (384-d); both builders: MLP "
            f"{cfg['hidden_dims']} -> latent {cfg['latent_dim']}, codebooks {s['sizes']}, {cfg['max_epochs']} epochs, "
            f"batch {cfg['batch_size']}, Adam lr {cfg['lr']}, k-means init. Ours: `train_rqvae` (ResidualVQ, EMA "
            "codebooks, dead-code replacement) + `encode` + `make_table` (dedup suffix) + `health`. torch-rechub: "
            "`RQVAEModel` + its RQ-VAE `Trainer` + `generate_semantic_ids` (Sinkhorn re-assignment of colliding "
            "items, up to 20 rounds). Collision rate = share of items whose code tuple an earlier item holds "
            "(`semid.ids.health` on both).",
            "",
            "| builder | build s | collision rate | unique IDs | utilisation per level | normalised entropy per level |",
            "|---|---:|---:|---:|---|---|",
        ]

        def row(name, secs, h):
            util = " / ".join(f"{u:.2f}" for u in h["utilization"])
            ent = " / ".join(f"{lv['entropy_normalized']:.2f}" for lv in h["levels"])
            return f"| {name} | {secs:.1f} | {h['collision_rate']:.2%} | {h['unique_full_ids']:.3f} | {util} | {ent} |"

        lines.append(
            row(
                "semid-ctr (codes; the suffix makes full IDs unique)",
                s["ours"]["build_seconds"],
                s["ours"]["health"],
            )
        )
        if "torch_rechub" in s:
            r = s["torch_rechub"]
            lines.append(
                row("torch-rechub, nearest codes (train time only)", r["train_seconds"][-1], r["health_raw"])
            )
            lines.append(
                row("torch-rechub, after its collision handling", r["build_seconds"], r["health_final"])
            )
            lines += [
                "",
                f"Build time ratio (torch-rechub / ours): {r['build_seconds'] / s['ours']['build_seconds']:.2f}x.",
            ]

    if "encoder" in results:
        e = results["encoder"]
        lines += [
            "",
            "## 5. Encoder",
            "",
            f"{e['texts']:,} ML-1M item texts, batch {e['batch_size']}, median of {len(e['ours_seconds'])}; "
            "`encode` includes loading the model, as a pipeline call does (functions of benchmarks/encoder_speed.py).",
            "",
            "| path | items/s | seconds (runs) |",
            "|---|---:|---:|",
            f"| bare HF tokenizer + forward | {e['bare_items_per_s']:,.0f} | {', '.join(f'{x:.2f}' for x in e['bare_seconds'])} |",
            f"| `semid.encoder.encode` | {e['ours_items_per_s']:,.0f} | {', '.join(f'{x:.2f}' for x in e['ours_seconds'])} |",
            "",
            f"encode / bare throughput: {e['ratio']:.2f}x.",
        ]

    if "scaling" in results:
        sc = results["scaling"]
        fit = sc["fit"]
        lines += [
            "",
            "## 6. Scaling (AKT on synthetic prepared data)",
            "",
            f"Batch {results['batch_size']}, history 20, 3-level random item SIDs (auto sizes), {sc['steps']} "
            f"steps of `Trainer.fit` (first {sc['warmup']} untimed), one subprocess per size; peak RSS = VmHWM of "
            "that process (data tables + model + Adam state).",
            "",
            "| rows | items | users | load s | AKT train samples/s | parameters | RSS after load GiB | peak RSS GiB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in sc["runs"]:
            lines.append(
                f"| {r['rows']:,} | {r['items']:,} | {r['users']:,} | {r['load_seconds']:.1f} | "
                f"{r['train_samples_per_s']:,.0f} | {r['parameters']:,} | {r['rss_after_load_gib']:.2f} | "
                f"{r['peak_rss_gib']:.2f} |"
            )
        lines += [
            "",
            f"Least-squares fit over these sizes: peak RSS ~ {fit['intercept_gib']:.2f} GiB + "
            f"{fit['gib_per_million_rows']:.3f} GiB per million rows + {fit['gib_per_million_items']:.3f} GiB per "
            f"million items. Extrapolated (not run): 24 GiB is reached at about "
            f"{fit['rows_at_24gib_100000_items'] / 1e6:,.0f}M rows with 100k items and "
            f"{fit['rows_at_24gib_1000000_items'] / 1e6:,.0f}M rows with 1M items.",
            sc["growth"],
        ]
    lines += [
        "",
        "Raw numbers: `results.json` written beside this file's run (benchmarks/results/ for a full run).",
        "",
    ]
    return "\n".join(lines)


def goals(results: dict) -> list[dict]:
    out = []
    c = results.get("ctr")
    if c:
        ours, akt = c["models"]["deepfm"], c["models"]["akt"]
        for peer in PEERS:
            if peer not in c["models"]:
                continue
            r, name = c["models"][peer], PEER_NAMES[peer]
            t = ours["train_samples_per_s"] / r["train_samples_per_s"]
            pr = ours["predict_samples_per_s"] / r["predict_samples_per_s"]
            a = akt["train_samples_per_s"] / r["train_samples_per_s"]
            out.append(
                {
                    "goal": f"our DeepFM train >= {GOALS['train_vs_peer']}x {name} DeepFM",
                    "measured": f"{t:.2f}x",
                    "ok": t >= GOALS["train_vs_peer"],
                }
            )
            out.append(
                {
                    "goal": f"our DeepFM predict >= {GOALS['predict_vs_peer']}x {name} DeepFM",
                    "measured": f"{pr:.2f}x",
                    "ok": pr >= GOALS["predict_vs_peer"],
                }
            )
            out.append(
                {
                    "goal": f"AKT train >= {GOALS['akt_train_vs_peer']}x {name} DeepFM",
                    "measured": f"{a:.2f}x",
                    "ok": a >= GOALS["akt_train_vs_peer"],
                }
            )
            ap = akt["predict_samples_per_s"] / r["predict_samples_per_s"]
            out.append(
                {
                    "goal": f"AKT predict >= {GOALS['akt_predict_vs_peer']}x {name} DeepFM",
                    "measured": f"{ap:.2f}x",
                    "ok": ap >= GOALS["akt_predict_vs_peer"],
                }
            )
            same = c["models"].get(SAME_ARCH[peer])
            if same is None:
                continue
            for metric in ("auc", "gauc"):
                dlt = same["quality"][metric] - r["quality"][metric]
                out.append(
                    {
                        "goal": f"{same['label'].replace(' (Lightning)', '')} test {metric.upper()} not below "
                        f"{name} DeepFM (same architecture) by more than {QUALITY_TOL * 100:g} pt",
                        "measured": f"{dlt:+.4f}",
                        "ok": dlt >= -QUALITY_TOL,
                    }
                )
        for peer in PEERS:
            if peer in c["models"]:
                for metric in ("auc", "gauc"):
                    dlt = akt["quality"][metric] - c["models"][peer]["quality"][metric]
                    out.append(
                        {
                            "goal": f"AKT test {metric.upper()} vs {PEER_NAMES[peer]} DeepFM (reported, no target)",
                            "measured": f"{dlt:+.4f}",
                            "ok": None,
                        }
                    )
    g = results.get("gauc")
    if g and "speedup" in g:
        out.append(
            {
                "goal": f"ctr.metrics.gauc >= {GOALS['gauc_speedup']:.0f}x faster than FuxiCTR gAUC",
                "measured": f"{g['speedup']:.0f}x",
                "ok": g["speedup"] >= GOALS["gauc_speedup"],
            }
        )
        out.append(
            {
                "goal": f"GAUC values equal to {GAUC_TOL:g}",
                "measured": f"{g['abs_diff']:.1e}",
                "ok": g["abs_diff"] <= GAUC_TOL,
            }
        )
    e = results.get("encoder")
    if e:
        over = 1 / e["ratio"] - 1
        out.append(
            {
                "goal": f"encode overhead over a bare HF forward <= {ENCODE_OVERHEAD_BUDGET:.0%} (encoder_speed.py budget)",
                "measured": f"{over:+.1%}",
                "ok": over <= ENCODE_OVERHEAD_BUDGET,
            }
        )
    return out


# -- main ---------------------------------------------------------------------------------------------------

SECTIONS = ("sids", "ctr", "gauc", "encoder", "scaling")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny subset: checks the wiring in a few minutes")
    ap.add_argument("--prepared", type=Path, default=cache_dir() / "prepared" / "ml-1m")
    ap.add_argument("--work", type=Path, default=Path("/tmp/semid-bench"))
    ap.add_argument("--venvs", type=Path, default=Path(os.environ.get("PEER_VENVS", "/tmp/peer-venvs")))
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of " + ",".join(PEERS))
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: " + ",".join(SECTIONS))
    ap.add_argument(
        "--semids",
        type=Path,
        help="the semids/ folder of a `semid run` on --prepared: AKT then trains as configs/ctr/akt.yaml ships it "
        "(item + user IDs, content vectors); without it AKT uses figure 4's item IDs and no content",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--eval-batch-size", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--out-md", type=Path, help="default: benchmarks/RESULTS.md (--quick: <work>/quick/RESULTS.md)"
    )
    ap.add_argument(
        "--out-json", type=Path, help="default: benchmarks/results/results.json (--quick: in <work>/quick)"
    )
    a = ap.parse_args(argv)
    start = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(a.threads)
    torch.set_num_threads(a.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    profile = QUICK if a.quick else FULL
    peers = tuple(x for x in a.peers.split(",") if x)
    unknown = set(peers) - set(PEERS)
    if unknown:
        sys.exit(f"unknown peers {sorted(unknown)}; known: {PEERS}")
    skip = {x for x in a.skip.split(",") if x}
    work = a.work / ("quick" if a.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    # a quick run never overwrites the repository's real figures
    out_md = a.out_md or (work / "RESULTS.md" if a.quick else HERE / "RESULTS.md")
    out_json = a.out_json or (work / "results.json" if a.quick else HERE / "results" / "results.json")
    refuse_foreign_outputs(out_md, out_json)
    for peer in peers:
        if not (a.venvs / peer / "bin" / "python").is_file():
            sys.exit(f"no venv for {peer} under {a.venvs}: run `bash benchmarks/setup_peers.sh` first")
    if not (a.prepared / S.ITEMS_FILE).is_file():
        sys.exit(f"no prepared dataset at {a.prepared}: run `semid prepare --dataset ml-1m` first")

    prepared = a.prepared
    if profile.quick:
        prepared = peer_data.subset(
            a.prepared, work / "prepared", train_rows=profile.train_rows, eval_rows=profile.eval_rows
        )
    ctx = Ctx(
        profile,
        prepared,
        work,
        a.venvs,
        a.threads,
        a.batch_size,
        a.eval_batch_size,
        a.seed,
        peers,
        a.semids,
        a.prepared,
    )
    results: dict = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.compare " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": git_commit(),
        "machine": machine(),
        "profile": dataclasses.asdict(profile),
        "threads": a.threads,
        "batch_size": a.batch_size,
        "eval_batch_size": a.eval_batch_size,
        "versions": {"ours": our_versions(), "peers": {}},
    }
    print(f"[compare] exporting {prepared} for the peers", flush=True)
    peer_dir = work / "peer-data"
    doc = peer_data.export(prepared, peer_dir)
    results["data"] = {
        "prepared": str(a.prepared) + (" (quick subset)" if profile.quick else ""),
        "rows": doc["rows"],
        "fields": doc["vocab"],
    }

    sid_path = None
    if "sids" not in skip or "ctr" not in skip:
        print("[compare] item embeddings + semantic IDs (figure 4)", flush=True)
        ids, emb = item_embeddings(ctx)
        results["semantic_ids"], sid_path = semantic_ids(ctx, ids, emb)
        if "sids" in skip:
            results.pop("semantic_ids")
    if "ctr" not in skip:
        print("[compare] CTR throughput and quality (figures 1-2)", flush=True)
        akt_data, akt_data_label = akt_inputs(ctx, sid_path)
        results["ctr"] = ctr_section(ctx, peer_dir, akt_data)
        results["ctr"]["akt_item_sids"] = akt_data_label
        for peer in peers:
            results["versions"]["peers"][peer] = results["ctr"]["models"][peer]["versions"]
        if "gauc" not in skip:
            print("[compare] GAUC time (figure 3)", flush=True)
            results["gauc"] = gauc_speed(ctx, peer_dir)
    if "encoder" not in skip:
        print("[compare] encoder (figure 5)", flush=True)
        results["encoder"] = encoder(ctx)
    if "scaling" not in skip:
        print("[compare] scaling (figure 6)", flush=True)
        runs = scaling.run(
            list(profile.scaling_sizes),
            work / "scaling",
            steps=profile.scaling_steps,
            warmup=profile.scaling_warmup,
            batch_size=a.batch_size,
            threads=a.threads,
            timeout=1800,
        )
        results["scaling"] = {
            "runs": runs,
            "steps": profile.scaling_steps,
            "warmup": profile.scaling_warmup,
            "fit": scaling.fit_growth(runs),
            "growth": growth_text(runs),
        }
    results["machine"]["load_avg_1min_end"] = os.getloadavg()[0]
    results["wall_seconds"] = time.perf_counter() - start
    results["goals"] = goals(results)
    write_json(results, out_json)
    write_text(render(results), out_md)
    print(f"[compare] wrote {out_md} and {out_json}", flush=True)
    print(render(results), flush=True)
    return results


def growth_text(runs: list[dict]) -> str:
    """How throughput and memory change between the smallest and largest rows (same items) and items (same rows)."""
    parts = []
    by_items: dict[int, list[dict]] = {}
    by_rows: dict[int, list[dict]] = {}
    for r in runs:
        by_items.setdefault(r["items"], []).append(r)
        by_rows.setdefault(r["rows"], []).append(r)
    for items, rs in by_items.items():
        if len(rs) > 1:
            lo, hi = min(rs, key=lambda r: r["rows"]), max(rs, key=lambda r: r["rows"])
            parts.append(
                f"{hi['rows'] / lo['rows']:.0f}x the rows ({items:,} items): throughput "
                f"{hi['train_samples_per_s'] / lo['train_samples_per_s']:.2f}x, peak RSS {hi['peak_rss_gib'] / lo['peak_rss_gib']:.2f}x, "
                f"load time {hi['load_seconds'] / max(lo['load_seconds'], 1e-9):.1f}x."
            )
    for rows, rs in by_rows.items():
        if len(rs) > 1:
            lo, hi = min(rs, key=lambda r: r["items"]), max(rs, key=lambda r: r["items"])
            parts.append(
                f"{hi['items'] / lo['items']:.0f}x the items ({rows:,} rows): throughput "
                f"{hi['train_samples_per_s'] / lo['train_samples_per_s']:.2f}x, peak RSS {hi['peak_rss_gib'] / lo['peak_rss_gib']:.2f}x, "
                f"parameters {hi['parameters'] / lo['parameters']:.1f}x."
            )
    return " ".join(parts)


if __name__ == "__main__":
    main()
