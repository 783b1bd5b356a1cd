"""POSO (Dai et al., "POSO: Personalized Cold Start Modules for Large-scale Recommender Systems", Kuaishou 2021):
DeepFM whose MLP is personalised by user group, one of AKT-Rec's baselines.

c = [a_user, E_bucket[user_bucket]]   (a_user = log(1 + train count) / log(1 + max count), the user's activity)
h_k = ReLU(W_k h_{k-1}) * 2 sigmoid(G_k(c))   per unit, for every hidden layer k (`ctr.layers.GatedMLP`)
logit = b + sum(w) + FM(e) + w_out^T h_K

The gates start at 1 (G_k's output layer is zero), so POSO starts as DeepFM and learns how far each user group
departs from it. `stop_gradient_cond` detaches c, as the paper's personalisation features carry no gradient.
Mean gate per layer and user bucket is returned in ModelOutput.aux ("poso/gate0_user_cold", ...).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ctr.batch import Batch, DataSpec
from ctr.layers import GatedMLP, activity
from ctr.models.akt import bucket_means
from ctr.models.deepfm import DeepFM
from semid.errors import InputError
from semid.schema import BUCKETS


class POSO(DeepFM):
    def __init__(
        self,
        spec: DataSpec,
        *,
        mlp_dims: tuple[int, ...] = (256, 128),
        dropout: float = 0.1,
        bucket_dim: int = 8,
        gate_hidden: int = 32,
        stop_gradient_cond: bool = False,
        **deepfm: Any,
    ):
        """mlp_dims, dropout: the gated MLP's; bucket_dim, gate_hidden: the gate's inputs and width; the rest is
        DeepFM's (embed_dim; its batch_norm has no counterpart in the gated MLP and is refused)."""
        if deepfm.get("batch_norm"):
            raise InputError(
                "POSO's gated MLP has no batch norm (batch_norm: true)",
                fix="drop batch_norm from the POSO network's init_args",
            )
        super().__init__(spec, mlp_dims=(), dropout=dropout, **deepfm)
        del self.mlp  # replaced by the gated MLP
        self.buckets = nn.Embedding(len(BUCKETS), bucket_dim)
        self.gated = GatedMLP(
            self.n_fields * self.embed_dim,
            mlp_dims,
            gate_dim=1 + bucket_dim,
            gate_hidden=gate_hidden,
            dropout=dropout,
        )
        self.stop_gradient_cond = stop_gradient_cond

    def deep(self, batch: Batch, flat: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        a = activity(batch.user_count, self.spec.user_count_max)  # (B,)
        cond = torch.cat([a.unsqueeze(1), self.buckets(batch.user_bucket)], 1)  # (B, 1 + bucket_dim)
        if self.stop_gradient_cond:
            cond = cond.detach()
        logit, gates = self.gated(flat, cond)  # (B,), K x (B, dim_k)
        aux: dict[str, Tensor] = {}
        for k, g in enumerate(gates):
            aux |= bucket_means(g.mean(1), batch.user_bucket, f"poso/gate{k}_user_")
        return logit, aux
