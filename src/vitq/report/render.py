"""The report as Markdown (``report.md``, figures beside it) and as one self-contained HTML file
(``report.html``: figures embedded as data URIs, no script, no network)."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

Section = tuple[str, list]  # (title, blocks); a block is ("p", text) | ("table", (headers, rows)) | ("img", path)


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def to_markdown(title: str, sections: list[Section], folder: Path) -> str:
    parts = [f"# {title}", ""]
    for heading, blocks in sections:
        parts += [f"## {heading}", ""]
        for kind, body in blocks:
            if kind == "p":
                parts += [body, ""]
            elif kind == "table":
                parts += [markdown_table(*body), ""]
            elif kind == "img":
                rel = Path(body).relative_to(folder).as_posix()
                parts += [f"![{Path(body).stem}]({rel})", ""]
    return "\n".join(parts)


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.4em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f2f2f2; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0 1.2em; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def _inline(text: str) -> str:
    """Markdown's `code` spans in an escaped paragraph."""
    escaped = html.escape(text)
    pieces = escaped.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))


def to_html(title: str, sections: list[Section]) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
           f"<style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for heading, blocks in sections:
        out.append(f"<h2>{html.escape(heading)}</h2>")
        for kind, body in blocks:
            if kind == "p":
                out.append(f"<p>{_inline(body)}</p>")
            elif kind == "table":
                headers, rows = body
                out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr></thead><tbody>")
                out += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows]
                out.append("</tbody></table>")
            elif kind == "img":
                data = base64.b64encode(Path(body).read_bytes()).decode("ascii")
                out.append(f'<img alt="{html.escape(Path(body).stem)}" src="data:image/png;base64,{data}">')
    out.append("</body></html>")
    return "\n".join(out)
