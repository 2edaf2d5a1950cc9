"""Self-contained HTML reports comparing run directories (`lengthwise report`); reads files only.

runs.py reads run folders (tolerantly: what is missing becomes a note), sections.py decides what
to show (plain data), figures.py draws the comparison figures, render.py writes the HTML, and
build.py ties them together and writes the page and its PNGs without touching files it did not
write.
"""

from lengthwise.report.build import build_report
from lengthwise.report.runs import load_run

__all__ = ["build_report", "load_run"]
