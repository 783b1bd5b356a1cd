"""The `knowledge:` switch of `semid build` (ReaSeq explicit knowledge): its config, the fingerprint it adds to the
build, the per-item facets table a user can read, and the record `semid assign` reads to enrich new items the same
way the build enriched its catalogue.

Off by default. On, every item's text goes through the three facet roles (semid.knowledge.facets) before the
encoder, and the enriched text (text + serialised facets) is what the encoder, alignment and RQ-VAE see. The LLM's
answers are cached per item in one SQLite file outside the build's output folder, so a killed build resumes and a
re-run is served from the cache without loading the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from semid import schema as S
from semid.errors import InputError
from semid.io import cache_dir
from semid.knowledge.backend import Backend, LLMConfig, open_backend
from semid.knowledge.cache import CacheMode, LLMCache
from semid.knowledge.facets import FACET_KEYS, FacetConfig, FacetResult, extract_facets
from semid.knowledge.llm import LLM

FACETS_FILE = "facets.parquet"
CACHE_FILE = "knowledge.sqlite"


@dataclass(frozen=True)
class KnowledgeConfig:
    """Knowledge-enriched item texts for `semid build` (YAML: `knowledge: {enabled: true, llm: {model: smollm2}}`)."""

    enabled: bool = False
    """Off: items are encoded from their plain text, and the build's fingerprint is what it was without this
    switch. On: the encoder sees each item's text + its LLM facets."""
    llm: LLMConfig = LLMConfig()
    """The LLM that answers the facet roles (default: the embedded SmolLM2-135M-Instruct)."""
    facets: FacetConfig = FacetConfig()
    """Prompt template version and answer lengths of the roles."""
    cache: str | None = None
    """The SQLite answer cache (default: `<cache dir>/llm/knowledge.sqlite`, i.e. under the build's `cache` or
    $SEMID_CACHE). Never inside the output folder, which a rebuild replaces: the answers outlive any one build."""
    cache_mode: CacheMode = "read-write"
    """read-only: every answer must already be cached (a miss is an error, no model is loaded), e.g. for CI."""


def answer_cache(cfg: KnowledgeConfig, cache: str | Path | None = None) -> Path:
    """Where the SQLite answers live: `cfg.cache`, else `<cache_dir(cache)>/llm/knowledge.sqlite`."""
    if cfg.cache is not None:
        return Path(cfg.cache).expanduser().resolve()
    return (cache_dir(cache) / "llm" / CACHE_FILE).resolve()


def pinned(cfg: KnowledgeConfig) -> tuple[KnowledgeConfig, Backend]:
    """The config with `llm.dtype: auto` replaced by the dtype this machine resolves it to, and its backend (nothing
    is loaded). Recorded in the build, the pinned config makes `semid assign` on another machine ask the same
    model in the same precision, hence the same cache keys."""
    backend = open_backend(cfg.llm)
    dtype = getattr(backend, "dtype", None)  # local models only; a server decides its own precision
    if cfg.llm.dtype == "auto" and dtype is not None:
        resolved = "bfloat16" if dtype == torch.bfloat16 else "float32"
        cfg = replace(cfg, llm=replace(cfg.llm, dtype=resolved))
        backend = open_backend(cfg.llm)
    return cfg, backend


def knowledge_fingerprint(cfg: KnowledgeConfig, backend: Backend) -> dict[str, Any]:
    """What of the switch changes the enriched texts: the model (weights + precision, without loading it), the
    prompt truncation and the facet settings. Thread count, batch size and the cache's place do not."""
    return {"llm": backend.fingerprint, "max_length": cfg.llm.max_length, "facets": asdict(cfg.facets)}


def run_facets(
    cfg: KnowledgeConfig, backend: Backend, texts: list[str], cache: Path, *, progress: bool = True
) -> FacetResult:
    """The three facet roles over `texts`, answers served from / stored in the SQLite file `cache`."""
    with LLMCache(cache, cfg.cache_mode) as answers:
        return extract_facets(LLM(cfg.llm, answers, backend=backend, progress=progress), texts, cfg.facets)


def n_enriched(texts: list[str], enriched: list[str]) -> int:
    """How many items gained facet text (the others had invalid or empty facets and kept their text)."""
    return sum(a != b for a, b in zip(texts, enriched, strict=True))


def record(cfg: KnowledgeConfig, backend: Backend, texts: list[str], result: FacetResult) -> dict[str, Any]:
    """The build metadata of an enriched build: enough for `semid assign` to enrich new items the same way, and
    the per-role cache/validity summaries of the run that made the facets."""
    return {
        "enabled": True,
        "config": asdict(cfg),
        "fingerprint": backend.fingerprint,
        "summaries": {task: s._asdict() for task, s in result.summaries.items()},
        "items": len(texts),
        "enriched": n_enriched(texts, result.enriched),
        "facets_file": FACETS_FILE,
    }


DISABLED: dict[str, Any] = {"enabled": False}
"""The record of a plain build."""


def config_from_record(rec: dict[str, Any]) -> KnowledgeConfig:
    """The (pinned) KnowledgeConfig a build recorded."""
    raw = rec["config"]
    return KnowledgeConfig(
        enabled=bool(raw["enabled"]),
        llm=LLMConfig(**raw["llm"]),
        facets=FacetConfig(**raw["facets"]),
        cache=raw.get("cache"),
        cache_mode=raw.get("cache_mode", "read-write"),
    )


def facets_frame(ids: np.ndarray, facets: list[dict[str, list[str]] | None]) -> pl.DataFrame:
    """item_id + one list[str] column per facet key; a row of nulls where the consolidator's answer was invalid."""
    columns: dict[str, Any] = {S.ITEM: pl.Series(S.ITEM, ids.astype(np.int32), dtype=pl.Int32)}
    for key in FACET_KEYS:
        values = [None if f is None else [str(v) for v in f.get(key, [])] for f in facets]
        columns[key] = pl.Series(key, values, dtype=pl.List(pl.String))
    return pl.DataFrame(columns)


def read_facets(frame: pl.DataFrame) -> list[dict[str, list[str]] | None]:
    """The facets `facets_frame` wrote, in row order (None for an invalid answer)."""
    rows = frame.select(FACET_KEYS).to_dicts()
    return [
        None if all(row[k] is None for k in FACET_KEYS) else {k: row[k] or [] for k in FACET_KEYS}
        for row in rows
    ]


def enrich_like_build(
    rec: dict[str, Any], texts: list[str], cache: str | Path | None = None, *, progress: bool = True
) -> FacetResult:
    """Enrich new items' texts exactly as the build `rec` describes (same model, precision, prompts, lengths).

    `cache`: the SQLite answer file (default: the one the build used). InputError when the build's LLM cannot be
    reached or loaded here, or is not the one the build used (its fingerprint differs)."""
    cfg = config_from_record(rec)
    model = cfg.llm.url or cfg.llm.model
    fix = (
        f"make the build's LLM (model {cfg.llm.model!r}, see `knowledge` in its build.json) available here, "
        "pass --llm_cache with the build's answer cache, or rebuild without `knowledge` and assign again"
    )
    try:
        backend = open_backend(cfg.llm)
    except InputError as err:
        raise InputError(
            f"the build enriched item texts with the LLM {model!r}, which is not available here: {err.problem}",
            fix=fix,
        ) from err
    if backend.fingerprint != rec["fingerprint"]:
        raise InputError(
            f"the LLM {model!r} here is not the one the build enriched its items with (its fingerprint differs: "
            "other weights or precision), so new items would not be enriched the same way",
            fix=fix,
        )
    path = Path(cache) if cache is not None else answer_cache(cfg)
    try:
        return run_facets(cfg, backend, texts, path, progress=progress)
    except (InputError, OSError) as err:
        problem = err.problem if isinstance(err, InputError) else str(err)
        raise InputError(
            f"enriching the new items needs the LLM {model!r} the build used, and it failed: {problem}",
            file=path,
            fix=fix,
        ) from err
