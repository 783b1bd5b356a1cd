"""The activity gates of a cluster-guided embedding: AKT-Rec's convex `ActivityGate` and our `ResidualGate`."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ctr.layers.interaction import MLP


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
