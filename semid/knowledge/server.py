"""An OpenAI-compatible server (llama.cpp server, vLLM, Ollama) as a backend over httpx, with timeouts and retries.

Chat APIs return text, never hidden states: `hidden` therefore calls `/v1/embeddings`, i.e. whatever embedding
the server computes for that model (often a pooled hidden state, but the server decides), not this package's
pooling. Structured output is requested with `response_format: json_schema`; servers that ignore it still have
every answer validated by the caller.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from semid.errors import InputError
from semid.io import sha256_json
from semid.knowledge.backend import GenerationParams, LLMConfig, Pooling

_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class ServerBackend:
    """`generate` / `hidden` over HTTP; one request per prompt for chat, one per batch for embeddings."""

    def __init__(self, cfg: LLMConfig) -> None:
        import httpx

        if not cfg.url:
            raise InputError(
                "the server backend needs a `url`", fix="set `url: http://HOST:PORT` in the llm config"
            )
        self.cfg = cfg
        self.url = cfg.url.rstrip("/")
        headers = {}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise InputError(
                    f"environment variable {cfg.api_key_env} (api_key_env) is not set",
                    fix=f"export {cfg.api_key_env}=<key>, or drop api_key_env for a server without keys",
                )
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(timeout=httpx.Timeout(cfg.timeout_s), headers=headers)

    @property
    def fingerprint(self) -> str:
        # A server's weights are invisible from here: the URL and model name stand for them.
        return sha256_json({"server": self.url, "model": self.cfg.model})

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        error = ""
        for attempt in range(self.cfg.retries + 1):
            try:
                response = self._client.post(f"{self.url}{path}", json=body)
            except httpx.TransportError as err:  # refused, reset, timed out
                error = f"{type(err).__name__}: {err}"
            else:
                if response.status_code == 200:
                    return response.json()
                error = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code not in _RETRY_STATUS:
                    break
            if attempt < self.cfg.retries:
                time.sleep(min(0.5 * 2**attempt, 8.0))
        raise InputError(
            f"the LLM server at {self.url}{path} failed after {self.cfg.retries + 1} tries: {error}",
            fix="check that the server is running and serves `model` "
            f"{self.cfg.model!r}; raise `timeout_s`/`retries` for a slow server",
        )

    def generate(
        self, prompts: list[str], schema: dict[str, Any] | None = None, params: GenerationParams | None = None
    ) -> list[str]:
        params = params or GenerationParams()
        texts = []
        for prompt in prompts:
            body: dict[str, Any] = {
                "model": self.cfg.model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": params.max_new_tokens,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "seed": params.seed,
            }
            if schema is not None:
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "answer", "schema": schema, "strict": True},
                }
            reply = self._post("/v1/chat/completions", body)
            try:
                texts.append(str(reply["choices"][0]["message"]["content"] or "").strip())
            except (KeyError, IndexError, TypeError) as err:
                raise InputError(
                    f"the LLM server's chat reply has no choices[0].message.content: {str(reply)[:300]}",
                    fix="use an OpenAI-compatible server (llama.cpp server, vLLM, Ollama)",
                ) from err
        return texts

    def hidden(self, prompts: list[str], pooling: Pooling = "last") -> np.ndarray:
        """(N, D) float32 from `/v1/embeddings` (`pooling` is the server's choice, not ours; see the module doc)."""
        reply = self._post("/v1/embeddings", {"model": self.cfg.model, "input": prompts})
        try:
            rows = sorted(reply["data"], key=lambda row: row["index"])
            out = np.asarray([row["embedding"] for row in rows], dtype=np.float32)  # (N, D)
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(
                f"the LLM server's embeddings reply is not data[].embedding: {str(reply)[:300]}",
                fix="serve an embedding-capable model (llama.cpp: --embeddings) or use a local model",
            ) from err
        if out.shape[0] != len(prompts):
            raise InputError(
                f"the LLM server returned {out.shape[0]} embeddings for {len(prompts)} inputs",
                fix="check the server's batch limit; lower the llm `batch_size`",
            )
        return out

    def close(self) -> None:
        self._client.close()
