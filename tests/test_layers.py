"""The layers point down: no module imports a package above its own.

Lowest first: the kernel (``kestrel``: settings, errors, contracts, the shared runtime
pieces) ← ``pipelines``, ``labels`` and Feast's repository definitions (``feature_repo``)
← ``training`` ← ``serving`` ← ``bench`` and ``dagster_project`` ← ``cli`` (the command line
and the demo: the composition root). Packages of one layer do not import each other either.
Every import counts, those inside functions and under ``TYPE_CHECKING`` too: a lazy import
is still a dependency.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LAYERS: dict[str, int] = {
    "kestrel": 0,
    "pipelines": 1,
    "labels": 1,
    "cases": 1,
    "feature_repo": 1,
    "training": 2,
    "serving": 3,
    "bench": 4,
    "dagster_project": 4,
    "cli": 5,
}

# (file, imported module): imports that break the rule for now, each with its reason.
ALLOWED: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    path: str  # relative to the repository
    line: int
    module: str

    @property
    def package(self) -> str:
        return self.module.split(".")[0]


def imports_of(path: Path, root: Path = ROOT) -> list[Import]:
    """Every absolute import in a file, wherever it sits (functions, TYPE_CHECKING blocks)."""
    rel = path.relative_to(root).as_posix()
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
        if isinstance(node, ast.Import):
            found += [Import(rel, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(Import(rel, node.lineno, node.module))
    return found


def layered_files() -> list[tuple[str, Path]]:
    return [(package, path) for package in LAYERS
            for path in sorted((ROOT / package).rglob("*.py"))]


def offence(package: str, imp: Import) -> str | None:
    """Why ``imp``, made by a module of ``package``, breaks the layering (None: it does not)."""
    target = imp.package
    if target not in LAYERS or target == package:
        return None
    mine, theirs = LAYERS[package], LAYERS[target]
    where = f"{imp.path}:{imp.line} imports {imp.module} (layer {theirs}, {target})"
    if theirs > mine:
        return f"{where} from layer {mine} ({package})"
    if theirs == mine:
        return f"{where} from layer {mine} ({package}): packages of one layer stay apart"
    return None


def test_every_top_level_package_has_a_layer() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    missing = sorted(packages - set(LAYERS))
    assert not missing, (f"top-level packages without a layer: {missing}; add them to "
                         "LAYERS in tests/test_layers.py")


def test_imports_point_down() -> None:
    offences = []
    for package, path in layered_files():
        for imp in imports_of(path):
            why = offence(package, imp)
            if why is not None and (imp.path, imp.module) not in ALLOWED:
                offences.append(why)
    assert not offences, "imports that point up or sideways:\n" + "\n".join(offences)


def test_every_allowed_exception_is_still_there() -> None:
    """An exception whose import is gone must leave ALLOWED too."""
    seen = {(imp.path, imp.module) for package, path in layered_files()
            for imp in imports_of(path) if offence(package, imp) is not None}
    stale = sorted(set(ALLOWED) - seen)
    assert not stale, f"ALLOWED names imports that no longer break the layering: {stale}"


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The parser itself: a lazy upward import is found and named with its line."""
    module = tmp_path / "kestrel" / "probe.py"
    module.parent.mkdir()
    module.write_text("import os\n\n\ndef f() -> None:\n    from serving.app import create_app\n")
    found = [offence("kestrel", imp) for imp in imports_of(module, tmp_path)]
    assert found == [None, "kestrel/probe.py:5 imports serving.app (layer 3, serving) from "
                           "layer 0 (kestrel)"]
