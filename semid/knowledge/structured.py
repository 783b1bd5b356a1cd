"""Structured output: constrain decoding to a JSON schema with xgrammar, then parse and validate
every answer against the schema and flag answers that are valid but empty.

A tiny model writing free JSON mostly fails (SmolLM2-135M: 2 valid facet objects of 16); with a grammar mask only
schema-conforming tokens can be sampled. Generation can still stop at `max_new_tokens` inside a long string, so
every answer is parsed and validated again; such answers count as invalid, never silently kept.

xgrammar was chosen by measurement (benchmarks/results/llm_structured.md): lm-format-enforcer 0.11.3's transformers
integration does not import under transformers 5 (it imports the removed `transformers.tokenization_utils`), and
outlines pulls a much larger dependency tree for the same logits-mask job.
"""

from __future__ import annotations

import json
from typing import Any, Literal, NamedTuple

Library = Literal["xgrammar"]


class Parsed(NamedTuple):
    value: Any | None
    """The parsed JSON (None when the text does not parse or does not match the schema)."""
    valid: bool
    empty: bool
    """Valid, but every leaf is empty ("", [], {}, null): the model had nothing to say."""


class Constraint(NamedTuple):
    """What `model.generate` needs to follow the schema."""

    logits_processor: Any


def _schema_text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True)


class ConstraintFactory:
    """Builds per-call constraints for one tokenizer; the tokenizer index and compiled grammars are reused."""

    def __init__(self, library: Library, tokenizer: Any, vocab_size: int) -> None:
        self.library: Library = library
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._compiler: Any = None
        self._compiled: dict[str, Any] = {}

    def __call__(self, schema: dict[str, Any]) -> Constraint:
        """A fresh constraint for one `generate` call (the processor keeps per-sequence matcher state)."""
        import xgrammar as xgr

        if self._compiler is None:
            # vocab_size from the model's output layer: it may exceed len(tokenizer) (padded embeddings).
            info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab_size)
            self._compiler = xgr.GrammarCompiler(info)
        key = _schema_text(schema)
        if key not in self._compiled:
            # Compact JSON: free whitespace lets a tiny model emit newlines until max_new_tokens.
            self._compiled[key] = self._compiler.compile_json_schema(key, any_whitespace=False)
        return Constraint(logits_processor=xgr.contrib.hf.LogitsProcessor(self._compiled[key]))


def is_empty(value: Any) -> bool:
    """True when every leaf of `value` is empty: null, [], {}, or a string without a letter or digit ("", " ", ",",
    "..." are what a tiny model writes when it has nothing to say). Numbers and booleans count as content."""
    if value is None:
        return True
    if isinstance(value, str):
        return not any(ch.isalnum() for ch in value)
    if isinstance(value, dict):
        return all(is_empty(v) for v in value.values())
    if isinstance(value, list):
        return all(is_empty(v) for v in value)
    return False


def parse(text: str, schema: dict[str, Any]) -> Parsed:
    """Parse `text` as JSON and validate it against `schema` (jsonschema, Draft 2020-12 rules)."""
    import jsonschema

    try:
        # strict=False: xgrammar's JSON grammar lets raw control characters (tab, \x1d) into strings; the
        # structure is what the schema constrains, so such a string is kept rather than counted invalid.
        value = json.loads(text, strict=False)
    except json.JSONDecodeError:
        return Parsed(None, False, False)
    validator = jsonschema.validators.validator_for(schema)(schema)
    if not validator.is_valid(value):
        return Parsed(None, False, False)
    return Parsed(value, True, is_empty(value))
