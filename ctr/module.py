"""The LightningModule every CTR model family subclasses (loss, metrics, optimisers, prediction) and the callback
that writes predictions to parquet.

A subclass builds its layers from `self.spec` and implements `forward(batch) -> ModelOutput`; everything else
(BCE + auxiliary loss + embedding L2, CTRMetrics on val/test, SparseAdam or dense AdamW) lives here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor, nn

from ctr.batch import Batch, DataSpec
from ctr.metrics import CTRMetrics
from semid import schema
from semid.errors import InputError
from semid.io import write_parquet


class ModelOutput(NamedTuple):
    logit: Tensor  # (B,) click logit
    aux_loss: Tensor  # () extra training loss, already weighted (0 when none)
    aux: dict[str, Tensor]  # scalars to log (gate means, fusion weights, ...)
    embed_sq: Tensor | None = None  # () batch mean of per-sample squared norm of looked-up embeddings


def as_spec(spec: DataSpec | Mapping[str, Any] | None) -> DataSpec:
    """The DataSpec a model is built from; a checkpoint stores it as a plain dict (loads with weights_only)."""
    if spec is None:
        raise InputError(
            "the model needs a DataSpec (cardinalities, feature vocabularies, codebook sizes) and got none",
            fix="train through the CLI, which links data.spec to model.init_args.spec, or pass "
            "spec=datamodule.spec when building the model in Python",
        )
    if isinstance(spec, DataSpec):
        return spec
    fields = {f.name for f in dataclasses.fields(DataSpec)}
    return DataSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k in fields})


def sparse_tables(module: nn.Module) -> list[nn.Parameter]:
    return [m.weight for m in module.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag) and m.sparse]


def embedding_tables(module: nn.Module) -> list[nn.Parameter]:
    return [m.weight for m in module.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag)]


class CTRTask(L.LightningModule):
    """Base of every CTR model: subclasses implement `forward(batch) -> ModelOutput`.

    Args:
        spec: what the data knows (linked from the DataModule by the CLI).
        lr: learning rate of every optimiser.
        weight_decay: AdamW decoupled weight decay of the dense (non-embedding) parameters only; embeddings are
            regularised by `embedding_l2`, on the rows a batch looks up, as is usual in CTR models.
        embedding_l2: coefficient of the batch-mean squared norm of the looked-up embeddings.
        sparse_embeddings: build embedding tables with sparse gradients and train them with SparseAdam (the
            rest with AdamW, manual optimisation); False = every parameter in one dense AdamW. Dense is the
            default: faster on MovieLens-sized tables (see benchmarks/results/train_loop.md).
    """

    def __init__(
        self,
        spec: DataSpec | None = None,
        *,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        embedding_l2: float = 0.0,
        sparse_embeddings: bool = False,
    ):
        super().__init__()
        self.spec = as_spec(spec)
        # collects the arguments of the subclass __init__ too; spec becomes a dict so checkpoints load with
        # torch.load(weights_only=True) and round-trip through as_spec
        self.save_hyperparameters()
        self.hparams["spec"] = dataclasses.asdict(self.spec)
        self.lr = lr
        self.weight_decay = weight_decay
        self.embedding_l2 = embedding_l2
        self.sparse_embeddings = sparse_embeddings
        self.automatic_optimization = not sparse_embeddings
        self.val_metrics = CTRMetrics()
        self.test_metrics = CTRMetrics()

    def forward(self, batch: Batch) -> ModelOutput:
        raise NotImplementedError

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
        if not self.automatic_optimization:
            optimizers = self.optimizers()
            optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            for opt in optimizers:
                opt.step()
        size = batch.label.shape[0]
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=size)
        self.log("train/bce", bce, on_step=True, prog_bar=True, batch_size=size)
        self.log("train/aux", out.aux_loss, on_step=True, prog_bar=True, batch_size=size)
        if out.aux and self.trainer is not None and batch_idx % max(self.trainer.log_every_n_steps, 1) == 0:
            for key, value in out.aux.items():
                if torch.isfinite(value):  # empty-bucket means are NaN; skip rather than poison the curve
                    self.log(f"train/{key}", value, on_step=True, on_epoch=False, batch_size=size)
        return loss

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
    def _update(self, metrics: CTRMetrics, batch: Batch) -> None:
        prob = torch.sigmoid(self(batch).logit.float())  # (B,)
        metrics.update(prob, batch.label, batch.user, batch.item_bucket, batch.user_bucket)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._update(self.val_metrics, batch)

    def on_validation_epoch_end(self) -> None:
        result = self.val_metrics.compute()
        for key in ("auc", "gauc", "logloss"):
            self.log(f"val/{key}", float(result[key]), prog_bar=key != "logloss")
        self.val_metrics.reset()

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._update(self.test_metrics, batch)

    def on_test_epoch_end(self) -> None:
        result = self.test_metrics.compute()
        for key, value in result.items():
            self.log(f"test/{key}", float(value))
        self.test_metrics.reset()

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        return {
            "user": batch.user,
            "item": batch.item,
            "label": batch.label,
            "score": torch.sigmoid(self(batch).logit.float()),
            "item_bucket": batch.item_bucket,
            "user_bucket": batch.user_bucket,
        }


def predictions_frame(predictions: Sequence[Mapping[str, Tensor]]) -> pl.DataFrame:
    """Concatenate predict_step outputs into a `semid.schema.PREDICTIONS` frame (buckets as their names)."""
    if not predictions:
        return pl.DataFrame(schema=schema.PREDICTIONS)
    cols = {k: torch.cat([p[k].detach().cpu() for p in predictions]).numpy() for k in predictions[0]}
    names = np.asarray(schema.BUCKETS)
    frame = pl.DataFrame(
        {
            schema.USER: cols["user"],
            schema.ITEM: cols["item"],
            schema.LABEL: cols["label"],
            schema.SCORE: cols["score"],
            schema.ITEM_BUCKET: names[cols["item_bucket"]],
            schema.USER_BUCKET: names[cols["user_bucket"]],
        }
    )
    return frame.cast(dict(schema.PREDICTIONS))


class PredictionWriter(BasePredictionWriter):
    """Write every prediction of a `Trainer.predict` run to one parquet file (`semid.schema.PREDICTIONS`).

    Single process: written atomically at epoch end. Under DDP each rank writes `.<name>.rank<r>.parquet` beside
    the output, then rank 0 merges them into the output and removes the parts. (CTRDataModule shards batches by
    rank itself, so nothing is repeated; a DistributedSampler would pad and repeat up to world_size - 1 rows.)
    """

    def __init__(self, output: str | Path):
        super().__init__(write_interval="epoch")
        self.output = Path(output)

    def _meta(self, trainer: L.Trainer, pl_module: L.LightningModule, rows: int) -> dict[str, Any]:
        return {
            "model": type(pl_module).__name__,
            "checkpoint": None if trainer.ckpt_path is None else str(trainer.ckpt_path),
            "rows": rows,
            "schema_version": schema.SCHEMA_VERSION,
        }

    def write_on_epoch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        if predictions and isinstance(predictions[0], list):  # several dataloaders: one list each
            predictions = [p for per_loader in predictions for p in per_loader]
        frame = predictions_frame(predictions)
        if trainer.world_size == 1:
            write_parquet(frame, self.output, self._meta(trainer, pl_module, frame.height))
            return
        part = self.output.with_name(f".{self.output.name}.rank{trainer.global_rank}.parquet")
        write_parquet(frame, part)
        trainer.strategy.barrier("prediction_writer")
        if trainer.is_global_zero:
            parts = [
                self.output.with_name(f".{self.output.name}.rank{r}.parquet")
                for r in range(trainer.world_size)
            ]
            merged = pl.concat([pl.read_parquet(p) for p in parts])
            write_parquet(merged, self.output, self._meta(trainer, pl_module, merged.height))
            for p in parts:
                p.unlink()
        trainer.strategy.barrier("prediction_writer_done")
