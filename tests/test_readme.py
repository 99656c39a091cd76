"""The README documents every setting and the two set-up commands."""

from __future__ import annotations

from pathlib import Path

from kestrel.settings import Settings

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_readme_table() -> None:
    missing = [f"KESTREL_{n.upper()}" for n in Settings.model_fields
               if f"| `KESTREL_{n.upper()}` |" not in README]
    assert not missing, f"add these settings to the README table: {missing}"


def test_quickstart_commands() -> None:
    assert "make demo" in README and "make test" in README
