"""The report's HTML: one self-contained page (inline CSS, PNGs as base64 data URIs, no network
references), so it opens offline and can be mailed as one file.

Every string that comes from a run (names, config values, metrics, notes) is data: it goes
through :func:`escape` here and nowhere else builds markup, so `<script>` in a run name or a
config comes out as text.
"""

from __future__ import annotations

import base64
import html
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lengthwise import __version__
from lengthwise.report.runs import Run
from lengthwise.report.sections import Figure, Items, Part, Section, Table

# What `is_report` looks for: written in the head of every page since the manifest exists, and
# the line under the title that older pages already had.
GENERATOR = "lengthwise report"
_OURS = re.compile(
    r'<meta name="generator" content="lengthwise report'
    r'|<p class="meta">generated [^<]{0,40} by lengthwise '
)

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
  background: #fafafa; margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; background: #fff;
  box-shadow: 0 0 12px rgba(0,0,0,.06); }
h1 { margin: 0 0 4px; font-size: 28px; }
h2 { margin: 40px 0 8px; padding-bottom: 4px; border-bottom: 2px solid #e3e6ea; font-size: 21px; }
.meta { color: #666; font-size: 13px; margin: 0 0 12px; }
pre.cmd { background: #f3f4f6; padding: 8px 12px; border-radius: 6px; overflow-x: auto;
  font-size: 13px; white-space: pre-wrap; word-break: break-all; }
code { background: #f3f4f6; padding: 0 4px; border-radius: 3px; font-size: 13px; }
nav ol { columns: 2; font-size: 14px; margin: 4px 0; }
a { color: #1f5fa8; text-decoration: none; }
.scroll { overflow-x: auto; margin: 12px 0; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #e1e4e8; padding: 4px 10px; text-align: left; vertical-align: top; }
thead th { background: #f0f2f5; position: sticky; top: 0; }
tbody tr:nth-child(even) { background: #fafbfc; }
tbody th { font-weight: 600; background: #f7f8fa; white-space: nowrap; }
table.final td { min-width: 9em; }
figure { margin: 16px 0 28px; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto;
  border: 1px solid #eee; }
figcaption { color: #444; font-size: 14px; margin-top: 6px; padding: 0 8px;
  border-left: 3px solid #c9d7ea; }
.notes { background: #fff8e6; border: 1px solid #f0dca8; border-radius: 6px; padding: 8px 14px;
  font-size: 13px; }
.notes ul { margin: 4px 0; padding-left: 20px; }
.small { font-size: 13px; color: #444; }
ul.runs { font-size: 14px; }
ul.runs code { word-break: break-all; }
footer { margin-top: 48px; color: #888; font-size: 12px; }
"""

# Figures are shown at their pixel size / this factor (and never wider than the page), so text
# has the same size in every figure, whatever its width in inches.
DISPLAY_SHRINK = 1.25


def is_report(path: Path) -> bool:
    """Whether the file at `path` is a page this module wrote (so it may be replaced)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16384).decode("utf-8", errors="replace")
    except OSError:
        return False
    return _OURS.search(head) is not None


def escape(x: Any) -> str:
    return html.escape(str(x), quote=True)


def text(s: str) -> str:
    """Escaped text with `backticks` turned into <code>."""
    parts = escape(s).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def table(t: Table) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in t.head)
    body = []
    for row in t.rows:
        # the first cell of a row is its header
        cells = "".join(
            f"<{'th' if i == 0 else 'td'}>{escape(c)}</{'th' if i == 0 else 'td'}>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    cls = f' class="{escape(t.cls)}"' if t.cls else ""
    return (
        f'<div class="scroll"><table{cls}><thead><tr>{th}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def image(path: Path, alt: str) -> str:
    raw = path.read_bytes()
    width = int.from_bytes(raw[16:20], "big")  # PNG IHDR: width, height (big-endian)
    height = int.from_bytes(raw[20:24], "big")
    size = f' width="{round(width / DISPLAY_SHRINK)}" height="{round(height / DISPLAY_SHRINK)}"'
    data = base64.b64encode(raw).decode("ascii")
    return f'<img src="data:image/png;base64,{data}"{size} alt="{escape(alt)}">'


def part(p: Part) -> str:
    if isinstance(p, Figure):
        return (
            f"<figure>{image(p.path, p.caption)}<figcaption>{text(p.caption)}</figcaption></figure>"
        )
    if isinstance(p, Table):
        return table(p)
    if isinstance(p, Items):
        items = "".join(f"<li><b>{escape(k)}</b> {escape(v)}</li>" for k, v in p.items)
        return f'<ul class="small">{items}</ul>'
    raise TypeError(f"not a part of a section: {type(p).__name__}")


def page(
    title: str, runs: Sequence[Run], sections: Sequence[Section], command: str, files_dir: Path
) -> str:
    """The whole page: title, command, runs and their notes, a table of contents, the sections."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="generator" content="{GENERATOR} {escape(__version__)}">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">generated {escape(time.strftime("%Y-%m-%d %H:%M:%S"))} by lengthwise '
        f"{escape(__version__)} from {len(runs)} run(s)</p>",
        f'<pre class="cmd">{escape(command)}</pre>',
        '<h2 id="runs">Runs</h2><ul class="runs">',
    ]
    for r in runs:
        out.append(
            f"<li><b>{escape(r.label)}</b>: <code>{escape(os.path.abspath(r.path))}</code></li>"
        )
    out.append("</ul>")
    noted = [r for r in runs if r.notes]
    if noted:
        out.append('<div class="notes"><b>Missing data</b> (those sections are left out):<ul>')
        for r in noted:
            out.append(f"<li><b>{escape(r.label)}</b>: {text('; '.join(r.notes))}</li>")
        out.append("</ul></div>")
    if sections:
        out.append("<nav><ol>")
        out.extend(f'<li><a href="#{escape(s.id)}">{escape(s.title)}</a></li>' for s in sections)
        out.append("</ol></nav>")
    for s in sections:
        out.append(f'<section id="{escape(s.id)}"><h2>{escape(s.title)}</h2>')
        if s.intro:
            out.append(f'<p class="small">{text(s.intro)}</p>')
        out.extend(part(p) for p in s.parts)
        out.append("</section>")
    out.append(
        f"<footer>Every figure is embedded above; PNG copies are in "
        f"<code>{escape(files_dir.name)}/</code> next to this file.</footer>"
    )
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"
