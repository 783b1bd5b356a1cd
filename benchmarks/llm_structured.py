"""Measure structured output on the embedded SmolLM2: valid-JSON rate, empty answers and speed of free generation
vs xgrammar vs lm-format-enforcer on the same facet prompts; also load times, tokens/s and hidden() prompts/s.

    .venv/bin/python benchmarks/llm_structured.py --out benchmarks/results/llm_structured.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from semid.io import cache_dir
from semid.knowledge import LLM, GenerationParams, LLMCache, LLMConfig
from semid.knowledge.hf import HFBackend
from semid.knowledge.structured import parse

FACETS = {
    "type": "object",
    "properties": {
        "attributes": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 4},
        "themes": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 3},
        "audience": {"type": "string", "maxLength": 60},
    },
    "required": ["attributes", "themes", "audience"],
    "additionalProperties": False,
}
ITEMS = [
    "Toy Story (1995). Genres: Animation, Children's, Comedy.",
    "Heat (1995). Genres: Action, Crime, Thriller.",
    "Sense and Sensibility (1995). Genres: Drama, Romance.",
    "Star Wars (1977). Genres: Action, Adventure, Sci-Fi.",
    "Fargo (1996). Genres: Crime, Drama, Thriller.",
    "The Lion King (1994). Genres: Animation, Children's, Musical.",
    "Alien (1979). Genres: Action, Horror, Sci-Fi.",
    "Groundhog Day (1993). Genres: Comedy, Romance.",
]
PROMPT = (
    "Describe this movie as JSON with keys attributes (list of short phrases), themes (list), and audience "
    "(who would enjoy it).\nMovie: {item}"
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/llm_structured.md")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()
    prompts = [PROMPT.format(item=i) for i in ITEMS]
    params = GenerationParams(max_new_tokens=args.max_new_tokens)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = LLMConfig(batch_size=8)
        backend = HFBackend(cfg)
        was_cached = any((cache_dir() / "models").glob("hf-*/semid-source.json"))
        t = time.perf_counter()
        backend._load()  # first call: fetch + de-quantise + save, or read the cached safetensors
        load_s = time.perf_counter() - t
        reload = HFBackend(cfg)
        t = time.perf_counter()
        reload._load()
        reload_s = time.perf_counter() - t
        for mode in ["free", "xgrammar"]:
            run_cfg = cfg
            backend = HFBackend(run_cfg)  # a cached reload (< 1 s) per mode keeps the modes independent
            llm = LLM(run_cfg, LLMCache(Path(tmp) / f"{mode}.sqlite"), backend=backend, progress=False)
            t = time.perf_counter()
            texts = llm.generate(prompts, None if mode == "free" else FACETS, task=mode, params=params)
            seconds = time.perf_counter() - t
            if mode == "free":
                parsed = [parse(x, FACETS) for x in texts]
                valid = sum(p.valid for p in parsed)
                empty = sum(p.empty for p in parsed)
                sample = texts[0]
            else:
                summary = llm.last[mode]
                valid, empty = summary.items - summary.invalid, summary.empty
                sample = texts[0]
            answers = [x if isinstance(x, str) else json.dumps(x) for x in texts]
            tokens = sum(len(backend._tokenizer(x)["input_ids"]) for x in answers)
            shown = (sample if isinstance(sample, str) else json.dumps(sample))[:160]
            rows.append(
                (mode, valid, empty, seconds, tokens / seconds, shown.replace("\n", "\\n").replace("|", "/"))
            )
        llm = LLM(cfg, LLMCache(Path(tmp) / "hidden.sqlite"), backend=backend, progress=False)
        t = time.perf_counter()
        llm.hidden(ITEMS * 4)
        hidden_rate = len(ITEMS) * 4 / (time.perf_counter() - t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        "# Structured output on SmolLM2-135M-Instruct (CPU, 1 thread, greedy)",
        "",
        f"Command: `.venv/bin/python benchmarks/llm_structured.py` ({len(prompts)} facet prompts, batch 8, "
        f"max_new_tokens {args.max_new_tokens}, dtype {backend.dtype}).",
        "",
        "| decoding | valid JSON | valid but empty | seconds | answer tokens/s | first answer |",
        "|---|---|---|---|---|---|",
    ]
    for mode, valid, empty, seconds, tps, sample in rows:
        lines.append(
            f"| {mode} | {valid}/{len(prompts)} | {empty} | {seconds:.1f} | {tps:.1f} | `{sample}` |"
        )
    lines += [
        "| lm-format-enforcer 0.11.3 | - | - | - | - | not usable: its transformers integration imports "
        "`transformers.tokenization_utils`, removed in transformers 5 (ImportError) |",
        "",
        "outlines was not measured: it brings a much larger dependency tree for the same logits-mask job.",
        "Tokens/s counts the answer re-tokenised (structured answers as compact JSON).",
        "",
        f"Model load: first {load_s:.1f} s "
        + (
            "(safetensors cache already filled: this is transformers' lazy imports + read), "
            if was_cached
            else "(fetch + GGUF de-quantise + safetensors save), "
        )
        + f"cached reload {reload_s:.2f} s; hidden(): {hidden_rate:.1f} prompts/s; peak RSS {rss:.0f} MB; "
        f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other jobs share the CPU).",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
