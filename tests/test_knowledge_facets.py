"""ReaSeq-style facet extraction: the three roles chain their answers, facets are validated, enriched text keeps
the original text, and a re-run is served entirely from the cache."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from semid.knowledge import LLM, GenerationParams, LLMCache, LLMConfig
from semid.knowledge.facets import FACET_SCHEMA, enrich, extract_facets, serialise

GOOD = {
    "attributes": ["animated", "1995"],
    "themes": ["friendship"],
    "audience": ["families"],
    "complements": [],
    "substitutes": ["A Bug's Life"],
}
EMPTY = {k: [] for k in GOOD}


class RoleBackend:
    """Answers each role by the prompt's first words; the consolidator's answer depends on the item."""

    fingerprint = "roles-v1"

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def generate(
        self, prompts: list[str], schema: dict[str, Any] | None, params: GenerationParams
    ) -> list[str]:
        self.prompts += prompts
        out = []
        for p in prompts:
            if p.startswith("You are a product analyst"):
                out.append("NOTES")
            elif p.startswith("You are a recommendation analyst"):
                assert "Attributes: NOTES" in p  # the analyst sees the extractor's answer
                out.append("ANALYSIS")
            else:
                assert schema == FACET_SCHEMA and "Analysis: ANALYSIS" in p
                if "Toy Story" in p:
                    out.append(json.dumps(GOOD))
                elif "Heat" in p:
                    out.append(json.dumps(EMPTY))
                else:
                    out.append('{"attributes": ["cut off')
        return out

    def hidden(self, prompts: list[str], pooling: str) -> np.ndarray:
        raise AssertionError("facets never need hidden states")


def test_roles_chain_into_validated_facets_and_enriched_text(tmp_path):
    texts = ["Toy Story (1995)", "Heat (1995)", "Alien (1979)"]
    backend = RoleBackend()
    llm = LLM(LLMConfig(batch_size=2), LLMCache(tmp_path / "c.sqlite"), backend=backend, progress=False)
    result = extract_facets(llm, texts)
    assert result.facets == [GOOD, EMPTY, None]
    assert result.enriched == [
        "Toy Story (1995) Attributes: animated, 1995. Themes: friendship. Audience: families. "
        "Substitutes: A Bug's Life.",
        "Heat (1995)",
        "Alien (1979)",
    ]
    consolidate = result.summaries["facets/consolidate"]
    assert (consolidate.items, consolidate.invalid, consolidate.empty) == (3, 1, 1)
    assert len(backend.prompts) == 9

    rerun = RoleBackend()
    again = LLM(LLMConfig(), LLMCache(tmp_path / "c.sqlite", "read-only"), backend=rerun, progress=False)
    assert extract_facets(again, texts).enriched == result.enriched
    assert rerun.prompts == []  # 100% cache hits, the model is never called


def test_serialise_skips_empty_and_duplicate_values():
    assert serialise(None) == ""
    assert serialise(EMPTY) == ""
    assert serialise({**EMPTY, "themes": ["war", " ", "war", "honour"]}) == "Themes: war, honour."
    assert enrich(["a", "b"], [None, {**EMPTY, "audience": ["kids"]}]) == ["a", "b Audience: kids."]
