"""DIN target attention over a history (Zhou et al., KDD'18)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctr.layers.interaction import MLP


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
