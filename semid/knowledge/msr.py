"""LLM4MSR knowledge (Wang et al., CIKM'24): scenario- and user-level prompts from the train split, turned into
one vector each from the LLM's last hidden layer, pooled over the prompt's tokens as `llm.pooling` says (LLM4MSR takes
the last token's state; the Amazon protocol ships the mean, chosen on validation), or, as the no-LLM control, by a text
encoder; written as `scenario_vectors.parquet` / `user_vectors.parquet` for the meta layers (ctr/models/meta.py).

- scenario prompt: every scenario's statistics (interactions, users, items, positive rate, top items and genres),
  one prompt per scenario asking for its commonalities, differences and correlations with the others;
- user prompt: the user's most recent positive items in each scenario, asking for cross-scenario interests.
Templates are versioned (`TEMPLATE_VERSION`, part of the LLM cache key and of the files' metadata), so a changed
template never reuses old vectors. Prompts are built with polars expressions, not per-row Python.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import polars as pl

from semid import scenarios as SC
from semid import schema as S
from semid.errors import InputError
from semid.io import read_meta, write_parquet

TEMPLATE_VERSION = "msr-1"
SCENARIO_VECTORS_FILE = "scenario_vectors.parquet"
USER_VECTORS_FILE = "user_vectors.parquet"
VECTOR = "vector"  # Array(Float32, D)
PROMPT = "prompt"
Source = Literal["llm", "prompt_text"]
Embed = Callable[[list[str], str], np.ndarray]
"""(prompts, task) -> (N, D) float32 vectors: `LLM.hidden` (source llm) or a text encoder (source prompt_text)."""

_SCENARIO_HEAD = (
    "You are an expert in recommender systems. A movie/product platform serves {n} scenarios.\n"
    "Statistics of every scenario (train data):\n"
)
_SCENARIO_LINE = (  # pl.format: the fields below, in order
    "- {}: {} interactions by {} users on {} items, positive rate {}; top items: {}; top genres: {}."
)
_SCENARIO_LINE_NO_GENRES = "- {}: {} interactions by {} users on {} items, positive rate {}; top items: {}."
"""Without a genre feature (e.g. Amazon, whose only item feature is the domain the scenario is made of)."""
_SCENARIO_ASK = (
    "\nFocus on scenario {name}. Describe its commonalities with the other scenarios, its differences from them, "
    "and how user preferences in it correlate with the other scenarios."
)
_USER_HEAD = "A user's recent liked items in each scenario of the platform:\n"
_USER_LINE = "- {}: {}"  # pl.format: scenario name, the user's recent liked items there
_USER_ASK = "\nSummarise this user's interests and how they carry across the scenarios."


@dataclass(frozen=True)
class PromptConfig:
    top_k: int = 5
    """Top items / genres per scenario in the scenario prompt."""
    recent: int = 10
    """Most recent positive items per scenario in a user's prompt."""
    title_chars: int = 60
    """Item texts are cut to this many characters."""
    genre_column: str | None = None
    """Item feature listed as "genres"; None = the first item feature of the prepared data that is not the scenario
    rule's own column (if any; without one the prompt has no genres part)."""


class Knowledge(NamedTuple):
    keys: pl.DataFrame  # scenario (Int32) + name, or user_id (Int32)
    prompts: list[str]


def _titles(items: pl.DataFrame, chars: int) -> pl.DataFrame:
    return items.select(S.ITEM, pl.col(S.TEXT).str.slice(0, chars).alias("_title"))


def scenario_prompts(
    train: pl.DataFrame,
    items: pl.DataFrame,
    scenarios: SC.Scenarios,
    cfg: PromptConfig,
    *,
    rule_column: str | None = None,
) -> Knowledge:
    """One prompt per scenario (code order): all scenarios' statistics, then the question about this one.

    rule_column: the item feature the scenarios are made of (an item-side rule), never picked as the genres: its
    top value in a scenario is the scenario itself."""
    rows = SC.with_scenario(train, scenarios).join(_titles(items, cfg.title_chars), on=S.ITEM, how="left")
    pos = rows.filter(pl.col(S.LABEL) == 1)
    top_items = (
        pos.group_by(SC.SCENARIO, "_title")
        .len()
        .sort(["len", "_title"], descending=[True, False])
        .group_by(SC.SCENARIO, maintain_order=True)
        .agg(pl.col("_title").head(cfg.top_k).str.join("; ").alias("top_items"))
    )
    genre = cfg.genre_column or next(
        (c for c in items.columns if items.schema[c] == S.FEATURE_DTYPE and c != rule_column), None
    )
    has_genres = genre is not None and genre in items.columns
    if has_genres:
        top_genres = (
            pos.join(items.select(S.ITEM, genre), on=S.ITEM)
            .explode(genre)
            .drop_nulls(genre)
            .group_by(SC.SCENARIO, genre)
            .len()
            .sort(["len", genre], descending=[True, False])
            .group_by(SC.SCENARIO, maintain_order=True)
            .agg(pl.col(genre).head(cfg.top_k).str.join(", ").alias("top_genres"))
        )
    else:
        top_genres = pl.DataFrame(schema={SC.SCENARIO: pl.Int32, "top_genres": pl.String})
    names = pl.DataFrame(
        {SC.SCENARIO: range(len(scenarios.names)), "name": scenarios.names},
        schema={SC.SCENARIO: pl.Int32, "name": pl.String},
    )
    stats = (
        names.join(
            rows.group_by(SC.SCENARIO).agg(
                pl.len().alias("interactions"),
                pl.col(S.USER).n_unique().alias("users"),
                pl.col(S.ITEM).n_unique().alias("items"),
                pl.col(S.LABEL).cast(pl.Float64).mean().round(3).alias("rate"),
            ),
            on=SC.SCENARIO,
            how="left",
        )
        .join(top_items, on=SC.SCENARIO, how="left")
        .join(top_genres, on=SC.SCENARIO, how="left")
        .with_columns(
            pl.col("interactions", "users", "items").fill_null(0),
            pl.col("rate").fill_null(0.0),
            pl.col("top_items", "top_genres").fill_null("none"),
        )
        .sort(SC.SCENARIO)
    )
    fields = ["name", "interactions", "users", "items", "rate", "top_items"]
    if has_genres:
        lines = stats.select(pl.format(_SCENARIO_LINE, *fields, "top_genres")).to_series()
    else:
        lines = stats.select(pl.format(_SCENARIO_LINE_NO_GENRES, *fields)).to_series()
    head = _SCENARIO_HEAD.format(n=len(scenarios.names)) + "\n".join(lines.to_list())
    prompts = [head + _SCENARIO_ASK.format(name=name) for name in scenarios.names]
    return Knowledge(stats.select(SC.SCENARIO, "name"), prompts)


def user_prompts(
    train: pl.DataFrame,
    items: pl.DataFrame,
    users: pl.DataFrame,
    scenarios: SC.Scenarios,
    cfg: PromptConfig,
) -> Knowledge:
    """One prompt per user of `users` (id order): the last `recent` positives per scenario (oldest first)."""
    names = pl.DataFrame(
        {SC.SCENARIO: range(len(scenarios.names)), "_name": scenarios.names},
        schema={SC.SCENARIO: pl.Int32, "_name": pl.String},
    )
    per_scenario = (
        SC.with_scenario(train.filter(pl.col(S.LABEL) == 1), scenarios)
        .join(_titles(items, cfg.title_chars), on=S.ITEM, how="left")
        .sort([S.USER, S.TIMESTAMP, S.ITEM])
        .group_by(S.USER, SC.SCENARIO, maintain_order=True)
        .agg(pl.col("_title").tail(cfg.recent).str.join("; "))
        .join(names, on=SC.SCENARIO)
        .sort([S.USER, SC.SCENARIO])
        .group_by(S.USER, maintain_order=True)
        .agg(pl.format(_USER_LINE, "_name", "_title").str.join("\n").alias("_lines"))
    )
    table = (
        users.select(pl.col(S.USER).cast(pl.Int32))
        .join(per_scenario, on=S.USER, how="left")
        .sort(S.USER)
        .with_columns(
            (
                pl.lit(_USER_HEAD)
                + pl.col("_lines").fill_null("- none: no liked items yet.")
                + pl.lit(_USER_ASK)
            ).alias(PROMPT)
        )
    )
    return Knowledge(table.select(S.USER), table[PROMPT].to_list())


def llm_embed(llm: Any) -> Embed:
    """`LLM.hidden` as an Embed, keyed in the cache by task and TEMPLATE_VERSION."""

    def embed(prompts: list[str], task: str) -> np.ndarray:
        return llm.hidden(prompts, task=task, template_version=TEMPLATE_VERSION)

    return embed


def write_vectors(
    path: str | Path,
    knowledge: Knowledge,
    vectors: np.ndarray,
    *,
    kind: Literal["scenario", "user"],
    meta: dict,
) -> None:
    """keys + `vector` Array(Float32, D), atomically, with kind / source / template version / dim in metadata."""
    vectors = np.asarray(vectors, dtype=np.float32)  # (N, D)
    if vectors.ndim != 2 or vectors.shape[0] != knowledge.keys.height or not np.isfinite(vectors).all():
        raise ValueError(f"{kind} vectors: expected ({knowledge.keys.height}, D) finite, got {vectors.shape}")
    table = knowledge.keys.with_columns(
        pl.Series(VECTOR, vectors, dtype=pl.Array(pl.Float32, vectors.shape[1]))
    )
    write_parquet(
        table,
        path,
        {
            **meta,
            "kind": f"{kind}_vectors",
            "template_version": TEMPLATE_VERSION,
            "dim": int(vectors.shape[1]),
        },
    )


def read_vectors(
    path: str | Path, *, kind: Literal["scenario", "user"], n: int, data_hash: str | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """(n, D) float32 knowledge vectors, row i = scenario / user i; refused unless every row 0..n-1 is there."""
    path = Path(path)
    key = SC.SCENARIO if kind == "scenario" else S.USER
    if not path.is_file():
        raise InputError(
            f"the {kind} knowledge vectors do not exist",
            file=path,
            fix="build them with semid.knowledge.msr.build (or set source: learned)",
        )
    meta = read_meta(path)
    if meta.get("kind") != f"{kind}_vectors":
        raise InputError(
            f"not a {kind} vector table (kind {meta.get('kind')!r})",
            file=path,
            fix=f"point {kind}_vectors at {SCENARIO_VECTORS_FILE if kind == 'scenario' else USER_VECTORS_FILE}",
        )
    if data_hash is not None and meta.get("data_hash") != data_hash:
        raise InputError(
            f"the {kind} vectors were built from another prepared dataset (data_hash differs)",
            file=path,
            fix="rebuild them from this run's prepared directory",
        )
    table = pl.read_parquet(path)
    keys = table[key].to_numpy()
    if len(keys) != n or not np.array_equal(np.sort(keys), np.arange(n)):
        raise InputError(
            f"{len(keys)} {kind} vectors for {n} {kind}s: every {kind} 0..{n - 1} needs exactly one",
            file=path,
            column=key,
            fix="rebuild the vectors from the same prepared data and scenario rule as this run",
        )
    out = np.zeros((n, int(meta["dim"])), dtype=np.float32)
    out[keys] = table[VECTOR].to_numpy()
    return out, meta


def build(
    prepared_dir: str | Path,
    rule: str | SC.ScenarioRule,
    out_dir: str | Path,
    embed: Embed,
    *,
    source: Source,
    fingerprint: str,
    cfg: PromptConfig | None = None,
) -> tuple[Path, Path]:
    """Prompts from the train split, vectors from `embed`, both files written (atomically) into `out_dir`."""
    cfg = cfg or PromptConfig()
    prepared_dir = Path(prepared_dir)
    rule = SC.resolve_rule(rule)
    scenarios = SC.from_prepared(prepared_dir, rule)
    items = pl.read_parquet(prepared_dir / S.ITEMS_FILE)
    users = pl.read_parquet(prepared_dir / S.USERS_FILE)
    train = pl.read_parquet(prepared_dir / S.split_file("train"))
    meta = {
        "source": source,
        "model": fingerprint,
        "data_hash": read_meta(prepared_dir / S.ITEMS_FILE).get("data_hash"),
        "scenario_names": list(scenarios.names),
        "prompt_config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
    }
    out_dir = Path(out_dir)
    paths = out_dir / SCENARIO_VECTORS_FILE, out_dir / USER_VECTORS_FILE
    for kind, knowledge, path in (
        (
            "scenario",
            scenario_prompts(
                train, items, scenarios, cfg, rule_column=rule.column if rule.side == "item" else None
            ),
            paths[0],
        ),
        ("user", user_prompts(train, items, users, scenarios, cfg), paths[1]),
    ):
        vectors = embed(knowledge.prompts, f"msr_{kind}")  # (N, D)
        write_vectors(path, knowledge, vectors, kind=kind, meta=meta)
    return paths
