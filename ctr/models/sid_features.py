"""DeepFM with semantic IDs as extra features: the SID prefix embeddings of the user, the item and every history
item are summed into their id embeddings (no gate, no asymmetry, no contrastive loss: the plain baseline).

item representation = E[item] + sum_l E_l[prefix_l(item_sid)]   (one table per prefix depth l, see
`ctr.layers.SIDPrefixEmbedding`); the same for the user and for each history item before mean pooling.
"""

from __future__ import annotations

from torch import Tensor

from ctr.batch import Batch, DataSpec
from ctr.layers import SIDPrefixEmbedding
from ctr.models.deepfm import DeepFM


class SIDFeatures(DeepFM):
    def __init__(
        self,
        spec: DataSpec | None = None,
        *,
        embed_dim: int = 16,
        mlp_dims: tuple[int, ...] = (256, 128),
        dropout: float = 0.1,
        max_prefix_rows: int = 1 << 20,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        embedding_l2: float = 0.0,
        sparse_embeddings: bool = False,
    ):
        super().__init__(
            spec,
            embed_dim=embed_dim,
            mlp_dims=mlp_dims,
            dropout=dropout,
            lr=lr,
            weight_decay=weight_decay,
            embedding_l2=embedding_l2,
            sparse_embeddings=sparse_embeddings,
        )
        opts = dict(max_rows=max_prefix_rows, sparse=sparse_embeddings)
        self.item_sid = SIDPrefixEmbedding(
            self.spec.item_sid_sizes, embed_dim, n_ids=self.spec.n_items, **opts
        )
        self.user_sid = SIDPrefixEmbedding(
            self.spec.user_sid_sizes, embed_dim, n_ids=self.spec.n_users, **opts
        )

    def extras(self, batch: Batch) -> dict[str, Tensor]:
        return {
            "user_extra": self.user_sid(batch.user_sid).sum(-2),  # (B, L_u, d) -> (B, d)
            "item_extra": self.item_sid(batch.item_sid).sum(-2),  # (B, L_i, d) -> (B, d)
            "hist_extra": self.item_sid(batch.hist_item_sid).sum(-2),  # (B, H, L_i, d) -> (B, H, d)
        }
