"""`semid intents`: AIR's offline intent paths per item (semid.intents) for a prepared dataset, from an LLM or, without
one, from the items' semantic-ID prefixes named by their members' title words."""

from __future__ import annotations

from pathlib import Path

from semid.intents import IntentConfig
from semid.knowledge import CacheMode, LLMConfig


def intents(
    data_dir: str,
    out: str,
    sids: str | None = None,
    use_llm: bool = False,
    llm: LLMConfig = LLMConfig(),
    cache: str | None = None,
    cache_mode: CacheMode = "read-write",
    config: IntentConfig = IntentConfig(),
) -> Path:
    """Write `out` (an intents.parquet path) with every item's intent paths.

    Args:
        data_dir: a prepared dataset directory (`semid prepare`).
        out: the intents.parquet file to write (atomically).
        sids: the item ID table (`<semid build out>/item_sids.parquet`); needed by the fallback, which names the
            items' semantic-ID prefixes.
        use_llm: ask the LLM (`llm`) for each item's paths; invalid or empty answers fall back to the prefixes.
        llm: the LLM backend (default: the embedded SmolLM2; a local folder or an OpenAI-compatible server).
        cache: the SQLite answer cache (default: <out's folder>/llm_cache.sqlite).
        cache_mode: read-write, read-only (a miss is an error) or refresh.
        config: paths per item, depth, prompt settings.
    """
    from semid import intents as air
    from semid.knowledge import LLM, LLMCache

    target = Path(out)
    model = None
    if use_llm:
        model = LLM(llm, LLMCache(cache or target.parent / "llm_cache.sqlite", cache_mode))
    result = air.build(data_dir, target, sids=sids, llm=model, cfg=config)
    counts, nodes = result.meta["items"], result.meta["n_nodes"]
    print(
        f"[intents] items: {counts['llm']} from the LLM, {counts['fallback']} from SID prefixes, "
        f"{counts['none']} without; {nodes} intent nodes -> {target}",
        flush=True,
    )
    return target
