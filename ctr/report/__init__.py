"""The run report: AUC / GAUC / log loss per model, seed and activity bucket; deltas vs the best baseline (paired
seeds, user bootstrap) and vs a trivial floor; ablations; semantic-ID health; as report.md, report.json and PNGs.

runs (read a run directory) -> stats (scores via ctr.metrics, deltas, bootstrap) + health (ID tables via
semid.ids) -> plots + markdown -> build (`build_report`, written atomically). The command is pipelines/report.py.
report.json's schema is documented in docs/report.md.
"""

from __future__ import annotations

from ctr.report.build import REPORT_SCHEMA_VERSION, build_report

__all__ = ["REPORT_SCHEMA_VERSION", "build_report"]
