"""The amazon-food-kitchen reader: the LLMCDSR release of Amazon Food -> Kitchen as a prepared dataset.

The release (see its README.md; read in place from `--source`, never copied) has item titles and ordered purchase
sequences but no timestamps, ratings or negatives. This module turns it into the prepared layout of `semid.data`.
Which domains' events become CTR rows is the option `domains` (`semid prepare --domains`, `prepare: domains:`):
the default `[kitchen]` is the Food -> Kitchen cross-domain protocol, `[food, kitchen]` the two-scenario protocol
(LLM4MSR; scenario = the item's `domain`, rule `amazon-domain` of semid.scenarios). "Row domains" below means them.

- Users: the train files' users with at least one event in a row domain (train_B and train_overlap, plus train_A
  when food is a row domain; user ids restart at 1 in each file, so a raw user id is `A_<id>` / `B_<id>` /
  `O_<id>`). Timestamp of an event = its position in the user's whole (mixed-domain) sequence, so "before" means
  what it means in the release.
- main split, leave-last-out per (user, row domain) over those events in position order: the last is test, the one
  before val, the rest train (a (user, domain) with fewer than 3 events stays in train), as
  `semid.data.SplitConfig(mode="leave_last_out")`. Per (user, domain) and not per user because each scenario then
  gets its own held-out event of every user active in it (scenario-wise evaluation, as the multi-scenario
  benchmarks report per scenario), and the Kitchen positives of `[food, kitchen]` and their splits are exactly
  those of `[kitchen]` (only the dense user ids differ), so the Kitchen scenario is comparable with the
  single-domain runs. The price: a train event of one domain may come after a test event of the other,
  as in the row-random split of the Scenario-Wise-Rec protocol; a sample's history is still only positives strictly
  before it (ctr/data/history.py).
- CTR negatives: `NegativeConfig.per_positive` per positive, uniform over the items of the positive's own domain
  (in-scenario negatives) that the user never interacted with (in any split), distinct within a positive, drawn
  once from `NegativeConfig.seed` (one stream per domain, Kitchen's the one of the default); a negative
  carries its positive's timestamp and split (so a model's history "before the timestamp" never sees it).
- items: every item of both domains (dense id = the release's global id), text = title, `domain` a side feature;
  items of a domain that is not a row domain have no train rows, so they are `cold`. Activity counts train
  positives only (a sampled negative is not an exposure).
- source_history.parquet: every train-file event of the domains that are NOT row domains (raw_user_id, user_id
  where the user has row events, else null; item_id; timestamp = position), for the cross-domain work: the Food
  events by default, an empty table of the same schema with `[food, kitchen]`.
- ranking_valid.parquet / ranking_test.parquet: the release's held-out users (valid.txt / test.txt): the last item
  of a line is the target, the rest its history; only Kitchen targets (whatever the row domains); each with
  `NegativeConfig.ranking` negatives uniform over the Kitchen items outside the user's sequence (seeded), for
  HR@10 / NDCG@10 later.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import polars as pl

from semid import data
from semid import schema as S
from semid.errors import InputError
from semid.io import sha256_file, sha256_json

DATASET = "amazon-food-kitchen"
SOURCE_ENV = "SEMID_AMAZON_FOOD_KITCHEN"
"""Environment variable naming the release folder (default: ../shared/data/amazon-food-kitchen beside the repo)."""

DOMAINS: tuple[str, ...] = ("food", "kitchen")
TARGET = "kitchen"
ROW_DOMAINS: tuple[str, ...] = (TARGET,)
"""The default `domains`: only Kitchen events are CTR rows (the Food -> Kitchen protocol)."""
DOMAIN = "domain"  # items side feature
ITEMS_TSV = "items.tsv"
TRAIN_FILES = {"A": "train_A.txt", "B": "train_B.txt", "O": "train_overlap.txt"}
HELD_OUT_FILES = {"valid": "valid.txt", "test": "test.txt"}

SOURCE_HISTORY = "source_history"  # <prepared>/source_history.parquet
RANKING = {"valid": "ranking_valid", "test": "ranking_test"}  # <prepared>/ranking_<split>.parquet
HISTORY = "history"  # ranking tables: the user's sequence before the target (dense item ids, in order)
TARGET_ITEM = "target"
NEGATIVES = "negatives"


def default_source() -> Path:
    """$SEMID_AMAZON_FOOD_KITCHEN, else ../shared/data/amazon-food-kitchen relative to the repository."""
    env = os.environ.get(SOURCE_ENV)
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / DATASET


def source_files(source: str | Path | None) -> dict[str, Path]:
    """role -> path of every release file this reader uses, after checking each is a readable file."""
    root = default_source() if source is None else Path(source).expanduser()
    if not root.is_dir():
        raise InputError(
            f"the {DATASET} release folder is missing",
            file=root,
            fix=f"pass --source DIR (the folder holding {ITEMS_TSV}, train_*.txt, valid.txt, test.txt) or set "
            f"${SOURCE_ENV}",
        )
    names = {"items": ITEMS_TSV, **TRAIN_FILES, **HELD_OUT_FILES}
    return {role: data.check_input_file(root / name) for role, name in names.items()}


def check_domains(domains: Sequence[str] | None) -> tuple[str, ...]:
    """The row domains of `domains` in `DOMAINS` order (None = `ROW_DOMAINS`), or one InputError naming the field.

    Kitchen must be one of them: the ranking tables and the item pools' target stay Kitchen."""
    if domains is None:
        return ROW_DOMAINS
    given = [domains] if isinstance(domains, str) else list(domains)
    problems = [
        "none given" if not given else "",
        f"unknown values {[d for d in given if d not in DOMAINS]}" if set(given) - set(DOMAINS) else "",
        "repeated values" if len(set(given)) != len(given) else "",
        f"{TARGET!r} missing" if given and TARGET not in given else "",
    ]
    if any(problems):
        raise InputError(
            f"domains {given}: {'; '.join(p for p in problems if p)} (domains = the domains whose events become "
            f"CTR rows, among {list(DOMAINS)}, {TARGET!r} always included)",
            fix=f"set domains to [{TARGET}] (the default: Food -> Kitchen) or [food, kitchen] (two scenarios)",
        )
    return tuple(d for d in DOMAINS if d in given)


def fingerprint(files: dict[str, Path], cfg: data.PrepareConfig, domains: Sequence[str] | None = None) -> str:
    """Hash of everything the prepared directory is a function of: the release files, the config and the row
    domains (left out of the hash when they are the default, so a Kitchen-only directory keeps its old hash)."""
    payload = {
        "schema": S.SCHEMA_VERSION,
        "dataset": DATASET,
        "inputs": _hashes(files),
        "config": asdict(cfg),
    }
    rows = check_domains(domains)
    if rows != ROW_DOMAINS:
        payload["domains"] = list(rows)
    return sha256_json(payload)


def _hashes(files: dict[str, Path]) -> dict[str, str]:
    return {role: sha256_file(p) for role, p in files.items()}


# -- reading ------------------------------------------------------------------------------------------------


def read_items(path: Path) -> pl.DataFrame:
    """items.tsv -> (item_id Int64, domain, title), validated: unique ids, known domains, non-empty titles."""
    try:
        df = pl.read_csv(path, separator="\t", quote_char=None, infer_schema=False)
    except (pl.exceptions.PolarsError, OSError) as err:
        raise InputError(f"cannot be read: {err}", file=path, fix="pass the release's items.tsv") from err
    for col in ("item_id", DOMAIN, "title"):
        if col not in df.columns:
            raise InputError(
                f"missing column {col!r}; the file has {df.columns}",
                file=path,
                column=col,
                fix="use the release's items.tsv (item_id, domain, asin, title)",
            )
    ids = df["item_id"].cast(pl.Int64, strict=False)
    if ids.null_count():
        raise InputError(
            "item ids must be integers", file=path, column="item_id", fix="use the release's items.tsv"
        )
    df = df.with_columns(ids.alias("item_id"))
    dup = df.filter(pl.col("item_id").is_duplicated())["item_id"].unique().head(5).to_list()
    if dup:
        raise InputError(
            f"duplicate item ids, e.g. {dup}", file=path, column="item_id", fix="one row per item"
        )
    bad = df.filter(~pl.col(DOMAIN).is_in(list(DOMAINS)))[DOMAIN].unique().head(5).to_list()
    if bad:
        raise InputError(
            f"unknown domains {bad}; expected {list(DOMAINS)}", file=path, column=DOMAIN, fix="fix those rows"
        )
    empty = df.filter(pl.col("title").is_null() | (pl.col("title").str.strip_chars() == ""))
    if empty.height:
        raise InputError(
            f"{empty.height} items have no title, e.g. {empty['item_id'].head(5).to_list()}",
            file=path,
            column="title",
            fix="fill those titles",
        )
    return df.select("item_id", DOMAIN, pl.col("title").str.strip_chars()).sort("item_id")


def read_sequences(path: Path, tag: str, known: pl.Series) -> pl.DataFrame:
    """`user<TAB>i1,i2,...` lines -> one row per event: raw_user_id (`<tag>_<user>`), item (global id), pos.

    `pos` is the event's position in its line (0 = first). Empty entries (a trailing comma) are skipped.
    """
    try:
        lines = pl.read_csv(
            path,
            separator="\t",
            has_header=False,
            new_columns=["user", "seq"],
            schema={"user": pl.String, "seq": pl.String},
            quote_char=None,
        )
    except (pl.exceptions.PolarsError, OSError) as err:
        raise InputError(
            f"cannot be read as `user<TAB>item,item,...` lines: {err}",
            file=path,
            fix="use the release's file",
        ) from err
    dup = lines.filter(pl.col("user").is_duplicated())["user"].unique().head(5).to_list()
    if dup:
        raise InputError(f"users on several lines, e.g. {dup}", file=path, fix="one line per user")
    events = (
        lines.select(
            pl.concat_str(pl.lit(f"{tag}_"), pl.col("user").str.strip_chars()).alias(S.RAW_USER),
            pl.col("seq").str.split(",").list.eval(pl.element().str.strip_chars()),
        )
        .explode("seq")
        .filter(pl.col("seq").is_not_null() & (pl.col("seq") != ""))
        .with_columns(pl.int_range(pl.len()).over(S.RAW_USER).alias("pos"))
    )
    item = events["seq"].cast(pl.Int64, strict=False)
    bad = events.filter(item.is_null())["seq"].head(3).to_list()
    if bad:
        raise InputError(
            f"item ids must be integers, e.g. {bad}",
            file=path,
            fix="use the release's `user<TAB>i1,i2,...` lines",
        )
    events = events.with_columns(item.alias("item")).drop("seq")
    unknown = events.filter(~pl.col("item").is_in(known.implode()))["item"].unique().head(5).to_list()
    if unknown:
        raise InputError(
            f"item ids not in {ITEMS_TSV}, e.g. {unknown}",
            file=path,
            fix=f"use the {ITEMS_TSV} of the same release",
        )
    return events


# -- sampling -----------------------------------------------------------------------------------------------


def sample_negatives(
    rows: pl.DataFrame, seen: pl.DataFrame, pool: np.ndarray, n: int, rng: np.random.Generator
) -> pl.DataFrame:
    """`n` distinct negatives per row, uniform over `pool` minus the items `seen` for the row's key.

    rows: (row Int64 unique, key); seen: (key, item) pairs to exclude. Returns (row, item, k) with k = 0..n-1,
    sorted by row then k. Vectorised: every round draws a batch per row still short, drops excluded and
    duplicate draws, and keeps the first `n`; the result is a function of the seed and the inputs only.
    """
    if n == 0 or rows.is_empty():
        return pl.DataFrame(schema={"row": pl.Int64, "item": pl.Int64, "k": pl.Int64})
    have = pl.DataFrame(schema={"row": pl.Int64, "item": pl.Int64, "draw": pl.Int64})
    short = rows
    for round_ in range(64):
        m = n + 8 + n // 4  # a little more than needed: exclusions are rare
        draws = pool[rng.integers(0, len(pool), size=(short.height, m))]  # (R, m)
        batch = pl.DataFrame(
            {
                "row": np.repeat(short["row"].to_numpy(), m),
                "key": np.repeat(short["key"].to_numpy(), m),
                "item": draws.ravel().astype(np.int64),
                "draw": np.tile(np.arange(m, dtype=np.int64), short.height) + round_ * m,
            }
        )
        batch = batch.join(seen, on=["key", "item"], how="anti").drop("key")
        have = (
            pl.concat([have, batch])
            .sort(["row", "draw"])
            .unique(["row", "item"], keep="first", maintain_order=True)
            .filter(pl.int_range(pl.len()).over("row") < n)
        )
        counts = have.group_by("row").len()
        short = rows.join(counts.filter(pl.col("len") >= n), on="row", how="anti")
        if short.is_empty():
            return have.with_columns(pl.int_range(pl.len()).over("row").cast(pl.Int64).alias("k")).drop(
                "draw"
            )
    raise InputError(
        f"could not draw {n} distinct negatives for {short.height} rows: too few candidate items",
        fix="lower negatives.per_positive / negatives.ranking",
    )


# -- the dataset --------------------------------------------------------------------------------------------


def build(
    files: dict[str, Path],
    cfg: data.PrepareConfig,
    *,
    name: str = DATASET,
    domains: Sequence[str] | None = None,
) -> data.Prepared:
    """Read and validate the release and build the prepared tables (nothing is written here).

    domains: the domains whose events are CTR rows (`check_domains`; default Kitchen only)."""
    neg = cfg.negatives
    rows_in = check_domains(domains)
    if neg.per_positive < 1 or neg.ranking < 1:
        raise InputError(
            f"bad negative counts {neg}", fix="use negatives.per_positive >= 1 and negatives.ranking >= 1"
        )
    raw_items = read_items(files["items"])
    known = raw_items["item_id"]
    domain_of = raw_items.select(pl.col("item_id").alias("item"), DOMAIN)
    events = pl.concat([read_sequences(files[tag], tag, known) for tag in TRAIN_FILES]).join(
        domain_of, on="item", how="left"
    )
    row_events = events.filter(pl.col(DOMAIN).is_in(list(rows_in)))
    pools = {d: raw_items.filter(pl.col(DOMAIN) == d)["item_id"].to_numpy() for d in rows_in}
    for d in rows_in:
        if row_events.filter(pl.col(DOMAIN) == d).is_empty() or len(pools[d]) <= neg.per_positive:
            raise InputError(f"no {d} events or too few {d} items", file=files["B"], fix="use the release")
    pool = pools[TARGET]  # the ranking tables' candidates

    # dense ids: items = the release's global ids in numeric order; users = those with row events
    item_codes = data.dense_ids(known.cast(pl.String)).rename({"raw": S.RAW_ITEM, "code": S.ITEM})
    user_codes = data.dense_ids(row_events[S.RAW_USER].unique()).rename({"raw": S.RAW_USER, "code": S.USER})
    code_of_item = item_codes.select(pl.col(S.RAW_ITEM).cast(pl.Int64).alias("item"), S.ITEM)

    # leave-last-out over each (user, row domain)'s events, ordered by position in the whole sequence
    part = data.leave_last_out("_unit")
    positives = (
        row_events.sort([S.RAW_USER, "pos"])
        .with_columns(pl.concat_str(S.RAW_USER, DOMAIN, separator="|").alias("_unit"))
        .with_columns(part.alias("_split"))
        .join(user_codes, on=S.RAW_USER)
        .join(code_of_item, on="item")
        .with_row_index("row")
        .with_columns(pl.col("row").cast(pl.Int64))
    )
    seen = positives.select(pl.col(S.USER).cast(pl.Int64).alias("key"), "item").unique()
    drawn = pl.concat(
        [
            sample_negatives(
                positives.filter(pl.col(DOMAIN) == d).select(
                    "row", pl.col(S.USER).cast(pl.Int64).alias("key")
                ),
                seen,
                pools[d],
                neg.per_positive,
                negative_rng(neg.seed, d),
            )
            for d in rows_in
        ]
    )
    negatives = (
        drawn.join(positives.select("row", S.USER, "pos", "_split"), on="row")
        .join(code_of_item, on="item")
        .with_columns(pl.lit(0, pl.Int8).alias(S.LABEL))
    )
    rows = pl.concat(
        [
            positives.select(S.USER, S.ITEM, pl.lit(1, pl.Int8).alias(S.LABEL), "pos", "_split"),
            negatives.select(S.USER, S.ITEM, S.LABEL, "pos", "_split"),
        ]
    ).select(
        pl.col(S.USER).cast(pl.Int32),
        pl.col(S.ITEM).cast(pl.Int32),
        pl.col(S.LABEL).cast(pl.Int8),
        pl.col("pos").cast(pl.Int64).alias(S.TIMESTAMP),
        pl.lit(None, pl.Float32).alias(S.RATING),
        "_split",
    )
    splits = {
        split: rows.filter(pl.col("_split") == split)
        .drop("_split")
        .sort([S.TIMESTAMP, S.USER, pl.col(S.LABEL)], descending=[False, False, True], maintain_order=True)
        for split in S.SPLITS
    }
    split_cfg = data.SplitConfig(mode="leave_last_out")
    gauc_users = data.check_splits(splits, files["B"], split_cfg)

    items = raw_items.select(
        pl.col("item_id").cast(pl.String).alias(S.RAW_ITEM),
        pl.col("title").alias(S.TEXT),
        pl.concat_list(DOMAIN).alias(DOMAIN),
    ).join(item_codes, on=S.RAW_ITEM)
    users = user_codes.with_columns(pl.lit("").alias(S.TEXT))
    buckets = replace(cfg.buckets, count="positives")
    items, users = data.add_activity(items, users, splits["train"], buckets)
    items = items.select(*S.ITEMS_BASE.names(), data.ABS_BUCKET, DOMAIN).sort(S.ITEM)
    users = users.select(*S.USERS_BASE.names(), data.ABS_BUCKET).sort(S.USER)

    source_history = (
        events.filter(~pl.col(DOMAIN).is_in(list(rows_in)))
        .join(code_of_item, on="item")
        .join(user_codes, on=S.RAW_USER, how="left")
        .select(
            S.RAW_USER,
            pl.col(S.USER).cast(pl.Int32),
            pl.col(S.ITEM).cast(pl.Int32),
            pl.col("pos").cast(pl.Int64).alias(S.TIMESTAMP),
        )
        .sort([S.RAW_USER, S.TIMESTAMP])
    )
    extras = {SOURCE_HISTORY: source_history}
    for k, (split, table) in enumerate(RANKING.items(), start=1):
        extras[table] = ranking_candidates(
            files[split],
            split,
            known,
            code_of_item,
            domain_of,
            pool,
            neg.ranking,
            np.random.default_rng([neg.seed, k]),
        )

    meta = {
        "schema_version": S.SCHEMA_VERSION,
        "dataset": name,
        "source": str(Path(files["items"]).parent),
        "inputs_sha256": _hashes(files),
        "config": asdict(replace(cfg, buckets=buckets, split=split_cfg)),
        "data_hash": fingerprint(files, cfg, rows_in),
        "target_domain": TARGET,
        "domains": list(rows_in),
        "protocol": _protocol(rows_in, neg),
        "n_users": users.height,
        "n_items": items.height,
        "n_interactions": sum(df.height for df in splits.values()),
        "n_positives": positives.height,
        "positive_rate": float(rows[S.LABEL].cast(pl.Float64).mean()),
        "splits": {k: v.height for k, v in splits.items()},
        "gauc_users": gauc_users,
        "held_out_items": [],
        "extras": {k: v.height for k, v in extras.items()},
        **data.bucket_meta(items, users),
    }
    return data.Prepared(items=items, users=users, splits=splits, meta=meta, extras=extras)


def negative_rng(seed: int, domain: str) -> np.random.Generator:
    """The stream of one row domain's CTR negatives: Kitchen keeps the stream of the Kitchen-only default
    ([seed, 0]), so the default's negatives are unchanged; the ranking tables use [seed, 1] and [seed, 2]."""
    return np.random.default_rng([seed, 0] if domain == TARGET else [seed, 3 + DOMAINS.index(domain)])


def _protocol(rows_in: tuple[str, ...], neg: data.NegativeConfig) -> str:
    """One sentence for the metadata: which events are rows, how they are split and sampled."""
    ranking = f"ranking: {neg.ranking} uniform Kitchen negatives per held-out Kitchen target"
    if rows_in == ROW_DOMAINS:
        return (
            "leave-last-out over each user's Kitchen events; timestamp = position in the user's sequence; "
            f"{neg.per_positive} uniform sampled negatives per positive (Kitchen items the user never bought, "
            f"seed {neg.seed}); {ranking}"
        )
    names = " and ".join(d.capitalize() for d in rows_in)
    return (
        f"leave-last-out over each user's events of each domain ({names}); timestamp = position in the user's "
        f"sequence; {neg.per_positive} uniform sampled negatives per positive from the positive's own domain "
        f"(items the user never bought, seed {neg.seed}); {ranking}"
    )


def ranking_candidates(
    path: Path,
    tag: str,
    known: pl.Series,
    code_of_item: pl.DataFrame,
    domain_of: pl.DataFrame,
    pool: np.ndarray,
    n: int,
    rng: np.random.Generator,
) -> pl.DataFrame:
    """The release's held-out users of one file: target = last item of the line, history = the items before it;
    Kitchen targets only; `n` negatives uniform over the Kitchen items outside the user's line (target included)."""
    events = read_sequences(path, tag, known)
    last = pl.col("pos") == pl.col("pos").max().over(S.RAW_USER)
    targets = (
        events.filter(last)
        .join(domain_of, on="item")
        .filter(pl.col(DOMAIN) == TARGET)
        .sort(S.RAW_USER)
        .with_row_index("row")
        .with_columns(pl.col("row").cast(pl.Int64), pl.col("row").cast(pl.Int64).alias("key"))
    )
    coded = events.join(code_of_item, on="item")
    history = (
        coded.filter(~last)
        .sort([S.RAW_USER, "pos"])
        .group_by(S.RAW_USER, maintain_order=True)
        .agg(pl.col(S.ITEM).cast(pl.Int32).alias(HISTORY))
    )
    seen = (
        targets.select("key", S.RAW_USER)
        .join(events.select(S.RAW_USER, "item"), on=S.RAW_USER)
        .drop(S.RAW_USER)
    )
    drawn = sample_negatives(targets.select("row", "key"), seen.unique(), pool, n, rng)
    negs = (
        drawn.join(code_of_item, on="item")
        .sort(["row", "k"])
        .group_by("row", maintain_order=True)
        .agg(pl.col(S.ITEM).cast(pl.Int32).alias(NEGATIVES))
    )
    return (
        targets.join(code_of_item, on="item")
        .join(history, on=S.RAW_USER, how="left")
        .join(negs, on="row")
        .sort("row")
        .select(
            S.RAW_USER,
            pl.col(HISTORY).fill_null(pl.lit([], pl.List(pl.Int32))),
            pl.col(S.ITEM).cast(pl.Int32).alias(TARGET_ITEM),
            NEGATIVES,
        )
    )
