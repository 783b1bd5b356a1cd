"""Reusable CTR building blocks: field embeddings, history pooling, MLP, FM, CrossNetV2 and the AKT-Rec parts
(semantic-ID prefix embeddings, cluster-guided adaptive embedding, activity gate, asymmetric prototype contrast).

Conventions: B = batch, F = fields, M = tokens per multi-valued feature, H = history length, L = semantic-ID
levels, d = embedding dim. Id tables have one extra row 0 for padding and are indexed with `id + 1`, so the
history (already shifted by one, 0 = pad) and targets share one table. Every table here is an `nn.Embedding` /
`nn.EmbeddingBag` built with `sparse=...`, so `CTRTask` can hand their weights to `torch.optim.SparseAdam`;
embeddings are always looked up through the module (never `weight[idx]`), which keeps their gradients sparse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctr.batch import Batch, DataSpec

EMBED_INIT_STD = 1e-2
HEAD_BUCKET = 0  # index of "head" in semid.schema.BUCKETS
ROWS_PER_ID = 16  # cap of a SID-prefix table: rows per id (see SIDPrefixEmbedding)


def init_table(table: nn.Embedding | nn.EmbeddingBag, std: float = EMBED_INIT_STD) -> None:
    """Small normal init (N(0,1), torch's default, swamps the MLPs of a CTR model); padding row stays zero."""
    nn.init.normal_(table.weight, std=std)
    if table.padding_idx is not None:
        with torch.no_grad():
            table.weight[table.padding_idx].zero_()


def activity(count: Tensor, count_max: float) -> Tensor:
    """a = log(1 + count) / log(1 + count_max), in [0, 1] (0 = cold)."""
    return (torch.log1p(count.float()) / math.log1p(max(count_max, 1.0))).clamp(0.0, 1.0)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x (B, H, d) over the positions where mask (B, H) is true; zeros for an all-padded row."""
    m = mask.to(x.dtype).unsqueeze(-1)  # (B, H, 1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, d)


def squared_norm(*xs: Tensor) -> Tensor:
    """Per-sample squared L2 norm of the looked-up embeddings, averaged over the batch (the CTR L2 regulariser)."""
    return sum(x.pow(2).flatten(1).sum(1).mean() for x in xs)


def first_occurrence(ids: Tensor) -> tuple[Tensor, Tensor]:
    """Unique ids (N,) of ids (B,) and, for each, the position of one sample holding it (N,)."""
    uniq, inverse = torch.unique(ids, return_inverse=True)  # (N,), (B,)
    pos = torch.full_like(uniq, ids.numel()).scatter_reduce(
        0, inverse, torch.arange(ids.numel(), device=ids.device), reduce="amin"
    )  # (N,)
    return uniq, pos


def largest_prime_at_most(n: int) -> int:
    def is_prime(k: int) -> bool:
        return k >= 2 and all(k % p for p in range(2, math.isqrt(k) + 1))

    return next(k for k in range(max(n, 2), 1, -1) if is_prime(k))


class MLP(nn.Sequential):
    """Linear -> ReLU -> Dropout per hidden layer, then an optional linear output layer."""

    def __init__(self, in_dim: int, dims: Sequence[int], *, dropout: float = 0.0, out_dim: int | None = None):
        layers: list[nn.Module] = []
        for dim in dims:
            layers += [nn.Linear(in_dim, dim), nn.ReLU(), nn.Dropout(dropout)]
            in_dim = dim
        if out_dim is not None:
            layers.append(nn.Linear(in_dim, out_dim))
        super().__init__(*layers)
        self.out_dim = out_dim if out_dim is not None else in_dim


class FMInteraction(nn.Module):
    """Second-order factorisation-machine term: 0.5 * sum_d[(sum_f e_f)^2 - sum_f e_f^2]."""

    def forward(self, fields: Tensor) -> Tensor:
        square_of_sum = fields.sum(1).pow(2)  # (B, F, d) -> (B, d)
        sum_of_square = fields.pow(2).sum(1)  # (B, d)
        return 0.5 * (square_of_sum - sum_of_square).sum(1)  # (B,)


class CrossNetV2(nn.Module):
    """DCN-V2 cross layers (Wang et al., WWW'21): x_{l+1} = x_0 * (W_l x_l + b_l) + x_l.

    `low_rank` = r > 0 factorises W_l = U_l V_l^T (d x r, r x d), the paper's cheaper variant; 0 = full rank.
    """

    def __init__(self, dim: int, *, n_layers: int = 3, low_rank: int = 0):
        super().__init__()
        if low_rank > 0:
            self.layers = nn.ModuleList(
                nn.Sequential(nn.Linear(dim, low_rank, bias=False), nn.Linear(low_rank, dim))
                for _ in range(n_layers)
            )
        else:
            self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_layers))

    def forward(self, x0: Tensor) -> Tensor:
        x = x0  # (B, D)
        for layer in self.layers:
            x = x0 * layer(x) + x  # (B, D)
        return x


class FeatureBags(nn.Module):
    """Per-feature mean of token embeddings over padded token lists (0 = padding): (B, F, M) -> (B, F, d).

    All features share one `nn.EmbeddingBag` (mode mean, padding_idx 0) with a row offset per feature, so one
    kernel call embeds every feature; an all-padding feature gives a zero vector.
    """

    def __init__(self, vocab: Sequence[int], dim: int, *, sparse: bool = False):
        super().__init__()
        sizes = torch.tensor([max(int(v) - 1, 0) for v in vocab], dtype=torch.long)  # real tokens per feature
        self.register_buffer("offsets", torch.cumsum(sizes, 0) - sizes, persistent=False)  # (F,)
        self.n_features = len(vocab)
        self.bag = nn.EmbeddingBag(1 + int(sizes.sum()), dim, mode="mean", padding_idx=0, sparse=sparse)
        init_table(self.bag)

    def forward(self, tokens: Tensor) -> Tensor:
        b, f, m = tokens.shape
        if f == 0:
            return tokens.new_zeros((b, 0, self.bag.embedding_dim), dtype=self.bag.weight.dtype)
        glob = torch.where(tokens > 0, tokens + self.offsets.view(1, f, 1), 0)  # (B, F, M)
        return self.bag(glob.view(b * f, m)).view(b, f, -1)  # (B*F, M) -> (B, F, d)


class TargetAttention(nn.Module):
    """DIN-style target attention over the history: score_h = MLP([h, t, h - t, h * t]), masked softmax."""

    def __init__(self, dim: int, *, hidden: Sequence[int] = (32,)):
        super().__init__()
        self.score = MLP(4 * dim, hidden, out_dim=1)

    def forward(self, hist: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        t = target.unsqueeze(1).expand_as(hist)  # (B, d) -> (B, H, d)
        s = self.score(torch.cat([hist, t, hist - t, hist * t], -1)).squeeze(-1)  # (B, H, 4d) -> (B, H)
        w = torch.softmax(s.masked_fill(~mask, -1e9), dim=1) * mask  # (B, H); all-padded rows -> 0
        return torch.einsum("bh,bhd->bd", w, hist)  # (B, d)


class FieldEmbedding(nn.Module):
    """The fields every model shares: user id, item id, each user feature, each item feature, and the
    mean-pooled history of item ids (sharing the item table) -> (B, 2 + F_u + F_i + 1, d).

    `user_extra` / `item_extra` (B, d) and `hist_extra` (B, H, d) are added to the id embeddings before pooling:
    this is how `SIDFeatures` folds semantic-ID prefix embeddings into the user/item representation.
    Built with dim=1 it is the first-order (logistic-regression) part of DeepFM.
    """

    def __init__(self, spec: DataSpec, dim: int, *, sparse: bool = False):
        super().__init__()
        self.user = nn.Embedding(spec.n_users + 1, dim, padding_idx=0, sparse=sparse)
        self.item = nn.Embedding(spec.n_items + 1, dim, padding_idx=0, sparse=sparse)
        init_table(self.user)
        init_table(self.item)
        self.user_feats = FeatureBags(spec.user_feature_vocab, dim, sparse=sparse)
        self.item_feats = FeatureBags(spec.item_feature_vocab, dim, sparse=sparse)
        self.n_fields = 3 + len(spec.user_feature_vocab) + len(spec.item_feature_vocab)

    def forward(
        self,
        batch: Batch,
        *,
        user_extra: Tensor | None = None,
        item_extra: Tensor | None = None,
        hist_extra: Tensor | None = None,
    ) -> Tensor:
        user = self.user(batch.user + 1)  # (B, d)
        item = self.item(batch.item + 1)  # (B, d)
        hist = self.item(batch.hist_item)  # (B, H, d)
        if user_extra is not None:
            user = user + user_extra
        if item_extra is not None:
            item = item + item_extra
        if hist_extra is not None:
            hist = hist + hist_extra
        hist = masked_mean(hist, batch.hist_item > 0)  # (B, H, d) -> (B, d)
        parts = [user.unsqueeze(1), item.unsqueeze(1)]  # 2 x (B, 1, d)
        parts += [self.user_feats(batch.user_feats), self.item_feats(batch.item_feats), hist.unsqueeze(1)]
        return torch.cat(parts, 1)  # (B, F, d)


class SIDPrefixEmbedding(nn.Module):
    """One embedding table per semantic-ID prefix depth: depth l embeds the prefix (c_1, ..., c_l).

    The prefix index is the mixed-radix number of the codes with the per-level codebook sizes. A depth's table is
    capped at `max_rows` and, given `n_ids`, at `ROWS_PER_ID * n_ids` (n ids hold at most n distinct prefixes, and
    every unused row still costs a dense optimiser step: 256^3 codes for 3,706 items would be 16.7M rows). Past the
    cap the index is taken modulo the largest prime <= cap: a prime modulus mixes every level into the hash, a
    power of two would just drop the leading codes. All depths live in one table with a row offset each, so one
    lookup embeds every depth: (..., L) codes -> (..., L, d).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        dim: int,
        *,
        max_rows: int = 1 << 20,
        n_ids: int | None = None,
        sparse: bool = False,
    ):
        super().__init__()
        if n_ids is not None:
            max_rows = min(max_rows, ROWS_PER_ID * max(n_ids, 1))
        self.sizes = tuple(int(s) for s in sizes)
        self.modulus = largest_prime_at_most(max_rows)
        rows, product, self.hashed = [], 1, []
        for size in self.sizes:
            product *= size
            self.hashed.append(product > max_rows)
            rows.append(self.modulus if product > max_rows else product)
            product = min(product, 1 << 62)  # only its size vs max_rows matters from here on
        self.rows = tuple(rows)
        self.register_buffer("offsets", torch.tensor([0, *rows[:-1]]).cumsum(0), persistent=False)  # (L,)
        self.table = nn.Embedding(max(sum(rows), 1), dim, sparse=sparse)
        init_table(self.table)

    @property
    def levels(self) -> int:
        return len(self.sizes)

    def prefix_index(self, codes: Tensor) -> Tensor:
        """Row of each prefix within its depth's table: (..., L) -> (..., L), exact unless hashed."""
        out, h = [], torch.zeros_like(codes[..., 0])
        for level, size in enumerate(self.sizes):
            h = h * size + codes[..., level]  # (...,)
            if self.hashed[level]:
                h = h % self.modulus  # stays < modulus * size: no int64 overflow at any depth
            out.append(h)
        return torch.stack(out, -1)  # (..., L)

    def forward(self, codes: Tensor) -> Tensor:
        return self.table(self.prefix_index(codes) + self.offsets)  # (..., L) -> (..., L, d)


class ActivityGate(nn.Module):
    """Activity-aware gate g = sigmoid(k * a + b + MLP([a, v, u])) mixing individual v and cluster u.

    The MLP's output layer starts at zero and (k, b) = (6, -3), so at initialisation g = sigmoid(6a - 3): a cold
    ID (a = 0) leans on its cluster (g ~ 0.05), the most active (a = 1) on its own embedding (g ~ 0.95); the MLP
    then learns corrections from the embeddings. `mode="scalar"`: one g per ID; "vector": one per dimension.
    """

    def __init__(self, dim: int, *, hidden: int = 32, mode: Literal["scalar", "vector"] = "scalar"):
        super().__init__()
        self.mlp = MLP(2 * dim + 1, (hidden,), out_dim=1 if mode == "scalar" else dim)
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        self.slope = nn.Parameter(torch.tensor(6.0))
        self.bias = nn.Parameter(torch.tensor(-3.0))

    def forward(self, a: Tensor, v: Tensor, u: Tensor) -> Tensor:
        a = a.unsqueeze(-1)  # (..., 1)
        return torch.sigmoid(self.slope * a + self.bias + self.mlp(torch.cat([a, v, u], -1)))  # (..., 1 | d)


class AdaptiveEmbedding(NamedTuple):
    e: Tensor  # (..., d) adaptive embedding used downstream
    v: Tensor  # (..., d) individual embedding E[id]
    u: Tensor  # (..., d) cluster embedding sum_l E_l[prefix_l]
    prefixes: Tensor  # (..., L, d) per-depth prefix embeddings (the semantic view's fields)
    gate: Tensor | None  # (..., 1 | d) g of the activity gate; None when the gate is off


class ClusterGuidedEmbedding(nn.Module):
    """Cluster-guided adaptive embedding of one id space (AKT-Rec): e = g * v + (1 - g) * u.

    v = E[id] (individual), u = sum_{l <= cluster_depths} E_l[prefix_l(id)] (cluster, `SIDPrefixEmbedding`),
    g = `ActivityGate`. `use_cluster=False` -> e = v; `use_gate=False` -> e = v + u. Ids are shifted by one
    (0 = padding). `cluster_depths` (None = every level) keeps u to the coarse prefixes: the deepest levels of a
    fine RQ-VAE are nearly one prefix per id, i.e. a second individual embedding rather than a cluster.
    """

    def __init__(
        self,
        n: int,
        sid_sizes: Sequence[int],
        dim: int,
        *,
        count_max: float,
        use_cluster: bool = True,
        use_gate: bool = True,
        gate_mode: Literal["scalar", "vector"] = "scalar",
        max_rows: int = 1 << 20,
        sparse: bool = False,
        cluster_depths: int | None = None,
    ):
        super().__init__()
        if cluster_depths is not None and cluster_depths < 1:
            raise ValueError(f"cluster_depths={cluster_depths} must be >= 1 (or None for every level)")
        self.cluster_depths = cluster_depths
        self.individual = nn.Embedding(n + 1, dim, padding_idx=0, sparse=sparse)
        init_table(self.individual)
        self.prefix = SIDPrefixEmbedding(sid_sizes, dim, max_rows=max_rows, n_ids=n, sparse=sparse)
        self.gate = ActivityGate(dim, mode=gate_mode) if use_gate and use_cluster else None
        self.use_cluster = use_cluster
        self.count_max = count_max

    def forward(self, ids: Tensor, codes: Tensor, count: Tensor) -> AdaptiveEmbedding:
        v = self.individual(ids)  # (...,) -> (..., d)
        prefixes = self.prefix(codes)  # (..., L) -> (..., L, d)
        u = prefixes[..., : self.cluster_depths, :].sum(-2)  # (..., D, d) -> (..., d)
        if not self.use_cluster:
            return AdaptiveEmbedding(v, v, u, prefixes, None)
        if self.gate is None:
            return AdaptiveEmbedding(v + u, v, u, prefixes, None)
        g = self.gate(activity(count, self.count_max), v, u)  # (..., 1 | d)
        return AdaptiveEmbedding(g * v + (1 - g) * u, v, u, prefixes, g)


class PrototypeContrast(nn.Module):
    """Asymmetric head -> tail contrastive objective over semantic clusters (AKT-Rec).

    Prototypes p_k (one per cluster k = level-1..`depth` SID prefix) are an EMA of the individual embeddings of
    HEAD ids of that cluster, updated without gradient from head ids only:
        p_k <- m p_k + (1 - m) mean{v_e : e head in the batch, k(e) = k}   (p_k := that mean the first time).
    Each non-head id e of the batch (unique ids) is an anchor; with K_b = the clusters present in the batch whose
    prototype exists,
        L = sum_e w_e * CE(cos(v_e, sg(p_k))_{k in K_b} / tau, k(e)) / #anchors,   w_e = 1 - a_e.
    Only anchors carry gradient, so head rows of the table get exactly none, and tail ids never move prototypes.
    """

    def __init__(self, n_clusters: int, dim: int, *, momentum: float = 0.9, tau: float = 0.2):
        super().__init__()
        self.momentum = momentum
        self.tau = tau
        self.register_buffer("prototypes", torch.zeros(n_clusters, dim))
        self.register_buffer("seen", torch.zeros(n_clusters, dtype=torch.bool))

    @torch.no_grad()
    def update(self, v: Tensor, cluster: Tensor, is_head: Tensor) -> None:
        """EMA step from the head ids among v (N, d) with clusters (N,)."""
        v, cluster = v[is_head].detach().float(), cluster[is_head]  # (N_head, d), (N_head,)
        sums = torch.zeros_like(self.prototypes).index_add_(0, cluster, v)  # (K, d)
        counts = torch.zeros_like(self.prototypes[:, 0]).index_add_(0, cluster, v.new_ones(len(v)))  # (K,)
        hit = counts > 0
        mean = sums / counts.clamp_min(1.0).unsqueeze(1)  # (K, d)
        m = torch.where(self.seen, self.momentum, 0.0).unsqueeze(1)  # (K, 1): first visit copies the mean
        self.prototypes.copy_(
            torch.where(hit.unsqueeze(1), m * self.prototypes + (1 - m) * mean, self.prototypes)
        )
        self.seen |= hit

    def loss(self, v: Tensor, cluster: Tensor, weight: Tensor, is_anchor: Tensor) -> Tensor:
        """Weighted InfoNCE of the anchors among v (N, d) against the stop-gradient prototypes."""
        present = torch.zeros_like(self.seen).index_fill_(0, cluster, True) & self.seen  # (K,)
        valid = is_anchor & self.seen[cluster]  # (N,) anchors whose positive exists
        slot = torch.cumsum(present.long(), 0) - 1  # (K,) column of each present cluster
        protos = F.normalize(self.prototypes[present], dim=-1)  # (K_b, d), buffer: no gradient
        logits = F.normalize(v[valid], dim=-1) @ protos.T / self.tau  # (N_a, K_b)
        ce = F.cross_entropy(logits, slot[cluster[valid]], reduction="none")  # (N_a,)
        return (weight[valid] * ce).sum() / valid.sum().clamp_min(1)
