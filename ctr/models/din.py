"""DIN (Zhou et al., KDD'18): target attention over the user's history items, on DeepFM's fields.

The history field is sum_h a(h, t) * e_h, with the local activation unit a(h, t) = MLP([e_h, e_t, e_h - e_t,
e_h * e_t]) (no softmax, as in the paper; padded positions weigh 0), instead of DeepFM's mean of e_h.
Everything else (first order, FM, MLP over the flattened fields) is DeepFM's.
"""

from __future__ import annotations

from ctr.batch import DataSpec
from ctr.layers import TargetAttention
from ctr.models.deepfm import DeepFM


class DIN(DeepFM):
    def __init__(
        self,
        spec: DataSpec,
        *,
        embed_dim: int = 16,
        mlp_dims: tuple[int, ...] = (256, 128),
        dropout: float = 0.1,
        batch_norm: bool = False,
        attention_dims: tuple[int, ...] = (36,),
        attention_softmax: bool = False,
    ):
        """attention_dims: hidden layers of the local activation unit; attention_softmax: normalise its
        scores over the history (False = the paper's raw weights)."""
        super().__init__(spec, embed_dim=embed_dim, mlp_dims=mlp_dims, dropout=dropout, batch_norm=batch_norm)
        self.history_pool = TargetAttention(embed_dim, hidden=attention_dims, softmax=attention_softmax)
