"""Offline atomic-intent paths per item (AIR, Kuaishou KDD'26, arXiv 2606.10357): each item gets a few hierarchical
intent paths, coarse -> fine ("baking > cake decorating > piping tips"), written as `intents.parquet`.

Two sources, one table:
- the LLM: each (action, item, coarse profile) prompt is answered with JSON paths (schema `INTENT_SCHEMA`, decoded
  under the grammar); answers are cached per prompt by the knowledge cache, so per (action, item) for the fixed
  profile of a run, and a re-run calls the model zero times;
- the fallback, without a useful LLM (none given, or an invalid/empty answer for an item): the item's own
  semantic-ID prefixes sid_0 > sid_0/sid_1 > ..., each prefix named by its members' most distinctive title words
  (tf-idf with one document per prefix of a level; words already naming an ancestor are skipped).

`intents.parquet` (schema `INTENTS`): one row per (item, path, level) with the node's id and name. A node is a
full path prefix (the same name under two parents is two nodes), so node ids form a tree; node 0 is padding.
`read_intents` is the one reader: it validates the table and returns the node vocabulary (parent, level, name)
and the (n_items, P, D) node-id array the online view (ctr.models.air.IntentView) indexes per batch.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl

from semid import schema as S
from semid.errors import InputError
from semid.io import read_meta, write_parquet
from semid.knowledge.backend import GenerationParams
from semid.knowledge.llm import LLM, Summary

INTENTS_FILE = "intents.parquet"
PATH = "path_id"
LEVEL = "level"
NODE = "node_id"
NODE_NAME = "node_name"
INTENTS = pl.Schema({S.ITEM: pl.Int32, PATH: pl.Int32, LEVEL: pl.Int32, NODE: pl.Int32, NODE_NAME: pl.String})
"""intents.parquet. node_id >= 1 (0 is padding in the arrays); levels of a path are 0..depth-1 without gaps."""
VERSION = 1
PAD_NAME = "<pad>"

STOPWORDS = frozenset(
    [
        "the", "and", "for", "with", "from", "that", "this", "your", "you", "are", "our", "all", "new", "set",
        "pack", "count", "size", "inch", "inches", "ounce", "ounces", "oz", "lb", "lbs", "per", "one", "two",
        "three", "four", "five", "six", "pcs", "piece", "pieces", "each", "packaging", "may", "vary", "item",
        "items", "made", "use", "free", "premium", "quality", "best", "great", "large", "small", "medium", "mini",
        "extra", "value", "box", "bag", "bags", "pound", "pounds", "fluid", "case",
    ]
)  # fmt: skip
"""Words that name no intent (units, packaging, marketing); the tf-idf would mostly drop them anyway."""
_WORD = r"[a-z][a-z]{2,}"
_ENTITY = r"&[a-z]+;|&#\d+;"  # HTML entities in scraped titles ("8&quot; pan")

TASK = "intents"
PROMPT = (
    "A customer ({profile}) {action} this item: {text}\n"
    "Give up to {paths} shopping intents that explain why, each as a path from a broad need to a specific one, "
    'with {depth} short levels, e.g. ["baking", "cake decorating", "piping tips"].'
)


def intent_schema(paths: int, depth: int) -> dict[str, Any]:
    """{"intents": [[level-0 name, ..., level-(depth-1) name], ...]}: bounded, so a constrained answer is short."""
    name = {"type": "string", "minLength": 1, "maxLength": 32}
    path = {"type": "array", "items": name, "minItems": 1, "maxItems": depth}
    return {
        "type": "object",
        "properties": {"intents": {"type": "array", "items": path, "minItems": 1, "maxItems": paths}},
        "required": ["intents"],
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class IntentConfig:
    paths: int = 3
    """P: most intent paths per item (the fallback gives one: the item's own prefix chain)."""
    depth: int = 3
    """D: most levels per path (the fallback: min(depth, semantic-ID levels))."""
    action: str = "bought"
    """The behaviour the prompt explains (this dataset has one: a purchase/review)."""
    profile: str = "an online grocery and kitchen shopper"
    """The coarse user profile in the prompt; fixed per run, so the cache holds one answer per (action, item)."""
    template_version: str = "1"
    """Bump when PROMPT changes: it enters the cache key."""
    max_new_tokens: int = 96
    name_words: int = 2
    """Fallback: title words in a prefix's name."""


class IntentResult(NamedTuple):
    table: pl.DataFrame
    """Schema INTENTS, sorted by item, path, level."""
    meta: dict[str, Any]
    summary: Summary | None
    """The LLM call's hits/misses/invalid counts (None without an LLM)."""


class IntentTable(NamedTuple):
    """intents.parquet as arrays; index 0 of every per-node array is the padding node."""

    item_nodes: np.ndarray  # (n_items, P, D) int64 node id per item, path, level; 0 = none
    parent: np.ndarray  # (N + 1,) int64 parent node id, 0 for level-0 nodes (and the pad)
    level: np.ndarray  # (N + 1,) int64 level of each node, -1 for the pad
    names: tuple[str, ...]  # (N + 1,) node names, names[0] = PAD_NAME
    meta: dict[str, Any]

    @property
    def n_nodes(self) -> int:
        """Real nodes (the pad excluded)."""
        return len(self.names) - 1


# -- LLM paths --------------------------------------------------------------------------------------------


def _clean(name: str) -> str:
    """Lower case, single spaces, no surrounding punctuation: "Cake  Decorating." -> "cake decorating"."""
    return re.sub(r"\s+", " ", name.lower()).strip(" .,;:-_/'\"")


def llm_paths(llm: LLM, texts: list[str], cfg: IntentConfig = IntentConfig()) -> list[list[list[str]] | None]:
    """Per item: up to P cleaned, distinct, non-empty name paths (at most D levels), or None when the answer was
    invalid or had no usable path."""
    prompts = [
        PROMPT.format(profile=cfg.profile, action=cfg.action, text=t, paths=cfg.paths, depth=cfg.depth)
        for t in texts
    ]
    answers = llm.generate(
        prompts,
        intent_schema(cfg.paths, cfg.depth),
        task=TASK,
        template_version=cfg.template_version,
        params=GenerationParams(max_new_tokens=cfg.max_new_tokens),
    )
    out: list[list[list[str]] | None] = []
    for answer in answers:
        paths: list[list[str]] = []
        for raw in (answer or {}).get("intents", []):
            path = [_clean(n) for n in raw[: cfg.depth]]
            if path and all(path) and path not in paths:
                paths.append(path)
        out.append(paths[: cfg.paths] or None)
    return out


def path_rows(items: np.ndarray, paths: list[list[list[str]] | None]) -> pl.DataFrame:
    """Rows (item_id, path_id, level, node_key, node_name) of the items with LLM paths."""
    rows = [
        (int(item), p, level, "llm:" + " > ".join(path[: level + 1]), name)
        for item, answer in zip(items, paths, strict=True)
        for p, path in enumerate(answer or [])
        for level, name in enumerate(path)
    ]
    return pl.DataFrame(rows, schema=[S.ITEM, PATH, LEVEL, "node_key", NODE_NAME], orient="row").cast(
        {S.ITEM: pl.Int32, PATH: pl.Int32, LEVEL: pl.Int32}
    )


# -- semantic-ID fallback ---------------------------------------------------------------------------------


def _prefix_keys(sids: pl.DataFrame, depth: int) -> pl.DataFrame:
    """(item_id, level, key) with key "sid:c0/c1/..." = the item's code prefix of length level + 1."""
    cols = [S.sid_column(level) for level in range(depth)]
    return pl.concat(
        [
            sids.select(
                pl.col(S.ITEM),
                pl.lit(level, pl.Int32).alias(LEVEL),
                pl.concat_str([pl.lit("sid:"), pl.concat_str(cols[: level + 1], separator="/")]).alias("key"),
            )
            for level in range(depth)
        ]
    )


def prefix_names(texts: pl.DataFrame, sids: pl.DataFrame, *, depth: int, name_words: int = 2) -> pl.DataFrame:
    """(level, key, node_name): each semantic-ID prefix named by the `name_words` title words with the highest
    tf-idf, tf = share of the prefix's items whose text has the word, idf = log(prefixes of the level / prefixes
    holding it); words already in an ancestor's name are skipped. A prefix with no scoring word is "group <code>".

    `texts`: (item_id, text); `sids`: (item_id, sid_0, ..., sid_{depth-1}).
    """
    words = (
        texts.select(
            pl.col(S.ITEM),
            pl.col(S.TEXT)
            .str.to_lowercase()
            .str.replace_all(_ENTITY, " ")
            .str.extract_all(_WORD)
            .alias("word"),
        )
        .explode("word")
        .drop_nulls("word")
        .filter(~pl.col("word").is_in(list(STOPWORDS)))
        .unique()
    )
    keys = _prefix_keys(sids, depth)
    parent = keys.with_columns((pl.col(LEVEL) + 1).alias(LEVEL)).rename({"key": "parent_key"})
    keys = keys.join(parent, on=[S.ITEM, LEVEL], how="left")
    tree = keys.select(LEVEL, "key", "parent_key").unique()
    used = pl.DataFrame(schema={"key": pl.String, "word": pl.String})  # words of a node's ancestors
    names = []
    for level in range(depth):
        members = keys.filter(pl.col(LEVEL) == level)
        n_prefixes = members["key"].n_unique()
        scored = (
            members.join(words, on=S.ITEM)
            .group_by("key", "word")
            .agg(pl.len().alias("n"))
            .join(members.group_by("key").agg(pl.len().alias("m")), on="key")
            .join(used, on=["key", "word"], how="anti")
            .with_columns(
                (pl.col("n") / pl.col("m") * (n_prefixes / pl.col("key").count().over("word")).log()).alias(
                    "score"
                )
            )
            .filter(pl.col("score") > 0)
            .sort(["key", "score", "n", "word"], descending=[False, True, True, False])
            .group_by("key", maintain_order=True)
            .head(name_words)
        )
        chosen = scored.select("key", "word")
        level_names = (
            tree.filter(pl.col(LEVEL) == level)
            .join(
                chosen.group_by("key", maintain_order=True).agg(pl.col("word").str.join(" ")),
                on="key",
                how="left",
            )
            .with_columns(
                pl.coalesce(
                    "word", pl.concat_str([pl.lit("group "), pl.col("key").str.strip_prefix("sid:")])
                ).alias(NODE_NAME)
            )
        )
        names.append(level_names.select(LEVEL, "key", NODE_NAME))
        children = tree.filter(pl.col(LEVEL) == level + 1).select("key", "parent_key")
        used = (
            pl.concat([used, chosen])
            .rename({"key": "parent_key"})
            .join(children, on="parent_key")
            .select("key", "word")
            .unique()
        )
    return pl.concat(names)


def fallback_rows(
    texts: pl.DataFrame, sids: pl.DataFrame, *, depth: int, name_words: int = 2
) -> pl.DataFrame:
    """Rows (item_id, path_id, level, node_key, node_name): one path per item, its semantic-ID prefix chain."""
    depth = min(depth, _levels(sids))
    names = prefix_names(texts, sids, depth=depth, name_words=name_words)
    return (
        _prefix_keys(sids, depth)
        .join(names, on=[LEVEL, "key"])
        .select(S.ITEM, pl.lit(0, pl.Int32).alias(PATH), LEVEL, pl.col("key").alias("node_key"), NODE_NAME)
    )


def _levels(sids: pl.DataFrame) -> int:
    return sum(1 for c in sids.columns if c.startswith(S.SID_PREFIX) and c != S.SID_DEDUP)


# -- the table --------------------------------------------------------------------------------------------


def number_nodes(rows: pl.DataFrame) -> pl.DataFrame:
    """Node ids 1..N in order of (level, node_key): deterministic in the rows, whatever their order."""
    vocab = (
        rows.select(LEVEL, "node_key")
        .unique()
        .sort(LEVEL, "node_key")
        .with_row_index(NODE, offset=1)
        .with_columns(pl.col(NODE).cast(pl.Int32))
    )
    return rows.join(vocab, on=[LEVEL, "node_key"]).select(*INTENTS.names()).sort(S.ITEM, PATH, LEVEL)


def build_intents(
    items: pl.DataFrame,
    *,
    sids: pl.DataFrame | None = None,
    llm: LLM | None = None,
    cfg: IntentConfig = IntentConfig(),
    data_hash: str | None = None,
) -> IntentResult:
    """The intent table of `items` (item_id, text): LLM paths where the LLM gives usable ones, the semantic-ID
    fallback for the rest (`sids`: an ID table, see semid.ids.read_table). Items with neither get no rows."""
    for col in (S.ITEM, S.TEXT):
        if col not in items.columns:
            raise InputError(
                "the items table lacks a column", column=col, fix="pass the prepared items.parquet"
            )
    if llm is None and sids is None:
        raise InputError(
            "intents need an LLM or a semantic-ID table for the fallback",
            fix="pass an LLM (semid.knowledge.LLM) or the item_sids.parquet of this prepared dataset",
        )
    if cfg.paths < 1 or cfg.depth < 1:
        raise InputError(f"paths={cfg.paths}, depth={cfg.depth}", fix="use paths >= 1 and depth >= 1")
    items = items.select(pl.col(S.ITEM).cast(pl.Int32), S.TEXT).sort(S.ITEM)
    parts = []
    summary = None
    answered = np.zeros(items.height, dtype=bool)
    if llm is not None:
        paths = llm_paths(llm, items[S.TEXT].to_list(), cfg)
        summary = llm.last[TASK]
        answered = np.array([p is not None for p in paths], dtype=bool)
        parts.append(path_rows(items[S.ITEM].to_numpy(), paths))
    fallback = 0
    if sids is not None and not answered.all():
        # Prefixes are named from all their members' titles; only the unanswered items take the rows.
        rest = items.filter(pl.Series(~answered)).select(S.ITEM)
        rows = fallback_rows(items, sids, depth=cfg.depth, name_words=cfg.name_words)
        parts.append(rows.join(rest, on=S.ITEM, how="semi"))
        fallback = sids.join(rest, on=S.ITEM, how="semi").height
    rows = pl.concat(parts) if parts else pl.DataFrame(schema={**INTENTS, "node_key": pl.String})
    table = number_nodes(rows.select(S.ITEM, PATH, LEVEL, "node_key", NODE_NAME))
    meta = {
        "version": VERSION,
        "config": asdict(cfg),
        "paths": cfg.paths,
        "depth": int(table[LEVEL].max() + 1) if table.height else cfg.depth,
        "n_nodes": int(table[NODE].max() or 0) if table.height else 0,
        "items": {
            "llm": int(answered.sum()),
            "fallback": int(fallback),
            "none": int(items.height - answered.sum() - fallback),
        },
        "data_hash": data_hash,
    }
    return IntentResult(table=table, meta=meta, summary=summary)


def build(
    prepared: str | Path,
    out: str | Path,
    *,
    sids: str | Path | None = None,
    llm: LLM | None = None,
    cfg: IntentConfig = IntentConfig(),
) -> IntentResult:
    """Read `<prepared>/items.parquet` (and the ID table `sids`, checked against the dataset's data_hash), build
    the intents and write `out` (an intents.parquet path) atomically."""
    from semid.ids import read_table

    items_path = Path(prepared) / S.ITEMS_FILE
    if not items_path.is_file():
        raise InputError(
            "no items table", file=items_path, fix="pass a prepared dataset directory (semid prepare)"
        )
    data_hash = read_meta(items_path).get("data_hash")
    table = None
    if sids is not None:
        table, _ = read_table(sids, key=S.ITEM, data_hash=data_hash)
    result = build_intents(pl.read_parquet(items_path), sids=table, llm=llm, cfg=cfg, data_hash=data_hash)
    write_parquet(result.table, out, result.meta)
    return result


def _check(table: pl.DataFrame, file: Path | None, n_items: int | None) -> pl.DataFrame:
    fix = "rebuild the intents (semid.intents.build) instead of editing the table"
    for name, dtype in INTENTS.items():
        if name not in table.columns:
            raise InputError("missing column of an intent table", file=file, column=name, fix=fix)
        if table[name].null_count():
            raise InputError(f"{table[name].null_count()} null values", file=file, column=name, fix=fix)
        if dtype.is_integer() and not table.schema[name].is_integer():
            raise InputError(f"dtype {table.schema[name]}, expected {dtype}", file=file, column=name, fix=fix)
    table = table.select(INTENTS.names()).cast(dict(INTENTS))
    lows = {S.ITEM: 0, PATH: 0, LEVEL: 0, NODE: 1}
    for name, low in lows.items():
        if table.height and table[name].min() < low:
            raise InputError(f"values below {low}", file=file, column=name, fix=fix)
    if n_items is not None and table.height and table[S.ITEM].max() >= n_items:
        raise InputError(
            f"item ids up to {table[S.ITEM].max()} but the dataset has {n_items} items",
            file=file,
            column=S.ITEM,
            fix="build the intents from this prepared dataset",
        )
    if table.select(S.ITEM, PATH, LEVEL).is_duplicated().any():
        raise InputError("(item, path, level) rows are not unique", file=file, column=LEVEL, fix=fix)
    gaps = table.group_by(S.ITEM, PATH).agg((pl.col(LEVEL).max() + 1 != pl.len()).alias("gap"))["gap"].any()
    if gaps:
        raise InputError("a path skips a level", file=file, column=LEVEL, fix=fix)
    return table.sort(S.ITEM, PATH, LEVEL)


def read_intents(
    path: str | Path, *, n_items: int | None = None, data_hash: str | None = None
) -> IntentTable:
    """THE reader of intents.parquet: validated arrays (see IntentTable). `n_items` sizes item_nodes (default:
    the largest item id + 1); `data_hash` refuses a table built from another prepared dataset."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no intent table", file=path, fix="build it with semid.intents.build")
    try:
        meta = read_meta(path)
        raw = pl.read_parquet(path)
    except Exception as err:  # noqa: BLE001 -- polars raises several types for a non-parquet file
        raise InputError(
            f"not a readable parquet file ({type(err).__name__})", file=path, fix="rebuild it"
        ) from None
    if data_hash is not None and meta.get("data_hash") != data_hash:
        raise InputError(
            "data_hash differs from the prepared dataset's: the intents were built from another dataset",
            file=path,
            fix="rebuild the intents for this prepared dataset",
        )
    table = _check(raw, path, n_items)
    fix = "rebuild the intents (semid.intents.build) instead of editing the table"
    parents = table.with_columns(pl.col(NODE).shift(1).over(S.ITEM, PATH).fill_null(0).alias("parent"))
    vocab = parents.group_by(NODE).agg(
        pl.col(LEVEL).n_unique().alias("n_level"),
        pl.col(NODE_NAME).n_unique().alias("n_name"),
        pl.col("parent").n_unique().alias("n_parent"),
        pl.col(LEVEL).first(),
        pl.col(NODE_NAME).first(),
        pl.col("parent").first(),
    )
    bad = vocab.filter((pl.col("n_level") > 1) | (pl.col("n_name") > 1) | (pl.col("n_parent") > 1))
    if bad.height:
        raise InputError(
            f"node ids with two levels, names or parents, e.g. {bad[NODE].head(3).to_list()}",
            file=path,
            column=NODE,
            fix=fix,
        )
    n_nodes = int(vocab[NODE].max() or 0) if vocab.height else 0
    ids = vocab[NODE].to_numpy()
    parent = np.zeros(n_nodes + 1, dtype=np.int64)
    level = np.full(n_nodes + 1, -1, dtype=np.int64)
    names = np.full(n_nodes + 1, PAD_NAME, dtype=object)
    names[ids] = vocab[NODE_NAME].to_numpy()
    parent[ids] = vocab["parent"].to_numpy()
    level[ids] = vocab[LEVEL].to_numpy()
    n = n_items if n_items is not None else (int(table[S.ITEM].max()) + 1 if table.height else 0)
    paths = int(table[PATH].max()) + 1 if table.height else 1
    depth = int(table[LEVEL].max()) + 1 if table.height else 1
    item_nodes = np.zeros((n, paths, depth), dtype=np.int64)
    item_nodes[table[S.ITEM].to_numpy(), table[PATH].to_numpy(), table[LEVEL].to_numpy()] = table[
        NODE
    ].to_numpy()
    return IntentTable(
        item_nodes=item_nodes, parent=parent, level=level, names=tuple(names.tolist()), meta=meta
    )


def chains(intents: IntentTable) -> np.ndarray:
    """(N + 1, D) int64: each node's chain root -> node (its ancestors, then itself), 0-padded after it."""
    depth = intents.item_nodes.shape[2]
    out = np.zeros((len(intents.names), depth), dtype=np.int64)
    for level in range(depth):  # one vectorised step per level: a node copies its parent's chain
        nodes = np.flatnonzero(intents.level == level)
        out[nodes] = out[intents.parent[nodes]]
        out[nodes, level] = nodes
    return out


def describe(intents: IntentTable, item: int) -> list[str]:
    """The item's paths as "a > b > c" strings (for reports and examples)."""
    return [
        " > ".join(intents.names[n] for n in path if n) for path in intents.item_nodes[item] if path.any()
    ]
