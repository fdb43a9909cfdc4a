"""The look and the HTML helpers shared by the validation and evaluation reports.

One stylesheet, one verdict banner, one table builder and one escaping rule, so the two reports read
alike and neither can forget to escape: every value a helper is given is escaped unless it is already
`Html` (markup built by these helpers). Values come from user data (a CSV cell, a category, a file
name), so a cell holding `<script>` must arrive as text. The pages are self-contained (inline CSS, no
scripts, no external fetches): the Kubeflow UI shows an HTML artifact in a sandboxed frame.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_CELL_CHARS = 300  # a hostile or broken value can be megabytes long; the report shows its start and its length

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.5em;margin:.2em 0} h2{font-size:1.2em;margin:1.6em 0 .4em;padding-bottom:.2em;border-bottom:1px solid #ddd}
h3{font-size:1.02em;margin:1.2em 0 .3em}
table{border-collapse:collapse;margin:.4em 0 1em}
th,td{border:1px solid #ccc;padding:3px 8px;font-size:13px;vertical-align:top;text-align:left}
th{background:#f3f4f6;font-weight:600} th[scope=row]{background:#f9fafb}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr.fail>td{background:#fdecea} tr.muted>td{color:#888}
td.bad{background:#f6c4bf;font-weight:600;box-shadow:inset 0 0 0 2px #c62828}
td.hit{background:#e3f1e5;font-weight:600}
code{font-size:12px;overflow-wrap:anywhere}
.verdict{padding:.7em 1em;border-radius:6px;color:#fff;margin:0 0 1em}
.verdict.pass{background:#2e7d32} .verdict.warn{background:#9a6700} .verdict.fail{background:#c62828}
.verdict h1{margin:0;color:#fff} .verdict p{margin:.35em 0 0}
.null{color:#888;font-style:italic} .note{color:#555;font-size:13px} small{color:#555}
""".strip()


class Html(str):
    """Markup that is already safe (built by these helpers from escaped parts): inserted as is."""


def esc(value: Any) -> Html:
    """`value` as HTML text: escaped (quotes included, so it is safe in an attribute too); Html passes through."""
    if isinstance(value, Html):
        return value
    return Html(html.escape("" if value is None else str(value), quote=True))


def join(parts: Iterable[Any], sep: str = "") -> Html:
    """Parts joined into one piece of markup; plain strings among them are escaped."""
    return Html(esc(sep).join(esc(p) for p in parts))


def tag(name: str, content: Any = "", cls: str = "", **attrs: Any) -> Html:
    """`<name class=cls ...>content</name>` with the content and every attribute value escaped."""
    extra = "".join(f' {k.rstrip("_")}="{esc(v)}"' for k, v in attrs.items() if v is not None)
    klass = f' class="{esc(cls)}"' if cls else ""
    return Html(f"<{name}{klass}{extra}>{esc(content)}</{name}>")


def code(value: Any) -> Html:
    return tag("code", value)


def value_text(value: Any, limit: int = MAX_CELL_CHARS) -> Html:
    """A data value as the reader should see it: missing and blank values marked, very long ones cut (with their length)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return tag("span", "(missing)", "null")
    text = str(value)
    if text == "":
        return tag("span", "(blank)", "null")
    if len(text) > limit:
        return Html(esc(text[:limit]) + tag("span", f"… ({len(text):,} characters)", "null"))
    return esc(text)


@dataclass(frozen=True)
class Cell:
    """A table cell with its own class (e.g. "bad" for the failing value, "num" for a number)."""

    content: Any
    cls: str = ""
    header: bool = False  # a row header: <th scope="row">


def _cell(value: Any, default_cls: str, head: bool = False) -> Html:
    if isinstance(value, Cell):
        cls = " ".join(dict.fromkeys(c for c in (default_cls, value.cls) if c))
        if value.header:
            return tag("th", value.content, cls, scope="row")
        value = value.content
    else:
        cls = default_cls
    return tag("th" if head else "td", value, cls)


def table(
    header: Sequence[Any],
    rows: Iterable[Sequence[Any]],
    row_classes: Sequence[str] | None = None,
    numeric: Iterable[int] = (),
    caption: Any = None,
) -> Html:
    """A table; every cell escaped unless Html. `numeric`: column positions right-aligned as numbers."""
    right = set(numeric)
    head = "".join(_cell(h, "num" if i in right else "", head=True) for i, h in enumerate(header))
    body = []
    for n, row in enumerate(rows):
        cls = row_classes[n] if row_classes else ""
        cells = "".join(_cell(c, "num" if i in right else "") for i, c in enumerate(row))
        opening = f'<tr class="{esc(cls)}">' if cls else "<tr>"
        body.append(f"{opening}{cells}</tr>")
    cap = tag("caption", caption) if caption is not None else ""
    return Html(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def key_values(items: Mapping[str, Any]) -> Html:
    """Two columns, name and value (as code): lineage and similar records. Nested values are left out."""
    rows = [[Cell(k, header=True), code(v)] for k, v in sorted(items.items()) if not isinstance(v, (list, dict))]
    return Html(f"<table><tbody>{''.join('<tr>' + ''.join(_cell(c, '') for c in r) + '</tr>' for r in rows)}</tbody></table>")


def banner(status: str, title: Any, lines: Iterable[Any] = ()) -> Html:
    """The verdict at the top of a report: green "pass", amber "warn" (passed, with something to look at),
    red "fail". The title says the verdict in words (PASS / FAIL); the colour only repeats it."""
    if status not in ("pass", "warn", "fail"):
        raise ValueError(f"banner status must be pass, warn or fail, not {status!r}")
    return Html(f'<div class="verdict {status}" role="status">{tag("h1", title)}{"".join(tag("p", line) for line in lines)}</div>')


def page(title: str, *parts: Any) -> str:
    """A whole, self-contained HTML document."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n" + "\n".join(esc(p) for p in parts) + "\n</body></html>\n"
    )


def count(n: int) -> str:
    return f"{int(n):,}"
