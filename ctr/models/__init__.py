"""CTR model families, one per file: the bias-only floor, ID baselines (DeepFM, DCNv2, DIN, POSO), content and
semantic IDs as features, and AKT-Rec."""

from __future__ import annotations

from ctr.models.akt import AKT
from ctr.models.content_features import ContentFeatures
from ctr.models.dcnv2 import DCNv2
from ctr.models.deepfm import DeepFM
from ctr.models.din import DIN
from ctr.models.floor import Floor
from ctr.models.poso import POSO
from ctr.models.sid_features import SIDFeatures

__all__ = ["AKT", "DIN", "POSO", "ContentFeatures", "DCNv2", "DeepFM", "Floor", "SIDFeatures"]
