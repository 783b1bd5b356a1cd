"""CTR model families, one per file: ID baselines (DeepFM, DCNv2), semantic IDs as features, and AKT-Rec."""

from __future__ import annotations

from ctr.models.akt import AKT
from ctr.models.dcnv2 import DCNv2
from ctr.models.deepfm import DeepFM
from ctr.models.sid_features import SIDFeatures

__all__ = ["AKT", "DCNv2", "DeepFM", "SIDFeatures"]
