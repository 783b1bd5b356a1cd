"""Ranking evaluation, the release protocol of issue 13: score every held-out list of `ranking_test.parquet` (one
target among sampled negatives, written by semid.amazon) with a trained network and report HR@K / NDCG@K.

A list becomes C = 1 + negatives rows of `Batch`es, one per candidate, the target first. The release's held-out
users have no train rows, so they are unknown to every network: each row carries **user id 0 with train count 0**,
bucket `cold`, all-padding user features, user semantic-ID codes 0 and zero user content. (The networks' tables have
no row for an unknown user; user 0's id embedding is the same for all C candidates of a list, so it shifts every
score of a list alike in first-order terms, but it does enter interaction terms: read the numbers as a cold-user
protocol with that caveat.) The user's history comes from the list itself (its `history`, oldest first): the last
H events, most recent first. Without a merged source history (data option `source_history`) only target-domain
events are kept, as in training; with it, source-domain events stay and are typed HIST_SOURCE in `Batch.hist_type`.
The domain of an item is the `domain` side feature of items.parquet (every event is target-domain without it).
Ties between the target and a negative are broken uniformly at random, in expectation (ctr.metrics).

Shapes: N = lists, C = candidates per list, H = history length, R = lists per batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl
import torch
from torch import Tensor, nn

from ctr.batch import HIST_SOURCE, HIST_TARGET, NO_CODES, Batch
from ctr.data import CTRDataModule, Tables, distinct_history_content
from ctr.metrics import hit_rate_at_k, ndcg_at_k
from semid import schema as S
from semid.amazon import DOMAIN, HISTORY, NEGATIVES, RANKING, TARGET, TARGET_ITEM
from semid.errors import InputError
from semid.io import read_meta

COLD = S.BUCKETS.index("cold")


class RankingLists(NamedTuple):
    candidates: Tensor  # (N, C) int64 dense item ids, the target in column 0
    hist_item: Tensor  # (N, H) int64 item id + 1 of the list's last events, most recent first, 0 = pad
    hist_type: Tensor  # (N, H) int64 HIST_TARGET / HIST_SOURCE (0 where padded)


class RankingResult(NamedTuple):
    hr: float  # HR@k
    ndcg: float  # NDCG@k
    k: int
    n_lists: int
    n_candidates: int  # C: 1 target + negatives


def default_path(data_dir: str | Path, split: str = "test") -> Path:
    """<prepared>/ranking_test.parquet (split "test") or ranking_valid.parquet ("valid")."""
    if split not in RANKING:
        raise InputError(f"unknown ranking split {split!r}", fix=f"use one of {list(RANKING)}")
    return Path(data_dir) / f"{RANKING[split]}.parquet"


def source_domain_items(data_dir: str | Path, n_items: int) -> np.ndarray:
    """(n_items,) bool: items outside the target domain (the `domain` feature of items.parquet); all False when
    the dataset has no domains."""
    path = Path(data_dir) / S.ITEMS_FILE
    if DOMAIN not in pl.read_parquet_schema(path):
        return np.zeros(n_items, dtype=bool)
    items = pl.read_parquet(path, columns=[S.ITEM, DOMAIN]).sort(S.ITEM)
    mask = np.zeros(n_items, dtype=bool)
    ids = items[S.ITEM].cast(pl.Int64).to_numpy()
    mask[ids] = (items[DOMAIN].list.first() != TARGET).fill_null(True).to_numpy()
    return mask


def read_lists(
    path: str | Path,
    *,
    n_items: int,
    history_len: int,
    source_items: np.ndarray,
    keep_source: bool,
    data_hash: str | None,
) -> RankingLists:
    """A ranking_*.parquet -> candidate and history tensors, validated against the prepared dataset."""
    path = Path(path)
    fix = "point to the ranking_test.parquet / ranking_valid.parquet `semid prepare` wrote for this dataset"
    if not path.is_file():
        raise InputError("ranking list file not found", file=path, fix=fix)
    names = pl.read_parquet_schema(path).names()
    for col in (HISTORY, TARGET_ITEM, NEGATIVES):
        if col not in names:
            raise InputError(f"missing column {col!r}; the file has {names}", file=path, column=col, fix=fix)
    built_from = read_meta(path).get("data_hash")
    if data_hash is not None and built_from is not None and built_from != data_hash:
        raise InputError(
            "the ranking lists belong to another prepared dataset (data_hash differs)", file=path, fix=fix
        )
    df = pl.read_parquet(path, columns=[HISTORY, TARGET_ITEM, NEGATIVES])
    n_neg = df[NEGATIVES].list.len()
    if df.height == 0 or n_neg.n_unique() != 1 or df[TARGET_ITEM].null_count():
        raise InputError(
            "the lists must be non-empty, each with a target and the same number of negatives",
            file=path,
            fix=fix,
        )
    cand = np.concatenate(
        [
            df[TARGET_ITEM].cast(pl.Int64).to_numpy()[:, None],
            np.stack(df[NEGATIVES].cast(pl.List(pl.Int64)).to_list()),
        ],
        axis=1,
    )  # (N, C)
    events = (
        df.select(
            pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), pl.col(HISTORY).cast(pl.List(pl.Int64))
        )
        .explode(HISTORY)
        .drop_nulls(HISTORY)
    )
    for col, ids in ((TARGET_ITEM, cand), (HISTORY, events[HISTORY].to_numpy())):
        bad = np.unique(ids[(ids < 0) | (ids >= n_items)])
        if bad.size:
            raise InputError(
                f"item ids unknown to the dataset ({n_items} items): {bad[:5].tolist()}",
                file=path,
                column=col,
                fix=fix,
            )
    item = events[HISTORY].to_numpy()
    row = events["row"].to_numpy()
    source = source_items[item]
    if not keep_source:
        item, row, source = item[~source], row[~source], source[~source]
    # age 0 = the most recent event of a list: rows are in list order, so count back from each list's end
    ends = np.searchsorted(row, np.arange(df.height), side="right")  # (N,) one past each list's last event
    age = ends[row] - 1 - np.arange(row.size)
    keep = age < history_len
    hist = np.zeros((df.height, history_len), dtype=np.int64)
    types = np.zeros((df.height, history_len), dtype=np.int64)
    hist[row[keep], age[keep]] = item[keep] + 1
    types[row[keep], age[keep]] = np.where(source[keep], HIST_SOURCE, HIST_TARGET)
    return RankingLists(torch.from_numpy(cand), torch.from_numpy(hist), torch.from_numpy(types))


def list_batches(
    tables: Tables, lists: RankingLists, *, lists_per_batch: int = 8, history_content: bool = False
) -> Iterator[Batch]:
    """The Batches of every list, `lists_per_batch` lists (R * C rows) at a time, in list order; with
    `history_content` they carry the history items' content vectors (`CTRDataModule`'s option of that name)."""
    if tables.scenarios is not None and tables.scenarios.key == S.USER:
        raise InputError(
            "the scenario table is keyed by user, and the held-out users of the ranking lists are unknown",
            fix="rank without data.scenarios, or with an item-keyed scenario rule (amazon-domain)",
        )
    items, users = tables.items, tables.users
    n, c = lists.candidates.shape
    for start in range(0, n, lists_per_batch):
        cand = lists.candidates[start : start + lists_per_batch]  # (R, C)
        r = cand.shape[0]
        item = cand.reshape(-1)  # (R * C,)
        b = item.numel()
        hist = lists.hist_item[start : start + r].repeat_interleave(c, 0)  # (R * C, H)
        hist_idx, hist_real = (hist - 1).clamp(min=0), hist > 0  # (R * C, H)
        label = torch.zeros(r, c)
        label[:, 0] = 1.0
        zero = torch.zeros(b, dtype=torch.long)
        yield Batch(
            user=zero,
            item=item,
            label=label.reshape(-1),
            user_sid=torch.zeros(b, users.sid.codes.shape[1], dtype=torch.long),
            item_sid=items.sid.codes[item],  # (R * C, L_i)
            user_count=torch.zeros(b),
            item_count=items.count[item],
            user_feats=torch.zeros(b, *users.feats.tokens.shape[1:], dtype=torch.long),
            item_feats=items.feats.tokens[item],  # (R * C, F_i, M_i)
            hist_item=hist,
            hist_item_sid=items.sid.codes[hist_idx] * hist_real.unsqueeze(-1),  # (R * C, H, L_i)
            hist_item_count=items.count[hist_idx] * hist_real,  # (R * C, H)
            user_bucket=torch.full((b,), COLD, dtype=torch.long),
            item_bucket=items.bucket[item],
            user_content=torch.zeros(b, users.content.shape[1]),
            item_content=items.content[item],
            scenario=NO_CODES if tables.scenarios is None else tables.scenarios.codes[item],
            hist_type=lists.hist_type[start : start + r].repeat_interleave(c, 0)
            if tables.merged_source
            else NO_CODES,
            **(distinct_history_content(items.content, hist) if history_content else {}),
        )


@torch.no_grad()
def score_lists(
    net: nn.Module,
    tables: Tables,
    lists: RankingLists,
    *,
    lists_per_batch: int = 8,
    history_content: bool = False,
) -> Tensor:
    """(N, C) click logits of every candidate of every list (net in eval mode; its mode is restored)."""
    was = net.training
    net.eval()
    try:
        c = lists.candidates.shape[1]
        device = next(net.parameters()).device
        parts = [
            net(Batch(*(t.to(device) for t in batch))).logit.float().cpu().view(-1, c)
            for batch in list_batches(
                tables, lists, lists_per_batch=lists_per_batch, history_content=history_content
            )
        ]
    finally:
        net.train(was)
    return torch.cat(parts)  # (N, C)


def evaluate(
    net: nn.Module,
    data: CTRDataModule,
    path: str | Path | None = None,
    *,
    k: int = 10,
    lists_per_batch: int = 8,
) -> RankingResult:
    """HR@k / NDCG@k of `net` (a network or a CTRTask) on the ranking lists at `path` (default: the prepared
    dataset's ranking_test.parquet), with the data module's tables (ID tables, scenarios, source history)."""
    data.setup()
    tables = data.tables
    n_items = tables.items.count.numel()
    lists = read_lists(
        default_path(data.data_dir) if path is None else path,
        n_items=n_items,
        history_len=data.history_len,
        source_items=source_domain_items(data.data_dir, n_items),
        keep_source=tables.merged_source,
        data_hash=tables.data_hash,
    )
    scores = score_lists(
        net, tables, lists, lists_per_batch=lists_per_batch, history_content=data.history_content
    )
    return RankingResult(
        hr=hit_rate_at_k(scores, k),
        ndcg=ndcg_at_k(scores, k),
        k=k,
        n_lists=scores.shape[0],
        n_candidates=scores.shape[1],
    )
