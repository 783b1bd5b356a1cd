"""CTR model families, one per file: the bias-only floor, ID baselines (DeepFM, DCNv2, DIN, POSO), content and
semantic IDs as features, AKT-Rec, multi-scenario STAR and the LLM4MSR meta layers around any field backbone, and
AIR's intent view as a DeepFM field (AIRNet), and imagined behaviours as one more field (ImaginedDeepFM / DIN)."""

from __future__ import annotations

from ctr.models.air import AIRNet
from ctr.models.akt import AKT
from ctr.models.content_features import ContentFeatures
from ctr.models.dcnv2 import DCNv2
from ctr.models.deepfm import DeepFM
from ctr.models.din import DIN
from ctr.models.floor import Floor
from ctr.models.imagined import ImaginedDeepFM, ImaginedDIN
from ctr.models.meta import MetaLayers
from ctr.models.poso import POSO
from ctr.models.sid_features import SIDFeatures
from ctr.models.star import STAR

__all__ = [
    "AIRNet",
    "AKT",
    "DIN",
    "POSO",
    "STAR",
    "ContentFeatures",
    "DCNv2",
    "DeepFM",
    "Floor",
    "ImaginedDIN",
    "ImaginedDeepFM",
    "MetaLayers",
    "SIDFeatures",
]
