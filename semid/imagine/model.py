"""A small bidirectional transformer over item slots whose tokens are semantic-ID tuples (masked discrete diffusion,
as in MDLM / LLaDA, at the granularity of whole items).

A slot's input is the sum of one embedding per code level (a masked slot uses each level's MASK entry) plus a
position embedding. Output heads are hierarchical: level l is predicted from the slot's hidden state plus
embeddings of the codes of levels < l, so p(tuple) = p(c_0 | h) p(c_1 | h, c_0) ... and a real item's
probability is scored exactly over the prefixes the ID table holds (`item_log_probs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from semid.errors import InputError
from semid.imagine.sequences import PrefixTree

CHUNK_FLOATS = 1 << 22
"""Largest intermediate (slots x prefixes x width) `item_log_probs` builds at once (16 MB of float32)."""


@dataclass
class ModelConfig:
    """The network's sizes (the codebook sizes come from the ID table)."""

    d_model: int = 64
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    max_len: int = 32
    """Slots the model sees at once: a user's last `max_len - k` behaviours plus the k imagined ones."""


class SIDDiffusion(nn.Module):
    def __init__(
        self,
        *,
        codebook_sizes: list[int],
        d_model: int = 64,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.1,
        max_len: int = 32,
    ):
        super().__init__()
        self.sizes = [int(s) for s in codebook_sizes]
        self.max_len = max_len
        # entry `size` of level l's table is that level's MASK token
        self.code_emb = nn.ModuleList(nn.Embedding(size + 1, d_model) for size in self.sizes)
        self.pos_emb = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, heads, 4 * d_model, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.prefix_emb = nn.ModuleList(nn.Embedding(size, d_model) for size in self.sizes[:-1])
        self.heads = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(d_model), nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, size)
            )
            for size in self.sizes
        )

    @classmethod
    def from_config(cls, cfg: ModelConfig, codebook_sizes: list[int]) -> SIDDiffusion:
        return cls(
            codebook_sizes=codebook_sizes,
            d_model=cfg.d_model,
            layers=cfg.layers,
            heads=cfg.heads,
            dropout=cfg.dropout,
            max_len=cfg.max_len,
        )

    def encode(self, codes: Tensor, masked: Tensor, pad: Tensor) -> Tensor:
        """Hidden states (B, T, d) of slots with `codes` (B, T, L); `masked` (B, T) slots read MASK whatever
        their codes, `pad` (B, T) slots are ignored by attention."""
        x = self.pos_emb(torch.arange(codes.shape[1], device=codes.device))  # (T, d)
        for level, emb in enumerate(self.code_emb):
            index = torch.where(masked, self.sizes[level], codes[..., level])  # (B, T)
            x = x + emb(index)  # (B, T, d)
        return self.norm(self.encoder(x, src_key_padding_mask=pad))  # (B, T, d)

    def _prefix(self, prefix: Tensor) -> Tensor:
        """Sum of the prefix embeddings of codes `prefix` (..., l): (..., d)."""
        out = self.prefix_emb[0](prefix[..., 0])
        for level in range(1, prefix.shape[-1]):
            out = out + self.prefix_emb[level](prefix[..., level])
        return out

    def level_logits(self, hidden: Tensor, codes: Tensor) -> list[Tensor]:
        """Teacher-forced logits of every level: hidden (M, d), true codes (M, L) -> [(M, K_l)] per level."""
        out = [self.heads[0](hidden)]
        for level in range(1, len(self.sizes)):
            out.append(self.heads[level](hidden + self._prefix(codes[:, :level])))  # (M, K_l)
        return out

    def item_log_probs(
        self,
        hidden: Tensor,
        codes: Tensor,
        tree: PrefixTree,
        *,
        beam: int | None = None,
        viable: list[Tensor] | None = None,
    ) -> Tensor:
        """log p(item's tuple | slot) for every item: hidden (S, d), item codes (N, L) -> (S, N).

        Exact (`beam` None): level by level over the prefix tree, level 0 over all codes, level l once per prefix
        that exists in the ID table, so only real tuples are scored and the cost is S x (distinct prefixes), not
        S x N x L. With `beam`: a beam search over the same tree (as in generative retrieval, e.g. TIGER): per
        slot only the `beam` best prefixes of each length (by their partial log-prob) are extended, and every item
        outside the last beam gets -inf, so the head runs on S x beam rows per level instead of S x prefixes.
        `viable` (beam only): per prefix length 1..L-1 an (S, P_l) bool mask of the prefixes a slot may keep (a
        constrained beam: e.g. those with an item the user may still get); items are not masked.
        Slots are scored in chunks that keep each intermediate near `CHUNK_FLOATS`."""
        if (
            beam is None or len(self.sizes) == 1
        ):  # one level: the exact path is a single head, nothing to prune
            widest = max([hidden.shape[-1], *self.sizes]) * max([1, *(len(p) for p in tree.prefixes)])
            chunk = max(1, CHUNK_FLOATS // widest)
            return torch.cat([self._item_log_probs(h, codes, tree) for h in hidden.split(chunk)])  # (S, N)
        if beam < 1:
            raise InputError(f"beam={beam}", fix="use a beam of at least 1 prefix per level (or none: exact)")
        widest = max([len(codes), beam * max([hidden.shape[-1], *self.sizes])])
        chunk = max(1, CHUNK_FLOATS // widest)
        groups = children(codes, tree)
        parts = []
        for start in range(0, len(hidden), chunk):
            rows = slice(start, start + chunk)
            masks = None if viable is None else [m[rows] for m in viable]
            parts.append(self._beam_log_probs(hidden[rows], codes, tree, groups, beam, masks))
        return torch.cat(parts)  # (S, N)

    def _item_log_probs(self, hidden: Tensor, codes: Tensor, tree: PrefixTree) -> Tensor:
        total = torch.log_softmax(self.heads[0](hidden), -1)[:, codes[:, 0]]  # (S, N)
        for level in range(1, len(self.sizes)):
            prefixes, index = tree.prefixes[level - 1], tree.index[level - 1]  # (P, l), (N,)
            x = hidden[:, None, :] + self._prefix(prefixes)[None]  # (S, P, d)
            logp = torch.log_softmax(self.heads[level](x), -1)  # (S, P, K_l)
            total = total + logp[:, index, codes[:, level]]  # (S, N)
        return total

    def _beam_log_probs(
        self,
        hidden: Tensor,
        codes: Tensor,
        tree: PrefixTree,
        groups: list[Children],
        beam: int,
        viable: list[Tensor] | None,
    ) -> Tensor:
        """`item_log_probs` with a beam, for one chunk of slots. A node of depth l+1 (a prefix of length l+1, or
        an item at depth L) scores its parent's partial log-prob plus the level-l head's log-prob of its own
        code, added in the same order as the exact path, so a beam that keeps every prefix gives its numbers.
        Only the children of kept prefixes are touched: (slots x candidates) per level, not (slots x catalogue)."""
        s = len(hidden)
        score = torch.log_softmax(self.heads[0](hidden), -1)[:, tree.prefixes[0][:, 0]]  # (S, P_1)
        nodes = torch.arange(len(tree.prefixes[0])).expand(s, -1)  # (S, P_1) rows of prefixes[0]
        valid = torch.ones_like(nodes, dtype=torch.bool)  # (S, P_1)
        for level in range(1, len(self.sizes)):
            if viable is not None:
                score = score.masked_fill(~viable[level - 1].gather(1, nodes), -torch.inf)  # (S, C)
            kept, col = score.topk(min(beam, score.shape[1]), dim=1)  # (S, b)
            rows = nodes.gather(1, col)  # (S, b) rows of prefixes[level - 1]
            x = hidden[:, None, :] + self._prefix(tree.prefixes[level - 1][rows])  # (S, b, d)
            logp = torch.log_softmax(self.heads[level](x), -1).reshape(s, -1)  # (S, b * K_l)
            parent, nodes, valid = groups[level - 1].under(rows)  # (S, C) each
            code = groups[level - 1].code[nodes]  # (S, C)
            child = kept.gather(1, parent) + logp.gather(1, parent * self.sizes[level] + code)  # (S, C)
            score = child.masked_fill(~valid, -torch.inf)  # (S, C)
        out = torch.full((s, len(codes)), -torch.inf)  # (S, N): the last children are the items
        slot = torch.arange(s)[:, None].expand_as(nodes)  # (S, C)
        out[slot[valid], nodes[valid]] = score[valid]
        return out


class Children(NamedTuple):
    """The depth-(l+1) nodes of the prefix tree (prefixes of length l+1, or the items at depth L) grouped by their
    parent, a row of `tree.prefixes[l-1]`: parent p's children are `node[first[p] : first[p] + count[p]]`."""

    first: Tensor  # (P_l,) start of each parent's run in `node`
    count: Tensor  # (P_l,) children of each parent
    node: Tensor  # (Q,) node ids (rows of tree.prefixes[l], or item ids), grouped by parent
    code: Tensor  # (Q,) level-l code of each node id

    def under(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The children of kept parents `rows` (S, b): each child's parent column in `rows` (S, C), its node id
        (S, C) and whether the column is real (S, C); every slot's columns are padded to the widest slot's."""
        counts = self.count[rows]  # (S, b)
        ends = counts.cumsum(1)  # (S, b)
        width = max(1, int(ends[:, -1].max()))
        columns = torch.arange(width).expand(len(rows), -1).contiguous()  # (S, C)
        parent = torch.searchsorted(ends, columns, right=True)  # (S, C)
        valid = parent < rows.shape[1]  # (S, C)
        parent = parent.clamp(max=rows.shape[1] - 1)
        offset = columns - (ends - counts).gather(1, parent)  # (S, C) position among the parent's children
        at = (self.first[rows.gather(1, parent)] + offset).clamp(max=len(self.node) - 1)  # (S, C)
        return parent, self.node[at], valid


def children(codes: Tensor, tree: PrefixTree) -> list[Children]:
    """`Children` of the prefixes of each length 1..L-1 (the last ones' children are the items `codes` (N, L))."""
    out = []
    for level in range(1, codes.shape[1]):
        if level == codes.shape[1] - 1:
            parent, code = tree.index[level - 1], codes[:, level]  # (N,), (N,)
        else:
            parent = torch.empty(len(tree.prefixes[level]), dtype=torch.long)  # (P_{l+1},)
            parent[tree.index[level]] = tree.index[level - 1]  # every item agrees on its prefixes' parent
            code = tree.prefixes[level][:, level]  # (P_{l+1},)
        node = torch.sort(parent, stable=True).indices  # (Q,) grouped by parent
        count = torch.bincount(parent, minlength=len(tree.prefixes[level - 1]))  # (P_l,)
        out.append(Children(count.cumsum(0) - count, count, node, code))
    return out


def viable_prefixes(allowed: Tensor, tree: PrefixTree) -> list[Tensor]:
    """Per prefix length 1..L-1, which prefixes hold at least one `allowed` (U, N) item: [(U, P_l) bool]."""
    out = []
    for index, prefixes in zip(tree.index, tree.prefixes):
        counts = torch.zeros(len(allowed), len(prefixes))  # (U, P_l)
        out.append(counts.index_add_(1, index, allowed.float()) > 0)
    return out
