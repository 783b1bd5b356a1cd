"""`ctr report`: write <run>/report/ (report.md, report.json, plots) from a run directory (ctr.report.build_report)."""

from __future__ import annotations

from pathlib import Path

from ctr.report import build_report
from semid.schema import REPORT_DIR


def main(args: list[str] | None = None) -> None:
    """`ctr report RUN_DIR [--target akt] [--baselines '[a, b]'] [--floor floor] [--n_boot 1000] [--seed 0]
    [--min_gauc_users 50]`.

    Returns None (not the report) so that `sys.exit(main())` in a console script exits 0."""
    from jsonargparse import CLI

    report = CLI(build_report, args=args)
    print(f"wrote {Path(report['run_dir']) / REPORT_DIR / 'report.md'}")


if __name__ == "__main__":
    main()
