"""The demo's report: ``report.html`` and ``report.md`` in the demo folder, from its ``summary.json``.

``write_report(out_dir)`` reads only files inside ``out_dir`` (``summary.json`` and the files it names,
paths relative to ``out_dir``) and writes the pictures to ``out_dir/report/``; both documents refer to them
by relative path, so the folder can be moved or opened offline (no external CSS, scripts or fonts).
A missing optional piece (bench, training metrics, predictions) gives a "not run" line in its section.

Both documents are rendered from one list of sections of blocks (paragraph, table, image, code), so
they always hold the same content; every text put into the HTML goes through ``html.escape``.

Re-render by hand: ``python -m retina_deploy.demo.report DEMO_DIR``.
"""

from __future__ import annotations

import html
import os
import re
import sys
from pathlib import Path
from typing import Any

from retina_deploy.core.errors import ConfigError
from retina_deploy.core.fileio import read_format_json, write_bytes_atomic
from retina_deploy.demo.sections import (
    DASH,
    Block,
    Section,
    artifacts_section,
    bench_section,
    commands_section,
    environment_section,
    overview_section,
    stages_section,
    training_section,
    val_grid_section,
)

SUMMARY_NAME = "summary.json"
SUMMARY_FORMAT = "retina-deploy/demo"
SUMMARY_VERSION = 1
WRAP_CHARS = 32  # table cells longer than this may wrap; shorter ones keep to one line
BAD_STATUS = ("failed", "error")
HTML_NAME = "report.html"
MD_NAME = "report.md"


def write_report(out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``out_dir/report.html`` and ``out_dir/report.md`` (and ``out_dir/report/*.png``); returns their paths.

    Raises ConfigError when ``out_dir/summary.json`` is missing or is not a demo summary.
    """
    out = Path(out_dir)
    summary = read_summary(out)
    title, sections = build_sections(out, summary)
    html_path, md_path = out / HTML_NAME, out / MD_NAME
    write_bytes_atomic(html_path, render_html(title, sections).encode("utf-8"))
    write_bytes_atomic(md_path, render_markdown(title, sections).encode("utf-8"))
    return html_path, md_path


def read_summary(out: Path) -> dict[str, Any]:
    path = out / SUMMARY_NAME
    if not path.is_file():
        raise ConfigError(f"{path}: no demo summary (run `retina-deploy demo --out {out}` first)")
    return read_format_json(path, SUMMARY_FORMAT, SUMMARY_VERSION, "a retina-deploy demo summary", ConfigError)


def build_sections(out: Path, summary: dict[str, Any]) -> tuple[str, list[Section]]:
    """(title, sections) of the report; draws the pictures into ``out/report/`` on the way."""
    settings = _dict(summary.get("settings"))
    title = f"retina-deploy demo: RetinaNet {settings.get('backbone') or ''}".rstrip(": ")
    sections = [
        overview_section(summary),
        artifacts_section(summary),
        bench_section(out, summary),
        training_section(out, summary),
        val_grid_section(out, summary),
        stages_section(summary),
        commands_section(summary),
        environment_section(summary),
    ]
    return title, sections


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.3em; }
h2 { font-size: 1.3em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td { white-space: nowrap; }
td.text { white-space: normal; min-width: 16em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.bad { color: #b00020; font-weight: 600; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
pre { background: #f6f6f6; border: 1px solid #ddd; padding: 0.6em 0.8em; font-size: 0.88em;
      white-space: pre-wrap; overflow-wrap: anywhere; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
p.note { color: #666; font-style: italic; }
""".strip()


def render_html(title: str, sections: list[Section]) -> str:
    """A self-contained HTML page; every text is escaped."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>\n{STYLE}\n</style></head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        if section.title:
            parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts.extend(_html_block(block) for block in section.blocks)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _html_block(block: Block) -> str:
    if block.kind == "p":
        return f"<p>{html.escape(block.text)}</p>"
    if block.kind == "note":
        return f'<p class="note">{html.escape(block.text)}</p>'
    if block.kind == "code":
        return f"<pre><code>{html.escape(block.text)}</code></pre>"
    if block.kind == "img":
        src = html.escape(block.path, quote=True)
        return f'<p><a href="{src}"><img src="{src}" alt="{html.escape(block.text, quote=True)}"></a></p>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
    head = f"<thead><tr>{head}</tr></thead>\n" if any(block.header) else ""  # a key-value table has none
    body = "\n".join("<tr>" + "".join(_html_cell(cell) for cell in row) + "</tr>" for row in block.rows)
    return f"<table>\n{head}<tbody>\n{body}\n</tbody>\n</table>"


def _html_cell(cell: str) -> str:
    """A table cell: numbers right-aligned, long text allowed to wrap, a failed status in red."""
    if cell == DASH or _is_number(cell):
        css = "num"
    elif cell in BAD_STATUS:
        css = "bad"
    else:
        css = "text" if len(cell) > WRAP_CHARS else ""
    return f'<td class="{css}">{html.escape(cell)}</td>' if css else f"<td>{html.escape(cell)}</td>"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def render_markdown(title: str, sections: list[Section]) -> str:
    parts = [f"# {_md_text(title)}", ""]
    for section in sections:
        if section.title:
            parts += [f"## {_md_text(section.title)}", ""]
        for block in section.blocks:
            parts += [_md_block(block), ""]
    return "\n".join(parts).rstrip() + "\n"


def _md_block(block: Block) -> str:
    if block.kind == "p":
        return _md_text(block.text)
    if block.kind == "note":
        return f"*{_md_text(block.text)}*"
    if block.kind == "code":
        fence = "````" if "```" in block.text else "```"
        return f"{fence}sh\n{block.text}\n{fence}"
    if block.kind == "img":
        return f"![{block.text}]({block.path})"
    lines = ["| " + " | ".join(_md_cell(h) for h in block.header) + " |", "|" + "---|" * len(block.header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return _md_text(text).replace("|", "\\|").replace("\n", " ")


def _md_text(text: str) -> str:
    """``text`` with Markdown's active characters backslash-escaped, so a name like ``a<b>`` stays literal."""
    return re.sub(r"([\\`*<>\[\]])", r"\\\1", text)


def main(argv: list[str] | None = None) -> int:
    """``python -m retina_deploy.demo.report DEMO_DIR``: (re-)write the report of a demo folder."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m retina_deploy.demo.report DEMO_DIR", file=sys.stderr)
        return 2
    try:
        html_path, md_path = write_report(args[0])
    except (ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {html_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
