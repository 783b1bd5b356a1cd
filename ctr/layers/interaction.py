"""Feature interaction blocks: MLP (optional BatchNorm), POSO's user-group gated MLP, FM and DCN-V2 cross layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ctr.layers.functional import Dropout


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
            layers += [nn.ReLU(), Dropout(dropout)]
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
        self.dropout = Dropout(dropout)
        self.out = nn.Linear(in_dim, 1)

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, list[Tensor]]:
        """x (B, in_dim), cond (B, gate_dim) -> logit (B,) and each layer's gate (B, dim_k)."""
        gates = []
        for layer, gate_net in zip(self.layers, self.gates):
            g = 2.0 * torch.sigmoid(gate_net(cond))  # (B, dim_k) in (0, 2)
            x = self.dropout(torch.relu(layer(x)) * g)  # (B, dim_k)
            gates.append(g)
        return self.out(x).squeeze(-1), gates  # (B,)
