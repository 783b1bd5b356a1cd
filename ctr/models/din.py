"""DIN (Zhou et al., KDD'18): target attention over the user's history items, on DeepFM's fields.

The history field is sum_h a(h, t) * e_h, with the local activation unit a(h, t) = MLP([e_h, e_t, e_h - e_t,
e_h * e_t]) (no softmax, as in the paper; padded positions weigh 0), instead of DeepFM's mean of e_h.
Everything else (first order, FM, MLP over the flattened fields) is DeepFM's.
"""

from __future__ import annotations

from typing import Any

from ctr.batch import DataSpec
from ctr.layers import TargetAttention
from ctr.models.deepfm import DeepFM


class DIN(DeepFM):
    def __init__(
        self,
        spec: DataSpec,
        *,
        attention_dims: tuple[int, ...] = (36,),
        attention_softmax: bool = False,
        **deepfm: Any,
    ):
        """attention_dims: hidden layers of the local activation unit; attention_softmax: normalise its
        scores over the history (False = the paper's raw weights); the rest is DeepFM's (embed_dim, ...)."""
        super().__init__(spec, **deepfm)
        self.history_pool = TargetAttention(self.embed_dim, hidden=attention_dims, softmax=attention_softmax)
