"""DeepFM with semantic IDs as extra features: the SID prefix embeddings of the user, the item and every history
item are summed into their id embeddings (no gate, no asymmetry, no contrastive loss: the plain baseline).

item representation = E[item] + sum_l E_l[prefix_l(item_sid)]   (one table per prefix depth l, see
`ctr.layers.SIDPrefixEmbedding`); the same for the user and for each history item before mean pooling.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ctr.batch import Batch, DataSpec
from ctr.layers import SIDPrefixEmbedding
from ctr.models.deepfm import DeepFM


class SIDFeatures(DeepFM):
    def __init__(
        self,
        spec: DataSpec,
        *,
        max_prefix_rows: int = 1 << 20,
        **deepfm: Any,
    ):
        """max_prefix_rows: the most rows of one prefix table (`ctr.layers.SIDPrefixEmbedding`); the rest is
        DeepFM's (embed_dim, ...)."""
        super().__init__(spec, **deepfm)
        rows, d = max_prefix_rows, self.embed_dim
        self.item_sid = SIDPrefixEmbedding(
            spec.item_sid_sizes, d, n_ids=spec.n_items, max_rows=rows, side="item"
        )
        self.user_sid = SIDPrefixEmbedding(
            spec.user_sid_sizes, d, n_ids=spec.n_users, max_rows=rows, side="user"
        )

    def extras(self, batch: Batch) -> dict[str, Tensor]:
        return {
            "user_extra": self.user_sid(batch.user_sid).sum(-2),  # (B, L_u, d) -> (B, d)
            "item_extra": self.item_sid(batch.item_sid).sum(-2),  # (B, L_i, d) -> (B, d)
            "hist_extra": self.item_sid(batch.hist_item_sid).sum(-2),  # (B, H, L_i, d) -> (B, H, d)
        }
