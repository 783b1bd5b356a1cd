"""Retrieval probes of aligned vectors: co-engaged items among an item's nearest neighbours (recall@k) and a
user's next item among the user's nearest items (hit@k)."""

from __future__ import annotations

import math

import polars as pl
import torch
from torch import Tensor, nn

from semid.align.pairs import ANCHOR, NEXT_ITEM, POSITIVE
from semid.schema import USER


def retrieval_recall(emb: Tensor, pairs: pl.DataFrame, k: int = 10, *, chunk: int = 1024) -> float:
    """Mean over anchor items of |co-engaged items among the anchor's k nearest neighbours| / |co-engaged items|
    (cosine, the anchor itself excluded; pairs are taken in both directions, deduplicated). NaN without pairs."""
    both = (
        pl.concat(
            [
                pairs.select(ANCHOR, POSITIVE),
                pairs.select(pl.col(POSITIVE).alias(ANCHOR), pl.col(ANCHOR).alias(POSITIVE)),
            ]
        )
        .filter(pl.col(ANCHOR) != pl.col(POSITIVE))
        .unique()
    )
    if both.height == 0:
        return float("nan")
    n = emb.shape[0]
    anchor = both[ANCHOR].to_torch().long()
    keys = torch.sort(anchor * n + both[POSITIVE].to_torch().long()).values  # (P,) pair keys
    anchors, counts = torch.unique(anchor, return_counts=True)  # (A,)
    emb = nn.functional.normalize(emb.float(), dim=-1)
    k = min(k, n - 1)
    hits = []
    for rows in torch.split(anchors, chunk):
        sims = emb[rows] @ emb.T  # (c, N)
        sims[torch.arange(rows.shape[0]), rows] = -math.inf
        top = sims.topk(k, dim=1).indices  # (c, k)
        hits.append(torch.isin(rows[:, None] * n + top, keys).sum(dim=1))  # (c,)
    return float((torch.cat(hits) / counts).mean())


def next_item_hit_rate(user_emb: Tensor, item_emb: Tensor, targets: pl.DataFrame, k: int = 10) -> float:
    """Fraction of (user_id, next_item_id) targets whose item is among the user's k nearest items (cosine)."""
    if targets.height == 0:
        return float("nan")
    users = targets[USER].to_torch().long()
    wanted = targets[NEXT_ITEM].to_torch().long()
    u = nn.functional.normalize(user_emb[users].float(), dim=-1)  # (U, D)
    i = nn.functional.normalize(item_emb.float(), dim=-1)  # (N_i, D)
    hits = [
        (torch.topk(ub @ i.T, min(k, i.shape[0]), dim=1).indices == wb[:, None]).any(dim=1)  # (c,)
        for ub, wb in zip(torch.split(u, 1024), torch.split(wanted, 1024))
    ]
    return float(torch.cat(hits).float().mean())
