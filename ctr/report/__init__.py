"""The run report: AUC / GAUC / log loss per model, seed and activity bucket; deltas vs the best baseline (paired
seeds, user bootstrap) and vs a trivial floor; ablations; semantic-ID health; as report.md, report.json and PNGs.

runs (read a run directory) -> stats (scores via ctr.metrics, deltas, bootstrap) + health (ID tables via
semid.ids) -> plots + markdown -> build (`build_report`, written atomically). The command is pipelines/report.py.
report.json's schema is documented in docs/report.md.
"""

from __future__ import annotations

from ctr.report.build import REPORT_SCHEMA_VERSION, build_report
from ctr.report.health import SidTable, merge_health, read_sid_table, sid_health
from ctr.report.markdown import render_markdown
from ctr.report.runs import SeedRun, discover, read_metrics_json, read_predictions, read_seed
from ctr.report.stats import (
    BUCKET_KINDS,
    MIN_GAUC_USERS,
    Roles,
    Selection,
    bootstrap_gauc_delta,
    floor_deltas,
    mean_deltas,
    paired_deltas,
    roles,
    score_predictions,
    select_best,
    user_auc_table,
)

__all__ = [
    "BUCKET_KINDS",
    "MIN_GAUC_USERS",
    "REPORT_SCHEMA_VERSION",
    "Roles",
    "SeedRun",
    "Selection",
    "SidTable",
    "bootstrap_gauc_delta",
    "build_report",
    "discover",
    "floor_deltas",
    "mean_deltas",
    "merge_health",
    "paired_deltas",
    "read_metrics_json",
    "read_predictions",
    "read_seed",
    "read_sid_table",
    "render_markdown",
    "roles",
    "score_predictions",
    "select_best",
    "sid_health",
    "user_auc_table",
]
