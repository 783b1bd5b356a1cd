"""`encode`: texts (and images) -> vectors through a parquet cache keyed by model identity and text hash, on one
process or several (DDP); a truncated or corrupted cache file is discarded with one warning and encoded again."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import Tensor

from semid.encoder.batching import check_inputs, embed_all, text_hashes
from semid.encoder.distributed import barrier, embed_distributed, is_global_zero, uses_lightning
from semid.encoder.model import ContentEncoder, EncoderConfig, model_identity
from semid.io import read_meta, write_parquet
from semid.schema import EMBEDDING, TEXT_HASH


def cache_file(cache: Path, identity: str) -> Path:
    return Path(cache) / f"embeddings-{identity[:16]}.parquet"


def cache_checksum(table: pl.DataFrame) -> str:
    """sha256 over the text hashes and the float32 bytes of the vectors: what a cache file must still hold."""
    digest = hashlib.sha256("\n".join(table[TEXT_HASH].to_list()).encode())
    if table.height:
        digest.update(np.ascontiguousarray(table[EMBEDDING].to_numpy(), dtype=np.float32).tobytes())
    return digest.hexdigest()


def _read_cache(path: Path, identity: str) -> pl.DataFrame | None:
    """The cache table of `identity`, or None when there is none. A file that cannot be read (truncated), lacks a
    checksum or fails it (corrupted) is discarded with one warning, so its vectors are encoded again."""
    if not path.is_file():
        return None
    try:
        meta = read_meta(path)
        if meta.get("identity") != identity:
            return None
        table = pl.read_parquet(path)
        ok = meta.get("checksum") == cache_checksum(table)
    except Exception as err:  # noqa: BLE001 -- polars raises several error types for a damaged file
        ok, reason = False, f"cannot be read ({type(err).__name__})"
    else:
        reason = "fails its checksum"
    if not ok:
        warnings.warn(
            f"embedding cache {path} {reason}: discarded, its vectors are encoded again", stacklevel=3
        )
        return None
    return table


def encode(
    texts: list[str],
    cfg: EncoderConfig,
    *,
    images: list[str | None] | None = None,
    cache: Path | None = None,
    max_length: int | None = None,
    encoder: ContentEncoder | None = None,
    progress: bool = True,
) -> Tensor:
    """Encode `texts` (and optional image paths) into (N, D) float32 vectors in input order.

    With `cache`, vectors live in `cache/embeddings-<model id>.parquet` keyed by the text hash; only texts not
    yet there are encoded (the model is not even loaded when everything is cached) and the file is rewritten
    atomically with the union. `max_length` overrides `cfg.max_length` (so it is part of the model identity:
    user texts with their own cap get their own cache file). `encoder`: a ContentEncoder already loaded with
    `cfg`, reused instead of loading a second copy of the model.

    `cfg.devices` > 1 (or `cfg.num_nodes` > 1, or a GPU accelerator) encodes through Lightning DDP batch inference
    (semid.encoder.distributed): the same vectors in the same order, the cache written once, by global rank 0.
    """
    texts = list(texts)
    check_inputs(texts, images)
    if encoder is not None and encoder.cfg != cfg:
        raise ValueError(f"the encoder was loaded with {encoder.cfg}, not {cfg}")
    if max_length is not None:
        cfg = replace(cfg, max_length=max_length)

    spread = uses_lightning(cfg)

    def run(rows: list[str], row_images: list[str | None] | None) -> Tensor:
        if spread:  # each rank loads its own copy of the model; `encoder` stays in this process
            return embed_distributed(cfg, rows, row_images, max_length=cfg.max_length, progress=progress)
        model = encoder if encoder is not None else ContentEncoder(cfg)
        return embed_all(model, rows, row_images, max_length=cfg.max_length, progress=progress)

    if cache is None:
        return run(texts, images)

    path, kind, identity = model_identity(cfg)
    hashes = text_hashes(texts, images)
    wanted = pl.DataFrame({TEXT_HASH: hashes, "_row": np.arange(len(texts))})
    file = cache_file(cache, identity)
    cached = _read_cache(file, identity)
    if cached is not None:
        wanted = wanted.join(
            cached.with_columns(pl.lit(True).alias("_hit")), on=TEXT_HASH, how="left", maintain_order="left"
        )
        missing = wanted.filter(pl.col("_hit").is_null())
    else:
        missing = wanted
    todo = missing.unique(TEXT_HASH, keep="first", maintain_order=True)["_row"].to_list()
    if todo:
        sub_images = None if images is None else [images[i] for i in todo]
        fresh = run([texts[i] for i in todo], sub_images)
        new = pl.DataFrame(
            {TEXT_HASH: [hashes[i] for i in todo], EMBEDDING: fresh.numpy()},
            schema={TEXT_HASH: pl.String, EMBEDDING: pl.Array(pl.Float32, fresh.shape[1])},
        )
        cached = new if cached is None else pl.concat([cached, new])
        meta = {
            "identity": identity,
            "model": str(path),
            "kind": kind,
            "config": asdict(cfg),
            "dim": fresh.shape[1],
            "checksum": cache_checksum(cached),
        }
        if not spread or is_global_zero():  # under ddp every rank gets here: one writes, all wait for it
            write_parquet(cached, file, meta)
        if spread:
            barrier()
    table = pl.DataFrame({TEXT_HASH: hashes}).join(cached, on=TEXT_HASH, how="left", maintain_order="left")
    return torch.from_numpy(table[EMBEDDING].to_numpy().astype(np.float32, copy=True))  # (N, D)
