"""Predictions to parquet: `predictions_frame` (predict_step outputs -> `semid.schema.PREDICTIONS`), the
`PredictionWriter` callback (atomic; under DDP one part per rank, merged by rank 0) and `predict_split` (one split of
a CTRDataModule through a checkpoint into one file)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import polars as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from semid import schema
from semid.io import write_parquet


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
            "model": getattr(pl_module, "net_name", type(pl_module).__name__),
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
        check_finite = getattr(pl_module, "check_finite", None)  # CTRTask's NaN guard
        if callable(check_finite):
            check_finite("predict")  # before writing: a file of NaN scores is never produced
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


def predict_split(
    trainer: L.Trainer,
    model: L.LightningModule,
    datamodule: Any,
    *,
    split: str,
    output: str | Path,
    ckpt_path: str | None,
) -> None:
    """Predict `split` ("val" or "test") of a CTRDataModule with the weights of `ckpt_path` into `output`: the data
    module serves it as its `predict_split` for this one call, and the trainer's callbacks and the data module's
    `predict_split` are left as they were."""
    writer, before = PredictionWriter(output), datamodule.predict_split
    datamodule.predict_split = split
    trainer.callbacks.append(writer)
    try:
        trainer.predict(model, datamodule=datamodule, ckpt_path=ckpt_path, return_predictions=False)
    finally:
        trainer.callbacks.remove(writer)
        datamodule.predict_split = before
