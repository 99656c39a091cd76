"""The case page's small map: transactions as points over the world's land outline, in SVG.

The outline is Natural Earth's 1:110m land (public domain) as packaged by world-atlas 2.0.2
(ISC), converted once by scripts/world_outline.py into ``static/world-110m.json``: per ring
its bounding box and its SVG path data, already projected equirectangularly (x = lon,
y = −lat, in degrees). A map is then only a ``viewBox`` zoomed to the points (with a margin,
at least MIN_EXTENT, widened to the picture's aspect, kept inside the world) and the rings
that meet it joined into one ``<path>``; what falls outside the view is clipped by the SVG
viewport (a card used on both sides of the antimeridian gets a wide view).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

OUTLINE = Path(__file__).resolve().parent / "static" / "world-110m.json"
WORLD = (-180.0, -90.0, 180.0, 90.0)  # lon_min, lat_min, lon_max, lat_max
MIN_EXTENT = (20.0, 12.0)  # degrees of lon and lat a map shows at least
MARGIN = 0.25  # of the points' extent, on each side
POINT_PX = 5.0  # a point's radius in pixels
SEA, LAND, COAST = "#eef3f7", "#d9dfd2", "#9aa692"
FLAGGED, RECENT = "#c0392b", "#2c6fbb"


@dataclass(frozen=True)
class MapPoint:
    """One transaction on the map: ``flagged`` for evidence, else a recent transaction."""

    lat: float
    lon: float
    label: str
    flagged: bool

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lat) and -90 <= self.lat <= 90):
            raise ValueError(f"latitude {self.lat!r} is not within -90..90: leave a "
                             "transaction without a known position off the map")
        if not (math.isfinite(self.lon) and -180 <= self.lon <= 180):
            raise ValueError(f"longitude {self.lon!r} is not within -180..180: leave a "
                             "transaction without a known position off the map")


@dataclass(frozen=True)
class View:
    """The part of the world a map shows, in degrees (lon, lat)."""

    lon_min: float
    lat_min: float
    lon_max: float
    lat_max: float

    @property
    def view_box(self) -> str:
        w, h = self.lon_max - self.lon_min, self.lat_max - self.lat_min
        return f"{_n(self.lon_min)} {_n(-self.lat_max)} {_n(w)} {_n(h)}"

    def meets(self, bbox: Sequence[float]) -> bool:
        lon0, lat0, lon1, lat1 = bbox
        return not (lon1 < self.lon_min or lon0 > self.lon_max
                    or lat1 < self.lat_min or lat0 > self.lat_max)


def view_of(points: Sequence[MapPoint], aspect: float) -> View:
    """The view around ``points`` (the world when there are none), ``aspect`` = width /
    height in degrees of lon per degree of lat."""
    if not points:
        return _fit(0.0, 0.0, 360.0, 180.0, aspect)
    lons, lats = [p.lon for p in points], [p.lat for p in points]
    w = max((max(lons) - min(lons)) * (1 + 2 * MARGIN), MIN_EXTENT[0])
    h = max((max(lats) - min(lats)) * (1 + 2 * MARGIN), MIN_EXTENT[1])
    return _fit((max(lons) + min(lons)) / 2, (max(lats) + min(lats)) / 2, w, h, aspect)


def _fit(lon: float, lat: float, w: float, h: float, aspect: float) -> View:
    """A view centred on (lon, lat), at least w × h but no more of the world than there is,
    widened to ``aspect`` and moved inside the world; one wider or taller than the world
    (the whole world at another aspect) is centred on it, the rest sea."""
    w, h = min(w, 360.0), min(h, 180.0)
    if w / h < aspect:
        w = h * aspect
    else:
        h = w / aspect
    lon = min(max(lon, WORLD[0] + w / 2), WORLD[2] - w / 2) if w <= 360 else 0.0
    lat = min(max(lat, WORLD[1] + h / 2), WORLD[3] - h / 2) if h <= 180 else 0.0
    return View(lon - w / 2, lat - h / 2, lon + w / 2, lat + h / 2)


@cache
def _outline() -> tuple[tuple[tuple[float, ...], str], ...]:
    data: dict[str, Any] = json.loads(OUTLINE.read_text())
    return tuple((tuple(r["bbox"]), r["d"]) for r in data["rings"])


def land_path(view: View) -> str:
    """SVG path data of the land rings that meet ``view``."""
    return "".join(d for bbox, d in _outline() if view.meets(bbox))


def map_svg(points: Sequence[MapPoint], *, width: int = 480, height: int = 260) -> Markup:
    """The points over the land outline (see the module doc); class ``chart-map``."""
    view = view_of(points, width / height)
    r = POINT_PX * (view.lon_max - view.lon_min) / width
    flagged = sum(p.flagged for p in points)
    label = (f"Map of {len(points)} transaction{'s' if len(points) != 1 else ''}"
             f" ({flagged} flagged)" if points else "Map: no transaction has a known position")
    parts = [
        f'<svg class="chart-map" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'width="{width}" height="{height}" viewBox="{view.view_box}" '
        f'preserveAspectRatio="xMidYMid meet" aria-label="{escape(label)}">',
        f"<title>{escape(label)}</title>",
        f'<rect class="sea" x="{_n(view.lon_min)}" y="{_n(-view.lat_max)}" '
        f'width="{_n(view.lon_max - view.lon_min)}" height="{_n(view.lat_max - view.lat_min)}" '
        f'fill="{SEA}"/>',
        f'<path class="land" d="{land_path(view)}" fill="{LAND}" stroke="{COAST}" '
        f'stroke-width="0.8" vector-effect="non-scaling-stroke" stroke-linejoin="round"/>',
    ]
    # the recent ones first, so evidence is drawn on top
    for p in sorted(points, key=lambda p: p.flagged):
        kind, colour = ("flagged", FLAGGED) if p.flagged else ("recent", RECENT)
        parts.append(
            f'<circle class="point {kind}" cx="{_n(p.lon)}" cy="{_n(-p.lat)}" r="{_n(r)}" '
            f'fill="{colour}" fill-opacity="0.85" stroke="#ffffff" stroke-width="1" '
            f'vector-effect="non-scaling-stroke"><title>{escape(p.label)}</title></circle>')
    if not points:
        parts.append(f'<text x="0" y="0" text-anchor="middle" font-size="{_n(r * 3)}" '
                     f'fill="#555">no transaction has a known position</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _n(v: float) -> str:
    """A coordinate, 3 decimals at most (a metre is 1e-5°; 1e-3° is finer than a pixel)."""
    text = f"{v:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
