"""A local causal LM through transformers (the embedded SmolLM2, a user's HF folder or GGUF file): chat-template
generation, optionally constrained to a JSON schema, and pooled last hidden states. Loads lazily on first use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semid.io import sha256_json
from semid.knowledge.backend import GenerationParams, LLMConfig, Pooling
from semid.knowledge.fetch import ResolvedModel, local_folder, resolve_model
from semid.knowledge.structured import ConstraintFactory


def cpu_has_fast_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """bf16 matmuls are 2-4x faster than fp32 only with AMX or AVX512-BF16; elsewhere they are emulated and slower."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def resolve_dtype(setting: str) -> torch.dtype:
    if setting == "auto":
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return torch.bfloat16 if setting == "bfloat16" else torch.float32


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with `n` intra-op threads and restore the caller's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class HFBackend:
    """`generate` / `hidden` over a local transformers causal LM."""

    def __init__(self, cfg: LLMConfig) -> None:
        self.cfg = cfg
        self.resolved: ResolvedModel = resolve_model(cfg.model)
        self.dtype = resolve_dtype(cfg.dtype)
        self._model: Any = None
        self._tokenizer: Any = None
        self._constraints: ConstraintFactory | None = None

    @property
    def fingerprint(self) -> str:
        return sha256_json({"weights": self.resolved.fingerprint, "dtype": str(self.dtype)})

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @cached_property
    def folder(self) -> Path:
        return local_folder(self.resolved, self.cfg.cache_dir)

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.folder)
        tokenizer.padding_side = "left"  # generation appends on the right; left padding keeps prompts aligned
        tokenizer.truncation_side = "left"  # keep the instruction at the end of a long prompt
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        with torch_threads(self.cfg.threads):
            model = AutoModelForCausalLM.from_pretrained(self.folder, dtype=self.dtype)
        self._model = model.eval()
        self._tokenizer = tokenizer
        vocab = int(model.get_output_embeddings().weight.shape[0])
        self._constraints = ConstraintFactory(self.cfg.structured, tokenizer, vocab)

    def _chat(self, prompts: list[str]) -> list[str]:
        if getattr(self._tokenizer, "chat_template", None):
            return [
                self._tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
                )
                for p in prompts
            ]
        return prompts

    def _encode(self, texts: list[str], *, special: bool) -> dict[str, torch.Tensor]:
        return self._tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.cfg.max_length,
            add_special_tokens=special,
        )

    def generate(
        self, prompts: list[str], schema: dict[str, Any] | None = None, params: GenerationParams | None = None
    ) -> list[str]:
        """Raw answer texts, one per prompt (a chat template wraps each prompt when the tokenizer has one)."""
        params = params or GenerationParams()
        self._load()
        enc = self._encode(self._chat(prompts), special=False)  # the chat template already added them
        extra: dict[str, Any] = {}
        if schema is not None:
            assert self._constraints is not None
            extra["logits_processor"] = [self._constraints(schema).logits_processor]
        sample = params.temperature > 0
        if sample:
            extra.update(temperature=params.temperature, top_p=params.top_p)
        with torch_threads(self.cfg.threads), torch.inference_mode(), torch.random.fork_rng(devices=[]):
            if sample:
                torch.manual_seed(
                    params.seed
                )  # inside fork_rng: the caller's RNG state is restored afterwards
            out = self._model.generate(
                **enc,
                max_new_tokens=params.max_new_tokens,
                do_sample=sample,
                repetition_penalty=params.repetition_penalty,
                pad_token_id=self._tokenizer.pad_token_id,
                **extra,
            )  # (B, T_prompt + T_new)
        new = out[:, enc["input_ids"].shape[1] :]  # (B, T_new)
        return [t.strip() for t in self._tokenizer.batch_decode(new, skip_special_tokens=True)]

    def hidden(self, prompts: list[str], pooling: Pooling = "last") -> np.ndarray:
        """(N, D) float32: the last hidden state (after the final norm) pooled over each prompt's tokens."""
        from semid.encoder import pool

        self._load()
        enc = self._encode(prompts, special=True)
        with torch_threads(self.cfg.threads), torch.inference_mode():
            states = self._model.base_model(**enc).last_hidden_state  # (B, T, D)
            pooled = pool(states.float(), enc["attention_mask"], pooling)  # (B, D)
        return pooled.numpy().astype(np.float32)
