"""The new-item warm-up protocol of Meta-Embedding (Pan et al., SIGIR'19) and MWUF (Zhu et al., SIGIR'21): a trained
CTR model meets new items, sees K of their interactions at a time, and is scored after each reveal.

The papers' protocol, as we read them (their code was not at hand to check): the base model is trained on the old
items only; each new item's samples are sorted by time, its first K form warm-up batch a, the next K batch b, the
next K batch c, and the rest its test rows. The model is scored on the test rows before any warm-up ("cold"), then
updated with batch a ("warm-a"), then b, then c, scored after each update; only the new items' ID embeddings are
updated in the warm-up phase, the rest of the model is frozen. AUC is reported per stage, repeated for several K.

What this module does (`plan_warmup`, `WarmupPlan`, `run_warmup`):

- New items = the items `semid prepare` held out of train (`split.cold_items`, semid.data.split.hold_out_items: a
  seeded random share of the items, not a popularity band as in the papers). Their rows are their val and test
  rows (the train period holds none of theirs), ordered by (timestamp, val before test, row in the file);
  `rank` 0 is an item's first row.
- Warm-up batch j (j = 1, 2, 3) for a given K: ranks [(j-1)K, jK) of every kept item (all of them at once, K rows
  per item per stage).
- The evaluation rows are FIXED across stages and K (the papers' test rows shrink as K grows): ranks >= 3 max(K) of
  the items with at least 3 max(K) + `min_eval_rows` rows ("kept" items). Items with fewer rows are neither revealed
  nor scored. So a warm-up row is never scored, and every stage and K is scored on the same rows, users and items.
- Update (`update="new_item_rows"`, the papers' rule, model-agnostic): the trainable parameters are the rows of the
  kept items in every embedding table that is indexed by item id, found by probing the network (a table whose
  lookups change when only `Batch.item` changes: DeepFM's item table and its first-order table, the history sharing
  them, AKT's individual item table). Semantic-ID prefix tables, feature tables, content projections, MLPs and
  gates are shared with old items and stay frozen. `update="all"` fine-tunes every parameter instead (the naive
  baseline). The update is AdamW, the fit's optimiser family, with the fit's learning rate unless `lr` is given,
  no weight decay on embeddings, `epochs` passes over the stage's rows in seeded shuffled batches of `batch_size`,
  the loss `CTRTask.loss` (BCE + the network's aux loss + the task's embedding L2). The network runs in eval mode
  (dropout off, BatchNorm statistics frozen, AKT's training-only terms and cold-path dropout off), so nothing but
  the chosen parameters can change. Stages are cumulative: warm-b continues from the warm-a model, and every K
  starts again from the trained checkpoint.
- Counts: after batch j a new item's train count is its revealed rows (jK, or the positives among them where the
  prepared data counts positives: buckets.count), and its activity bucket is what `semid prepare` would give that
  count among the trained items (semid.data.activity.activity), so AKT's gate and activity see a tail item, not a
  cold one. Old items and all users keep their counts and buckets; users' histories stay those of the fit's val/test
  rows (train and val positives strictly before the row): revealed rows are not added to them.

Where it differs from the papers, in one place: new items are a random hold-out, not a popularity band; the
evaluation set is fixed across K and stages; only items with enough rows are kept; the update rule is one for every
network (no meta-generator or meta scaling/shifting network is learned: this measures how each model warms up by
plain fine-tuning of its new-item rows, the papers' "random init / base model" warm-up row; a network that
defines `admit(batch)` first sets its new rows from what it already computes for a cold id, AKT from its content
tower f(x) or 0, which is the role of Meta-Embedding's generator, `WarmupSettings.admit`). Note also that the
fit's validation split (which holds part of the evaluation rows) selected its checkpoint and early stopping; no
evaluation row was trained on.

The warm-up learning rate matters as much as the model (one step size suits one network's rows and not
another's), so it can be chosen fairly (`select_lr`): the kept items are split at random into tune and report items,
every lr of a grid runs the protocol on the tune items, the best mean warm AUC wins, and only the report items,
warmed up with that lr, are reported. Without a grid every model uses one lr (the fit's unless given).

Metrics per stage: AUC, log loss and GAUC with the number of users it rests on (`ctr.metrics`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl
import torch
from torch import Tensor, nn

from ctr.batch import Batch
from ctr.data import HISTORY_SOURCES, SplitArrays, SplitData, Tables
from ctr.metrics import auc, gauc, gauc_users, logloss
from ctr.module import CTRTask
from semid import schema as S
from semid.data.activity import activity
from semid.data.config import BucketConfig
from semid.data.split import gauc_user_counts
from semid.errors import InputError

N_BATCHES = 3
"""Warm-up batches a, b, c."""
STAGES: tuple[str, ...] = ("cold", "warm_a", "warm_b", "warm_c")
"""Stage names: before any reveal, then after each warm-up batch."""
SOURCE_SPLITS: tuple[str, ...] = ("val", "test")
"""The splits the new items' rows live in (their train rows were held out), in time order."""
RANK = "rank"
SPLIT = "split"
ROW = "row"
Update = Literal["new_item_rows", "all"]


# -- rows --------------------------------------------------------------------------------------------------------
def new_item_rows(splits: dict[str, pl.DataFrame], items: Sequence[int]) -> pl.DataFrame:
    """Every val/test row of `items`, with its place: split, row (its index in that split's file, the index of its
    sample in `Tables.splits[split]`), user, item, label, timestamp and rank (0 = the item's first row, by timestamp,
    then val before test, then file order)."""
    wanted = pl.Series(S.ITEM, list(items), dtype=pl.Int64).implode()
    parts = [
        splits[name]
        .select(S.USER, S.ITEM, S.LABEL, S.TIMESTAMP)
        .with_row_index(ROW)
        .with_columns(pl.lit(order, pl.Int8).alias("_order"), pl.lit(name).alias(SPLIT))
        .filter(pl.col(S.ITEM).cast(pl.Int64).is_in(wanted))
        for order, name in enumerate(SOURCE_SPLITS)
    ]
    rows = pl.concat(parts).sort([S.ITEM, S.TIMESTAMP, "_order", ROW])
    return rows.with_columns(pl.int_range(pl.len()).over(S.ITEM).alias(RANK)).drop("_order")


@dataclass(frozen=True)
class WarmupPlan:
    """The rows of the protocol for the kept items: warm-up batches per K and the fixed evaluation rows."""

    rows: pl.DataFrame  # new_item_rows of the kept items
    ks: tuple[int, ...]
    eval_from: int  # rank of an item's first evaluation row: N_BATCHES * max(ks)
    held_out: int  # items held out of train (before the row rule)
    dropped: int  # held-out items with too few rows for the largest K, neither revealed nor scored

    @property
    def items(self) -> Tensor:
        """(n_kept,) int64 dense ids of the kept items, sorted."""
        return torch.from_numpy(self.rows[S.ITEM].unique().sort().cast(pl.Int64).to_numpy().copy())

    def batch(self, k: int, stage: int) -> pl.DataFrame:
        """Warm-up batch `stage` (1 = a, 2 = b, 3 = c) for `k`: ranks [(stage-1)k, stage*k) of every kept item."""
        if k not in self.ks or not 1 <= stage <= N_BATCHES:
            raise ValueError(f"no warm-up batch {stage} for K={k} (planned K: {self.ks})")
        return self.rows.filter(pl.col(RANK).is_between((stage - 1) * k, stage * k, closed="left"))

    def revealed(self, k: int, stage: int) -> pl.DataFrame:
        """Every row revealed once batch `stage` of `k` has been seen (ranks < stage*k); none at stage 0."""
        return self.rows.filter(pl.col(RANK) < stage * k)

    def evaluation(self) -> pl.DataFrame:
        """The fixed evaluation rows: ranks >= eval_from of every kept item."""
        return self.rows.filter(pl.col(RANK) >= self.eval_from)

    def split(self, share: float, seed: int) -> tuple[WarmupPlan, WarmupPlan]:
        """(tune, report): the kept items split at random (seeded) into two disjoint plans, `share` of them (at
        least one, at most all but one) for choosing the warm-up learning rate, the rest for the reported result."""
        items = self.items
        if len(items) < 2 or not 0.0 < share < 1.0:
            raise InputError(
                f"cannot split {len(items)} kept item(s) with tune_share={share}",
                fix="use 0 < --tune_share < 1 and a run with at least 2 kept items (or give one --lr)",
            )
        n_tune = min(max(round(share * len(items)), 1), len(items) - 1)
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))
        tune = pl.Series(S.ITEM, items[order[:n_tune]].numpy()).implode()
        part = pl.col(S.ITEM).cast(pl.Int64).is_in(tune)
        return (
            dataclasses.replace(self, rows=self.rows.filter(part), dropped=0),
            dataclasses.replace(self, rows=self.rows.filter(~part), dropped=0),
        )

    def summary(self) -> dict[str, Any]:
        """Counts for the report: items, rows and users of the evaluation set."""
        ev = self.evaluation()
        return {
            "ks": list(self.ks),
            "held_out_items": self.held_out,
            "kept_items": self.rows[S.ITEM].n_unique(),
            "dropped_items": self.dropped,
            "eval_from_rank": self.eval_from,
            "eval_rows": ev.height,
            "eval_users": ev[S.USER].n_unique(),
            "eval_gauc_users": gauc_user_counts({"eval": ev})["eval"],
            "eval_positive_rate": float(ev[S.LABEL].cast(pl.Float64).mean()) if ev.height else math.nan,
            "warmup_rows_per_stage": {str(k): self.batch(k, 1).height for k in self.ks},
        }


def plan_warmup(
    rows: pl.DataFrame, ks: Sequence[int], *, held_out: int, min_eval_rows: int = 1
) -> WarmupPlan:
    """Keep the items with at least N_BATCHES * max(ks) + min_eval_rows rows (`rows`: `new_item_rows`)."""
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise InputError(f"K = {list(ks)}", fix="give one or more K >= 1 (e.g. --k 5,10,20)")
    if min_eval_rows < 1:
        raise InputError(f"min_eval_rows={min_eval_rows}", fix="give --min_eval_rows >= 1")
    eval_from = N_BATCHES * ks[-1]
    sizes = rows.group_by(S.ITEM).len()
    keep = sizes.filter(pl.col("len") >= eval_from + min_eval_rows)[S.ITEM].implode()
    kept = rows.filter(pl.col(S.ITEM).is_in(keep))
    return WarmupPlan(kept, ks, eval_from, held_out=held_out, dropped=held_out - kept[S.ITEM].n_unique())


# -- tensors of a stage ------------------------------------------------------------------------------------------
def gather_rows(tables: Tables, rows: pl.DataFrame) -> SplitArrays:
    """The samples of `rows` (split, row) taken from the val / test arrays, in the order of `rows`.

    Val and test samples read the same history (HISTORY_SOURCES), so their `hist_end`s index one History and the
    rows of both splits can form one sample set.
    """
    if HISTORY_SOURCES["val"] != HISTORY_SOURCES["test"]:
        raise RuntimeError("val and test samples read different histories; warm-up rows cannot mix them")
    n_val = tables.splits["val"].user.numel()
    position = rows.select(pl.when(pl.col(SPLIT) == "test").then(pl.col(ROW) + n_val).otherwise(pl.col(ROW)))
    idx = torch.from_numpy(position.to_series().cast(pl.Int64).to_numpy().copy())  # (n,) into val ++ test
    out = {}
    for field in (f.name for f in dataclasses.fields(SplitArrays)):
        val, test = (getattr(tables.splits[s], field) for s in SOURCE_SPLITS)
        out[field] = torch.cat([val, test]).index_select(0, idx) if val.numel() else val  # (n,); empty stays
    return SplitArrays(**out)


def revealed_activity(
    tables: Tables, revealed: pl.DataFrame, new_items: Tensor, cfg: BucketConfig
) -> tuple[Tensor, Tensor]:
    """Items' train counts (n_items,) float32 and buckets (n_items,) int64 once `revealed` rows are known: a new
    item's count is its revealed rows (or revealed positives, buckets.count = positives) and its bucket the one
    `semid prepare` would give that count among the trained items; every other item keeps its own."""
    train = tables.splits["train"]
    train_items, revealed_items = (
        train.item,
        torch.from_numpy(revealed[S.ITEM].cast(pl.Int64).to_numpy().copy()),
    )
    if cfg.count == "positives":
        train_items = train_items[train.label > 0]
        revealed_items = revealed_items[torch.from_numpy(revealed[S.LABEL].to_numpy().copy()) > 0]
    n_items = tables.items.count.numel()
    counted = pl.Series("_item", torch.cat([train_items, revealed_items]).numpy())
    act = activity(pl.Series(S.ITEM, range(n_items), dtype=pl.Int64), counted, cfg)
    codes = {name: i for i, name in enumerate(S.BUCKETS)}
    fresh_count = torch.from_numpy(act[S.TRAIN_COUNT].to_numpy().astype("float32"))  # (n_items,)
    fresh_bucket = torch.from_numpy(
        act[S.BUCKET].replace_strict(codes, return_dtype=pl.Int64).to_numpy().copy()
    )
    count, bucket = tables.items.count.clone(), tables.items.bucket.clone()
    count[new_items] = fresh_count[new_items]
    bucket[new_items] = fresh_bucket[new_items]
    return count, bucket


def stage_data(
    tables: Tables,
    rows: pl.DataFrame,
    count: Tensor,
    bucket: Tensor,
    history_len: int,
    *,
    history_content: bool = False,
) -> SplitData:
    """`rows` as a data set whose items carry `count` / `bucket` (targets and history items alike); with
    `history_content` its batches carry the history items' content (`CTRDataModule`'s option)."""
    items = dataclasses.replace(tables.items, count=count, bucket=bucket)
    name = "warmup"
    stage = dataclasses.replace(
        tables,
        items=items,
        splits={**tables.splits, name: gather_rows(tables, rows)},
        histories={**tables.histories, name: tables.histories["test"]},
    )
    return SplitData(stage, name, history_len, history_content=history_content)


# -- what an update may change -----------------------------------------------------------------------------------
EmbeddingTable = nn.Embedding | nn.EmbeddingBag


def _lookups(net: nn.Module, batch: Batch, tables: list[EmbeddingTable]) -> dict[int, list[Tensor]]:
    seen: dict[int, list[Tensor]] = {id(t): [] for t in tables}

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        seen[id(module)].append(args[0].detach().clone())

    hooks = [t.register_forward_pre_hook(record) for t in tables]
    try:
        with torch.no_grad():
            net(batch)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def item_id_tables(net: nn.Module, batch: Batch, n_items: int) -> list[EmbeddingTable]:
    """The embedding tables of `net` indexed by item id: those whose lookups change when only `batch.item` changes
    (the item's semantic IDs, features, count and content stay), run once in eval mode. Each must look up row
    item + 1 for item (the Batch convention, 0 = padding), else an InputError."""
    tables = [m for m in net.modules() if isinstance(m, EmbeddingTable)]
    was_training = net.training
    net.eval()
    try:
        before = _lookups(net, batch, tables)
        after = _lookups(net, batch._replace(item=(batch.item + 1) % n_items), tables)
    finally:
        net.train(was_training)
    found = []
    for table in tables:
        a, b = before[id(table)], after[id(table)]
        same = len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))
        if same:
            continue
        looked_up = torch.cat([x.reshape(-1) for x in a])
        if not torch.isin(batch.item + 1, looked_up).all():
            raise InputError(
                f"{type(net).__name__}: an embedding table follows Batch.item but does not look up row item + 1",
                fix="use --update all for this network (its item rows cannot be told apart)",
            )
        found.append(table)
    return found


def restrict_to_rows(tables: Sequence[EmbeddingTable], rows: Tensor) -> list[tuple[nn.Parameter, Tensor]]:
    """(weight, (n_rows, 1) mask) per table: gradients are multiplied by the mask, so only `rows` can move."""
    out = []
    for table in tables:
        mask = torch.zeros(table.weight.shape[0], 1, dtype=table.weight.dtype, device=table.weight.device)
        mask[rows] = 1.0
        out.append((table.weight, mask))
    return out


# -- the protocol ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WarmupSettings:
    """How each stage updates the model."""

    update: Update = "new_item_rows"
    lr: float | None = None  # None = the fit's model.lr
    batch_size: int = 32
    epochs: int = 1
    seed: int = 0  # seeds the shuffling of every stage's rows
    admit: bool = True  # warm-start the new items' rows of a network that defines admit(batch) (AKT)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.epochs < 1 or (self.lr is not None and not self.lr > 0):
            raise InputError(
                f"warm-up settings {self}", fix="use batch_size >= 1, epochs >= 1 and lr > 0 (or no lr)"
            )


def score(task: CTRTask, data: SplitData, *, batch_size: int = 8192) -> Tensor:
    """Click probabilities (n,) of every sample of `data`, in order, with the network in eval mode."""
    task.eval()
    device = next(task.parameters()).device
    out = []
    with torch.no_grad():
        for idx in torch.arange(len(data)).split(batch_size):
            batch = Batch(*(t.to(device) for t in data[idx]))
            out.append(torch.sigmoid(task(batch).logit.float()).cpu())  # (B,)
    return torch.cat(out) if out else torch.zeros(0)


def metrics(prob: Tensor, data: SplitData) -> dict[str, float]:
    """AUC, GAUC (and the users it rests on), log loss and rows of the scored samples."""
    label, user = data.arrays.label, data.arrays.user
    return {
        "auc": auc(prob, label),
        "gauc": gauc(prob, label, user),
        "gauc_users": gauc_users(prob, label, user),
        "logloss": logloss(prob, label),
        "n": prob.numel(),
    }


def trainable(
    task: CTRTask, probe: Batch, new_items: Tensor, update: Update
) -> list[tuple[nn.Parameter, Tensor | None]]:
    """(parameter, row mask or None) of what the update may change; every other parameter stops requiring grad."""
    for m in task.modules():  # masks need dense gradients; sparse only changes the gradient's layout
        if isinstance(m, EmbeddingTable):
            m.sparse = False
    if update == "all":
        chosen: list[tuple[nn.Parameter, Tensor | None]] = [
            (p, None) for p in task.parameters() if p.requires_grad
        ]
    else:
        tables = item_id_tables(task.net, probe, task.spec.n_items)
        chosen = list(restrict_to_rows(tables, new_items + 1))
    keep = {id(p) for p, _ in chosen}
    for p in task.parameters():
        p.requires_grad_(id(p) in keep)
    return chosen


def update_stage(
    task: CTRTask,
    data: SplitData,
    params: Sequence[tuple[nn.Parameter, Tensor | None]],
    settings: WarmupSettings,
    generator: torch.Generator,
) -> float:
    """`settings.epochs` passes of AdamW over `data` in shuffled batches, the network in eval mode; the mean loss."""
    if not params:
        return math.nan
    tables = {id(t.weight) for t in task.modules() if isinstance(t, EmbeddingTable)}
    groups = [
        {"params": [p for p, _ in params if id(p) in tables], "weight_decay": 0.0},
        {"params": [p for p, _ in params if id(p) not in tables], "weight_decay": task.weight_decay},
    ]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=settings.lr or task.lr)
    device = params[0][0].device
    task.eval()
    losses = []
    for _ in range(settings.epochs):
        for idx in torch.randperm(len(data), generator=generator).split(settings.batch_size):
            batch = Batch(*(t.to(device) for t in data[idx]))
            loss, _ = task.loss(batch, task(batch))
            if not torch.isfinite(loss):
                raise InputError(
                    f"non-finite warm-up loss {float(loss)} ({task.net_name})",
                    fix="lower --lr (the warm-up learning rate)",
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for p, mask in params:
                if mask is not None and p.grad is not None:
                    p.grad.mul_(mask)  # (rows, d) * (rows, 1): only the new items' rows get a gradient
            opt.step()
            losses.append(float(loss.detach()))
    return sum(losses) / max(len(losses), 1)


def warm_score(result: dict[str, Any]) -> float:
    """What the learning-rate choice maximises: the mean AUC over every warm stage (a, b, c) and K."""
    values = [st["auc"] for stages in result["k"].values() for name, st in stages.items() if name != "cold"]
    return sum(values) / len(values)


def select_lr(
    task: CTRTask,
    tables: Tables,
    plan: WarmupPlan,
    cfg: BucketConfig,
    settings: WarmupSettings,
    grid: Sequence[float],
    *,
    share: float = 0.5,
    history_len: int,
    history_content: bool = False,
) -> dict[str, Any]:
    """The warm-up learning rate chosen on held-out items, then the protocol on the others with it.

    The kept items are split (`WarmupPlan.split`, seeded by `settings.seed`): on the tune items each lr of `grid`
    runs the whole protocol and the one with the best `warm_score` wins (ties: the smaller lr); the report items
    then run it with that lr. So every model gets the same lr budget, and no reported row chose it. Returns
    `run_warmup`'s result on the report items plus "lr" (chosen), "lr_scores" ({lr: tune score}) and
    "tune_items" / "report_items" (counts)."""
    if not grid or any(not lr > 0 for lr in grid):
        raise InputError(f"warm-up lr grid {list(grid)}", fix="give one or more learning rates > 0")
    tune, report = plan.split(share, settings.seed)
    scores = {
        float(lr): warm_score(
            run_warmup(
                task,
                tables,
                tune,
                cfg,
                dataclasses.replace(settings, lr=float(lr)),
                history_len=history_len,
                history_content=history_content,
            )
        )
        for lr in sorted(set(grid))
    }
    best = max(scores, key=lambda lr: (scores[lr], -lr))
    chosen = dataclasses.replace(settings, lr=best)
    result = run_warmup(
        task, tables, report, cfg, chosen, history_len=history_len, history_content=history_content
    )
    return {
        **result,
        "lr": best,
        "lr_scores": {str(lr): v for lr, v in scores.items()},
        "tune_items": len(tune.items),
        "report_items": len(report.items),
    }


def run_warmup(
    task: CTRTask,
    tables: Tables,
    plan: WarmupPlan,
    cfg: BucketConfig,
    settings: WarmupSettings,
    *,
    history_len: int,
    history_content: bool = False,
) -> dict[str, Any]:
    """Score `task` (a trained model, left unchanged) cold, then after each warm-up batch, for every K of the plan.

    With `settings.admit`, a network that defines `admit(batch)` (AKT) first warm-starts the kept items' rows from
    a batch holding one row of each (Meta-Embedding's initialisation by its generator; AKT sets each row to the
    individual part the item had while cold); others start from their rows' random init, the papers' base model.

    Returns {"cold": metrics, "k": {K: {"warm_a": metrics + "warmup_loss", ...}}, "updated": {"tensors": how many
    parameter tensors the update may change, "parameters": how many numbers}, "admitted": whether rows were
    warm-started}."""
    new_items = plan.items
    evaluation = plan.evaluation()
    if evaluation.is_empty():
        raise InputError(
            "the warm-up protocol has no evaluation rows", fix="use smaller K or a dataset with more rows"
        )
    no_rows = plan.rows.head(0)
    count, bucket = revealed_activity(tables, no_rows, new_items, cfg)
    cold = stage_data(tables, evaluation, count, bucket, history_len, history_content=history_content)
    result: dict[str, Any] = {"cold": metrics(score(task, cold), cold), "k": {}}
    probe = cold[torch.arange(min(len(cold), 256))]
    admitted = settings.admit and callable(getattr(task.net, "admit", None))
    if admitted:  # one row of each kept item: its id, semantic IDs and content
        firsts = stage_data(
            tables,
            plan.rows.filter(pl.col(RANK) == 0),
            count,
            bucket,
            history_len,
            history_content=history_content,
        )
        first = Batch(*(t.to(next(task.parameters()).device) for t in firsts[torch.arange(len(firsts))]))
    result["admitted"] = admitted
    for k in plan.ks:
        model = copy.deepcopy(task)
        if admitted:
            model.net.admit(first)
        params = trainable(model, probe, new_items, settings.update)
        result["updated"] = {  # the same for every K
            "tensors": len(params),
            "parameters": int(sum(p.numel() if m is None else int(m.sum()) * p.shape[1] for p, m in params)),
        }
        generator = torch.Generator().manual_seed(settings.seed)
        stages: dict[str, Any] = {}
        for stage in range(1, N_BATCHES + 1):
            count, bucket = revealed_activity(tables, plan.revealed(k, stage), new_items, cfg)
            warm = stage_data(
                tables, plan.batch(k, stage), count, bucket, history_len, history_content=history_content
            )
            loss = update_stage(model, warm, params, settings, generator)
            scored = stage_data(
                tables, evaluation, count, bucket, history_len, history_content=history_content
            )
            stages[STAGES[stage]] = {**metrics(score(model, scored), scored), "warmup_loss": loss}
        result["k"][str(k)] = stages
    return result
