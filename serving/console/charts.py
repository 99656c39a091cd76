"""The console's charts, drawn as SVG on the server: no script, no library, text escaped.

- :func:`shap_bars`: a decision's feature contributions (TreeSHAP), towards fraud one
  colour and away from it another, each bar labelled with the feature and its value;
- :func:`bar_chart`: horizontal bars (the report's share confirmed per rule and per band);
- :func:`column_chart`: columns over time (the report's cases opened per day).

Each returns ``markupsafe.Markup``: an ``<svg role="img">`` with an ``aria-label`` and a
``<title>`` saying what it shows, every text inside escaped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from markupsafe import Markup, escape

from serving.console.narrative import feature_value, number

ROW = 22  # px per bar
FONT = 12
TOWARDS, AWAY, BAR, COLUMN, AXIS, INK = "#c0392b", "#2c6fbb", "#4a7ab0", "#4a7ab0", "#888", "#222"


def shap_bars(reasons: Sequence[Mapping[str, Any]], *, width: int = 520) -> Markup:
    """One bar per reason by its contribution (see the module doc); class ``chart-shap``."""
    rows = [(str(r.get("feature", "?")), r.get("value"), _finite(r.get("contribution")),
             str(r.get("text") or "")) for r in reasons]
    if not rows:
        return _empty("chart-shap", "Feature contributions: no contributions recorded",
                      "no contributions recorded", width)
    label_w, value_w = int(width * 0.42), 56
    plot_x, plot_w = label_w + 8, width - label_w - 8 - value_w
    known = [c for _, _, c, _ in rows if c is not None]
    lo, hi = min([0.0, *known]), max([0.0, *known])
    span = (hi - lo) or 1.0
    zero = plot_x + plot_w * (-lo / span)
    height = ROW * len(rows) + 8
    said = "; ".join(f"{f} {_signed(c) if c is not None else 'not recorded'}"
                     for f, _, c, _ in rows)
    label = f"Feature contributions to the fraud score: {said}"
    parts = [_open("chart-shap", label, width, height)]
    for i, (feature, value, contribution, text) in enumerate(rows):
        y = 4 + i * ROW
        mid = y + ROW / 2
        name = f"{feature} = {feature_value(feature, value)}"
        parts.append(f'<g class="bar"><title>{escape(text or name)}</title>')
        parts.append(_text(label_w, mid, name, anchor="end", cls="label"))
        if contribution is None:
            parts.append(_text(zero + 4, mid, "not recorded", cls="value"))
        else:
            x1 = plot_x + plot_w * ((contribution - lo) / span)
            left, w = min(zero, x1), max(abs(x1 - zero), 1.0)
            colour, cls = (TOWARDS, "towards") if contribution > 0 else (AWAY, "away")
            parts.append(f'<rect class="{cls}" x="{left:.1f}" y="{y + 3}" width="{w:.1f}" '
                         f'height="{ROW - 6}" fill="{colour}"/>')
            parts.append(_text(plot_x + plot_w + 4, mid, _signed(contribution), cls="value"))
        parts.append("</g>")
    parts.append(f'<line x1="{zero:.1f}" x2="{zero:.1f}" y1="2" y2="{height - 2}" '
                 f'stroke="{AXIS}" stroke-width="1"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(rows: Sequence[tuple[str, float | None]], *, title: str, percent: bool = False,
              width: int = 520) -> Markup:
    """Horizontal bars from 0 (``percent``: values are shares 0..1, shown as %)."""
    if not rows:
        return _empty("chart-bars", f"{title}: no data", "no data", width)
    label_w, value_w = int(width * 0.3), 64
    plot_x, plot_w = label_w + 8, width - label_w - 8 - value_w
    values = [_finite(v) for _, v in rows]
    top = 1.0 if percent else max([v for v in values if v is not None] + [0.0]) or 1.0
    height = ROW * len(rows) + 8
    said = "; ".join(f"{n} {_value(v, percent)}" for (n, _), v in zip(rows, values, strict=True))
    parts = [_open("chart-bars", f"{title}: {said}", width, height)]
    for i, ((name, _), value) in enumerate(zip(rows, values, strict=True)):
        y = 4 + i * ROW
        mid = y + ROW / 2
        shown = _value(value, percent)
        parts.append(f'<g class="bar"><title>{escape(f"{name}: {shown}")}</title>')
        parts.append(_text(label_w, mid, name, anchor="end", cls="label"))
        if value is not None:
            w = max(plot_w * min(max(value, 0.0) / top, 1.0), 1.0)
            parts.append(f'<rect x="{plot_x}" y="{y + 3}" width="{w:.1f}" '
                         f'height="{ROW - 6}" fill="{BAR}"/>')
        parts.append(_text(plot_x + plot_w + 4, mid, shown, cls="value"))
        parts.append("</g>")
    parts.append("</svg>")
    return Markup("".join(parts))


def column_chart(points: Sequence[tuple[str, float]], *, title: str, width: int = 640,
                 height: int = 180) -> Markup:
    """Columns left to right in the order given, the first, middle and last labelled."""
    if not points:
        return _empty("chart-columns", f"{title}: no data", "no data", width)
    axis_h, top_pad, left = 18, 16, 36
    plot_w, plot_h = width - left - 4, height - axis_h - top_pad
    values = [max(_finite(v) or 0.0, 0.0) for _, v in points]
    top = max(values) or 1.0
    slot = plot_w / len(points)
    total = sum(values)
    label = f"{title}: {number(total)} in all, at most {number(max(values))} in one"
    parts = [_open("chart-columns", label, width, height)]
    base = top_pad + plot_h
    parts.append(_text(left - 4, top_pad, number(top), anchor="end", cls="tick"))
    parts.append(_text(left - 4, base, "0", anchor="end", cls="tick"))
    for i, ((name, _), value) in enumerate(zip(points, values, strict=True)):
        h = plot_h * value / top
        x = left + i * slot
        parts.append(f'<rect x="{x + slot * 0.1:.1f}" y="{base - h:.1f}" '
                     f'width="{max(slot * 0.8, 1.0):.1f}" height="{h:.1f}" fill="{COLUMN}">'
                     f"<title>{escape(f'{name}: {number(value)}')}</title></rect>")
    for i in sorted({0, len(points) // 2, len(points) - 1}):
        anchor = "start" if i == 0 else "end" if i == len(points) - 1 else "middle"
        x = left + i * slot + (0 if anchor == "start" else slot if anchor == "end" else slot / 2)
        parts.append(_text(x, height - 4, points[i][0], anchor=anchor, cls="tick"))
    parts.append(f'<line x1="{left}" x2="{width - 4}" y1="{base}" y2="{base}" '
                 f'stroke="{AXIS}" stroke-width="1"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _open(cls: str, label: str, width: int, height: int) -> str:
    return (f'<svg class="{cls}" xmlns="http://www.w3.org/2000/svg" role="img" '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'aria-label="{escape(label)}" font-family="sans-serif" font-size="{FONT}">'
            f"<title>{escape(label)}</title>")


def _empty(cls: str, label: str, says: str, width: int) -> Markup:
    return Markup(_open(cls, label, width, ROW + 8)
                  + _text(4, 4 + ROW / 2, says, cls="empty") + "</svg>")


def _text(x: float, y: float, text: str, *, anchor: str = "start", cls: str = "") -> str:
    return (f'<text class="{cls}" x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" '
            f'dominant-baseline="middle" fill="{INK}">{escape(text)}</text>')


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _signed(v: float) -> str:
    return f"{v:+.3f}"


def _value(v: float | None, percent: bool) -> str:
    if v is None:
        return "none yet"
    return f"{v * 100:.0f}%" if percent else number(v)
