"""Embedding tables: multi-valued feature bags, the shared id/feature/history fields, semantic-ID prefix tables."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ctr.batch import Batch, DataSpec
from ctr.layers.functional import Embedding, init_table, largest_prime_at_most, masked_mean


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
        self.user = Embedding(spec.n_users + 1, dim, padding_idx=0, sparse=sparse)
        self.item = Embedding(spec.n_items + 1, dim, padding_idx=0, sparse=sparse)
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

    A depth is *exact* while it can hold every prefix in few rows (codebook product <= `max_rows` and, given
    `n_ids`, <= n_ids): its row is the mixed-radix number of the codes. A deeper depth would be mostly unused rows
    (256^3 codes for 3,706 items: 16.7M rows, each costing a dense gradient and optimiser step), so it is
    *indexed*: it has rows for n_ids prefixes (n ids hold at most n distinct ones) and `index(codes)`, given every
    id's codes once before training (`index_sid_tables`; `ctr.module.CTRTask` does it from the data's ID tables),
    records which prefixes exist, sorted, in a buffer saved with the weights; a prefix is then found by binary
    search. A prefix the index does not hold (a new item's new prefix) reads row 0, a zero row that never trains.
    The index is fixed once set: a later `index` call is a no-op, so warm-up fine-tuning and predict keep the rows
    the weights were trained with. Before `index`, an indexed depth hashes (prefix number modulo the largest prime
    <= its rows: a prime mixes every level into the hash, a power of two would drop the leading codes).
    All depths live in one table with a row offset each, so one lookup embeds every depth: (..., L) codes ->
    (..., L, d). `side` ("user" / "item") says whose codes `index_sid_tables` gives it.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        dim: int,
        *,
        max_rows: int = 1 << 20,
        n_ids: int | None = None,
        sparse: bool = False,
        side: str | None = None,
    ):
        super().__init__()
        cap = max(min(max_rows, n_ids if n_ids is not None else max_rows), 1)
        self.sizes, self.side = tuple(int(s) for s in sizes), side
        rows, indexed, product = [], [], 1
        for size in self.sizes:
            product = min(product * size, 1 << 62)  # only its size vs cap matters once past it
            indexed.append(product > cap)
            rows.append(cap if product > cap else product)
        self.rows, self.indexed = tuple(rows), tuple(indexed)
        self.moduli = tuple(largest_prime_at_most(r) if i else r for r, i in zip(rows, indexed, strict=True))
        # row 0: the unknown prefix; depth l's rows start at offsets[l]
        self.register_buffer("offsets", torch.tensor([1, *rows[:-1]]).cumsum(0), persistent=False)  # (L,)
        vocab_rows = sum(r for r, i in zip(rows, indexed, strict=True) if i)
        self.register_buffer(
            "vocab", torch.full((vocab_rows,), KEY_SENTINEL, dtype=torch.long)
        )  # sorted per depth
        self.register_buffer("vocab_set", torch.tensor(False))
        self._ready = False  # mirrors vocab_set on the host: no device sync per forward
        self.table = Embedding(1 + sum(rows), dim, padding_idx=0, sparse=sparse)
        init_table(self.table)

    @property
    def levels(self) -> int:
        return len(self.sizes)

    def _keys(self, codes: Tensor) -> list[Tensor]:
        """Per depth, the number of each prefix (..., L) -> L x (...,): see `prefix_keys`."""
        out, h, product = [], torch.zeros_like(codes[..., 0]), 1
        for level, size in enumerate(self.sizes):
            if product * size >= 1 << 62:
                h, product = h % _big_prime(size), 1 << 62  # h * size < 2^62
            else:
                product *= size
            h = h * size + codes[..., level]  # (...,)
            out.append(h)
        return out

    def prefix_keys(self, codes: Tensor) -> Tensor:
        """Number of each prefix: (..., L) -> (..., L), the exact mixed-radix value while the codebook product stays
        below 2^62; past it the running number is reduced modulo a prime below 2^62 / (next size), so the next
        multiply cannot overflow (two prefixes then collide with probability ~size / 2^62)."""
        return torch.stack(self._keys(codes), -1)  # (..., L)

    def prefix_index(self, codes: Tensor) -> Tensor:
        """Table row of each prefix: (..., L) -> (..., L); 0 for a prefix the index does not hold."""
        keys, out, start = self._keys(codes), [], 0
        for level, rows in enumerate(self.rows):
            key, offset = keys[level], self.offsets[level]
            if not self.indexed[level]:
                out.append(key + offset)
                continue
            if not self._ready:
                out.append(key % self.moduli[level] + offset)
                start += rows
                continue
            vocab = self.vocab[start : start + rows]  # (rows,) sorted, sentinel-padded
            pos = torch.searchsorted(vocab, key).clamp_(max=rows - 1)  # (...,)
            out.append(torch.where(vocab[pos] == key, pos + offset, 0))
            start += rows
        return torch.stack(out, -1)  # (..., L)

    @torch.no_grad()
    def index(self, codes: Tensor) -> None:
        """Record the prefixes of `codes` (n, L), every id's semantic ID, for the indexed depths (once; see the class
        docstring). More distinct prefixes than rows (codes of more ids than `n_ids`) is refused."""
        if self._ready or not any(self.indexed):
            return
        keys, start = self._keys(codes.to(self.vocab.device, torch.long)), 0
        for level, rows in enumerate(self.rows):
            if not self.indexed[level]:
                continue
            distinct = torch.unique(keys[level])  # sorted
            if distinct.numel() > rows:
                raise ValueError(
                    f"{distinct.numel()} distinct depth-{level + 1} prefixes for a table of {rows} rows: the codes "
                    "are of more ids than the DataSpec this network was built from"
                )
            self.vocab[start : start + distinct.numel()] = distinct
            start += rows
        self.vocab_set.fill_(True)
        self._ready = True

    @property
    def is_indexed(self) -> bool:
        """Whether `index` has run (or the index came with loaded weights)."""
        return self._ready

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ready = bool(self.vocab_set)

    def forward(self, codes: Tensor) -> Tensor:
        return self.table(self.prefix_index(codes))  # (..., L) -> (..., L, d)


KEY_SENTINEL = torch.iinfo(torch.long).max  # pads an index: sorts after every prefix number


@functools.cache
def _big_prime(size: int) -> int:
    return largest_prime_at_most((1 << 62) // max(size, 1) - 1)


def index_sid_tables(net: nn.Module, user_codes: Tensor, item_codes: Tensor) -> int:
    """`index` every `SIDPrefixEmbedding` of `net` that names its side with that side's codes (n, L) of every id;
    returns how many tables were indexed now (0 when all were already, e.g. restored from a checkpoint)."""
    done = 0
    for module in net.modules():
        if not isinstance(module, SIDPrefixEmbedding) or module.side not in ("user", "item"):
            continue
        if any(module.indexed) and not module.is_indexed:
            module.index(user_codes if module.side == "user" else item_codes)
            done += 1
    return done
