"""The RGCD-Rep teacher (arXiv 2606.04448): per item, structured facets (vertical domain, key subject, content
topic); per (source, target) pair, a match judgement turned into a transferability score in [0, 1].

Both come from the LLM knowledge layer (`semid.knowledge.LLM.generate` with a JSON schema, so every answer is
cached in its SQLite file and a re-run asks nothing). Without a useful LLM (mode "fallback", or an answer that is
invalid or empty) a deterministic rule stands in, so the pipeline always runs end to end:
- facets: vertical domain = the item's domain; key subject = the last content word of the title (English product
  titles end in their head noun: "... Cast Iron Skillet"); content topic = the title's two most distinctive other
  words (lowest document frequency among words shared with at least one other item);
- transferability: overlap coefficient |A & B| / min(|A|, |B|) of the two items' subject + topic words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import polars as pl

from semid import schema as S
from semid.crossdomain.pairs import SOURCE_ITEM, TARGET_ITEM
from semid.knowledge import LLM, GenerationParams, LLMConfig, is_empty

DOMAIN_COL = "domain"
"""items: the item's domain as a plain string (the prepared `domain` side feature's first value)."""
VERTICAL, SUBJECT, TOPIC = "vertical_domain", "key_subject", "content_topic"
FACET_KEYS = (VERTICAL, SUBJECT, TOPIC)
FACET_SOURCE = "facet_source"  # "llm" or "fallback"
TRANSFER = "transferability"
TRANSFER_SOURCE = "transfer_source"  # "llm" or "fallback"

ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {key: {"type": "string", "maxLength": 40} for key in FACET_KEYS},
    "required": list(FACET_KEYS),
    "additionalProperties": False,
}
"""Short bounded strings: the bound also bounds the decoding length of a constrained answer."""
JUDGEMENTS = ("high", "medium", "low")
PAIR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "same_subject": {"type": "boolean"},
        "same_topic": {"type": "boolean"},
        "transfer": {"type": "string", "enum": list(JUDGEMENTS)},
    },
    "required": ["same_subject", "same_topic", "transfer"],
    "additionalProperties": False,
}
TRANSFER_VALUE = {"high": 1.0, "medium": 0.5, "low": 0.0}

ITEM_PROMPT = (
    "You are a product analyst. Give three short facets of this {domain} product as JSON: vertical_domain (the "
    "shopping vertical, e.g. grocery, kitchenware), key_subject (the main thing it is, e.g. coffee, knife), "
    "content_topic (the activity or theme it serves, e.g. baking, tea time).\nProduct: {text}"
)
PAIR_PROMPT = (
    "A shopper bought item A, then item B from another shop section.\n"
    "A: {a} ({a_facets})\nB: {b} ({b_facets})\n"
    "Do they share the key subject? The topic? Does interest in A transfer to B (high, medium, low)? Answer JSON."
)

_STOP_TEXT = (
    "the and for with from of in on to by a an or x pack count oz ounce ounces lb lbs pound pounds inch inches "
    "piece pieces set pcs size large small medium mini new each per bag bags box boxes can cans jar jars bottle "
    "bottles case gram grams ml liter quart qt gallon fl ct pk one two three four six twelve black white red blue "
    "green silver gold stainless steel plastic"
)
STOPWORDS = frozenset(_STOP_TEXT.split())
"""Words that say how much or what colour, never what an item is about."""


@dataclass(frozen=True)
class TeacherConfig:
    mode: Literal["llm", "fallback"] = "fallback"
    """llm: ask `llm` (invalid or empty answers fall back per item / pair); fallback: the deterministic rule."""
    llm: LLMConfig = field(default_factory=LLMConfig)
    cache: str | None = None
    """The SQLite answer cache of the LLM; None: <semid cache dir>/llm.sqlite."""
    template_version: str = "1"
    """Bump when a prompt changes: it enters the cache key, so old answers are not reused."""
    facet_tokens: int = 64
    pair_tokens: int = 32


class TeacherResult(NamedTuple):
    facets: pl.DataFrame
    """item_id, vertical_domain, key_subject, content_topic, facet_source."""
    pairs: pl.DataFrame
    """The input pairs plus transferability (Float64 in [0, 1]) and transfer_source."""
    summary: dict[str, Any]
    """How many facets / judgements came from the LLM, and its per-task hit/miss/invalid lines."""


def _words(text: pl.Expr) -> pl.Expr:
    """Lower-case content words of a title (letters only, >= 3 characters, no STOPWORDS), in title order."""
    return (
        text.str.to_lowercase()
        .str.extract_all(r"[a-z]{3,}")
        .list.eval(pl.element().filter(~pl.element().is_in(list(STOPWORDS))))
    )


def fallback_facets(items: pl.DataFrame) -> pl.DataFrame:
    """Deterministic facets of items (item_id, text, domain): see the module docstring."""
    words = (
        items.select(S.ITEM, _words(pl.col(S.TEXT)).alias("_w"))
        .with_columns(pl.col("_w").list.len().alias("_n"))
        .explode("_w")
        .with_columns(pl.int_range(pl.len()).over(S.ITEM).alias("_pos"))
    )
    df = words.drop_nulls("_w").group_by("_w").agg(pl.col(S.ITEM).n_unique().alias("_df"))
    subject = words.filter(pl.col("_pos") == pl.col("_n") - 1).select(S.ITEM, pl.col("_w").alias(SUBJECT))
    topic = (
        words.drop_nulls("_w")
        .join(subject, on=S.ITEM)
        .filter(pl.col("_w") != pl.col(SUBJECT))
        .unique([S.ITEM, "_w"], keep="first", maintain_order=True)
        .join(df, on="_w")
        .filter(pl.col("_df") >= 2)
        .sort([S.ITEM, "_df", "_pos"])
        .group_by(S.ITEM, maintain_order=True)
        .agg(pl.col("_w").head(2).sort_by(pl.col("_pos").head(2)).str.join(" ").alias(TOPIC))
    )
    return (
        items.select(S.ITEM, pl.col(DOMAIN_COL).alias(VERTICAL))
        .join(subject, on=S.ITEM, how="left")
        .join(topic, on=S.ITEM, how="left")
        .select(
            S.ITEM,
            pl.col(VERTICAL).fill_null(""),
            pl.col(SUBJECT).fill_null(""),
            pl.col(TOPIC).fill_null(""),
            pl.lit("fallback").alias(FACET_SOURCE),
        )
    )


def _facet_words(facets: pl.DataFrame) -> pl.DataFrame:
    """(item_id, word): the distinct words of an item's key subject and content topic, crude-stemmed (plural s)."""
    return (
        facets.select(S.ITEM, _words(pl.concat_str(SUBJECT, TOPIC, separator=" ")).alias("_w"))
        .explode("_w")
        .drop_nulls("_w")
        .with_columns(pl.col("_w").str.replace(r"(?:es|s)$", ""))
        .unique()
    )


def fallback_transferability(pairs: pl.DataFrame, facets: pl.DataFrame) -> pl.Series:
    """Per pair (input order), the overlap coefficient of the two items' facet words (0 when either has none)."""
    words = _facet_words(facets)
    sizes = words.group_by(S.ITEM).len("_k")
    keyed = pairs.select(SOURCE_ITEM, TARGET_ITEM).with_row_index("_row")
    shared = (
        keyed.join(words.rename({S.ITEM: SOURCE_ITEM}), on=SOURCE_ITEM)
        .join(words.rename({S.ITEM: TARGET_ITEM}), on=[TARGET_ITEM, "_w"])
        .group_by("_row")
        .len("_shared")
    )
    out = (
        keyed.join(shared, on="_row", how="left")
        .join(sizes.rename({S.ITEM: SOURCE_ITEM, "_k": "_ks"}), on=SOURCE_ITEM, how="left")
        .join(sizes.rename({S.ITEM: TARGET_ITEM, "_k": "_kt"}), on=TARGET_ITEM, how="left")
        .sort("_row")
        .select(
            (
                pl.col("_shared").fill_null(0).cast(pl.Float64)
                / pl.min_horizontal("_ks", "_kt").fill_null(0).clip(lower_bound=1)
            ).alias(TRANSFER)
        )
    )
    return out[TRANSFER]


def serialise(facets: pl.DataFrame) -> list[str]:
    """'Domain: kitchen. Subject: skillet. Topic: cast iron.' per row (empty facets left out): the text whose
    encoder embedding the student distils."""
    parts = [
        pl.when(pl.col(key).str.strip_chars() != "").then(pl.format(f"{label}: {{}}.", pl.col(key)))
        for key, label in zip(FACET_KEYS, ("Domain", "Subject", "Topic"))
    ]
    return facets.select(pl.concat_str(parts, separator=" ", ignore_nulls=True).alias("_t"))["_t"].to_list()


def _usable(answer: dict[str, Any] | None) -> bool:
    return answer is not None and not is_empty(answer)


def llm_facets(llm: LLM, items: pl.DataFrame, cfg: TeacherConfig) -> pl.DataFrame:
    """Facets from the LLM; items whose answer is invalid or empty get the fallback facets."""
    prompts = [
        ITEM_PROMPT.format(domain=d, text=t)
        for d, t in zip(items[DOMAIN_COL].to_list(), items[S.TEXT].to_list())
    ]
    answers = llm.generate(
        prompts,
        ITEM_SCHEMA,
        task="rgcd/facets",
        template_version=cfg.template_version,
        params=GenerationParams(max_new_tokens=cfg.facet_tokens),
    )
    rows = [
        {S.ITEM: i, **{k: (a[k].strip() if _usable(a) else None) for k in FACET_KEYS}}
        for i, a in zip(items[S.ITEM].to_list(), answers)
    ]
    schema = {S.ITEM: items.schema[S.ITEM], **{k: pl.String for k in FACET_KEYS}}
    got = pl.DataFrame(rows, schema=schema, orient="row")
    fb = fallback_facets(items)
    return (
        fb.join(got, on=S.ITEM, how="left", suffix="_llm", maintain_order="left")
        .with_columns(
            pl.when(pl.col(f"{SUBJECT}_llm").is_not_null())
            .then(pl.lit("llm"))
            .otherwise(FACET_SOURCE)
            .alias(FACET_SOURCE),
            *[pl.coalesce(f"{k}_llm", k).alias(k) for k in FACET_KEYS],
        )
        .select(S.ITEM, *FACET_KEYS, FACET_SOURCE)
    )


def judgement_score(answer: dict[str, Any]) -> float:
    """A pair judgement -> transferability in [0, 1]: half the transfer grade, a quarter per shared facet."""
    return (
        0.5 * TRANSFER_VALUE[answer["transfer"]]
        + 0.25 * float(answer["same_subject"])
        + 0.25 * float(answer["same_topic"])
    )


def llm_transferability(
    llm: LLM, pairs: pl.DataFrame, items: pl.DataFrame, facets: pl.DataFrame, cfg: TeacherConfig
) -> pl.Series:
    """Per pair (input order) the LLM's judgement score, null where the answer was invalid."""
    described = (
        items.select(S.ITEM, S.TEXT)
        .join(facets, on=S.ITEM)
        .select(S.ITEM, S.TEXT, pl.concat_str(list(FACET_KEYS), separator="; ").alias("_f"))
    )
    side = (
        pairs.select(SOURCE_ITEM, TARGET_ITEM)
        .join(
            described.rename({S.ITEM: SOURCE_ITEM, S.TEXT: "_a", "_f": "_af"}),
            on=SOURCE_ITEM,
            how="left",
            maintain_order="left",
        )
        .join(
            described.rename({S.ITEM: TARGET_ITEM, S.TEXT: "_b", "_f": "_bf"}),
            on=TARGET_ITEM,
            how="left",
            maintain_order="left",
        )
    )
    prompts = [
        PAIR_PROMPT.format(a=a, a_facets=af, b=b, b_facets=bf)
        for a, af, b, bf in side.select("_a", "_af", "_b", "_bf").iter_rows()
    ]
    answers = llm.generate(
        prompts,
        PAIR_SCHEMA,
        task="rgcd/pairs",
        template_version=cfg.template_version,
        params=GenerationParams(max_new_tokens=cfg.pair_tokens),
    )
    return pl.Series(TRANSFER, [None if a is None else judgement_score(a) for a in answers], dtype=pl.Float64)


def teach(
    items: pl.DataFrame, pairs: pl.DataFrame, cfg: TeacherConfig, *, llm: LLM | None = None
) -> TeacherResult:
    """Facets of `items` (item_id, text, domain) and the transferability of `pairs` (source_item, target_item, ...).

    With mode "llm", `llm` must be given (the caller opens it, so tests can pass a fake backend)."""
    summary: dict[str, Any] = {"mode": cfg.mode}
    if cfg.mode == "llm":
        if llm is None:
            raise ValueError("teacher mode 'llm' needs an LLM")
        facets = llm_facets(llm, items, cfg)
        judged = llm_transferability(llm, pairs, items, facets, cfg)
        fallback = fallback_transferability(pairs, facets)
        transfer = judged.fill_null(fallback)
        source = pl.Series(TRANSFER_SOURCE, ["fallback" if v is None else "llm" for v in judged.to_list()])
        summary["llm"] = {task: s.line(task) for task, s in llm.last.items() if task.startswith("rgcd/")}
    else:
        facets = fallback_facets(items)
        transfer = fallback_transferability(pairs, facets)
        source = pl.Series(TRANSFER_SOURCE, ["fallback"] * pairs.height, dtype=pl.String)
    summary["facets_from_llm"] = int((facets[FACET_SOURCE] == "llm").sum())
    summary["pairs_from_llm"] = int((source == "llm").sum())
    summary["items"] = facets.height
    summary["pairs"] = pairs.height
    summary["mean_transferability"] = float(transfer.mean()) if pairs.height else None
    out = pairs.with_columns(transfer.alias(TRANSFER), source.alias(TRANSFER_SOURCE))
    return TeacherResult(facets=facets, pairs=out, summary=summary)
