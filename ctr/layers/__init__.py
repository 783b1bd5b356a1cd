"""Reusable CTR building blocks, one kind per file.

- `functional`: `Embedding` (`nn.Embedding` with a faster dense backward on CPU), `Dropout` (cheaper CPU mask), table init, activity level a = log(1 + count) / log(1 + count_max), masked mean, the L2 term,
  id helpers (`distinct`: the distinct ids of a history).
- `embedding`: `FeatureBags`, `FieldEmbedding` (the fields every model shares), `SIDPrefixEmbedding`.
- `interaction`: `MLP` (optional BatchNorm), POSO's `GatedMLP`, `FMInteraction`, DCN-V2's `CrossNetV2`.
- `attention`: DIN's `TargetAttention`.
- AKT-Rec parts: `gates` (`ActivityGate`, `ResidualGate`), `cluster` (`ClusterGuidedEmbedding`, `cluster_key`),
  `views` (`ClusterView`, `ViewFusion`), `transfer` (`orthogonality`, asymmetric head <-> tail InfoNCE).

Conventions: B = batch, F = fields, M = tokens per multi-valued feature, H = history length, L = semantic-ID
levels, d = embedding dim. Id tables have one extra row 0 for padding and are indexed with `id + 1`, so the
history (already shifted by one, 0 = pad) and targets share one table. Every table here is an `nn.Embedding` (or
its subclass `Embedding`) / `nn.EmbeddingBag` built with `sparse=...`, so `CTRTask` can hand their weights to `torch.optim.SparseAdam`;
embeddings are always looked up through the module (never `weight[idx]`), which keeps their gradients sparse.
"""

from __future__ import annotations

from ctr.layers.attention import TargetAttention
from ctr.layers.cluster import AdaptiveEmbedding, ClusterGuidedEmbedding, cluster_key
from ctr.layers.embedding import FeatureBags, FieldEmbedding, SIDPrefixEmbedding, index_sid_tables
from ctr.layers.functional import (
    EMBED_INIT_STD,
    HEAD_BUCKET,
    Distinct,
    Dropout,
    Embedding,
    activity,
    distinct,
    first_occurrence,
    init_table,
    largest_prime_at_most,
    masked_mean,
    squared_norm,
)
from ctr.layers.gates import ActivityGate, ResidualGate
from ctr.layers.interaction import MLP, CrossNetV2, FMInteraction, GatedMLP
from ctr.layers.transfer import Transfer, asymmetric_transfer, info_nce, orthogonality
from ctr.layers.views import ClusterView, ViewFusion

__all__ = [
    "EMBED_INIT_STD",
    "Embedding",
    "HEAD_BUCKET",
    "MLP",
    "ActivityGate",
    "AdaptiveEmbedding",
    "ClusterGuidedEmbedding",
    "ClusterView",
    "CrossNetV2",
    "Distinct",
    "Dropout",
    "FMInteraction",
    "FeatureBags",
    "FieldEmbedding",
    "GatedMLP",
    "ResidualGate",
    "SIDPrefixEmbedding",
    "index_sid_tables",
    "TargetAttention",
    "Transfer",
    "ViewFusion",
    "activity",
    "asymmetric_transfer",
    "cluster_key",
    "distinct",
    "first_occurrence",
    "info_nce",
    "init_table",
    "largest_prime_at_most",
    "masked_mean",
    "orthogonality",
    "squared_norm",
]
