"""Run reports: ``write_report(run_dir)`` writes ``run_dir/report/index.html`` with PNG plots.

Plots (and the attention-diagnostics hook ``attention_maps_png``) live in
:mod:`attnkd.report.plots`, which needs matplotlib; it is imported only when a report is drawn.
"""

from attnkd.report.html import ReportModels, RunLog, read_run_log, write_report

__all__ = ["ReportModels", "RunLog", "read_run_log", "write_report"]
