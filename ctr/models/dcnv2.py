"""DCN-V2 (Wang et al., WWW'21): cross network v2 (full- or low-rank) with a deep MLP, stacked or parallel,
over the same id fields as DeepFM.

stacked:  logit = w^T MLP(Cross(x0));   parallel: logit = w^T [Cross(x0); MLP(x0)];   x0 = flat(fields).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ctr.batch import Batch, DataSpec
from ctr.layers import MLP, CrossNetV2, FieldEmbedding, squared_norm
from ctr.module import CTRTask, ModelOutput


class DCNv2(CTRTask):
    def __init__(
        self,
        spec: DataSpec | None = None,
        *,
        embed_dim: int = 16,
        cross_layers: int = 3,
        low_rank: int = 0,
        structure: Literal["stacked", "parallel"] = "stacked",
        mlp_dims: tuple[int, ...] = (256, 128),
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        embedding_l2: float = 0.0,
        sparse_embeddings: bool = False,
    ):
        super().__init__(
            spec,
            lr=lr,
            weight_decay=weight_decay,
            embedding_l2=embedding_l2,
            sparse_embeddings=sparse_embeddings,
        )
        self.fields = FieldEmbedding(self.spec, embed_dim, sparse=sparse_embeddings)
        width = self.fields.n_fields * embed_dim
        self.cross = CrossNetV2(width, n_layers=cross_layers, low_rank=low_rank)
        self.deep = MLP(width, mlp_dims, dropout=dropout)
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
        return ModelOutput(logit, logit.new_zeros(()), {}, squared_norm(e) if self.embedding_l2 > 0 else None)
