"""Self-contained HTML reports comparing run directories (`lengthwise report`); reads files only."""

from lengthwise.report.html import build_report, load_run

__all__ = ["build_report", "load_run"]
