"""A waterfall of spans, for a terminal and as SVG (pure functions over span records).

One row per span, depth-first under its parent, a bar placed and scaled on the time
between the first span's start and the last one's end.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from xml.sax.saxutils import escape

from shared.schema.common import SpanRecord

BAR_WIDTH = 48
_COLOURS = {"gateway": "#4c78a8", "imaged": "#f58518", "storaged": "#54a24b", "netd": "#e45756",
            "monitord": "#72b7b2", "streamd": "#b279a2"}


@dataclass(frozen=True)
class Row:
    span: SpanRecord
    depth: int

    @property
    def duration_ms(self) -> float:
        return (self.span.end_ns - self.span.start_ns) / 1e6


def rows(spans: Iterable[SpanRecord]) -> list[Row]:
    """Spans in waterfall order: each after its parent, siblings by start time."""
    spans = sorted(spans, key=lambda s: (s.start_ns, s.end_ns))
    ids = {s.span_id for s in spans}
    children: dict[str, list[SpanRecord]] = {}
    for span in spans:
        children.setdefault(span.parent_id if span.parent_id in ids else "", []).append(span)
    out: list[Row] = []
    stack = [(span, 0) for span in reversed(children.get("", []))]
    while stack:
        span, depth = stack.pop()
        out.append(Row(span, depth))
        stack.extend((child, depth + 1) for child in reversed(children.get(span.span_id, [])))
    return out


def span_of_time(table: list[Row]) -> tuple[int, int]:
    return min(r.span.start_ns for r in table), max(r.span.end_ns for r in table)


def render_text(title: str, table: list[Row], width: int = BAR_WIDTH) -> str:
    if not table:
        return f"{title}: no spans\n"
    start, end = span_of_time(table)
    total = max(end - start, 1)
    label_width = max(len("  " * r.depth + r.span.name) for r in table)
    lines = [f"{title}: {len(table)} spans over {total / 1e6:.2f} ms"]
    for row in table:
        first = int((row.span.start_ns - start) / total * width)
        length = max(1, round((row.span.end_ns - row.span.start_ns) / total * width))
        bar = " " * first + "█" * min(length, width - first)
        label = "  " * row.depth + row.span.name
        mark = " !" if row.span.error else ""
        lines.append(f"{label:<{label_width}}  {row.span.service:<8} |{bar:<{width}}| {row.duration_ms:9.2f} ms{mark}")
    return "\n".join(lines) + "\n"


def render_svg(title: str, table: list[Row]) -> str:
    row_height, label_width, bar_width, pad = 18, 460, 640, 8
    height = pad * 2 + row_height * (len(table) + 1)
    width = label_width + bar_width + 120
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="monospace" font-size="12">',
             f'<text x="{pad}" y="{pad + 12}" font-weight="bold">{escape(title)}</text>']
    if table:
        start, end = span_of_time(table)
        total = max(end - start, 1)
        for index, row in enumerate(table, start=1):
            y = pad + index * row_height
            x = label_width + (row.span.start_ns - start) / total * bar_width
            w = max(1.0, (row.span.end_ns - row.span.start_ns) / total * bar_width)
            colour = "#d62728" if row.span.error else _COLOURS.get(row.span.service, "#888888")
            label = escape(f"{row.span.service}: {row.span.name}")
            parts.append(f'<text x="{pad + row.depth * 12}" y="{y + 12}">{label}</text>')
            parts.append(f'<rect x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{row_height - 4}" fill="{colour}">'
                         f'<title>{label} {row.duration_ms:.2f} ms</title></rect>')
            parts.append(f'<text x="{label_width + bar_width + 8}" y="{y + 12}">{row.duration_ms:.2f} ms</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
