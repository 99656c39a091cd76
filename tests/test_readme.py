"""The README is a short guide: it documents every setting and the two set-up commands, and
links every page of docs/, where the rest lives."""

from __future__ import annotations

import re
from pathlib import Path

from kestrel.settings import Settings

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
MAX_LINES = 450


def test_every_setting_is_in_the_readme_table() -> None:
    missing = [f"KESTREL_{n.upper()}" for n in Settings.model_fields
               if f"| `KESTREL_{n.upper()}` |" not in README]
    assert not missing, f"add these settings to the README table: {missing}"


def test_settings_table_follows_the_settings_order() -> None:
    rows = re.findall(r"^\| `KESTREL_(\w+)` \|", README, re.MULTILINE)
    fields = [n.upper() for n in Settings.model_fields]
    assert rows == fields, ("order the README's settings table as kestrel/settings.py declares "
                            "the fields, one row each")


def test_quickstart_commands() -> None:
    assert "make demo" in README and "make test" in README


def test_readme_is_a_short_guide() -> None:
    lines = README.count("\n")
    assert lines <= MAX_LINES, (f"README.md has {lines} lines (at most {MAX_LINES}): move "
                                "reference material to a page in docs/ and link it")


def test_every_docs_page_is_linked_from_the_readme() -> None:
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    unlinked = [p for p in pages if f"(docs/{p})" not in README]
    assert not unlinked, f"link these pages from the README's Documentation section: {unlinked}"


def test_readme_holds_no_commit_hashes() -> None:
    hashes = [w for w in re.findall(r"\b[0-9a-f]{7,40}\b", README)
              if re.search(r"[0-9]", w) and re.search(r"[a-f]", w)]
    assert not hashes, (f"the README names commits {hashes}: history belongs in git and "
                        "bench/results/, not in the guide")
