"""The console's pieces without HTTP: the session store (on SQLite, PostgreSQL and MariaDB:
the table is the case store's), the SLA setting, the queue's filters and SLA ageing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cases.sessions import ConsoleSessions, id_hash
from cases.store import CaseStore
from cases.views import CaseSummary
from kestrel.errors import ConfigError, EventValidationError
from kestrel.settings import Settings
from serving.console.queue import Filters, parse_sla, rows_of, sla_hours
from serving.console.routes_auth import safe_next
from tests.cases.conftest import BACKENDS, new_database

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


@pytest.fixture(params=BACKENDS)
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CaseStore]:
    """A case store on a new database: SQLite, PostgreSQL, MariaDB."""
    for url in new_database(request.param, tmp_path):
        s = CaseStore(url)
        yield s
        s.dispose()


def test_a_session_ends_at_its_ttl_when_idle_and_when_revoked(any_store: CaseStore) -> None:
    sessions = ConsoleSessions(any_store.engine, ttl_seconds=3600, idle_seconds=600)
    sid, made = sessions.create("ana", "investigator", "console", now=NOW)
    assert made.expires_at == NOW + timedelta(hours=1) and len(made.csrf_token) >= 43
    assert sessions.get(sid, NOW + timedelta(minutes=9)) is not None  # touched at 12:09
    assert sessions.get(sid, NOW + timedelta(minutes=18)) is not None  # idle 9 min only
    assert sessions.get(sid, NOW + timedelta(minutes=29)) is None  # idle 11 min
    again, _ = sessions.create("ana", "investigator", "console", now=NOW)
    busy = NOW
    while busy < NOW + timedelta(minutes=55):  # kept busy, it still ends at its ttl
        busy += timedelta(minutes=5)
        assert sessions.get(again, busy) is not None
    assert sessions.get(again, NOW + timedelta(minutes=61)) is None
    third, _ = sessions.create("bo", "admin", "console", now=NOW)
    assert sessions.revoke(third, NOW) and not sessions.revoke(third, NOW)
    assert sessions.get(third, NOW) is None
    assert sessions.get("unknown", NOW) is None and sessions.get("", NOW) is None


def test_only_the_hash_of_a_session_id_is_stored_and_old_ones_are_purged(
        any_store: CaseStore) -> None:
    sessions = ConsoleSessions(any_store.engine, ttl_seconds=3600, idle_seconds=600)
    sid, _ = sessions.create("ana", "investigator", "console", now=NOW)
    with any_store.engine.connect() as conn:
        stored = [r[0] for r in conn.exec_driver_sql("SELECT id_hash FROM console_sessions")]
    assert stored == [id_hash(sid)] and sid not in stored
    assert sessions.count_live(NOW) == 1
    assert sessions.purge(NOW + timedelta(hours=2)) == 1
    assert sessions.count_live(NOW) == 0


def test_a_card_number_never_becomes_a_session_subject(any_store: CaseStore) -> None:
    sessions = ConsoleSessions(any_store.engine, ttl_seconds=3600, idle_seconds=600)
    with pytest.raises(EventValidationError):
        sessions.create("4111111111111111", "investigator", "console", now=NOW)


def test_the_sla_setting_is_parsed_and_a_malformed_one_fails_loudly(settings: Settings) -> None:
    assert parse_sla(settings.case_sla_hours) == {"multi_country": 4.0, "velocity": 8.0,
                                                  "decision": 24.0, "*": 24.0}
    for bad in ("multi_country=4", "velocity=0,*=2", "velocity=x,*=2", "velocity,*=2",
                "*=4,*=5", "=3,*=4", ""):
        with pytest.raises(ConfigError, match="KESTREL_CASE_SLA_HOURS"):
            parse_sla(bad)


def _case(rules: tuple[str, ...], opened_hours_ago: float, status: str = "open"
          ) -> CaseSummary:
    opened = NOW - timedelta(hours=opened_hours_ago)
    return CaseSummary(1, "C1", status, None, False, None, 0.9, rules, opened, opened, None, 1)


def test_each_case_takes_the_shortest_sla_of_its_rules() -> None:
    table = parse_sla("multi_country=4,velocity=8,decision=24,*=12")
    assert sla_hours(_case(("velocity", "multi_country"), 0), table) == 4
    assert sla_hours(_case(("velocity_decline",), 0), table) == 12  # a rule not named: *
    assert sla_hours(_case((), 0), table) == 24  # a decision without rule hits
    rows = rows_of((_case(("multi_country",), 5), _case(("velocity",), 5),
                    _case(("multi_country",), 5, "closed")), table, NOW)
    assert [r.overdue for r in rows] == [True, False, False]
    assert rows[0].due_in == timedelta(hours=-1) and rows[1].due_in == timedelta(hours=3)


def test_the_queue_filters_are_checked_and_turned_into_a_store_query() -> None:
    f = Filters.of({"status": "escalated", "band": "0.8–0.9", "assignee": "me", "age": "4h",
                    "rule": "velocity", "page": "3"})
    query = f.store_query("ana", NOW)
    assert query["status"] == "escalated" and query["assignee"] == "ana"
    assert (query["min_score"], query["max_score"]) == (0.8, 0.9)
    assert query["older_than"] == timedelta(hours=4) and query["offset"] == 50
    assert Filters.of({"assignee": "unassigned"}).store_query("ana", NOW)["unassigned"]
    assert Filters.of({"status": "all"}).store_query("ana", NOW)["status"] is None
    assert f.link(page=1) == ("/console/?status=escalated&rule=velocity&band=0.8%E2%80%930.9"
                              "&assignee=me&age=4h")
    with pytest.raises(EventValidationError) as refused:
        Filters.of({"status": "pending", "band": "x", "page": "0", "age": "1y",
                    "rule": "4111111111111111"})
    assert {e.path for e in refused.value.errors} == {"status", "band", "page", "age", "rule"}


def test_after_sign_in_only_console_paths_are_followed() -> None:
    assert safe_next("/console/cases/3") == "/console/cases/3"
    for bad in (None, "", "https://evil.example/", "//evil.example/", "/console//evil",
                "/v1/alerts", "/console/\\evil", "/console/x\r\nSet-Cookie: a=b"):
        assert safe_next(bad) == "/console/", bad
