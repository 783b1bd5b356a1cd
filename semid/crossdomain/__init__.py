"""Cross-domain item representations. RGCD-Rep (Kuaishou, arXiv 2606.04448): co-engaged source/target pairs
(`pairs`), an LLM teacher of facets and transferability (`teacher`), a chorus-token student that splits items into
transferable z_t and domain-residual z_r (`student`), and the build that quantises z_t into IDs shared by both
domains (`build`)."""

from __future__ import annotations

from semid.crossdomain.build import EvalConfig, RGCDConfig, RGCDResult, recall_at_k, rgcd_build
from semid.crossdomain.pairs import PairConfig, co_engaged_pairs
from semid.crossdomain.student import ChorusStudent, StudentConfig
from semid.crossdomain.teacher import TeacherConfig, teach

__all__ = [
    "ChorusStudent",
    "EvalConfig",
    "PairConfig",
    "RGCDConfig",
    "RGCDResult",
    "StudentConfig",
    "TeacherConfig",
    "co_engaged_pairs",
    "recall_at_k",
    "rgcd_build",
    "teach",
]
