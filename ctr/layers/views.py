"""History views of AKT: the cluster view (SIM-style hard search of the target's cluster) and the view fusion gate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ctr.layers.attention import TargetAttention
from ctr.layers.functional import masked_mean


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
