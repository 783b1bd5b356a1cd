"""Cluster-guided adaptive embedding (AKT-Rec): semantic-ID cluster part + gated individual part, and cluster keys."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from ctr.layers.embedding import SIDPrefixEmbedding
from ctr.layers.functional import Embedding, activity, distinct, init_table
from ctr.layers.gates import ActivityGate, ResidualGate


class AdaptiveEmbedding(NamedTuple):
    e: Tensor  # (..., d) adaptive embedding used downstream
    individual: (
        Tensor  # (..., d) individual part (E[id] [+ deep prefixes]); 0 (or the fallback) where count = 0
    )
    cluster: Tensor  # (..., d) cluster part sum_{l <= k} E_l[prefix_l]; 0 when use_cluster=False
    gate: Tensor | None  # (..., 1) gamma (residual) or g (convex); None without a gate


class ClusterGuidedEmbedding(nn.Module):
    """Cluster-guided adaptive embedding of one id space (AKT-Rec), ids shifted by one (0 = padding):

        c = sum_{l <= k} E_l[prefix_l]                       cluster part, k = `cluster_depth` (paper: k = 1)
        v = E[id] + sum_{l > k} E_l[prefix_l]                individual part (`deep_prefixes=False`: E[id] only)
        v = 0 (or `fallback`) where count = 0                an id without train interactions has no trained row
        e = c + gamma(a) v        gate_mode="residual" (ours, `ResidualGate`, gamma = 1 at init)
        e = g v + (1 - g) c       gate_mode="convex"   (the paper's form, `ActivityGate`)
        e = c + v                 use_gate=False;   e = v: use_cluster=False;   e = c: use_individual=False

    The prefixes deeper than k are nearly one per id in a fine RQ-VAE, so they belong to the individual part: a
    cold id loses them with its row (and the cold-path dropout of `ctr.models.akt` drops them together).
    """

    def __init__(
        self,
        n: int,
        sid_sizes: Sequence[int],
        dim: int,
        *,
        count_max: float,
        cluster_depth: int = 1,
        deep_prefixes: bool = True,
        use_cluster: bool = True,
        use_individual: bool = True,
        use_gate: bool = True,
        gate_mode: Literal["residual", "convex"] = "residual",
        max_rows: int = 1 << 20,
        side: str | None = None,
    ):
        """`side` ("user" / "item"): whose codes `ctr.layers.index_sid_tables` indexes the prefix table with."""
        super().__init__()
        if not 1 <= cluster_depth <= len(sid_sizes):
            raise ValueError(f"cluster_depth={cluster_depth} must be in 1..{len(sid_sizes)} (the SID levels)")
        if not (use_cluster or use_individual):
            raise ValueError("use_cluster=False and use_individual=False leave no embedding at all")
        self.n, self.k, self.count_max = n, cluster_depth, count_max
        self.use_cluster, self.use_individual = use_cluster, use_individual
        self.deep = deep_prefixes and use_individual and cluster_depth < len(sid_sizes)
        depths = len(sid_sizes) if self.deep else cluster_depth
        self.prefix = (
            SIDPrefixEmbedding(sid_sizes[:depths], dim, max_rows=max_rows, n_ids=n, side=side)
            if use_cluster or self.deep
            else None
        )
        self.individual = Embedding(n + 1, dim, padding_idx=0) if use_individual else None
        if self.individual is not None:
            init_table(self.individual)
        self.gate: nn.Module | None = None
        if use_gate and use_cluster and use_individual:
            self.gate = ResidualGate() if gate_mode == "residual" else ActivityGate(dim)
        self.gate_mode = gate_mode

    def forward(
        self, ids: Tensor, codes: Tensor, count: Tensor, *, fallback: Tensor | None = None
    ) -> AdaptiveEmbedding:
        shape = (*ids.shape, self.dim)
        prefixes = (
            self.prefix(codes[..., : self.prefix.levels]) if self.prefix is not None else None
        )  # (..., L, d)
        c = prefixes[..., : self.k, :].sum(-2) if self.use_cluster else None  # (..., d)
        v = None
        if self.individual is not None:
            v = self.individual(ids)  # (...,) -> (..., d)
            if self.deep:
                v = v + prefixes[..., self.k :, :].sum(-2)  # (..., d)
            warm = (count > 0).unsqueeze(-1)  # (..., 1)
            v = torch.where(warm, v, fallback) if fallback is not None else v * warm  # (..., d)
        if c is None:
            return AdaptiveEmbedding(v, v, v.new_zeros(shape), None)
        if v is None:
            return AdaptiveEmbedding(c, c.new_zeros(shape), c, None)
        if self.gate is None:
            return AdaptiveEmbedding(c + v, v, c, None)
        a = activity(count, self.count_max)  # (...,)
        if self.gate_mode == "residual":
            g = self.gate(a)  # (..., 1)
            return AdaptiveEmbedding(c + g * v, v, c, g)
        g = self.gate(a, v, c)  # (..., 1)
        return AdaptiveEmbedding(g * v + (1 - g) * c, v, c, g)

    @torch.no_grad()
    def admit(self, ids: Tensor, codes: Tensor, value: Tensor) -> None:
        """Warm-start new ids (shifted by one, as `forward`'s): set each one's row E[id] so that its individual
        part v = E[id] (+ its deep prefixes) equals `value` (N, d), the v it had while cold (0 or the fallback).
        Repeated ids must come with the same codes and value. No-op without an individual part."""
        if self.individual is None:
            return
        row = value.to(self.individual.weight.dtype)  # (N, d)
        if self.deep:
            row = row - self.prefix(codes[..., : self.prefix.levels])[..., self.k :, :].sum(-2)  # (N, d)
        self.individual.weight[ids] = row

    def with_history(
        self,
        ids: Tensor,
        codes: Tensor,
        count: Tensor,
        hist_ids: Tensor,
        hist_codes: Tensor,
        hist_count: Tensor,
        *,
        fallback: Tensor | None = None,
    ) -> tuple[AdaptiveEmbedding, Tensor]:
        """`forward(ids, codes, count, fallback=fallback)` of targets (B,) and `forward(hist_ids, ...).e` of their
        histories (B, H) -> (B, H, d), in one lookup over the targets and the history's distinct ids.

        A history of 2048 x 20 ML-1M items holds at most 3,706 distinct ones (~3,600 in benchmarks/akt_profile.py)
        instead of 40,960 positions: the lookups, the gate and their backward run on those rows only, and each
        table gets one gradient instead of two to sum. Exact because
        a history id's codes and count are the same wherever it appears (in prepared data both are facts of the
        item); that is checked (`distinct`), and a batch that breaks it is embedded position by position. The
        gather back is an `index_select`, whose backward (one `index_add_`) is cheaper on CPU than an
        embedding's. A cold history item keeps v = 0 (fallbacks are for the targets).
        """
        seen = distinct(hist_ids, hist_codes, hist_count, self.n)
        if seen is None:
            return self(ids, codes, count, fallback=fallback), self(hist_ids, hist_codes, hist_count).e
        b = ids.shape[0]
        if fallback is not None:
            none = fallback.new_zeros(len(seen.ids), fallback.shape[-1])  # (U, d)
            fallback = torch.cat([fallback, none])  # (B + U, d)
        out = self(
            torch.cat([ids, seen.ids]),  # (B + U,)
            torch.cat([codes, seen.codes]),  # (B + U, L)
            torch.cat([count, seen.count.to(count.dtype)]),  # (B + U,)
            fallback=fallback,
        )
        target = AdaptiveEmbedding(*(x[:b] if x is not None else None for x in out))  # (B, d) each
        hist = out.e[b:].index_select(0, seen.inverse)  # (U, d) -> (B * H, d)
        return target, hist.view(*hist_ids.shape, hist.shape[-1])  # (B, H, d)

    @property
    def dim(self) -> int:
        table = self.individual if self.individual is not None else self.prefix.table
        return table.embedding_dim


def cluster_key(codes: Tensor, sizes: Sequence[int], depth: int) -> Tensor:
    """Exact id of the level-1..depth SID prefix (mixed radix): (..., L) -> (...,)."""
    key = torch.zeros_like(codes[..., 0])
    for level in range(depth):
        key = key * int(sizes[level]) + codes[..., level]
    return key
