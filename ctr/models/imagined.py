"""Imagined behaviours as one more DeepFM-family field (ReaSeq, arXiv 2512.21257, second part, the CTR side).

`semid imagine` writes K imagined items for short-history users; the data module serves them apart from the real
history (`Batch.imag_item`, `Batch.imag_conf`), so they never blur into it. The field is their confidence-weighted
mean embedding in the shared item-id table,

    field_imag = sum_k c_k E[i_k] / sum_k c_k      (0 for a user without imagined items),

and the FM and the MLP learn how far to trust it. Users with none get a zero field, which the network can tell
apart from a real one. `ImaginedDeepFM` and `ImaginedDIN` are the two backbones; `imagined_field` is the shared
computation, so another DeepFM subclass gains the view with the same three lines.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ctr.batch import Batch, DataSpec
from ctr.models.deepfm import DeepFM
from ctr.models.din import DIN
from semid.errors import InputError


def require_imagined(spec: DataSpec, name: str) -> None:
    """Refuse to build a network that reads imagined behaviours when the data module loaded none."""
    if spec.imagined_k <= 0:
        raise InputError(
            f"{name} needs imagined behaviours and the data module loaded none",
            fix="set data.imagined to the imagined.parquet that `semid imagine` wrote (or the folder holding it)",
        )


def imagined_field(item_table: nn.Embedding, batch: Batch) -> Tensor:
    """(B, 1, d): the confidence-weighted mean of the user's imagined item embeddings; zeros where a user has
    none, and for a batch that carries no imagined view at all (e.g. the cold-user ranking protocol)."""
    b, d = batch.item.shape[0], item_table.embedding_dim
    if batch.imag_item.numel() == 0:
        return item_table.weight.new_zeros(b, 1, d)
    e = item_table(batch.imag_item)  # (B, K, d); padding row 0 is zero
    w = batch.imag_conf * (batch.imag_item > 0)  # (B, K)
    total = w.sum(1, keepdim=True)  # (B, 1)
    pooled = (w.unsqueeze(-1) * e).sum(1) / total.clamp(min=1e-12)  # (B, K, d) -> (B, d); 0 when total is 0
    return pooled.unsqueeze(1)  # (B, 1, d)


class ImaginedDeepFM(DeepFM):
    n_extra_fields = 1

    def __init__(self, spec: DataSpec, **deepfm: Any):
        """Takes DeepFM's arguments (embed_dim, ...); needs data.imagined."""
        require_imagined(spec, type(self).__name__)
        super().__init__(spec, **deepfm)

    def extra_fields(self, batch: Batch) -> Tensor:
        return imagined_field(self.fields.item, batch)  # (B, 1, d)


class ImaginedDIN(DIN):
    n_extra_fields = 1

    def __init__(self, spec: DataSpec, **din: Any):
        """Takes DIN's arguments (attention_dims, embed_dim, ...); needs data.imagined."""
        require_imagined(spec, type(self).__name__)
        super().__init__(spec, **din)

    def extra_fields(self, batch: Batch) -> Tensor:
        return imagined_field(self.fields.item, batch)  # (B, 1, d)
