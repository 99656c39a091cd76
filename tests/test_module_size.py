"""No module of the project grows past MAX_LINES: past that a module holds more than one
concern, and a newcomer can no longer see which part a change belongs in."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kestrel", "pipelines", "labels", "training", "serving", "cli", "dagster_project",
            "bench", "feature_repo", "tests")
MAX_LINES = 500


def test_no_module_is_longer_than_the_limit() -> None:
    too_long = sorted(
        (n, path.relative_to(ROOT).as_posix())
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES)
    assert not too_long, (
        f"modules over {MAX_LINES} lines: "
        + ", ".join(f"{name} ({n})" for n, name in reversed(too_long))
        + "; split each into modules named for their roles")
