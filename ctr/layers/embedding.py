"""Embedding tables: multi-valued feature bags, the shared id/feature/history fields, semantic-ID prefix tables."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ctr.batch import Batch, DataSpec
from ctr.layers.functional import ROWS_PER_ID, init_table, largest_prime_at_most, masked_mean


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
