"""Charts drawn as inline SVG on the server: no chart library, no script, no CDN.

Colours come from classes styled in ``static/app.css``; every chart has a
title for screen readers and a ``<title>`` per bar for the value on hover.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from html import escape

from markupsafe import Markup

from service.api.schemas import StageLatencyOut

WIDTH = 600
HEIGHT = 180
_PAD_LEFT, _PAD_RIGHT, _PAD_TOP, _PAD_BOTTOM = 40, 8, 12, 24


def _nice_max(value: float) -> float:
    """A round axis maximum at or above ``value`` (1, 2, 5 x 10^n)."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** len(str(int(value))) / 10 if value >= 1 else 1.0
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return float(step * magnitude)
    return float(10 * magnitude)


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M", time.localtime(epoch))


def throughput_chart(done: Sequence[int], *, bucket_s: float, until: float) -> Markup:
    """Columns: images DONE per minute in each bucket, oldest on the left."""
    per_minute = [n * 60.0 / bucket_s for n in done]
    top = _nice_max(max(per_minute, default=0.0))
    plot_w = WIDTH - _PAD_LEFT - _PAD_RIGHT
    plot_h = HEIGHT - _PAD_TOP - _PAD_BOTTOM
    slot = plot_w / max(1, len(done))
    since = until - bucket_s * len(done)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="Images per minute, {_clock(since)} to {_clock(until)}">',
        f'<line class="axis" x1="{_PAD_LEFT}" y1="{_PAD_TOP + plot_h}" '
        f'x2="{WIDTH - _PAD_RIGHT}" y2="{_PAD_TOP + plot_h}"/>',
        f'<text class="label" x="{_PAD_LEFT - 4}" y="{_PAD_TOP + 8}" text-anchor="end">'
        f"{top:g}</text>",
        f'<text class="label" x="{_PAD_LEFT - 4}" y="{_PAD_TOP + plot_h}" '
        'text-anchor="end">0</text>',
        f'<line class="grid" x1="{_PAD_LEFT}" y1="{_PAD_TOP}" x2="{WIDTH - _PAD_RIGHT}" '
        f'y2="{_PAD_TOP}"/>',
    ]
    for i, (n, rate) in enumerate(zip(done, per_minute, strict=True)):
        h = plot_h * rate / top
        x = _PAD_LEFT + i * slot + slot * 0.1
        start = since + i * bucket_s
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{_PAD_TOP + plot_h - h:.1f}" '
            f'width="{slot * 0.8:.1f}" height="{h:.1f}"><title>{_clock(start)}: {n} images '
            f"({rate:.2g}/min)</title></rect>"
        )
    parts += [
        f'<text class="label" x="{_PAD_LEFT}" y="{HEIGHT - 6}">{_clock(since)}</text>',
        f'<text class="label" x="{WIDTH - _PAD_RIGHT}" y="{HEIGHT - 6}" text-anchor="end">'
        f"{_clock(until)}</text>",
        "</svg>",
    ]
    return Markup("".join(parts))  # noqa: S704 - built from numbers and fixed text only


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def latency_chart(latencies: Sequence[StageLatencyOut]) -> Markup:
    """One row per stage: a light bar to p95, a dark bar to p50, values on the right."""
    rows = [x for x in latencies if x.stage != "total"]
    top = max((x.p95_s or 0.0 for x in rows), default=0.0) or 1.0
    row_h = 28
    label_w, value_w = 80, 190
    height = row_h * len(rows) + 8
    plot_w = WIDTH - label_w - value_w
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" '
        'aria-label="Latency per stage, p50 and p95">'
    ]
    for i, x in enumerate(rows):
        y = 4 + i * row_h
        parts.append(
            f'<text class="label" x="{label_w - 6}" y="{y + 17}" text-anchor="end">'
            f"{escape(x.stage)}</text>"
        )
        if x.p50_s is None or x.p95_s is None:
            parts.append(f'<text class="label muted" x="{label_w}" y="{y + 17}">no data</text>')
            continue
        w95 = max(1.0, plot_w * x.p95_s / top)
        w50 = max(1.0, plot_w * x.p50_s / top)
        parts.append(
            f'<rect class="bar p95" x="{label_w}" y="{y + 4}" width="{w95:.1f}" height="18">'
            f"<title>{escape(x.stage)} p95 {_seconds(x.p95_s)}</title></rect>"
            f'<rect class="bar" x="{label_w}" y="{y + 8}" width="{w50:.1f}" height="10">'
            f"<title>{escape(x.stage)} p50 {_seconds(x.p50_s)}</title></rect>"
            f'<text class="label" x="{WIDTH - value_w + 8}" y="{y + 17}">'
            f"p50 {_seconds(x.p50_s)} · p95 {_seconds(x.p95_s)}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - stage names escaped, the rest numbers
