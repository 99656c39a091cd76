"""The case page's map: the shipped land outline, the view around the points, the SVG."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from itertools import pairwise
from pathlib import Path

import pytest

from serving.console.geo import OUTLINE, MapPoint, land_path, map_svg, view_of

ROOT = Path(__file__).resolve().parents[2]


def _converter():  # scripts/ is not a package: load the converter by its path
    spec = importlib.util.spec_from_file_location("world_outline",
                                                  ROOT / "scripts" / "world_outline.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["world_outline"] = module
    spec.loader.exec_module(module)
    return module


def _view_box(svg: str) -> tuple[float, ...]:
    m = re.search(r'viewBox="([^"]+)"', svg)
    assert m
    return tuple(float(v) for v in m[1].split())


def _subpaths(d: str) -> list[list[tuple[float, float]]]:
    return [[(float(x), float(y)) for x, y in (p.split(",") for p in ring.split())]
            for ring in re.findall(r"M([^MZ]+)Z", d)]


def test_the_outline_says_where_it_comes_from_and_under_which_licence():
    data = json.loads(OUTLINE.read_text())
    assert "world-atlas 2.0.2" in data["source"] and "Natural Earth" in data["source"]
    assert "public domain" in data["licence"] and "ISC" in data["licence"]
    assert len(data["rings"]) > 100
    notice = (OUTLINE.parent / "NOTICE").read_text()
    assert "world-atlas" in notice and "ISC" in notice and "public domain" in notice


def test_no_ring_jumps_across_the_antimeridian():
    """A ring drawn from 179° to −180° would streak across the whole map."""
    data = json.loads(OUTLINE.read_text())
    for ring in data["rings"]:
        for points in _subpaths(ring["d"]):
            steps = [abs(b[0] - a[0]) for a, b in pairwise(points)
                     if not abs(a[1]) == abs(b[1]) == 90]  # but along a pole (Antarctica)
            assert max(steps) < 180, ring["bbox"]


def test_the_converter_decodes_delta_encoded_quantized_arcs_and_reversed_ones():
    conv = _converter()
    topology = {
        "transform": {"scale": [0.5, 0.25], "translate": [10, 20]},
        # arc 0: (0,0) (2,0) (2,4) absolute in quanta; arc 1 goes back from (2,4) to (0,0)
        "arcs": [[[0, 0], [2, 0], [0, 4]], [[2, 4], [-2, 0], [0, -4]]],
        "objects": {"land": {"type": "GeometryCollection", "geometries": [
            {"type": "Polygon", "arcs": [[0, 1]]},
            {"type": "Polygon", "arcs": [[~1, ~0]]}]}},
    }
    forward, backward = conv.rings_of(topology)
    assert forward == [(10, 20), (11, 20), (11, 21), (10, 21), (10, 20)]
    assert backward == [(10, 20), (10, 21), (11, 21), (11, 20), (10, 20)]
    assert conv.path_of(forward) == "M10,-20 11,-20 11,-21 10,-21 10,-20Z"


def test_the_converter_cuts_a_ring_that_crosses_the_antimeridian():
    conv = _converter()
    ring = [(179.0, 60.0), (-179.0, 60.0), (-179.0, 62.0), (179.0, 62.0), (179.0, 60.0)]
    parts = conv.unwrapped(ring)
    assert len(parts) == 2
    for part in parts:
        lons = [p[0] for p in part]
        assert max(lons) - min(lons) == pytest.approx(2.0)
    assert {round(min(p[0] for p in part)) for part in parts} == {179, -181}


def test_the_view_holds_every_point_with_a_margin_and_a_minimum_extent():
    points = [MapPoint(48.85, 2.35, "Paris", True), MapPoint(52.52, 13.40, "Berlin", False)]
    view = view_of(points, 480 / 260)
    for p in points:
        assert view.lon_min < p.lon < view.lon_max and view.lat_min < p.lat < view.lat_max
    assert view.lon_max - view.lon_min >= 20 and view.lat_max - view.lat_min >= 12
    assert (view.lon_max - view.lon_min) / (view.lat_max - view.lat_min) == pytest.approx(
        480 / 260)
    one = view_of([MapPoint(0.0, 0.0, "x", True)], 2.0)
    assert (one.lon_max - one.lon_min, one.lat_max - one.lat_min) == pytest.approx((24, 12))


def test_the_view_stays_inside_the_world():
    view = view_of([MapPoint(89.0, 179.0, "near the pole", True)], 2.0)
    assert view.lon_max <= 180 and view.lat_max <= 90
    assert view.lon_min < 179 and view.lat_min < 89
    both = view_of([MapPoint(60, 179.5, "a", True), MapPoint(61, -179.5, "b", True)], 480 / 260)
    assert (both.lon_min, both.lon_max) == (-180, 180)  # the whole width, no point cut off


def test_map_svg_draws_the_land_that_meets_the_view_and_each_point_with_its_label():
    points = [MapPoint(48.85, 2.35, "t1 <Paris>", True), MapPoint(40.4, -3.7, "t2", False)]
    svg = str(map_svg(points, width=480, height=260))
    assert svg.startswith('<svg class="chart-map"') and 'role="img"' in svg
    assert svg.count("<circle") == 2
    assert svg.count('class="point flagged"') == 1 and svg.count('class="point recent"') == 1
    assert "<title>t1 &lt;Paris&gt;</title>" in svg and "<Paris>" not in svg
    x, y, w, h = _view_box(svg)
    assert w / h == pytest.approx(480 / 260)
    assert x < 2.35 < x + w and y < -48.85 < y + h
    land = re.search(r'<path class="land" d="([^"]*)"', svg)
    assert land and land[1]
    world = land_path(view_of([], 2.0))
    assert len(land[1]) < len(world)  # Europe's rings, not Australia's
    for ring in _subpaths(land[1]):  # every ring drawn meets the view
        xs, ys = [p[0] for p in ring], [p[1] for p in ring]
        assert min(xs) <= x + w and max(xs) >= x and min(ys) <= y + h and max(ys) >= y


def test_a_map_without_points_says_so():
    svg = str(map_svg([]))
    assert "no transaction has a known position" in svg and "<circle" not in svg


@pytest.mark.parametrize(("lat", "lon"), [(91.0, 0.0), (0.0, -181.0), (float("nan"), 0.0)])
def test_a_point_off_the_globe_is_refused(lat: float, lon: float):
    with pytest.raises(ValueError, match="off the map"):
        MapPoint(lat, lon, "bad", True)
