"""`kestrel audit verify` as a process: its lines and its exit status."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from kestrel.settings import Settings
from serving.audit import AuditLog
from tests.conftest import env_for
from tests.serving.test_audit import CRASH, _edit_field, _run, write_closed

ROOT_DIR = Path(__file__).resolve().parents[2]


def verify_cli(settings: Settings, *args: str,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", "audit", "verify", *args],
                          env=env or env_for(settings), cwd=ROOT_DIR, capture_output=True,
                          text=True, timeout=120)


def test_verify_exits_0_on_a_good_log_and_1_naming_the_broken_record(
        settings: Settings) -> None:
    root, key = settings.var_dir / "audit", settings.secret("audit_key")
    access = write_closed(root, key)
    decisions = write_closed(root, key, 4, kind="decisions")
    today = datetime.now(UTC).date().isoformat()

    ok = verify_cli(settings)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    out = ok.stdout.splitlines()
    assert out[0].startswith(f"access/{access.name}: ok, 10 records anchored")
    assert out[1].startswith(f"decisions/{decisions.name}: ok, 4 records anchored")
    assert out[2] == "2 files: 2 ok, 0 broken, 0 unanchored"

    _edit_field(4)(access)
    bad = verify_cli(settings, "--day", today)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"access/{access.name}: broken at record 4 line 4: " in bad.stdout
    assert "1 broken" in bad.stdout

    only_decisions = verify_cli(settings, "--kind", "decisions")
    assert only_decisions.returncode == 0 and "access/" not in only_decisions.stdout

    other_day = verify_cli(settings, "--day", "2001-01-01")
    assert other_day.returncode == 0 and "no audit files" in other_day.stdout

    wrong_key = {**env_for(settings), "KESTREL_AUDIT_KEY": "x" * 40}
    wrong = verify_cli(settings, "--kind", "decisions", env=wrong_key)
    assert wrong.returncode == 1 and "broken at record 4 line 4: the anchor's MAC" in wrong.stdout

    assert verify_cli(settings, "--day", "yesterday").returncode == 1  # not a date
    assert verify_cli(settings, "--kind", "nope").returncode == 2  # typer: not a kind


def test_verify_tells_a_crash_from_tampering(settings: Settings) -> None:
    root, key = settings.var_dir / "audit", settings.secret("audit_key")
    assert _run(CRASH, key, str(root)).wait(60) == 0
    crashed = verify_cli(settings)
    assert crashed.returncode == 3, crashed.stdout + crashed.stderr
    assert ": unanchored at record 6 line 6: 3 well-chained records" in crashed.stdout
    log = AuditLog(root, 0, key)  # a writer running next to it changes nothing
    log.record("access", {"n": 1})
    log.flush()
    try:
        assert verify_cli(settings).returncode == 3
    finally:
        log.close()
