"""Measure AKT's and DeepFM's train and predict throughput in a bare loop, and where AKT's training step spends its
time (torch.profiler), and write a markdown table (issue 18: AKT trains at under half a DeepFM's speed).

Batches are synthetic with MovieLens-1M cardinalities (`benchmarks.train_loop.ML1M`: 6,040 users, 3,706 items,
three 256-code item SID levels, history 20), made consistent the way real prepared data is: an item has one
semantic ID, one train count, one activity bucket and one content vector wherever it appears (target or history),
a user one count, bucket and content vector. The content vectors are random unit vectors of `CONTENT_DIM` = 384,
the dimension `semid build` writes with its default encoder (all-MiniLM-L6-v2's hidden size; the alignment heads
of `semid.align.model` are square, so aligned vectors keep it). Both models are `CTRTask`s built from the shipped
configs' `model.net` (`configs/ctr/akt.yaml`: the content tower and the content fields on; `deepfm.yaml`: the
defaults, it reads no content) and the task's own loss (BCE + aux loss [+ L2]) and optimiser (fused AdamW); the loop is
forward, zero_grad, backward, step, as `CTRTask.training_step` does without Lightning around it. Predict is the
eval-mode forward under `torch.inference_mode`. One intra-op thread; the runs are interleaved (AKT train, AKT
predict, DeepFM train, DeepFM predict, repeat) so that load from other processes hits all alike, and the table
reports the median of `--repeats`.

Each run writes one section of the output file under its `--label` (replacing an older section of that label,
keeping the others), and a summary table of every label found, so `--label before` on the old code and
`--label after` on the new one give a before/after table.

    python -m benchmarks.akt_profile --label after
    python -m benchmarks.akt_profile --label shipped-bf16 --autocast bf16   # both models under bf16 autocast
    python -m benchmarks.akt_profile --label amazon --data RUN   # a `semid run` folder's real batches instead

`--data RUN` reads the first `--steps` train batches (seed 0's shuffle) and as many test samples of a run's
prepared data with its semids/ (IDs, aligned content vectors), history 20, as `ctr fit` does: real histories
(mostly padding on Amazon Kitchen, mostly full on ML-1M) instead of the synthetic ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import itertools
import json
import os
import re
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch.profiler import ProfilerActivity, profile

from benchmarks.machine import cpu_model
from benchmarks.train_loop import ML1M, synthetic_batches
from ctr.batch import Batch, DataSpec
from ctr.layers import ClusterGuidedEmbedding, index_sid_tables
from ctr.models.akt import AKT
from ctr.module import CTRTask
from semid import schema as S

TITLE = "# AKT vs DeepFM throughput and AKT's costliest ops (issue 18)"
RECORD = re.compile(r"<!-- akt_profile (\{.*\}) -->")
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "ctr"
CONTENT_DIM = 384  # all-MiniLM-L6-v2's hidden size: semid build's default content / aligned vectors
SPEC = dataclasses.replace(ML1M, user_content_dim=CONTENT_DIM, item_content_dim=CONTENT_DIM)


def sid_tables(spec: DataSpec, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each user's and each item's semantic ID (n, L): seeded random codes, one per id."""
    g = torch.Generator().manual_seed(seed + 2)
    users = torch.stack([torch.randint(0, s, (spec.n_users,), generator=g) for s in spec.user_sid_sizes], 1)
    items = torch.stack([torch.randint(0, s, (spec.n_items,), generator=g) for s in spec.item_sid_sizes], 1)
    return users, items


def consistent_batches(spec: DataSpec, n: int, batch_size: int, seed: int = 0) -> list[Batch]:
    """`benchmarks.train_loop.synthetic_batches` with per-item SIDs / counts / buckets and per-user SIDs / counts /
    buckets looked up from fixed tables, as in prepared data (there every field is a function of the id)."""
    g = torch.Generator().manual_seed(seed + 1)
    user_sid, item_sid = sid_tables(spec, seed)
    item_count = torch.randint(0, int(spec.item_count_max) + 1, (spec.n_items,), generator=g).float()
    user_count = torch.randint(1, int(spec.user_count_max) + 1, (spec.n_users,), generator=g).float()
    item_content = F.normalize(
        torch.randn(spec.n_items, spec.item_content_dim, generator=g), dim=-1
    )  # (I, D_i)
    user_content = F.normalize(
        torch.randn(spec.n_users, spec.user_content_dim, generator=g), dim=-1
    )  # (U, D_u)

    def bucket(count: torch.Tensor, top: float) -> torch.Tensor:  # head, torso, tail, cold
        return torch.where(count == 0, 3, torch.bucketize(-count, torch.tensor([-0.5 * top, -0.1 * top])))

    item_bucket, user_bucket = (
        bucket(item_count, spec.item_count_max),
        bucket(user_count, spec.user_count_max),
    )
    out = []
    for b in synthetic_batches(spec, n, batch_size, seed):
        hist = b.hist_item  # (B, H) item id + 1, 0 = pad
        real = (hist > 0).unsqueeze(-1)  # (B, H, 1)
        out.append(
            b._replace(
                item_sid=item_sid[b.item],  # (B, L)
                user_sid=user_sid[b.user],  # (B, L_u)
                item_count=item_count[b.item],
                item_bucket=item_bucket[b.item],
                user_count=user_count[b.user],
                user_bucket=user_bucket[b.user],
                hist_item_sid=item_sid[(hist - 1).clamp_min(0)] * real,  # (B, H, L)
                hist_item_count=item_count[(hist - 1).clamp_min(0)] * (hist > 0),  # (B, H)
                item_content=item_content[b.item] if spec.item_content_dim else b.item_content,  # (B, D_i)
                user_content=user_content[b.user] if spec.user_content_dim else b.user_content,  # (B, D_u)
            )
        )
    return out


@dataclasses.dataclass
class Data:
    """What the runs train and predict on: the DataSpec, every id's semantic ID (users (n, L_u), items (n, L_i)),
    the train batches and the predict batches."""

    spec: DataSpec
    codes: tuple[torch.Tensor, torch.Tensor]
    train: list[Batch]
    eval: list[Batch]


def synthetic_data(steps: int, batch_size: int, predict_batch_size: int | None = None) -> Data:
    """`steps` consistent synthetic batches; predict on the same samples, or, with `predict_batch_size`, on as
    many in batches of that size (an eval loader's batch: `eval_batch_size`, 8,192 by default)."""
    batches = consistent_batches(SPEC, steps, batch_size)
    eval_batches = batches
    if predict_batch_size is not None and predict_batch_size != batch_size:
        eval_batches = consistent_batches(
            SPEC, max(1, steps * batch_size // predict_batch_size), predict_batch_size
        )
    return Data(SPEC, sid_tables(SPEC), batches, eval_batches)


def run_data(run: Path, steps: int, batch_size: int, predict_batch_size: int | None = None) -> Data:
    """The first `steps` train batches (seed 0's shuffle) of a `semid run` folder's prepared data, read with its
    semids/ (item and user IDs, aligned content vectors) and history 20, as `ctr fit` reads them; predict on the
    first test batches of `predict_batch_size` (default `batch_size`) holding as many samples."""
    from ctr.data import CTRDataModule
    from pipelines.fit import SEMIDS_DATA

    semids = run / S.SEMIDS_DIR
    missing = [name for name in SEMIDS_DATA.values() if not (semids / name).is_file()]
    if missing or not (run / S.PREPARED_DIR).is_dir():
        raise SystemExit(
            f"--data {run}: no {S.PREPARED_DIR}/ or {S.SEMIDS_DIR}/ ({', '.join(missing) or 'prepared'} missing): "
            "give the folder of a `semid run` (its prepared/ and semids/)"
        )
    eval_size = predict_batch_size or batch_size
    dm = CTRDataModule(
        str(run / S.PREPARED_DIR),
        batch_size=batch_size,
        eval_batch_size=eval_size,
        history_len=20,
        **{k: str(semids / name) for k, name in SEMIDS_DATA.items()},
    )
    dm.setup()
    train = list(itertools.islice(dm.loader("train", shuffle=True), steps))
    n_eval = max(1, steps * batch_size // eval_size)
    evals = list(itertools.islice(dm.loader("test", shuffle=False), n_eval))
    return Data(dm.spec, (dm.tables.users.sid.codes, dm.tables.items.sid.codes), train, evals)


def make_task(name: str, overrides: dict | None = None, data: Data | None = None) -> CTRTask:
    """The task of `configs/ctr/<name>.yaml`'s `model.net` (class_path and init_args, as `ctr fit` builds it), with
    `overrides` replacing init_args (`--akt_set`), for `data` (default: the synthetic ML-1M spec)."""
    net = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["model"]["net"]
    net["init_args"] = {**net.get("init_args", {}), **(overrides or {})}
    spec, codes = (SPEC, sid_tables(SPEC)) if data is None else (data.spec, data.codes)
    torch.manual_seed(0)
    task = CTRTask(net, spec)
    index_sid_tables(task.net, *codes)  # as CTRTask.setup does from the data's ID tables
    return task


class Clock:
    """Wall and process CPU time of a block; samples per second of each. On a CPU shared with other jobs the
    CPU-time rate is the steadier one (waiting for a core does not count), the wall rate what a user sees."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def rates(self, samples: int) -> tuple[float, float]:
        return samples / self.wall, samples / self.cpu


def train_run(task: CTRTask, opt: torch.optim.Optimizer, batches: list[Batch]) -> tuple[float, float]:
    """Samples/s (wall, CPU) of forward + loss + zero_grad + backward + fused AdamW step over the batches."""
    task.train()
    with Clock() as clock:
        for batch in batches:
            loss, _ = task.loss(batch, task(batch))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return clock.rates(sum(len(b.label) for b in batches))


def predict_run(task: CTRTask, batches: list[Batch]) -> tuple[float, float]:
    """Samples/s (wall, CPU) of the eval-mode forward (click probability) without autograd."""
    task.eval()
    with Clock() as clock, torch.inference_mode():
        for batch in batches:
            torch.sigmoid(task(batch).logit)
    return clock.rates(sum(len(b.label) for b in batches))


def top_ops(task: CTRTask, batches: list[Batch], n_ops: int = 15) -> list[tuple[str, float, int]]:
    """(op, self CPU ms, calls) per training step of the `n_ops` costliest ops of AKT, each the median over the
    steps, profiled one at a time after a warm-up step: the profiler times ops by the wall clock, and a median
    over steps keeps a step that another process interrupted from inflating one op."""
    task.train()
    opt = task.configure_optimizers()

    def step(batch: Batch) -> None:
        loss, _ = task.loss(batch, task(batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(batches[0])
    per_step: list[dict[str, tuple[float, int]]] = []
    for batch in batches:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(batch)
        per_step.append({e.key: (e.self_cpu_time_total / 1e3, e.count) for e in prof.key_averages()})
    keys = {k for ops in per_step for k in ops}
    med = {k: statistics.median(ops.get(k, (0.0, 0))[0] for ops in per_step) for k in keys}
    calls = {k: round(statistics.median(ops.get(k, (0.0, 0))[1] for ops in per_step)) for k in keys}
    return [(k, med[k], calls[k]) for k in sorted(keys, key=med.__getitem__, reverse=True)[:n_ops]]


def measure(
    steps: int,
    batch_size: int,
    repeats: int,
    profile_steps: int,
    akt_set: dict | None = None,
    autocast: str = "off",
    predict_batch_size: int | None = None,
    data: Path | None = None,
) -> dict:
    """`autocast="bf16"`: every run (both models, train and predict, and the profile) under CPU autocast to
    bfloat16, what Lightning's `trainer.precision: bf16-mixed` does on CPU; matmuls run on AMX / AVX-512 BF16 where
    the CPU has them, parameters and the optimiser stay float32. `data`: a `semid run` folder whose real batches
    replace the synthetic ones."""
    if data is None:
        batches = synthetic_data(steps, batch_size, predict_batch_size)
    else:
        batches = run_data(data, steps, batch_size, predict_batch_size)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast == "bf16"):
        return _measure(batches, repeats, profile_steps, akt_set)


def _measure(data: Data, repeats: int, profile_steps: int, akt_set: dict | None) -> dict:
    tasks = {"AKT": make_task("akt", akt_set, data), "DeepFM": make_task("deepfm", None, data)}
    optimisers = {name: task.configure_optimizers() for name, task in tasks.items()}
    for name, task in tasks.items():  # warm-up: allocator, the optimiser's state
        train_run(task, optimisers[name], data.train[:3]), predict_run(task, data.eval[:3])
    runs: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name, task in tasks.items():
            for kind, rates in (
                ("train", train_run(task, optimisers[name], data.train)),
                ("predict", predict_run(task, data.eval)),
            ):
                runs.setdefault(f"{name} {kind}", []).append(rates[0])  # wall
                runs.setdefault(f"{name} {kind} cpu", []).append(rates[1])
    ops = top_ops(make_task("akt", akt_set, data), data.train[:profile_steps])
    return {"runs": runs, "ops": ops}


def section(label: str, result: dict, opts: argparse.Namespace, load: tuple[float, float]) -> str:
    runs, med = result["runs"], {k: statistics.median(v) for k, v in result["runs"].items()}
    env = "".join(f"{k}={os.environ[k]} " for k in ("GLIBC_TUNABLES", "LD_PRELOAD") if k in os.environ)
    lines = [
        f"## {label}",
        "",
        f"Command: `{env}python -m benchmarks.akt_profile --label {label} --steps {opts.steps} --batch-size "
        f"{opts.batch_size} --repeats {opts.repeats}{''.join(f' --akt_set {a}' for a in opts.akt_set)}"
        f"{' --autocast ' + opts.autocast if opts.autocast != 'off' else ''}"
        f"{f' --predict-batch-size {opts.predict_batch_size}' if opts.predict_batch_size else ''}"
        f"{f' --data {opts.data}' if opts.data else ''}`; "
        f"{time.strftime('%Y-%m-%d %H:%M')}, "
        f"1-min load average {load[0]:.1f} before, {load[1]:.1f} after.{' ' + opts.note if opts.note else ''}",
        "",
        "| model | train samples/s (runs) | train samples/CPU-s | predict samples/s (runs) | predict samples/CPU-s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("AKT", "DeepFM"):
        spread = {k: ", ".join(f"{x:,.0f}" for x in runs[f"{name} {k}"]) for k in ("train", "predict")}
        lines.append(
            f"| {name} | {med[f'{name} train']:,.0f} ({spread['train']}) | {med[f'{name} train cpu']:,.0f} "
            f"| {med[f'{name} predict']:,.0f} ({spread['predict']}) | {med[f'{name} predict cpu']:,.0f} |"
        )
    ratio = {
        k: med[f"AKT {k}"] / med[f"DeepFM {k}"] for k in ("train", "train cpu", "predict", "predict cpu")
    }
    lines += [
        "",
        f"AKT / DeepFM: train {ratio['train']:.2f}x wall ({ratio['train cpu']:.2f}x CPU time), "
        f"predict {ratio['predict']:.2f}x wall ({ratio['predict cpu']:.2f}x CPU time).",
        "",
        f"Top {len(result['ops'])} ops of an AKT training step by self CPU time (torch.profiler, wall clock per op; "
        f"median over {opts.profile_steps} profiled steps; profiling adds overhead per op):",
        "",
        "| op | self CPU ms / step | calls / step |",
        "|---|---:|---:|",
        *(f"| `{op}` | {ms:.2f} | {calls} |" for op, ms, calls in result["ops"]),
        "",
        f"<!-- akt_profile {json.dumps({'label': label, 'median': med})} -->",
        "",
    ]
    return "\n".join(lines)


def write(out: Path, label: str, text: str) -> str:
    """Replace the section of `label` in `out` (keeping the others) and rebuild the summary over all labels."""
    old = out.read_text() if out.exists() else ""
    sections = {m.group(1): m.group(0) for m in re.finditer(r"^## (\S+)\n.*?(?=^## |\Z)", old, re.M | re.S)}
    sections.pop("summary", None)
    sections[label] = text
    medians = {}
    for body in sections.values():
        m = RECORD.search(body)
        if m:
            record = json.loads(m.group(1))
            medians[record["label"]] = record["median"]
    header = [
        TITLE,
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores shared with other jobs, "
        f"torch {torch.__version__}, 1 intra-op thread. Synthetic ML-1M-sized batches of "
        "`benchmarks/train_loop.py` with consistent per-id SIDs / counts / buckets (and, from the `shipped-*` "
        f"sections on, {CONTENT_DIM}-d user and item content vectors); both models inside `CTRTask` (loss, fused "
        "AdamW) as their configs/ctr/*.yaml build them (before `shipped-*`: AKT's constructor defaults, without "
        "its content tower and content fields); bare loop, no Lightning. Samples/s, median of interleaved "
        "repetitions (all runs in brackets).",
        "",
        "## summary",
        "",
        "Samples/s (wall clock; in brackets per CPU-second of this process, steadier under load):",
        "",
        "| label | AKT train | DeepFM train | AKT / DeepFM train | AKT predict | DeepFM predict | "
        "AKT / DeepFM predict |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, med in medians.items():
        cells = []
        for kind in ("train", "predict"):
            akt, fm = med[f"AKT {kind}"], med[f"DeepFM {kind}"]
            akt_cpu, fm_cpu = med[f"AKT {kind} cpu"], med[f"DeepFM {kind} cpu"]
            cells += [
                f"{akt:,.0f} ({akt_cpu:,.0f})",
                f"{fm:,.0f} ({fm_cpu:,.0f})",
                f"{akt / fm:.2f}x ({akt_cpu / fm_cpu:.2f}x)",
            ]
        header.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(header) + "\n\n" + "\n".join(s.rstrip() + "\n" for s in sections.values())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    return text


def main(args: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", default="after", help="section name, e.g. before / after")
    parser.add_argument("--steps", type=int, default=40, help="batches per timed run")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument(
        "--predict-batch-size",
        type=int,
        default=None,
        help="predict in batches of this size (as many samples as training); default: --batch-size",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="a `semid run` folder: train and predict on its real batches (prepared/ with semids/ IDs and content) "
        "instead of synthetic ML-1M-sized ones",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile-steps", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/akt_profile.md"))
    parser.add_argument("--note", default="", help="said in the section, e.g. which code was measured")
    parser.add_argument(
        "--akt_set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="replace one of AKT's init_args (a YAML value), e.g. instance_pool=mean; repeatable",
    )
    parser.add_argument(
        "--autocast",
        choices=("off", "bf16"),
        default="off",
        help="bf16: CPU autocast to bfloat16 for both models (Lightning's bf16-mixed); off: float32",
    )
    opts = parser.parse_args(args)
    known = set(inspect.signature(AKT.__init__).parameters) - {"self", "spec", "embedding"}
    own = inspect.signature(ClusterGuidedEmbedding.__init__).parameters  # AKT's **embedding goes to it
    known |= {k for k, v in own.items() if v.kind is v.KEYWORD_ONLY} - {"count_max", "max_rows", "side"}
    for item in opts.akt_set:
        if "=" not in item or item.split("=", 1)[0] not in known:
            parser.error(f"--akt_set {item!r}: give KEY=VALUE with KEY one of AKT's options: {sorted(known)}")
    opts.akt = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in opts.akt_set)}
    if opts.out.exists() and not opts.out.read_text().startswith(TITLE):
        parser.error(
            f"--out {opts.out} exists and is not a file this script wrote (it starts with {TITLE!r}); "
            "name a new file or an earlier output of this script"
        )
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    load_before = os.getloadavg()[0]
    result = measure(
        opts.steps,
        opts.batch_size,
        opts.repeats,
        opts.profile_steps,
        opts.akt,
        opts.autocast,
        opts.predict_batch_size,
        opts.data,
    )
    text = section(opts.label, result, opts, (load_before, os.getloadavg()[0]))
    write(opts.out, opts.label, text)
    print(text)
    return result


if __name__ == "__main__":
    main()
