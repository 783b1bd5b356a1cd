"""Representation losses of AKT: soft orthogonality and the asymmetric head <-> tail InfoNCE over clusters."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


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
