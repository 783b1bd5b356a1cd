"""Encoding as Lightning batch inference on several processes or accelerators (DDP): each rank embeds its share of
the length-sorted batches, and the vectors are gathered back in input order.

The batches are exactly those of the one-process path (`length_batches`), dealt out round-robin to the ranks
(Lightning's predict sampler never repeats an item), so every text is padded with the same neighbours and its
vector equals the one-process vector. The shards are gathered with `all_gather` (in chunks, so a rank's
accelerator holds at most `GATHER_ROWS` rows of every rank at once) and scattered by row index, which also drops
any row a padding sampler would have repeated. Under ddp_spawn / ddp_fork the workers end with the run: global rank
0 hands the vectors to the calling process through a file in a temporary folder. Under ddp every rank goes on
with the result in memory.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from semid.encoder.batching import embed_all, length_batches
from semid.encoder.model import ContentEncoder, EncoderConfig

GATHER_ROWS = 65536
"""Rows per rank in one all_gather: bounds the gathered block to world_size * GATHER_ROWS * D floats."""
VECTORS_FILE = "vectors.pt"

_QUIET = (
    ".*does not have many workers.*",  # batches are built in the loop on purpose: tokenizing is cheap next to the model
    ".*infer the batch indices.*",  # each batch carries its own rows
    ".*LeafSpec.*",  # raised inside Lightning itself
    ".*all_gather is deprecated.*",  # raised by torch inside Lightning's all_gather
)
"""Warnings Lightning and torch raise on this path that mean nothing to a user."""

Batch = tuple[Tensor, list[str], list[str | None] | None]
"""(rows (B,) of the input, their texts, their image paths or None): one length-sorted batch."""


def uses_lightning(cfg: EncoderConfig) -> bool:
    """True when `cfg` asks for more than one rank or for an accelerator: the one-process CPU path otherwise."""
    return cfg.devices * cfg.num_nodes > 1 or cfg.accelerator not in ("auto", "cpu")


def resolve_strategy(cfg: EncoderConfig) -> str:
    """Lightning's strategy for `cfg`: "auto" (one device) for one rank, else `cfg.strategy`, where "auto" means
    ddp_fork on CPU and ddp_spawn on accelerators or without fork (see EncoderConfig.strategy)."""
    if cfg.devices * cfg.num_nodes == 1:
        return "auto"
    if cfg.strategy != "auto":
        return cfg.strategy
    on_cpu = cfg.accelerator == "cpu" or (
        cfg.accelerator == "auto" and not torch.cuda.is_available() and not torch.backends.mps.is_available()
    )
    can_fork = "fork" in torch.multiprocessing.get_all_start_methods()
    return "ddp_fork" if on_cpu and can_fork else "ddp_spawn"


def is_global_zero() -> bool:
    """This process is rank 0 of an initialised process group, or there is none (only it writes files)."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank of an initialised process group (ddp: the cache is written before anyone reads it)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class LengthBatches(Dataset):
    """The length-sorted batches of `texts` as dataset items: item k is batch k of `length_batches`."""

    def __init__(self, texts: list[str], images: list[str | None] | None, batch_size: int) -> None:
        self.texts, self.images = texts, images
        self.batches = length_batches(texts, batch_size)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> Batch:
        rows = self.batches[k]  # (B,)
        idx = rows.tolist()
        images = None if self.images is None else [self.images[i] for i in idx]
        return rows, [self.texts[i] for i in idx], images


def _silence_warnings() -> None:
    for message in _QUIET:
        warnings.filterwarnings("ignore", message=message)


def _as_is(batch: Batch) -> Batch:
    """The loader's collate function: items are whole batches already (picklable, unlike a lambda)."""
    return batch


class EncodeTask(L.LightningModule):
    """`ContentEncoder.embed_batch` as a predict step. The model is loaded in `configure_model`, inside each rank,
    so a spawned worker receives only the config, not the weights."""

    def __init__(self, cfg: EncoderConfig, *, max_length: int) -> None:
        super().__init__()
        self.cfg, self.max_length = cfg, max_length
        self.encoder: ContentEncoder | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled = inside a fresh ddp_spawn worker, before Lightning sets up the process group: the worker does
        not share the caller's log and warning settings, so its Lightning INFO lines (rank registration) and the
        known warnings are silenced here (the worker ends with the encoding)."""
        super().__setstate__(state)
        _silence_warnings()
        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)

    def configure_model(self) -> None:
        if self.encoder is None:
            self.encoder = ContentEncoder(self.cfg)

    def predict_step(self, batch: Batch) -> tuple[Tensor, Tensor]:
        rows, texts, images = batch
        assert self.encoder is not None  # configure_model ran
        return rows, self.encoder.embed_batch(texts, images, max_length=self.max_length)  # (B,), (B, D)


def gather_rows(
    strategy: Any, rows: Tensor, vectors: Tensor, n_rows: int, *, keep: bool, chunk: int = GATHER_ROWS
) -> Tensor | None:
    """All ranks' (rows (n_r,), vectors (n_r, D)) -> (n_rows, D) in input order, or None where not `keep` (the
    rank still takes part in every collective). Shards may differ in length: each is padded with row -1."""
    if strategy.world_size == 1:
        pieces = [(rows, vectors)]
    else:
        device = strategy.root_device
        counts = strategy.all_gather(torch.tensor([rows.numel()], device=device)).view(-1)  # (W,)
        longest = int(counts.max())
        rows = F.pad(rows, (0, longest - rows.numel()), value=-1)  # (longest,)
        vectors = F.pad(vectors, (0, 0, 0, longest - vectors.shape[0]))  # (longest, D)
        pieces = []
        for start in range(0, longest, chunk):
            part_rows = strategy.all_gather(rows[start : start + chunk].to(device))  # (W, c)
            part_vectors = strategy.all_gather(vectors[start : start + chunk].to(device))  # (W, c, D)
            if keep:
                pieces.append((part_rows.flatten().cpu(), part_vectors.flatten(0, 1).cpu()))
    if not keep:
        return None
    out = torch.empty(n_rows, vectors.shape[1], dtype=torch.float32)
    seen = torch.zeros(n_rows, dtype=torch.bool)
    for part_rows, part_vectors in pieces:
        real = part_rows >= 0  # padding rows out; a repeated row writes the same vector twice
        out[part_rows[real]] = part_vectors[real].float()
        seen[part_rows[real]] = True
    if not bool(seen.all()):
        raise RuntimeError(f"distributed encoding returned {int(seen.sum())} of {n_rows} rows")
    return out


class GatherVectors(BasePredictionWriter):
    """At the end of prediction, gather every rank's vectors in input order: kept in memory on every rank (ddp),
    or on global rank 0 only and saved to `folder` for the calling process (ddp_spawn / ddp_fork)."""

    def __init__(self, n_rows: int, folder: Path, *, spawned: bool) -> None:
        super().__init__(write_interval="epoch")
        self.n_rows, self.folder, self.spawned = n_rows, folder, spawned
        self.vectors: Tensor | None = None

    def write_on_epoch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        predictions: list[tuple[Tensor, Tensor]],
        batch_indices: Any,
    ) -> None:
        rows = torch.cat([r for r, _ in predictions])  # (n_r,)
        vectors = torch.cat([v for _, v in predictions])  # (n_r, D)
        keep = trainer.is_global_zero or not self.spawned
        self.vectors = gather_rows(trainer.strategy, rows, vectors, self.n_rows, keep=keep, chunk=GATHER_ROWS)
        if self.spawned and trainer.is_global_zero:
            torch.save(self.vectors, self.folder / VECTORS_FILE)


def embed_distributed(
    cfg: EncoderConfig,
    texts: list[str],
    images: list[str | None] | None = None,
    *,
    max_length: int | None = None,
    progress: bool = True,
) -> Tensor:
    """(N, D) vectors in input order, from `cfg.devices` x `cfg.num_nodes` Lightning ranks (see the module
    docstring). With fewer length batches than ranks, every rank could not get one: the texts are encoded in
    this process instead (as every rank does under ddp, alike)."""
    max_length = max_length or cfg.max_length
    data = LengthBatches(texts, images, cfg.batch_size)
    world = cfg.devices * cfg.num_nodes
    if len(data) < world:
        return embed_all(ContentEncoder(cfg), texts, images, max_length=max_length, progress=progress)
    with tempfile.TemporaryDirectory(prefix="semid-encode-") as tmp, warnings.catch_warnings():
        _silence_warnings()  # restored on exit; forked workers inherit them
        strategy = resolve_strategy(cfg)
        writer = GatherVectors(len(texts), Path(tmp), spawned=strategy in ("ddp_fork", "ddp_spawn"))
        trainer = L.Trainer(
            accelerator=cfg.accelerator,
            devices=cfg.devices,
            num_nodes=cfg.num_nodes,
            strategy=strategy,
            inference_mode=True,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress,
            callbacks=[writer],
            default_root_dir=tmp,
        )
        loader = DataLoader(data, batch_size=None, shuffle=False, collate_fn=_as_is)
        trainer.predict(EncodeTask(cfg, max_length=max_length), loader, return_predictions=False)
        if writer.vectors is not None:
            return writer.vectors
        return torch.load(Path(tmp) / VECTORS_FILE, weights_only=True)
