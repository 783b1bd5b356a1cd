"""The LLM knowledge layer: one `generate` / `hidden` interface over an embedded SmolLM2, any local causal LM
(HF folder or GGUF) or an OpenAI-compatible server, with a SQLite answer cache and JSON-schema-constrained output.

    from semid.knowledge import LLM, LLMCache, LLMConfig
    llm = LLM(LLMConfig(), LLMCache("run/llm.sqlite"))
    facets = llm.generate(prompts, schema=FACETS, task="facets", template_version="1")
    vectors = llm.hidden(texts)

semid.knowledge.facets builds ReaSeq-style facets and enriched item text on top of it; semid.knowledge.enriched is
the `knowledge:` switch of `semid build` that feeds them to the semantic IDs.
"""

from __future__ import annotations

from pathlib import Path

from semid.knowledge.backend import Backend, GenerationParams, LLMConfig, open_backend
from semid.knowledge.cache import CacheMode, Entry, LLMCache, cache_key
from semid.knowledge.fetch import local_folder, resolve_model
from semid.knowledge.llm import LLM, Summary
from semid.knowledge.structured import Parsed, is_empty, parse


def model_folder(model: str, cache: str | None = None) -> Path:
    """A local HF folder for `model` (an embedded model's name, a .gguf file, an HF folder): the hook for
    `semid build`'s encoder, which can then pool the LLM's last hidden state like any other local model."""
    return local_folder(resolve_model(model), cache)


__all__ = [
    "LLM",
    "Backend",
    "CacheMode",
    "Entry",
    "GenerationParams",
    "LLMCache",
    "LLMConfig",
    "Parsed",
    "Summary",
    "cache_key",
    "is_empty",
    "model_folder",
    "open_backend",
    "parse",
]
