"""`semid assign` (semantic IDs for new items from a finished build, existing IDs never change) and `semid inspect`
(an ID table's metadata and health).

`assign` encodes the new items with the build's aligned encoder (enriched with the build's LLM facets when the build
was, see semid.knowledge.enriched; with the popularity word "new" when the build had `align_config.item_stats`,
see semid.align.popularity) and quantises them with its item RQ-VAE; the table gets a new version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipelines.build_semids import BUILD_FILE
from semid import data
from semid import schema as S
from semid.align import load_aligned_encoder, usable_images, with_popularity
from semid.encoder import EncoderConfig
from semid.errors import InputError
from semid.ids import assign_new, format_health, health, read_table, write_table
from semid.knowledge.enriched import DISABLED, enrich_like_build, n_enriched
from semid.rqvae import load_rqvae


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


def assign(semids: str, items: str, out: str | None = None, llm_cache: str | None = None) -> Path:
    """Give new items semantic IDs with the trained aligned encoder and item RQ-VAE; existing IDs never change.

    When the build enriched its items with LLM facets (`knowledge`), the new items' texts are enriched the same way
    (same model, precision and prompts, from the build record) before they are encoded.

    Args:
        semids: a `semid build` output directory.
        items: parquet/CSV with `item_id` (new dense ids, not in the table) and `text` columns, and optionally
            `image_path` (embedded with the text by a clip / vlm encoder; empty = no image).
        out: where to write the new item table (default: replace <semids>/item_sids.parquet atomically).
        llm_cache: the SQLite LLM answer cache of an enriched build (default: the file the build used).
    """
    root = Path(semids)
    if not root.is_dir():
        raise InputError(
            "--semids: not a folder",
            file=root,
            fix="pass the output folder of `semid build` (e.g. runs/<name>/semids)",
        )
    table_path = root / S.ITEM_SIDS_FILE
    table, meta = read_table(table_path, key=S.ITEM)
    _check_same_build(meta, root)
    target = Path(out) if out is not None else table_path
    if target != table_path and target.exists():
        if target.is_dir():
            raise InputError(
                "--out names a folder", file=target, fix="pass the path of the new .parquet table"
            )
        read_table(target)  # only an ID table may be replaced, never another file
    new_file = Path(items)
    if new_file.is_dir():
        raise InputError(
            "--items: is a folder, not a file", file=new_file, fix="pass the new items file itself"
        )
    new = data.read_raw(new_file)
    for col in (S.ITEM, S.TEXT):
        if col not in new.columns:
            raise InputError(
                f"missing column {col!r}", file=items, column=col, fix="give new items as item_id + text"
            )
    if new.is_empty():
        raise InputError("no new items", file=items, fix="pass a file with at least one row")
    keys = _new_item_keys(new, items)
    empty = new.filter(pl.col(S.TEXT).is_null() | (pl.col(S.TEXT).cast(pl.String).str.strip_chars() == ""))
    if empty.height:
        raise InputError(
            f"{empty.height} new items have empty text", file=items, column=S.TEXT, fix="fill the text"
        )
    images = _new_item_images(new, items)
    for needed in (S.ALIGN_STATE_FILE, S.ITEM_RQVAE_FILE):
        if not (root / needed).is_file():
            raise InputError(
                "the build folder lacks a file `semid assign` needs",
                file=root / needed,
                fix="rebuild (semid build)",
            )
    encoder = load_aligned_encoder(EncoderConfig(**meta["encoder"]), root / S.ALIGN_STATE_FILE)
    texts = new[S.TEXT].cast(pl.String).to_list()
    knowledge = meta.get("knowledge") or DISABLED
    if knowledge["enabled"]:
        result = enrich_like_build(knowledge, texts, llm_cache)
        for task, summary in result.summaries.items():
            print(f"[assign] {summary.line(task)}", flush=True)
        print(f"[assign] knowledge: {n_enriched(texts, result.enriched)} of {len(texts)} new items enriched")
        texts = result.enriched
    if (meta.get("align") or {}).get("item_stats"):  # as `align` rendered items without train positives
        texts = with_popularity(texts)
    emb = encoder.encode_items(texts, usable_images(encoder.encoder, images))  # (N_new, D)
    model = load_rqvae(root / S.ITEM_RQVAE_FILE)
    codes = model.encode(emb)  # (N_new, L)
    table, meta = assign_new(table, meta, keys, codes, source=getattr(model, "build_meta", None))
    write_table(table, target, meta)
    print(f"[assign] {len(keys)} new items -> version {meta['version']}: {target}")
    return target


def _new_item_keys(new: pl.DataFrame, items: str) -> np.ndarray:
    """The new items' dense integer ids; InputError naming the first non-integer / negative / missing one."""
    ids = new[S.ITEM]
    as_int = (
        ids.cast(pl.Int64, strict=False)
        if ids.dtype != pl.String
        else ids.str.strip_chars().cast(pl.Int64, strict=False)
    )
    bad = new.filter(as_int.is_null() | (as_int < 0))[S.ITEM].head(3).to_list()
    if bad:
        raise InputError(
            f"item ids must be non-negative integers (the dense ids after the table's last one), e.g. {bad}",
            file=items,
            column=S.ITEM,
            fix="give new items integer ids that continue the table's (see `semid inspect`)",
        )
    return as_int.to_numpy()


def _check_same_build(meta: dict[str, Any], root: Path) -> None:
    """InputError unless the item table in `root` is the one this build folder's models made (build.json)."""
    build_file = root / BUILD_FILE
    try:
        saved = json.loads(build_file.read_text())
    except (OSError, ValueError):
        raise InputError(
            "not a readable `semid build` record", file=build_file, fix="pass a `semid build` output folder"
        ) from None
    differ = [
        k for k in ("stage_hash", "data_hash", "encoder") if k in saved and k in meta and saved[k] != meta[k]
    ]
    if differ:
        raise InputError(
            f"the item table comes from another build than this folder's models ({', '.join(differ)} differ)",
            file=root / S.ITEM_SIDS_FILE,
            fix="put back this build's item_sids.parquet, or assign with the build folder the table came from",
        )


def inspect(table: str) -> None:
    """Print the metadata and health report of an ID table (item_sids.parquet or user_sids.parquet)."""
    df, meta = read_table(table)
    print(f"{table}: {df.height:,} rows, levels {meta.get('codebook_sizes')}, version {meta.get('version')}")
    print(f"encoder: {meta.get('encoder', {}).get('model')}; data hash {str(meta.get('data_hash'))[:12]}")
    if meta.get("probe"):
        print(f"alignment probe: {meta['probe']}")
    print(format_health(meta["health"] if "health" in meta else health(df, meta["codebook_sizes"])))
