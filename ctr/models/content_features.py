"""DeepFM with the frozen aligned content vectors of the user and the item as two more input fields: the
simplest way to use content (issue 13). If AKT cannot beat this, the ID machinery is not earning its keep.

field_user_content = W_u c_u + b_u,  field_item_content = W_i c_i + b_i   (c = the `semid build` aligned
vectors, frozen, served by the data module as `Batch.user_content` / `Batch.item_content`; W projects to d)
A side without vectors (dim 0 in the DataSpec) gets no field; at least one side must have them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ctr.batch import Batch, DataSpec
from ctr.models.deepfm import DeepFM
from semid import schema as S
from semid.errors import InputError


class ContentFeatures(DeepFM):
    def __init__(self, spec: DataSpec, **deepfm: Any):
        """Takes DeepFM's arguments (embed_dim, ...)."""
        if spec.user_content_dim <= 0 and spec.item_content_dim <= 0:
            raise InputError(
                "ContentFeatures needs content vectors and the data module loaded none",
                fix=f"set data.item_content (and data.user_content) to the `semid build` output's {S.ITEM_EMB_FILE} "
                f"/ {S.USER_EMB_FILE} (or the folder holding them)",
            )
        self.n_extra_fields = int(spec.user_content_dim > 0) + int(spec.item_content_dim > 0)
        super().__init__(spec, **deepfm)
        d = self.embed_dim
        self.user_proj = nn.Linear(spec.user_content_dim, d) if spec.user_content_dim > 0 else None
        self.item_proj = nn.Linear(spec.item_content_dim, d) if spec.item_content_dim > 0 else None

    def extra_fields(self, batch: Batch) -> Tensor | None:
        fields = []
        if self.user_proj is not None:
            fields.append(self.user_proj(batch.user_content))  # (B, D_u) -> (B, d)
        if self.item_proj is not None:
            fields.append(self.item_proj(batch.item_content))  # (B, D_i) -> (B, d)
        return torch.stack(fields, 1)  # (B, n_extra_fields, d)
