"""DIN target attention over a history (Zhou et al., KDD'18)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctr.layers.interaction import MLP


class TargetAttention(nn.Module):
    """DIN-style target attention over the history: score_h = MLP([h, t, h - t, h * t]), padding masked out.

    `softmax=True` normalises the scores over the history (masked softmax); False keeps DIN's raw activation
    weights (Zhou et al., KDD'18: "normalization with softmax is abandoned" so the pooled norm reflects how much
    of the history matches the target), padded positions weighted 0.

    The MLP's first layer is evaluated regrouped, never building [h, t, h - t, h * t] (B, H, 4d): with
    W = [W_h, W_t, W_d, W_p], W [h, t, h - t, h * t] = [W_h + W_d, W_p] [h, h * t] + (W_t - W_d) t, and the t term
    is computed once per sample instead of once per history position. Same parameters, same scores up to float
    round-off; on one CPU thread (2048 x 20 x 16) a training step's attention takes ~14 instead of ~27 ms
    (benchmarks/akt_profile.py measures the whole model).

    Without autograd (validation, test, predict) a batch larger than `inference_chunk` samples is scored in chunks
    of that many: the (B, H, hidden) intermediates of an 8,192-sample eval batch (21 MB each) fall out of the CPU
    caches, and the chunked forward is the same computation per sample. One CPU thread, 8,192 x 20 x 16: the
    attention alone 42-48 ms -> 18 ms, AKT's whole predict 88k -> 110k samples/s (`benchmarks/akt_profile.py`).
    Training keeps the whole batch: there chunking is slower (2,048 samples forward + backward: 15.7 -> 20.7 ms
    in chunks of 512).

    When fewer than `pack_below` of a batch's history positions are real (short histories: 17% on Amazon Kitchen,
    88% on ML-1M temporal), only the real ones are scored, and the softmax and the pooling run per sample over
    them (a scatter and an `index_add`): the same weights and gradients, with the cost in proportion to the real
    positions (2,048 x 20 x 16, forward + backward, 17% real: 16.6 -> 4.5 ms; the dense path is faster above
    about half; benchmarks/results/akt_profile.md, amazon-* sections).
    """

    def __init__(
        self,
        dim: int,
        *,
        hidden: Sequence[int] = (32,),
        softmax: bool = True,
        inference_chunk: int = 2048,
        pack_below: float = 0.5,
    ):
        super().__init__()
        if inference_chunk < 1:
            raise ValueError(f"inference_chunk must be >= 1, got {inference_chunk}")
        if not 0.0 <= pack_below <= 1.0:
            raise ValueError(f"pack_below must be in [0, 1], got {pack_below}")
        self.pack_below = pack_below
        self.score = MLP(4 * dim, hidden, out_dim=1)
        self.softmax = softmax
        self.inference_chunk = inference_chunk

    def scores(self, hist: Tensor, target: Tensor, rows: Tensor | None = None) -> Tensor:
        """MLP([h, t, h - t, h * t]) per history position: (B, H, d), (B, d) -> (B, H); or, with `rows`, per
        listed position: hist (N, d), rows (N,) the sample (row of `target`) of each -> (N,)."""
        first, *rest = self.score
        w_h, w_t, w_d, w_p = first.weight.split(hist.shape[-1], 1)  # 4 x (hidden, d)
        t_term = F.linear(target, w_t - w_d, first.bias)  # (B, hidden): once per sample
        if rows is None:
            x = torch.cat([hist, hist * target.unsqueeze(1)], -1)  # (B, H, 2d)
            t_term = t_term.unsqueeze(1)  # (B, 1, hidden)
        else:
            x = torch.cat([hist, hist * target.index_select(0, rows)], -1)  # (N, 2d)
            t_term = t_term.index_select(0, rows)  # (N, hidden)
        pre = F.linear(x, torch.cat([w_h + w_d, w_p], 1))  # (B, H, hidden) or (N, hidden)
        pre = pre.add_(t_term)  # in place
        for layer in rest:  # ReLU, Dropout, ..., the output Linear
            # ReLU in place, on the output of a Linear (which keeps its input, not its output): one (B, H, hidden)
            # tensor fewer to allocate
            pre = F.relu_(pre) if isinstance(layer, nn.ReLU) else layer(pre)
        return pre.squeeze(-1)  # (B, H) or (N,)

    def forward(self, hist: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        c = self.inference_chunk
        if hist.shape[0] > c and not torch.is_grad_enabled():
            parts = zip(hist.split(c), target.split(c), mask.split(c))
            return torch.cat([self._pool(h, t, m) for h, t, m in parts])  # (B, d)
        return self._pool(hist, target, mask)

    def _pool(self, hist: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        b, h, d = hist.shape
        valid = int(mask.sum())
        if valid >= self.pack_below * b * h:
            return self._pool_dense(hist, target, mask)
        # most positions are padding (short histories: 17% of them are real on Amazon Kitchen): score only the
        # real ones and pool them with an index_add; the same weights as the dense path
        pos = mask.reshape(-1).nonzero().squeeze(1)  # (N,) flat positions b * H + j
        rows = torch.div(pos, h, rounding_mode="floor")  # (N,) their samples
        items = hist.reshape(b * h, d).index_select(0, pos)  # (N, d)
        s = self.scores(items, target, rows)  # (N,)
        if self.softmax:  # a softmax per sample over its real positions, as the masked dense softmax
            top = s.new_full((b,), float("-inf")).scatter_reduce(0, rows, s.detach(), "amax")  # (B,)
            e = torch.exp(s - top.index_select(0, rows))  # (N,)
            w = e / e.new_zeros(b).index_add(0, rows, e).index_select(0, rows)  # (N,)
        else:
            w = s
        return hist.new_zeros(b, d).index_add(0, rows, w.unsqueeze(1) * items)  # (B, d); no position: 0

    def _pool_dense(self, hist: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        s = self.scores(hist, target)  # (B, H)
        if self.softmax:
            w = torch.softmax(s.masked_fill(~mask, -1e9), dim=1) * mask  # (B, H); all-padded rows -> 0
        else:
            w = s * mask  # (B, H)
        # a broadcast product, not einsum: einsum's batched matmul with a width-1 inner dimension is slow to
        # differentiate on CPU
        return (w.unsqueeze(-1) * hist).sum(1)  # (B, H, d) -> (B, d)
