"""Measure the LLM layer (`semid.knowledge.LLM`) against the bare transformers calls it wraps, on the embedded
SmolLM2-135M-Instruct: hidden-state prompts/s and generated tokens/s per dtype and thread count, the layer's
overhead over a bare forward / `model.generate` on the same batches (issue 18 goal: <= 10%), the cached re-run
(hit rate, and that it never loads a model) and peak memory.

Both sides get identical batches: the prompts are sorted by length and cut into `batch_size` groups exactly as
`LLM._fill` does, the bare side tokenises them with the same tokenizer settings (left padding, chat template for
generation) and runs `base_model(...)` + pooling or `model.generate(...)` greedily. The layer side adds the cache
look-up and write (a fresh SQLite file per repetition, so every prompt is a miss), key hashing, the progress bar
and result assembly. Repetitions alternate layer / bare so load drift hits both; the median is reported.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/llm_speed.py [--threads 1,2] [--dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from semid.encoder import pool
from semid.knowledge import LLM, GenerationParams, LLMCache, LLMConfig
from semid.knowledge.hf import HFBackend, cpu_has_fast_bf16, torch_threads

RESULTS = Path(__file__).parent / "results" / "llm_speed.md"
TITLES = [
    "Toy Story (1995)", "Heat (1995)", "Sense and Sensibility (1995)", "Star Wars (1977)", "Fargo (1996)",
    "The Lion King (1994)", "Alien (1979)", "Groundhog Day (1993)", "Cast-iron skillet, 12 inch",
    "Silicone baking mat set", "Organic green tea, 100 bags", "Chef's knife, 8 inch, stainless steel",
    "Dark roast whole-bean coffee, 2 lb", "Stand mixer with dough hook", "Extra virgin olive oil, 1 l",
    "Bamboo cutting board",
]  # fmt: skip


def prompts(n: int) -> list[str]:
    """n deterministic prompts of varying length (a user-history prompt grows with i)."""
    out = []
    for i in range(n):
        history = ", ".join(TITLES[(i + j) % len(TITLES)] for j in range(1 + i % 6))
        out.append(f"A user recently chose: {history}. In one sentence, what does this user like next?")
    return out


def batches(texts: list[str], size: int) -> list[list[str]]:
    """Length-sorted batches, as `LLM._fill` groups cache misses."""
    ordered = sorted(dict.fromkeys(texts), key=len)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def bare_hidden(backend: HFBackend, texts: list[str], cfg: LLMConfig) -> None:
    tok, model = backend._tokenizer, backend._model
    for batch in batches(texts, cfg.batch_size):
        enc = tok(batch, return_tensors="pt", padding=True, truncation=True, max_length=cfg.max_length)
        with torch_threads(cfg.threads), torch.inference_mode():
            states = model.base_model(**enc).last_hidden_state  # (B, T, D)
            pool(states.float(), enc["attention_mask"], cfg.pooling).numpy()  # (B, D)


def bare_generate(backend: HFBackend, texts: list[str], cfg: LLMConfig, params: GenerationParams) -> int:
    """Greedy generation of every batch; returns the number of new tokens (pads after EOS not counted)."""
    tok, model = backend._tokenizer, backend._model
    new_tokens = 0
    for batch in batches(texts, cfg.batch_size):
        chat = [
            tok.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in batch
        ]
        enc = tok(chat, return_tensors="pt", padding=True, truncation=True, max_length=cfg.max_length,
                  add_special_tokens=False)  # fmt: skip
        with torch_threads(cfg.threads), torch.inference_mode():
            out = model.generate(
                **enc, max_new_tokens=params.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )  # fmt: skip  (B, T + T_new)
        new = out[:, enc["input_ids"].shape[1] :]  # (B, T_new)
        new_tokens += int((new != tok.pad_token_id).sum())
    return new_tokens


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(dtype: str, threads: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    cfg = LLMConfig(dtype=dtype, threads=threads, batch_size=args.batch_size)  # type: ignore[arg-type]
    backend = HFBackend(cfg)
    backend._load()
    params = GenerationParams(max_new_tokens=args.max_new_tokens)
    hid, gen = prompts(args.hidden_prompts), prompts(args.generate_prompts)
    bare_hidden(backend, hid[: cfg.batch_size], cfg)  # warm-up
    rows: dict[str, list[float]] = {"hidden_layer": [], "hidden_bare": [], "gen_layer": [], "gen_bare": []}
    n_tokens = 0
    for rep in range(args.repeats):
        for side in ("layer", "bare") if rep % 2 == 0 else ("bare", "layer"):
            if side == "layer":
                llm = LLM(cfg, LLMCache(tmp / f"{dtype}-{threads}-{rep}.sqlite"), backend=backend)
                rows["hidden_layer"].append(timed(lambda llm=llm: llm.hidden(hid)))
                rows["gen_layer"].append(timed(lambda llm=llm: llm.generate(gen, params=params)))
                llm.cache.close()
            else:
                rows["hidden_bare"].append(timed(lambda: bare_hidden(backend, hid, cfg)))
                start = time.perf_counter()
                n_tokens = bare_generate(backend, gen, cfg, params)
                rows["gen_bare"].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in rows.items()}
    return {
        "dtype": str(backend.dtype).removeprefix("torch."),
        "threads": threads,
        "hidden_layer": len(hid) / med["hidden_layer"],
        "hidden_bare": len(hid) / med["hidden_bare"],
        "gen_layer": n_tokens / med["gen_layer"],
        "gen_bare": n_tokens / med["gen_bare"],
        "hidden_overhead": med["hidden_layer"] / med["hidden_bare"] - 1,
        "gen_overhead": med["gen_layer"] / med["gen_bare"] - 1,
        "tokens": n_tokens,
    }


def cached_rerun(tmp: Path, args: argparse.Namespace) -> tuple[float, float, bool]:
    """Fill a cache, then answer the same prompts from a new LLM whose backend was never loaded: seconds, hit
    rate, and whether the model stayed unloaded."""
    cfg = LLMConfig(threads=1, batch_size=args.batch_size)
    path = tmp / "rerun.sqlite"
    hid = prompts(args.hidden_prompts)
    with LLMCache(path) as cache:
        LLM(cfg, cache, progress=False).hidden(hid)
    backend = HFBackend(cfg)
    with LLMCache(path, mode="read-only") as cache:
        llm = LLM(cfg, cache, backend=backend, progress=False)
        seconds = timed(lambda: llm.hidden(hid))
        s = llm.last["hidden"]
    return seconds, s.hits / s.items, not backend.loaded


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--hidden_prompts", type=int, default=64)
    p.add_argument("--generate_prompts", type=int, default=16)
    p.add_argument("--max_new_tokens", type=int, default=24)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        results = [
            measure(dtype, int(t), args, tmp)
            for dtype in args.dtypes.split(",")
            for t in args.threads.split(",")
        ]
        rerun_s, hit_rate, unloaded = cached_rerun(tmp, args)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load = os.getloadavg()[0]
    lines = [
        "# LLM layer vs bare transformers (SmolLM2-135M-Instruct, CPU)",
        "",
        f"Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/llm_speed.py --dtypes {args.dtypes} --threads "
        f"{args.threads} --hidden_prompts {args.hidden_prompts} --generate_prompts {args.generate_prompts} "
        f"--max_new_tokens {args.max_new_tokens} --repeats {args.repeats}`. {platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__}, fast bf16 "
        f"(AMX/AVX512-BF16): {cpu_has_fast_bf16()}. hidden(): {args.hidden_prompts} prompts; generate: "
        f"{args.generate_prompts} prompts, greedy, max_new_tokens {args.max_new_tokens}; batch {args.batch_size}; "
        f"median of {args.repeats} alternating repetitions; each layer repetition starts from an empty cache.",
        "",
        "| dtype | threads | hidden prompts/s (layer) | (bare) | layer overhead | generated tokens/s (layer) "
        "| (bare) | layer overhead |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['dtype']} | {r['threads']} | {r['hidden_layer']:.1f} | {r['hidden_bare']:.1f} | "
            f"{r['hidden_overhead']:+.1%} | {r['gen_layer']:.1f} | {r['gen_bare']:.1f} | {r['gen_overhead']:+.1%} |"
        )
    lines += [
        "",
        f"Cached re-run of the {args.hidden_prompts} hidden() prompts (read-only cache, fresh backend): "
        f"{rerun_s:.3f} s, hit rate {hit_rate:.0%}, model loaded: {'no' if unloaded else 'YES'}.",
        f"Peak RSS {rss:.0f} MB (all configurations in one process); load average at the end {load:.1f} on "
        f"{os.cpu_count()} cores (other jobs share the CPU: compare rows within one run, not across runs).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".tmp")
    tmp_out.write_text("\n".join(lines))
    tmp_out.replace(args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
