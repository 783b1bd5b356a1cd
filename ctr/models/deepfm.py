"""DeepFM (Guo et al., IJCAI'17) over id fields: first-order + FM + MLP on the shared field embeddings.

Fields: user id, item id, every user and item side feature (mean of its tokens), and the user's history as the
mean of its item-id embeddings (shared with the target item table). logit = b + first + FM(e) + MLP(flat(e)), where
first = sum of a 1-d weight per id / feature token (`first_order="embedding"`, DeepFM's paper, DeepCTR-Torch,
FuxiCTR) or w . flat(e), a linear layer over the field embeddings (`first_order="linear"`, torch-rechub's `LR`).

Subclasses change one hook each: `extras` (vectors added to the id embeddings: SIDFeatures), `history_pool` (how
the history becomes one field: DIN), `extra_fields` (more fields: ContentFeatures, AIRNet), `deep` (the MLP: POSO).
`embed(batch) -> (B, F, d)` and `head(fields, batch) -> ModelOutput` split the forward pass where the field
embeddings are complete (forward = head(embed(batch))), so a wrapper (ctr.models.meta.MetaLayers) can transform the
fields of DeepFM and of every subclass.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ctr.batch import Batch, DataSpec, ModelOutput
from ctr.layers import MLP, FieldEmbedding, FMInteraction, squared_norm


class DeepFM(nn.Module):
    n_extra_fields = 0  # fields `extra_fields` appends (subclasses)

    def __init__(
        self,
        spec: DataSpec,
        *,
        embed_dim: int = 16,
        mlp_dims: tuple[int, ...] = (256, 128),
        dropout: float = 0.1,
        batch_norm: bool = False,
        first_order: Literal["embedding", "linear"] = "embedding",
    ):
        """batch_norm: BatchNorm after every hidden linear layer of the MLP (torch-rechub's MLP); first_order: see
        the module docstring."""
        super().__init__()
        self.spec, self.embed_dim = spec, embed_dim
        self.fields = FieldEmbedding(spec, embed_dim)
        self.fm = FMInteraction()
        self.n_fields = self.fields.n_fields + self.n_extra_fields
        if first_order not in ("embedding", "linear"):
            raise ValueError(f"first_order={first_order!r}: use 'embedding' or 'linear'")
        self.first_order: nn.Module = (
            FieldEmbedding(spec, 1)
            if first_order == "embedding"
            else nn.Linear(self.n_fields * embed_dim, 1, bias=False)
        )
        self.mlp = MLP(self.n_fields * embed_dim, mlp_dims, dropout=dropout, out_dim=1, batch_norm=batch_norm)
        self.bias = nn.Parameter(torch.zeros(()))
        # (hist (B, H, d), target (B, d), mask (B, H)) -> (B, d) history field; None = masked mean
        self.history_pool: nn.Module | None = None

    def extras(self, batch: Batch) -> dict[str, Tensor]:
        """Vectors added to the user / item / history id embeddings (none here; SIDFeatures adds SID prefixes)."""
        return {}

    def extra_fields(self, batch: Batch) -> Tensor | None:
        """(B, n_extra_fields, d) more fields for the FM and the MLP (none here)."""
        return None

    def deep(self, batch: Batch, flat: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The deep part: (B, F*d) -> (B,) logit and scalars to log."""
        return self.mlp(flat).squeeze(-1), {}

    def embed(self, batch: Batch) -> Tensor:
        """The input fields: (B, F + n_extra_fields, d)."""
        e = self.fields(batch, **self.extras(batch), pool=self.history_pool)  # (B, F, d)
        extra = self.extra_fields(batch)
        return e if extra is None else torch.cat([e, extra], 1)  # (B, F + n_extra_fields, d)

    def head(self, fields: Tensor, batch: Batch) -> ModelOutput:
        """Fields (B, F, d) -> the output: bias + first order + FM(fields) + deep(flat fields)."""
        flat = fields.flatten(1)  # (B, F*d)
        if isinstance(self.first_order, nn.Linear):
            first = self.first_order(flat).squeeze(-1)  # (B, F*d) -> (B,)
        else:
            first = self.first_order(batch).sum((1, 2))  # (B, F, 1) -> (B,)
        deep, aux = self.deep(batch, flat)  # (B, F*d) -> (B,)
        logit = self.bias + first + self.fm(fields) + deep  # (B,)
        return ModelOutput(logit, logit.new_zeros(()), aux, squared_norm(fields))

    def forward(self, batch: Batch) -> ModelOutput:
        return self.head(self.embed(batch), batch)
