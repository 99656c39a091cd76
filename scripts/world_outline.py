"""Make the console map's land outline (serving/console/static/world-110m.json) from
world-atlas 2.0.2's ``land-110m.json`` (TopoJSON of Natural Earth's 1:110m land: public domain
data; the world-atlas package is ISC-licensed, © Michael Bostock).

TopoJSON stores each ring as a list of shared arcs, each arc quantized and delta-encoded
(``transform.scale``/``translate``). This decodes them once, here, and writes per ring its
bounding box and its SVG path data in plain degrees with the equirectangular projection
already applied (x = lon, y = −lat, 2 decimals: the 1:110m data holds no finer detail), so
the console (serving/console/geo.py) only picks the rings that meet its view and joins their
strings.

    .venv/bin/python scripts/world_outline.py /tmp/world/package/land-110m.json \
        serving/console/static/world-110m.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SOURCE = ("world-atlas 2.0.2 land-110m.json (npm), from Natural Earth 1:110m land "
          "(https://www.naturalearthdata.com/)")
LICENCE = ("Natural Earth data: public domain. world-atlas: ISC licence, "
           "Copyright 2013-2019 Michael Bostock.")
DECIMALS = 2


def decode_arcs(topology: dict[str, Any]) -> list[list[tuple[float, float]]]:
    """Every arc as absolute (lon, lat) points."""
    transform = topology.get("transform")
    arcs: list[list[tuple[float, float]]] = []
    for arc in topology["arcs"]:
        if transform is None:
            arcs.append([(float(x), float(y)) for x, y, *_ in arc])
            continue
        (sx, sy), (tx, ty) = transform["scale"], transform["translate"]
        x = y = 0
        points = []
        for dx, dy, *_ in arc:
            x, y = x + dx, y + dy
            points.append((x * sx + tx, y * sy + ty))
        arcs.append(points)
    return arcs


def ring_points(indices: list[int],
                arcs: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """A ring from its arc indices (a negative index ``~i`` is arc i reversed); each arc
    after the first starts where the previous one ended, so its first point is dropped."""
    points: list[tuple[float, float]] = []
    for index in indices:
        arc = arcs[index] if index >= 0 else arcs[~index][::-1]
        points.extend(arc if not points else arc[1:])
    return points


def rings_of(topology: dict[str, Any], name: str = "land") -> list[list[tuple[float, float]]]:
    arcs = decode_arcs(topology)
    rings: list[list[tuple[float, float]]] = []
    for geometry in topology["objects"][name]["geometries"]:
        polygons = (geometry["arcs"] if geometry["type"] == "MultiPolygon"
                    else [geometry["arcs"]] if geometry["type"] == "Polygon" else [])
        for polygon in polygons:
            rings.extend(ring_points(ring, arcs) for ring in polygon)
    return rings


def unwrapped(ring: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """A ring that crosses the antimeridian (a step of more than 180° of longitude) as rings
    that do not: its longitudes made continuous (beyond ±180), then once more shifted by
    ∓360 so both sides of the map hold their part; a ring around a pole (Antarctica: it ends
    360° from where it began) is closed along that pole. A ring that does not cross is kept.
    The map's view stays inside ±180 and clips the rest."""
    out = [ring[0]]
    for lon, lat in ring[1:]:
        prev = out[-1][0]
        lon += 360 * round((prev - lon) / 360)
        out.append((lon, lat))
    if out == ring:
        return [ring]
    centre = 360 * round(sum(lon for lon, _ in out) / len(out) / 360)  # most of it in ±180
    out = [(lon - centre, lat) for lon, lat in out]
    if abs(out[-1][0] - out[0][0]) > 180:  # around a pole: close it along the pole
        pole = -90.0 if min(lat for _, lat in out) < 0 else 90.0
        out += [(out[-1][0], pole), (out[0][0], pole), out[0]]
    if all(-180 <= lon <= 180 for lon, _ in out):
        return [out]
    shift = -360 if max(lon for lon, _ in out) > 180 else 360
    return [out, [(lon + shift, lat) for lon, lat in out]]


def _num(v: float) -> str:
    text = f"{v:.{DECIMALS}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def path_of(ring: list[tuple[float, float]]) -> str:
    """SVG path data, x = lon and y = −lat; repeated points (after rounding) dropped."""
    pairs: list[str] = []
    for lon, lat in ring:
        pair = f"{_num(lon)},{_num(-lat)}"
        if not pairs or pairs[-1] != pair:
            pairs.append(pair)
    return "M" + " ".join(pairs) + "Z"


def outline(topology: dict[str, Any]) -> dict[str, Any]:
    out = []
    for ring in (part for r in rings_of(topology) for part in unwrapped(r)):
        if len(ring) < 3:
            continue
        lons, lats = [p[0] for p in ring], [p[1] for p in ring]
        bbox = [round(min(lons), DECIMALS), round(min(lats), DECIMALS),
                round(max(lons), DECIMALS), round(max(lats), DECIMALS)]
        out.append({"bbox": bbox, "d": path_of(ring)})
    return {"source": SOURCE, "licence": LICENCE,
            "projection": "equirectangular: x = lon, y = -lat (degrees)", "rings": out}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: world_outline.py LAND_110M_TOPOJSON OUT_JSON", file=sys.stderr)
        return 2
    topology = json.loads(Path(argv[0]).read_text())
    data = outline(topology)
    Path(argv[1]).write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print(f"{len(data['rings'])} rings, {Path(argv[1]).stat().st_size} bytes -> {argv[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
