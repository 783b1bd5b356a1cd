"""DCN-V2 (Wang et al., WWW'21): cross network v2 (full- or low-rank) with a deep MLP, stacked or parallel,
over the same id fields as DeepFM.

stacked:  logit = w^T MLP(Cross(x0));   parallel: logit = w^T [Cross(x0); MLP(x0)];   x0 = flat(fields).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ctr.batch import Batch, DataSpec, ModelOutput
from ctr.layers import MLP, CrossNetV2, FieldEmbedding, squared_norm


class DCNv2(nn.Module):
    def __init__(
        self,
        spec: DataSpec,
        *,
        embed_dim: int = 16,
        cross_layers: int = 3,
        low_rank: int = 0,
        structure: Literal["stacked", "parallel"] = "stacked",
        mlp_dims: tuple[int, ...] = (256, 128),
        dropout: float = 0.1,
        batch_norm: bool = False,
    ):
        super().__init__()
        self.spec = spec
        self.fields = FieldEmbedding(spec, embed_dim)
        width = self.fields.n_fields * embed_dim
        self.cross = CrossNetV2(width, n_layers=cross_layers, low_rank=low_rank)
        self.deep = MLP(width, mlp_dims, dropout=dropout, batch_norm=batch_norm)
        self.structure = structure
        head_in = self.deep.out_dim if structure == "stacked" else width + self.deep.out_dim
        self.head = nn.Linear(head_in, 1)

    def forward(self, batch: Batch) -> ModelOutput:
        e = self.fields(batch)  # (B, F, d)
        x0 = e.flatten(1)  # (B, F*d)
        if self.structure == "stacked":
            h = self.deep(self.cross(x0))  # (B, D_mlp)
        else:
            h = torch.cat([self.cross(x0), self.deep(x0)], -1)  # (B, F*d + D_mlp)
        logit = self.head(h).squeeze(-1)  # (B,)
        return ModelOutput(logit, logit.new_zeros(()), {}, squared_norm(e))
