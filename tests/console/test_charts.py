"""The console's SVG charts: what they draw, what they say to a screen reader, and that every
text in them is escaped."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from serving.console.charts import bar_chart, column_chart, shap_bars

SVG = "{http://www.w3.org/2000/svg}"


def _parse(markup: object) -> ET.Element:
    root = ET.fromstring(str(markup))  # well-formed XML, or this raises
    assert root.tag == f"{SVG}svg" and root.get("role") == "img"
    title = root.find(f"{SVG}title")
    assert title is not None and title.text == root.get("aria-label")
    return root


def _rects(root: ET.Element, cls: str | None = None) -> list[ET.Element]:
    return [r for r in root.iter(f"{SVG}rect") if cls is None or r.get("class") == cls]


REASONS = [
    {"feature": "card_txn_count_1h", "value": 6.0, "contribution": 1.2, "text": "6 payments"},
    {"feature": "km_from_home", "value": -1.0, "contribution": 0.6,
     "text": "the payment is -1 km from the customer's home"},
    {"feature": "txn_amount", "value": 12.5, "contribution": -0.3, "text": "<b>small</b>"},
]


def test_shap_bars_one_bar_per_reason_coloured_by_direction_and_scaled():
    root = _parse(shap_bars(REASONS, width=520))
    assert root.get("class") == "chart-shap" and root.get("width") == "520"
    towards, away = _rects(root, "towards"), _rects(root, "away")
    assert len(towards) == 2 and len(away) == 1
    assert towards[0].get("fill") != away[0].get("fill")
    widths = [float(r.get("width") or 0) for r in (*towards, *away)]
    assert widths[0] == pytest.approx(2 * widths[1]) and widths[0] == pytest.approx(4 * widths[2])
    # the zero line: bars towards fraud start on it, the one away ends on it
    line = root.find(f"{SVG}line")
    assert line is not None
    zero = float(line.get("x1") or 0)
    assert float(towards[0].get("x") or 0) == pytest.approx(zero, abs=0.1)
    assert float(away[0].get("x") or 0) + widths[2] == pytest.approx(zero, abs=0.1)
    labels = [t.text for t in root.iter(f"{SVG}text")]
    assert "card_txn_count_1h = 6" in labels and "txn_amount = 12.50" in labels
    assert "km_from_home = unknown" in labels  # the -1 sentinel said in words
    assert "+1.200" in labels and "-0.300" in labels
    assert "card_txn_count_1h +1.200" in (root.get("aria-label") or "")


def test_shap_bars_escape_text_and_say_when_nothing_was_recorded():
    raw = str(shap_bars([{"feature": "<script>x</script>", "value": 1, "contribution": 0.5,
                          "text": "a & b"}]))
    assert "<script>" not in raw and "&lt;script&gt;" in raw and "a &amp; b" in raw
    _parse(raw)
    empty = _parse(shap_bars([]))
    assert "no contributions recorded" in (empty.get("aria-label") or "")
    broken = _parse(shap_bars([{"feature": "f", "value": 1, "contribution": float("nan")}]))
    assert _rects(broken) == [] and "f not recorded" in (broken.get("aria-label") or "")


def test_bar_chart_shares_in_percent_and_counts():
    root = _parse(bar_chart([("multi_country", 0.5), ("velocity", 0.25), ("<new>", None)],
                            title="Confirmed as fraud", percent=True, width=400))
    assert root.get("class") == "chart-bars"
    rects = _rects(root)
    assert len(rects) == 2  # no bar for a rule with no closed case yet
    assert float(rects[0].get("width") or 0) == pytest.approx(2 * float(rects[1].get("width")
                                                                        or 0))
    labels = [t.text for t in root.iter(f"{SVG}text")]
    assert labels == ["multi_country", "50%", "velocity", "25%", "<new>", "none yet"]
    assert (root.get("aria-label") or "").startswith("Confirmed as fraud: multi_country 50%")
    counts = _parse(bar_chart([("a", 3.0), ("b", 12.0)], title="t"))
    assert [t.text for t in counts.iter(f"{SVG}text")][1::2] == ["3", "12"]
    assert "&lt;new&gt;" in str(bar_chart([("<new>", 1.0)], title="t"))


def test_column_chart_one_column_per_point_heights_in_proportion():
    days = [(f"12-{d:02d}", float(n)) for d, n in enumerate([0, 4, 2, 8], start=1)]
    root = _parse(column_chart(days, title="Cases opened per day", width=640, height=180))
    assert root.get("class") == "chart-columns"
    rects = _rects(root)
    heights = [float(r.get("height") or 0) for r in rects]
    assert len(rects) == 4 and heights[0] == 0
    assert heights[3] == pytest.approx(2 * heights[1]) == pytest.approx(4 * heights[2])
    titles = [t.text for r in rects for t in r.iter(f"{SVG}title")]
    assert titles == ["12-01: 0", "12-02: 4", "12-03: 2", "12-04: 8"]
    assert root.get("aria-label") == "Cases opened per day: 14 in all, at most 8 in one"
    assert _parse(column_chart([], title="x")).get("aria-label") == "x: no data"
    escaped = str(column_chart([("<d>", 1.0)], title="<t>"))
    assert "<d>" not in escaped and "<t>" not in escaped


def test_charts_have_no_script_or_event_handler():
    for chart in (shap_bars(REASONS), bar_chart([("a", 1.0)], title="t"),
                  column_chart([("a", 1.0)], title="t")):
        assert not re.search(r"<script|\son\w+=", str(chart), re.IGNORECASE)
