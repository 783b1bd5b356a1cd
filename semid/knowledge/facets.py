"""Knowledge-enriched item text (ReaSeq, arXiv 2512.21257, explicit knowledge): three role prompts over one LLM
(attribute extractor -> use/audience analyst -> consolidator) end in JSON facets per item; the enriched text is
the item's text plus its serialised facets, ready for the existing encoder -> alignment -> RQ-VAE path.

Every role's answer is cached per item (the prompt holds the item text and the earlier roles' answers), so a
re-run is served from the cache and a killed run resumes. The consolidator's answer is constrained to
FACET_SCHEMA; an item whose facets are invalid or empty keeps its original text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from semid.knowledge.backend import GenerationParams
from semid.knowledge.llm import LLM, Summary
from semid.knowledge.structured import is_empty

FACET_KEYS = ("attributes", "themes", "audience", "complements", "substitutes")


def _list(max_items: int) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string", "maxLength": 32}, "maxItems": max_items}


FACET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "attributes": _list(4),
        "themes": _list(3),
        "audience": _list(3),
        "complements": _list(3),
        "substitutes": _list(3),
    },
    "required": list(FACET_KEYS),
    "additionalProperties": False,
}
"""Bounded lists of short strings: the bounds also bound the decoding length of a constrained answer (SmolLM2 with
5 x 40-char strings per list ran past 192 tokens on 2 of 4 items: cut off = invalid)."""

EXTRACT = (
    "You are a product analyst. List the key attributes of this item (kind, style, period, genre, notable "
    "features) as short phrases.\nItem: {text}"
)
ANALYSE = (
    "You are a recommendation analyst. Item: {text}\nAttributes: {notes}\nSay who would enjoy or use this item "
    "and why, what goes well with it, and what could replace it."
)
CONSOLIDATE = (
    "Combine the notes into JSON facets with lists attributes, themes, audience, complements, substitutes.\n"
    "Item: {text}\nAttributes: {notes}\nAnalysis: {analysis}"
)


@dataclass(frozen=True)
class FacetConfig:
    template_version: str = "1"
    """Bump when a role prompt changes: it enters the cache key, so old answers are not reused."""
    notes_tokens: int = 64
    """max_new_tokens of the extractor and analyst answers (free text)."""
    facet_tokens: int = 320
    """max_new_tokens of the consolidator's JSON (answers cut off here are invalid)."""


class FacetResult(NamedTuple):
    facets: list[dict[str, list[str]] | None]
    """Per item: the facet object, or None when the consolidator's answer was invalid."""
    enriched: list[str]
    summaries: dict[str, Summary]
    """Per role task: hits, misses, invalid and empty counts."""


def serialise(facets: dict[str, list[str]] | None) -> str:
    """'Attributes: a, b. Audience: c.' over the non-empty facets ('' for None or all-empty facets)."""
    if not facets:
        return ""
    parts = []
    for key in FACET_KEYS:
        values = [v.strip() for v in facets.get(key, []) if not is_empty(v)]
        if values:
            parts.append(f"{key.capitalize()}: {', '.join(dict.fromkeys(values))}.")
    return " ".join(parts)


def enrich(texts: list[str], facets: list[dict[str, list[str]] | None]) -> list[str]:
    """Original text + serialised facets; items without usable facets keep their text unchanged."""
    out = []
    for text, value in zip(texts, facets, strict=True):
        extra = serialise(value)
        out.append(f"{text} {extra}" if extra else text)
    return out


def extract_facets(llm: LLM, texts: list[str], cfg: FacetConfig = FacetConfig()) -> FacetResult:
    """Run the three roles over `texts` (each role batched over all items, then the next role)."""
    notes_params = GenerationParams(max_new_tokens=cfg.notes_tokens, repetition_penalty=1.1)
    version = cfg.template_version
    notes = llm.generate(
        [EXTRACT.format(text=t) for t in texts],
        task="facets/extract",
        template_version=version,
        params=notes_params,
    )
    analysis = llm.generate(
        [ANALYSE.format(text=t, notes=n) for t, n in zip(texts, notes)],
        task="facets/analyse",
        template_version=version,
        params=notes_params,
    )
    facets = llm.generate(
        [CONSOLIDATE.format(text=t, notes=n, analysis=a) for t, n, a in zip(texts, notes, analysis)],
        FACET_SCHEMA,
        task="facets/consolidate",
        template_version=version,
        params=GenerationParams(max_new_tokens=cfg.facet_tokens),
    )
    summaries = {task: llm.last[task] for task in ("facets/extract", "facets/analyse", "facets/consolidate")}
    return FacetResult(facets=facets, enriched=enrich(texts, facets), summaries=summaries)
