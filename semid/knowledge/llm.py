"""The LLM as the rest of the toolkit sees it: `generate(prompts, schema=None)` and `hidden(prompts)` over any
backend, served from the SQLite cache where possible, with a progress bar (items/s, ETA) and a hit/miss/invalid
summary. The model is loaded only when some prompt misses the cache.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, NamedTuple

import numpy as np

from semid.knowledge.backend import Backend, GenerationParams, LLMConfig, open_backend
from semid.knowledge.cache import Entry, LLMCache, cache_key
from semid.knowledge.structured import parse


class Summary(NamedTuple):
    items: int
    hits: int
    misses: int
    invalid: int
    """Structured answers that did not parse against the schema (returned as None)."""
    empty: int
    """Structured answers that are valid but have only empty fields."""
    seconds: float

    def line(self, task: str) -> str:
        rate = self.misses / self.seconds if self.seconds > 0 else 0.0
        return (
            f"llm {task}: {self.items} items, {self.hits} cached, {self.misses} computed ({rate:.2f}/s), "
            f"{self.invalid} invalid, {self.empty} empty"
        )


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=not enabled or total == 0, leave=False)


class LLM:
    """A backend + its cache. `last` holds the Summary of the latest call, per task."""

    def __init__(
        self, cfg: LLMConfig, cache: LLMCache, *, backend: Backend | None = None, progress: bool = True
    ) -> None:
        self.cfg = cfg
        self.cache = cache
        self.backend = backend if backend is not None else open_backend(cfg)
        self.progress = progress
        self.last: dict[str, Summary] = {}

    def _keys(
        self, prompts: list[str], task: str, template_version: str, params: dict[str, Any]
    ) -> list[str]:
        fp = self.backend.fingerprint
        return [
            cache_key(fingerprint=fp, task=task, template_version=template_version, prompt=p, params=params)
            for p in prompts
        ]

    def _fill(
        self, prompts: list[str], keys: list[str], task: str, compute: Callable[[list[str]], list[Entry]]
    ) -> tuple[dict[str, Entry], int, float]:
        """Entries for every key: cached ones read, missing ones computed batch by batch and committed."""
        unique = list(dict.fromkeys(keys))
        found = self.cache.get_many(unique)
        first = {k: p for k, p in zip(keys, prompts)}
        missing = sorted((k for k in unique if k not in found), key=lambda k: len(first[k]))  # less padding
        self.cache.require(missing, task)
        start = time.perf_counter()
        with _progress(len(missing), f"llm {task}", self.progress) as bar:
            for i in range(0, len(missing), self.cfg.batch_size):
                batch = missing[i : i + self.cfg.batch_size]
                entries = compute([first[k] for k in batch])
                self.cache.put_many(task, zip(batch, entries))
                found.update(zip(batch, entries))
                bar.update(len(batch))
        return found, len(missing), time.perf_counter() - start

    def generate(
        self,
        prompts: list[str],
        schema: dict[str, Any] | None = None,
        *,
        task: str = "generate",
        template_version: str = "1",
        params: GenerationParams | None = None,
    ) -> list[Any]:
        """One answer per prompt: the text, or with `schema` the parsed JSON object (None when invalid)."""
        params = params or GenerationParams()
        key_params = {"decoding": asdict(params), "schema": schema}
        keys = self._keys(prompts, task, template_version, key_params)

        def compute(batch: list[str]) -> list[Entry]:
            texts = self.backend.generate(batch, schema, params)
            if schema is None:
                return [Entry(text=t) for t in texts]
            entries = []
            for text in texts:
                parsed = parse(text, schema)
                value = json.dumps(parsed.value, sort_keys=True) if parsed.valid else None
                entries.append(Entry(text=text, value=value, valid=parsed.valid))
            return entries

        found, misses, seconds = self._fill(prompts, keys, task, compute)
        out: list[Any] = []
        invalid = empty = 0
        for key in keys:
            entry = found[key]
            if schema is None:
                out.append(entry.text)
                continue
            if not entry.valid or entry.value is None:
                invalid += 1
                out.append(None)
                continue
            value = json.loads(entry.value)
            empty += parse(entry.value, schema).empty
            out.append(value)
        self.last[task] = Summary(len(keys), len(keys) - misses, misses, invalid, empty, seconds)
        return out

    def hidden(self, prompts: list[str], *, task: str = "hidden", template_version: str = "1") -> np.ndarray:
        """(N, D) float32 pooled last hidden states (a server backend: its /v1/embeddings vectors)."""
        keys = self._keys(
            prompts, task, template_version, {"pooling": self.cfg.pooling, "max_length": self.cfg.max_length}
        )

        def compute(batch: list[str]) -> list[Entry]:
            vectors = self.backend.hidden(batch, self.cfg.pooling)  # (B, D)
            return [Entry(vector=v) for v in vectors]

        found, misses, seconds = self._fill(prompts, keys, task, compute)
        self.last[task] = Summary(len(keys), len(keys) - misses, misses, 0, 0, seconds)
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([found[k].vector for k in keys]).astype(np.float32)  # (N, D)
