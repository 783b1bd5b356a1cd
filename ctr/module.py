"""`CTRTask`, the LightningModule that trains any CTR network (loss, optimisers, metrics, prediction, NaN guard).
The callback that writes predictions to parquet lives in `ctr.predict` (re-exported here).

A network is a plain `nn.Module` built from a `DataSpec` whose `forward(batch) -> ModelOutput` gives the click
logit (`ctr.models`); the task is configured with a factory `net(spec) -> nn.Module` (a class, a
`functools.partial`, or in YAML `net: {class_path: ..., init_args: {...}}`), so any backbone -- or a wrapper around
one -- trains the same way. Validation is scored overall and for warm users (train_count > 0) and cold users
apart, and one of them is logged again as `val/monitor`, the number checkpointing and early stopping watch (see
`CTRTask`'s `monitor`). The checkpoint stores the network's class path and arguments as plain data (it loads
with `torch.load(weights_only=True)`), and restoring a checkpoint of another network class is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, get_args

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics import Metric

from ctr.batch import Batch, DataSpec, ModelOutput
from ctr.data.arrays import Tables
from ctr.layers import index_sid_tables
from ctr.metrics import CTRMetrics, auc, gauc, logloss, scenario_scores
from ctr.predict import PredictionWriter as PredictionWriter  # re-exported: callers import it from here
from ctr.predict import predictions_frame as predictions_frame
from semid.errors import InputError

__all__ = [
    "MONITOR_KEY",
    "CTRTask",
    "ModelOutput",
    "Monitor",
    "NetFactory",
    "PredictionWriter",
    "ValidationScores",
    "as_spec",
    "predictions_frame",
]

Monitor = Literal["val/gauc", "val/gauc_warm", "val/auc"]
DEFAULT_MONITOR = "val/gauc"
"""CTRTask's `monitor` when a config sets none; `semid run --tune` ranks trials on the same default, so a tuned model
and an untuned one are always selected on one number."""


def configured_monitor(configs: Iterable[Any]) -> str:
    """The `model.monitor` a CTR fit from these parsed configs (applied in order) is selected on: the last one that
    sets it, else DEFAULT_MONITOR."""
    chosen = DEFAULT_MONITOR
    for cfg in configs:
        model = cfg.get("model") if isinstance(cfg, Mapping) else None
        if isinstance(model, Mapping) and model.get("monitor"):
            chosen = str(model["monitor"])
    return chosen


MONITOR_KEY = "val/monitor"
"""What checkpointing and early stopping watch: the value of CTRTask's `monitor` (or val/auc where it is undefined)."""

NetFactory = Callable[[DataSpec], nn.Module]
NAN_FIX = (
    "lower model.lr, add model.embedding_l2 / model.weight_decay, or check the prepared data and the model "
    "arguments for values that overflow"
)


def as_spec(spec: DataSpec | Mapping[str, Any] | None) -> DataSpec:
    """The DataSpec a network is built from; a checkpoint stores it as a plain dict (loads with weights_only)."""
    if spec is None:
        raise InputError(
            "the model needs a DataSpec (cardinalities, feature vocabularies, codebook sizes) and got none",
            fix="train through the CLI, which links data.spec to model.spec, or pass "
            "spec=datamodule.spec when building the CTRTask in Python",
        )
    if isinstance(spec, DataSpec):
        return spec
    fields = {f.name for f in dataclasses.fields(DataSpec)}
    return DataSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k in fields})


def class_path(cls: type | str) -> str:
    """The defining module + name of a class (or of a dotted path to one: jsonargparse shortens
    `ctr.models.deepfm.DeepFM` to `ctr.models.DeepFM`), so one class always has one path."""
    if isinstance(cls, str):
        module, _, name = cls.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError):
            return cls
        if not isinstance(cls, type):
            return f"{module}.{name}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _plain(value: Any) -> Any:
    """Arguments as plain data (checkpoint hparams must load with weights_only): nested factories -> configs."""
    if isinstance(value, functools.partial | type):
        return net_config(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def net_config(net: NetFactory | Mapping[str, Any]) -> dict[str, Any]:
    """`{"class_path": ..., "init_args": {...}}` of a network factory: a class, a `functools.partial` of one (also
    the partial jsonargparse builds from a `class_path` config), or such a config already."""
    if isinstance(net, Mapping):
        if "class_path" not in net:
            raise InputError(
                f"the network config {dict(net)!r} has no class_path",
                fix="give model.net as {class_path: ctr.models.<file>.<Class>, init_args: {...}}",
            )
        return {
            "class_path": class_path(str(net["class_path"])),
            "init_args": _plain(dict(net.get("init_args") or {})),
        }
    if isinstance(net, type):
        return {"class_path": class_path(net), "init_args": {}}
    if isinstance(net, functools.partial):
        classes = [f for f in (net.func, *net.args) if isinstance(f, type)]
        if classes:
            return {"class_path": class_path(classes[-1]), "init_args": _plain(dict(net.keywords))}
    raise InputError(
        f"cannot describe the network factory {net!r} for the checkpoint",
        fix="pass the network class, or functools.partial(NetClass, **init_args)",
    )


def build_net(net: NetFactory | Mapping[str, Any] | nn.Module, spec: DataSpec) -> nn.Module:
    """The network: factory(spec), or a `net_config` mapping (as stored in a checkpoint) instantiated with spec."""
    if isinstance(net, nn.Module):
        raise InputError(
            "CTRTask takes a network factory, not a built network (the checkpoint must be able to rebuild it)",
            fix="pass the class or functools.partial(NetClass, **init_args); the task calls it with the DataSpec",
        )
    if isinstance(net, Mapping):
        from jsonargparse import ArgumentParser

        parser = ArgumentParser(exit_on_error=False)
        parser.add_argument("--net", type=NetFactory)
        net = parser.instantiate(parser.parse_object({"net": net_config(net)})).net
    module = net(spec)
    if not isinstance(module, nn.Module):
        raise InputError(
            f"the network factory returned {type(module).__name__}, not an nn.Module",
            fix="model.net must name an nn.Module class built from a DataSpec (see ctr.models)",
        )
    return module


def sparse_tables(module: nn.Module) -> list[nn.Parameter]:
    return [m.weight for m in module.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag) and m.sparse]


def embedding_tables(module: nn.Module) -> list[nn.Parameter]:
    return [m.weight for m in module.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag)]


class ValidationScores(Metric):
    """AUC, GAUC and log loss overall, for warm users (train_count > 0) and for cold users (train_count 0), and
    AUC / log loss per scenario when given `scenario_names` and batches with scenarios
    (keys f"scenario/{name}/{auc|logloss|n}", see ctr.metrics.scenario_scores).

    Under the temporal protocol most validation rows can belong to users with no train data (issue 13: 76% on
    ML-1M), so the overall GAUC mostly measures cold users; the warm/cold split makes that visible and selectable.
    Keeps every row in `cat` states (exact, DDP-correct) and scores masks with `ctr.metrics`' public functions.
    compute() keys: "auc", "gauc", "logloss", "n" and the same with "_warm" / "_cold" appended (NaN where
    undefined).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    STATES = {"preds": torch.float32, "target": torch.float32, "user": torch.long, "warm": torch.bool}

    def __init__(self, scenario_names: Sequence[str] = ()) -> None:
        super().__init__()
        self.scenario_names = tuple(scenario_names)
        for name in (*self.STATES, "scenario"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self, preds: Tensor, target: Tensor, user: Tensor, user_count: Tensor, scenario: Tensor | None = None
    ) -> None:
        """preds (B,) probabilities, target (B,) 0/1, user (B,) ids, user_count (B,) train interactions,
        scenario (B,) codes or empty / None."""
        self.preds.append(preds.detach().reshape(-1).float())
        self.target.append(target.detach().reshape(-1).float())
        self.user.append(user.detach().reshape(-1).long())
        self.warm.append(user_count.detach().reshape(-1) > 0)
        if self.scenario_names and scenario is not None and scenario.numel():
            self.scenario.append(scenario.detach().reshape(-1).long())

    def compute(self) -> dict[str, float]:
        rows = {name: _cat_state(getattr(self, name), dtype) for name, dtype in self.STATES.items()}
        preds, target, user, warm = rows["preds"], rows["target"], rows["user"], rows["warm"]
        out: dict[str, float] = {}
        for suffix, mask in (("", torch.ones_like(warm)), ("_warm", warm), ("_cold", ~warm)):
            p, y, u = preds[mask], target[mask], user[mask]  # (n_mask,)
            out[f"auc{suffix}"] = auc(p, y)
            out[f"gauc{suffix}"] = gauc(p, y, u)
            out[f"logloss{suffix}"] = logloss(p, y)
            out[f"n{suffix}"] = float(p.numel())
        scenario = _cat_state(self.scenario, torch.long)
        if self.scenario_names and scenario.numel() == preds.numel() and preds.numel():
            out.update(scenario_scores(preds, target, scenario, self.scenario_names))
        return out


def _cat_state(state: Tensor | list[Tensor], dtype: torch.dtype) -> Tensor:
    """A `cat` state as one tensor (a list before sync, one tensor after), empty when nothing was added."""
    if isinstance(state, list):
        return torch.cat(state) if state else torch.zeros(0, dtype=dtype)
    return state


class CTRTask(L.LightningModule):
    """Trains, evaluates and predicts with any CTR network: BCE + the network's auxiliary loss + embedding L2.

    Args:
        net: builds the network from the DataSpec (`net(spec) -> nn.Module` whose forward gives `ModelOutput`);
            in YAML `net: {class_path: ctr.models.deepfm.DeepFM, init_args: {embed_dim: 16}}`.
        spec: what the data knows (linked from the DataModule by the CLI).
        lr: learning rate of every optimiser.
        weight_decay: AdamW decoupled weight decay of the dense (non-embedding) parameters only; embeddings are
            regularised by `embedding_l2`, on the rows a batch looks up, as is usual in CTR models.
        embedding_l2: coefficient of the batch-mean squared norm of the looked-up embeddings.
        monitor: the validation number that selects the checkpoint and drives early stopping, logged again as
            `val/monitor`: "val/gauc" (overall), "val/gauc_warm" (users with train data only: the rule that is
            not dominated by cold users under a global time cut) or "val/auc". Where the chosen GAUC is undefined
            -- no user has both labels in validation, as with leave-last-out (one val row per user) -- the task
            switches to val/auc for the rest of the fit and says so once, instead of letting early stopping end
            the fit on a NaN after epoch 0. A validation split with one label class is refused.
        sparse_embeddings: switch every embedding table of the network to sparse gradients and train them with
            SparseAdam (the rest with AdamW, manual optimisation); False = every parameter in one dense AdamW.
            Dense is the default: faster on MovieLens-sized tables (see benchmarks/results/train_loop.md).

    A non-finite training loss, or a non-finite logit in validation / test / predict, stops the run with an
    `InputError` naming the network and the step (checked every step: one device sync, no anomaly detection).
    """

    def __init__(
        self,
        net: NetFactory,
        spec: DataSpec | None = None,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        embedding_l2: float = 0.0,
        sparse_embeddings: bool = False,
        monitor: Monitor = DEFAULT_MONITOR,
    ):
        super().__init__()
        self.spec = as_spec(spec)
        # the CLI hands over its config (net as {class_path, init_args}); in Python the factory is described here.
        # Both end up plain data so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters()
        given = self.hparams.get("net")
        self.hparams["net"] = net_config(given if isinstance(given, Mapping) else net)
        self.hparams["spec"] = dataclasses.asdict(self.spec)
        self.net = build_net(net, self.spec)
        for m in self.net.modules():  # the task, not each network, decides how tables are optimised
            if isinstance(m, nn.Embedding | nn.EmbeddingBag):
                m.sparse = sparse_embeddings
        self.lr = lr
        self.weight_decay = weight_decay
        self.embedding_l2 = embedding_l2
        self.sparse_embeddings = sparse_embeddings
        self.automatic_optimization = not sparse_embeddings
        if monitor not in get_args(Monitor):
            raise InputError(
                f"monitor={monitor!r}", fix=f"set model.monitor to one of {list(get_args(Monitor))}"
            )
        self.monitor = monitor
        self._monitor_fallback = False  # set once the chosen GAUC is found undefined on the validation split
        self.val_metrics = ValidationScores(self.spec.scenario_names)
        self.test_metrics = CTRMetrics(self.spec.scenario_names)
        self._nonfinite: dict[str, int | None] = {}  # stage -> first batch index with a non-finite logit

    @property
    def net_name(self) -> str:
        return type(self.net).__name__

    def forward(self, batch: Batch) -> ModelOutput:
        return self.net(batch)

    def setup(self, stage: str) -> None:
        trainer = self._trainer
        tables = getattr(trainer.datamodule, "tables", None) if trainer is not None else None
        if isinstance(tables, Tables):
            self.index_sids(tables)

    def index_sids(self, tables: Tables) -> int:
        """Index the network's semantic-ID prefix tables with every id's codes from the data (`setup` does it for
        a Trainer given a `CTRDataModule`; call it when training on its loaders yourself). Once only: a network
        restored from a checkpoint keeps the index it was trained with (`ctr.layers.SIDPrefixEmbedding`). Returns
        how many tables were indexed now."""
        return index_sid_tables(self.net, tables.users.sid.codes, tables.items.sid.codes)

    # -- checkpoints ---------------------------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainer = self._trainer
        self.check_checkpoint(
            checkpoint, getattr(trainer, "ckpt_path", None) if trainer is not None else None
        )

    def check_checkpoint(self, checkpoint: Mapping[str, Any], file: Any = None) -> None:
        """Refuse a checkpoint of another network class (its weights would not fit, or worse, would), or one whose
        weights do not fit this network (another version's layout, other data), with one `InputError`."""
        stored = (checkpoint.get("hyper_parameters") or {}).get("net")
        stored_class = class_path(str(stored["class_path"])) if isinstance(stored, Mapping) else None
        mine = self.hparams["net"]["class_path"]
        if stored_class != mine:
            raise InputError(
                f"the checkpoint holds a {stored_class or 'non-CTRTask'} network, this run builds {mine}",
                file=file,
                fix="pass the model config the checkpoint was trained with, or a checkpoint of this model",
            )
        mine_shapes = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in (checkpoint.get("state_dict") or {}).items()}
        misfit = sorted(k for k in mine_shapes.keys() | theirs.keys() if mine_shapes.get(k) != theirs.get(k))
        if misfit:
            raise InputError(
                f"the checkpoint's weights do not fit the {self.net_name} this version builds from its config "
                f"({len(misfit)} tensors missing, extra or of another shape, e.g. {misfit[:3]}): it was written "
                "by another version of semid-ctr or for other data",
                file=file,
                fix="fit the model again (delete the run's models folder, or pass a checkpoint of this version)",
            )

    # -- NaN guard -----------------------------------------------------------------------------------------
    def _finite_everywhere(self, finite: bool) -> bool:
        """All ranks agree (under DDP one rank raising alone would leave the others waiting forever)."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return finite
        return bool(trainer.strategy.reduce_boolean_decision(finite, all=True))

    def _where(self, stage: str, batch_idx: int) -> str:
        return f"{self.net_name}: {stage} epoch {self.current_epoch}, batch {batch_idx}, global step {self.global_step}"

    def _watch(self, stage: str, logit: Tensor, batch_idx: int) -> None:
        """Eval steps only note the first bad batch (ranks may run unequal batch counts: no sync per step)."""
        if self._nonfinite.get(stage) is None and not bool(torch.isfinite(logit).all()):
            self._nonfinite[stage] = batch_idx

    def check_finite(self, stage: str) -> None:
        """Raise if any rank saw a non-finite logit in `stage` (called at epoch end, before anything is reported)."""
        first = self._nonfinite.pop(stage, None)
        if not self._finite_everywhere(first is None):
            where = (
                f"{self.net_name}: {stage} on another rank" if first is None else self._where(stage, first)
            )
            raise InputError(f"non-finite predictions (NaN or inf) at {where}", fix=NAN_FIX)

    # -- training ------------------------------------------------------------------------------------------
    def loss(self, batch: Batch, out: ModelOutput) -> tuple[Tensor, Tensor]:
        bce = F.binary_cross_entropy_with_logits(out.logit, batch.label.float())
        loss = bce + out.aux_loss
        if self.embedding_l2 > 0 and out.embed_sq is not None:
            loss = loss + self.embedding_l2 * out.embed_sq
        return loss, bce

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        out = self(batch)
        loss, bce = self.loss(batch, out)
        if not self._finite_everywhere(bool(torch.isfinite(loss))):
            raise InputError(
                f"non-finite training loss {float(loss.detach())} at {self._where('train', batch_idx)}",
                fix=NAN_FIX,
            )
        if not self.automatic_optimization:
            optimizers = self.optimizers()
            optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            for opt in optimizers:
                opt.step()
        size = batch.label.shape[0]
        if self._loggers_write_this_step():
            self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=size)
            self.log("train/bce", bce, on_step=True, prog_bar=True, batch_size=size)
            self.log("train/aux", out.aux_loss, on_step=True, prog_bar=True, batch_size=size)
        if out.aux and self.trainer is not None and batch_idx % max(self.trainer.log_every_n_steps, 1) == 0:
            for key, value in out.aux.items():
                if torch.isfinite(value):  # empty-bucket means are NaN; skip rather than poison the curve
                    self.log(f"train/{key}", value, on_step=True, on_epoch=False, batch_size=size)
        return loss

    def _loggers_write_this_step(self) -> bool:
        """Whether the loggers write this training step's values (Lightning's rule: every `log_every_n_steps`
        steps, every step of a fast_dev_run). The per-step losses are handed to `self.log` only then: each call
        costs about a millisecond of Lightning bookkeeping (3 calls were ~8% of a DeepFM step on ML-100K), and a
        value logged between two written steps is overwritten unseen. The logged files are unchanged; the
        progress bar shows the losses of the last written step. Outside a fit (no trainer, or a Lightning without
        this rule) every step logs."""
        trainer = self._trainer
        if trainer is None:
            return True
        if trainer.fast_dev_run:
            return True
        return bool(getattr(getattr(trainer, "_logger_connector", None), "should_update_logs", True))

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """A `Batch` is one flat NamedTuple of tensors: move each directly (Lightning's generic version walks it
        recursively, a measurable cost per step on CPU where every move is a no-op)."""
        if isinstance(batch, Batch):
            non_blocking = device.type not in ("cpu", "mps")  # as Lightning's move_data_to_device
            return Batch(*(t.to(device, non_blocking=non_blocking) for t in batch))
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def configure_optimizers(self) -> Any:
        tables = {id(p) for p in embedding_tables(self)}
        dense = [p for p in self.parameters() if p.requires_grad and id(p) not in tables]
        if self.sparse_embeddings:
            sparse = sparse_tables(self)
            sparse_ids = {id(p) for p in sparse}
            dense_tables = [p for p in embedding_tables(self) if id(p) not in sparse_ids]
            groups = [
                {"params": dense, "weight_decay": self.weight_decay},
                {"params": dense_tables, "weight_decay": 0.0},
            ]
            return [
                torch.optim.SparseAdam(sparse, lr=self.lr),
                torch.optim.AdamW([g for g in groups if g["params"]], lr=self.lr, fused=True),
            ]
        groups = [
            {"params": dense, "weight_decay": self.weight_decay},
            {"params": embedding_tables(self), "weight_decay": 0.0},
        ]
        # fused: one kernel per step instead of a dozen elementwise passes. Measured on ML-1M batches of 2048, one
        # thread: AKT 96.7 -> 71.7 ms/step (its SID-prefix tables hold 5.0M of its 5.4M parameters), DeepFM
        # 23.6 -> 23.1 ms/step.
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=self.lr, fused=True)

    # -- evaluation ----------------------------------------------------------------------------------------
    def _score(self, stage: str, batch: Batch, batch_idx: int) -> Tensor:
        logit = self(batch).logit.float()  # (B,)
        self._watch(stage, logit, batch_idx)
        return torch.sigmoid(logit)  # (B,)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        prob = self._score("validation", batch, batch_idx)
        self.val_metrics.update(prob, batch.label, batch.user, batch.user_count, batch.scenario)

    def on_validation_epoch_end(self) -> None:
        self.check_finite("validation")
        result = self.val_metrics.compute()
        self.val_metrics.reset()
        for key, value in result.items():
            self.log(f"val/{key}", float(value), prog_bar=key in ("auc", "gauc"))
        self.log(MONITOR_KEY, self.monitor_value(result))

    def monitor_value(self, result: Mapping[str, float]) -> float:
        """The value of `monitor` in a validation result, or AUC (said once) where that GAUC is undefined."""
        chosen = float(result[self.monitor.removeprefix("val/")])
        sanity = self._trainer is not None and self.trainer.sanity_checking
        undefined_gauc = "gauc" in self.monitor and not math.isfinite(chosen)
        if undefined_gauc and not sanity and not self._monitor_fallback:
            n_rows = int(result["n" + self.monitor.removeprefix("val/gauc")])
            rank_zero_info(
                f"{self.monitor} is undefined on this validation split (no user among its {n_rows} rows has both "
                "a click and a non-click, e.g. leave-last-out with one validation row per user): model selection "
                "and early stopping use val/auc instead (set model.monitor: val/auc to choose it up front)"
            )
            self._monitor_fallback = True
        if self._monitor_fallback:
            chosen = float(result["auc"])
        if not math.isfinite(chosen) and not sanity:
            raise InputError(
                f"validation {self.monitor} is undefined (and so is val/auc): the validation split has "
                f"{int(result['n'])} rows and one label class",
                fix="re-run `semid prepare` with a split whose validation rows hold both clicks and non-clicks "
                "(negatives), or more validation data",
            )
        return chosen

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        prob = self._score("test", batch, batch_idx)
        self.test_metrics.update(
            prob, batch.label, batch.user, batch.item_bucket, batch.user_bucket, batch.scenario
        )

    def on_test_epoch_end(self) -> None:
        self.check_finite("test")
        result = self.test_metrics.compute()
        for key, value in result.items():
            self.log(f"test/{key}", float(value))
        self.test_metrics.reset()

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        return {
            "user": batch.user,
            "item": batch.item,
            "label": batch.label,
            "score": self._score("predict", batch, batch_idx),
            "item_bucket": batch.item_bucket,
            "user_bucket": batch.user_bucket,
        }

    def on_predict_epoch_end(self) -> None:
        # PredictionWriter checks before it writes; this covers return_predictions
        self.check_finite("predict")
