"""A small bidirectional transformer over item slots whose tokens are semantic-ID tuples (masked discrete diffusion,
as in MDLM / LLaDA, at the granularity of whole items).

A slot's input is the sum of one embedding per code level (a masked slot uses each level's MASK entry) plus a
position embedding. Output heads are hierarchical: level l is predicted from the slot's hidden state plus
embeddings of the codes of levels < l, so p(tuple) = p(c_0 | h) p(c_1 | h, c_0) ... and a real item's
probability is scored exactly over the prefixes the ID table holds (`item_log_probs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

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

    def item_log_probs(self, hidden: Tensor, codes: Tensor, tree: PrefixTree) -> Tensor:
        """log p(item's tuple | slot) for every item: hidden (S, d), item codes (N, L) -> (S, N).

        Level by level over the prefix tree: level 0 over all codes, level l once per prefix that exists in the
        ID table, so only real tuples are scored and the cost is S x (distinct prefixes), not S x N x L.
        Slots are scored in chunks that keep each (chunk, prefixes, width) tensor near `CHUNK_FLOATS`."""
        widest = max([hidden.shape[-1], *self.sizes]) * max([1, *(len(p) for p in tree.prefixes)])
        chunk = max(1, CHUNK_FLOATS // widest)
        return torch.cat([self._item_log_probs(h, codes, tree) for h in hidden.split(chunk)])  # (S, N)

    def _item_log_probs(self, hidden: Tensor, codes: Tensor, tree: PrefixTree) -> Tensor:
        total = torch.log_softmax(self.heads[0](hidden), -1)[:, codes[:, 0]]  # (S, N)
        for level in range(1, len(self.sizes)):
            prefixes, index = tree.prefixes[level - 1], tree.index[level - 1]  # (P, l), (N,)
            x = hidden[:, None, :] + self._prefix(prefixes)[None]  # (S, P, d)
            logp = torch.log_softmax(self.heads[level](x), -1)  # (S, P, K_l)
            total = total + logp[:, index, codes[:, level]]  # (S, N)
        return total
