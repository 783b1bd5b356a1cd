"""DeepFM (Guo et al., IJCAI'17) over id fields: first-order + FM + MLP on the shared field embeddings.

Fields: user id, item id, every user and item side feature (mean of its tokens), and the user's history as the
mean of its item-id embeddings (shared with the target item table). logit = b + sum(w) + FM(e) + MLP(flat(e)).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ctr.batch import Batch, DataSpec
from ctr.layers import MLP, FieldEmbedding, FMInteraction, squared_norm
from ctr.module import CTRTask, ModelOutput


class DeepFM(CTRTask):
    def __init__(
        self,
        spec: DataSpec | None = None,
        *,
        embed_dim: int = 16,
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
        self.first_order = FieldEmbedding(self.spec, 1, sparse=sparse_embeddings)
        self.fm = FMInteraction()
        self.mlp = MLP(self.fields.n_fields * embed_dim, mlp_dims, dropout=dropout, out_dim=1)
        self.bias = nn.Parameter(torch.zeros(()))

    def extras(self, batch: Batch) -> dict[str, Tensor]:
        """Vectors added to the user / item / history id embeddings (none here; SIDFeatures adds SID prefixes)."""
        return {}

    def forward(self, batch: Batch) -> ModelOutput:
        e = self.fields(batch, **self.extras(batch))  # (B, F, d)
        first = self.first_order(batch).sum((1, 2))  # (B, F, 1) -> (B,)
        deep = self.mlp(e.flatten(1)).squeeze(-1)  # (B, F*d) -> (B,)
        logit = self.bias + first + self.fm(e) + deep  # (B,)
        return ModelOutput(logit, logit.new_zeros(()), {}, squared_norm(e) if self.embedding_l2 > 0 else None)
