"""The bias-only floor: logistic regression on user id, item id and side features, first order only.

logit = b + w_user[u] + w_item[i] + sum_f mean_{tokens of f} w_f[token]

No embeddings of width > 1, no interactions, no history: every model in the report must beat this (issue 13).
"""

from __future__ import annotations

import torch
from torch import nn

from ctr.batch import Batch, DataSpec, ModelOutput
from ctr.layers import FeatureBags, init_table, squared_norm


class Floor(nn.Module):
    def __init__(self, spec: DataSpec, *, use_features: bool = True):
        """use_features: add the side features' first-order weights (False = user + item bias only)."""
        super().__init__()
        self.spec = spec
        self.bias = nn.Parameter(torch.zeros(()))
        self.user = nn.Embedding(spec.n_users + 1, 1, padding_idx=0)
        self.item = nn.Embedding(spec.n_items + 1, 1, padding_idx=0)
        init_table(self.user)
        init_table(self.item)
        self.use_features = use_features
        self.user_feats = FeatureBags(spec.user_feature_vocab, 1)
        self.item_feats = FeatureBags(spec.item_feature_vocab, 1)

    def forward(self, batch: Batch) -> ModelOutput:
        w = [self.user(batch.user + 1), self.item(batch.item + 1)]  # 2 x (B, 1)
        if self.use_features:
            w += [self.user_feats(batch.user_feats).flatten(1), self.item_feats(batch.item_feats).flatten(1)]
        logit = self.bias + torch.cat(w, 1).sum(1)  # (B, 2 + F_u + F_i) -> (B,)
        return ModelOutput(logit, logit.new_zeros(()), {}, squared_norm(*w))
