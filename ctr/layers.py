"""Reusable CTR building blocks: field embeddings, history pooling (mean, DIN target attention), MLP (optional
BatchNorm), POSO's user-group gated MLP, FM, CrossNetV2 and the AKT-Rec parts
(semantic-ID prefix embeddings, cluster-guided adaptive embedding, activity gates, cluster view, view fusion,
orthogonality and asymmetric head <-> tail InfoNCE).

Conventions: B = batch, F = fields, M = tokens per multi-valued feature, H = history length, L = semantic-ID
levels, d = embedding dim. Id tables have one extra row 0 for padding and are indexed with `id + 1`, so the
history (already shifted by one, 0 = pad) and targets share one table. Every table here is an `nn.Embedding` /
`nn.EmbeddingBag` built with `sparse=...`, so `CTRTask` can hand their weights to `torch.optim.SparseAdam`;
embeddings are always looked up through the module (never `weight[idx]`), which keeps their gradients sparse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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
    """Linear -> [BatchNorm] -> ReLU -> Dropout per hidden layer, then an optional linear output layer.

    `batch_norm=True` normalises every hidden pre-activation (torch-rechub's DeepFM MLP); off by default.
    """

    def __init__(
        self,
        in_dim: int,
        dims: Sequence[int],
        *,
        dropout: float = 0.0,
        out_dim: int | None = None,
        batch_norm: bool = False,
    ):
        layers: list[nn.Module] = []
        for dim in dims:
            layers.append(nn.Linear(in_dim, dim))
            if batch_norm:
                layers.append(nn.BatchNorm1d(dim))
            layers += [nn.ReLU(), nn.Dropout(dropout)]
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
    """DIN-style target attention over the history: score_h = MLP([h, t, h - t, h * t]), padding masked out.

    `softmax=True` normalises the scores over the history (masked softmax); False keeps DIN's raw activation
    weights (Zhou et al., KDD'18: "normalization with softmax is abandoned" so the pooled norm reflects how much
    of the history matches the target), padded positions weighted 0.
    """

    def __init__(self, dim: int, *, hidden: Sequence[int] = (32,), softmax: bool = True):
        super().__init__()
        self.score = MLP(4 * dim, hidden, out_dim=1)
        self.softmax = softmax

    def forward(self, hist: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        t = target.unsqueeze(1).expand_as(hist)  # (B, d) -> (B, H, d)
        s = self.score(torch.cat([hist, t, hist - t, hist * t], -1)).squeeze(-1)  # (B, H, 4d) -> (B, H)
        if self.softmax:
            w = torch.softmax(s.masked_fill(~mask, -1e9), dim=1) * mask  # (B, H); all-padded rows -> 0
        else:
            w = s * mask  # (B, H)
        return torch.einsum("bh,bhd->bd", w, hist)  # (B, d)


class GatedMLP(nn.Module):
    """POSO's personalised MLP (Dai et al., Kuaishou 2021): every hidden layer's output is scaled per unit by a
    gate computed from user-group features, h_k = ReLU(W_k h_{k-1}) * 2 sigmoid(G_k(c)), then dropout.

    The gate layers start at zero, so 2 sigmoid(0) = 1 and the network starts as the plain MLP; the output layer
    (one logit) is shared by every group.
    """

    def __init__(
        self, in_dim: int, dims: Sequence[int], *, gate_dim: int, gate_hidden: int = 32, dropout: float = 0.0
    ):
        super().__init__()
        self.layers = nn.ModuleList()
        self.gates = nn.ModuleList()
        for dim in dims:
            self.layers.append(nn.Linear(in_dim, dim))
            gate = MLP(gate_dim, (gate_hidden,), out_dim=dim)
            nn.init.zeros_(gate[-1].weight)
            nn.init.zeros_(gate[-1].bias)
            self.gates.append(gate)
            in_dim = dim
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(in_dim, 1)

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, list[Tensor]]:
        """x (B, in_dim), cond (B, gate_dim) -> logit (B,) and each layer's gate (B, dim_k)."""
        gates = []
        for layer, gate_net in zip(self.layers, self.gates):
            g = 2.0 * torch.sigmoid(gate_net(cond))  # (B, dim_k) in (0, 2)
            x = self.dropout(torch.relu(layer(x)) * g)  # (B, dim_k)
            gates.append(g)
        return self.out(x).squeeze(-1), gates  # (B,)


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
        pool: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
    ) -> Tensor:
        """`pool(hist (B, H, d), target item (B, d), mask (B, H)) -> (B, d)` replaces the masked mean of the
        history (DIN's target attention)."""
        user = self.user(batch.user + 1)  # (B, d)
        item = self.item(batch.item + 1)  # (B, d)
        hist = self.item(batch.hist_item)  # (B, H, d)
        if user_extra is not None:
            user = user + user_extra
        if item_extra is not None:
            item = item + item_extra
        if hist_extra is not None:
            hist = hist + hist_extra
        mask = batch.hist_item > 0  # (B, H)
        hist = masked_mean(hist, mask) if pool is None else pool(hist, item, mask)  # (B, H, d) -> (B, d)
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


class ResidualGate(nn.Module):
    """Ours (AKT v2): gamma = 2 sigmoid(w . phi(a) + b), phi(a) = [a, 1{a = 0}], one scalar per id.

    w = b = 0 at init, so gamma = 1 and the cluster-guided embedding starts as the plain sum cluster + individual
    (what `SIDFeatures` does); training moves gamma in (0, 2) per activity level, cold ids (a = 0) included.
    """

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, a: Tensor) -> Tensor:
        phi = torch.stack([a, (a == 0).to(a.dtype)], -1)  # (...,) -> (..., 2)
        return 2.0 * torch.sigmoid(self.linear(phi))  # (..., 1)


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
        sparse: bool = False,
    ):
        super().__init__()
        if not 1 <= cluster_depth <= len(sid_sizes):
            raise ValueError(f"cluster_depth={cluster_depth} must be in 1..{len(sid_sizes)} (the SID levels)")
        if not (use_cluster or use_individual):
            raise ValueError("use_cluster=False and use_individual=False leave no embedding at all")
        self.k, self.count_max = cluster_depth, count_max
        self.use_cluster, self.use_individual = use_cluster, use_individual
        self.deep = deep_prefixes and use_individual and cluster_depth < len(sid_sizes)
        depths = len(sid_sizes) if self.deep else cluster_depth
        self.prefix = (
            SIDPrefixEmbedding(sid_sizes[:depths], dim, max_rows=max_rows, n_ids=n, sparse=sparse)
            if use_cluster or self.deep
            else None
        )
        self.individual = nn.Embedding(n + 1, dim, padding_idx=0, sparse=sparse) if use_individual else None
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


class ClusterView(nn.Module):
    """SIM-style hard search (Pi et al., CIKM'20) of the history items in the target's cluster, pooled:

        S = {h : h real, prefix_k(h) = prefix_k(target)}          k = `depth` (level-1 SID by default)
        s = mean_{h in S} x_h  (pool="mean")  or  DIN attention of the target over S  (pool="attention")
        s = z  (a learned vector, zero at init) where S is empty
    Returns s (B, d) and the membership mask of S (B, H).
    """

    def __init__(
        self,
        dim: int,
        *,
        depth: int = 1,
        pool: Literal["mean", "attention"] = "mean",
        attention_dims: Sequence[int] = (32,),
    ):
        super().__init__()
        self.depth = depth
        self.empty = nn.Parameter(torch.zeros(dim))
        self.attention = TargetAttention(dim, hidden=attention_dims) if pool == "attention" else None

    def forward(
        self, hist: Tensor, hist_codes: Tensor, mask: Tensor, target: Tensor, target_codes: Tensor
    ) -> tuple[Tensor, Tensor]:
        k = self.depth
        same = (hist_codes[..., :k] == target_codes[:, None, :k]).all(-1) & mask  # (B, H, k) -> (B, H)
        if self.attention is None:
            pooled = masked_mean(hist, same)  # (B, H, d) -> (B, d)
        else:
            pooled = self.attention(hist, target, same)  # (B, d)
        return torch.where(same.any(1, keepdim=True), pooled, self.empty), same  # (B, d), (B, H)


class ViewFusion(nn.Module):
    """Gate of the two history views on user activity, item activity and their cross:

    beta = sigmoid(w . [a_u, a_i, a_u a_i] + b)     (w = b = 0 at init: beta = 1/2)
    s = beta s_instance + (1 - beta) s_cluster
    """

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(
        self, a_user: Tensor, a_item: Tensor, instance: Tensor, cluster: Tensor
    ) -> tuple[Tensor, Tensor]:
        x = torch.stack([a_user, a_item, a_user * a_item], -1)  # (B, 3)
        beta = torch.sigmoid(self.linear(x))  # (B, 1)
        return beta * instance + (1 - beta) * cluster, beta.squeeze(-1)  # (B, d), (B,)


def orthogonality(x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Soft orthogonality: mean over rows (where mask) of cos^2(x_r, y_r); 0 iff every pair is orthogonal."""
    cos2 = F.cosine_similarity(x, y, dim=-1, eps=1e-8).pow(2)  # (N,)
    if mask is None:
        return cos2.mean()
    return (cos2 * mask).sum() / mask.sum().clamp_min(1)


def info_nce(anchor: Tensor, positive: Tensor, tau: float) -> Tensor:
    """InfoNCE of rows: anchor_r should match positive_r among all rows of positive (cosine / tau)."""
    logits = F.normalize(anchor, dim=-1) @ F.normalize(positive, dim=-1).T / tau  # (K, K)
    return F.cross_entropy(logits, torch.arange(len(anchor), device=anchor.device))


class Transfer(NamedTuple):
    loss: Tensor  # () lambda_h2t * h2t + lambda_t2h * t2h
    h2t: Tensor  # () InfoNCE(c_tail, sg(c_head)): moves tail ids (and their shared cluster rows) only
    t2h: Tensor  # () InfoNCE(c_head, sg(c_tail)): moves head ids; 0 (not computed) when lambda_t2h = 0
    clusters: int  # clusters of the batch holding both head and tail ids


def asymmetric_transfer(
    e: Tensor, cluster: Tensor, is_head: Tensor, *, lambda_h2t: float, lambda_t2h: float, tau: float
) -> Transfer:
    """Asymmetric head <-> tail InfoNCE over the clusters of a batch of (unique) ids e (N, d):

        c_head,k = mean{e_j : j head, cluster(j) = k},   c_tail,k = mean{e_j : j not head, cluster(j) = k}
        over the K clusters holding both (the other clusters' centroids are the negatives),
        L = lambda_h2t InfoNCE(c_tail, sg(c_head)) + lambda_t2h InfoNCE(c_head, sg(c_tail)).
    With lambda_t2h = 0 head rows get no gradient at all; with one shared cluster row inside e the h2t term
    reaches it (the part a cold id uses).
    """
    keys, slot = torch.unique(cluster, return_inverse=True)  # (K0,), (N,)
    member = torch.stack([is_head, ~is_head]).to(e.dtype)  # (2, N): head, tail
    counts = e.new_zeros(2, len(keys)).index_add_(1, slot, member)  # (2, K0)
    both = (counts > 0).all(0)  # (K0,)
    zero = e.sum() * 0.0
    if int(both.sum()) < 2:  # a single cluster has no negative: nothing to contrast
        return Transfer(zero, zero.detach(), zero.detach(), int(both.sum()))
    sums = e.new_zeros(2, len(keys), e.shape[-1])  # (2, K0, d)
    sums = sums.index_add(1, slot, member.unsqueeze(-1) * e.unsqueeze(0))  # (2, K0, d)
    means = sums[:, both] / counts[:, both].unsqueeze(-1)  # (2, K, d)
    c_head, c_tail = means[0], means[1]
    h2t = info_nce(c_tail, c_head.detach(), tau)
    t2h = info_nce(c_head, c_tail.detach(), tau) if lambda_t2h > 0 else zero.detach()
    return Transfer(lambda_h2t * h2t + lambda_t2h * t2h, h2t.detach(), t2h.detach(), int(both.sum()))
