"""A worker's case services (serving/case_services.py) on a real broker and a real
PostgreSQL: while the case store cannot be reached the worker stays ready — it still decides
payments — and says why in the details; the intake and the relay catch up once it answers."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson
import pytest
from sqlalchemy import create_engine, text

from kestrel.producer import EventProducer
from kestrel.settings import Settings
from kestrel.topics import ALERTS
from serving.case_services import CaseServices
from tests.cases.conftest import SERVERS
from tests.faults.probes import wait_for
from tests.serving.test_case_intake import produce, stream_alert

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_an_unreachable_case_store_is_reported_but_the_worker_stays_ready(
        services: Settings, tmp_path: Path) -> None:
    name = f"kestrel_cases_{uuid.uuid4().hex[:12]}"  # not created yet: nothing answers
    settings = services.model_copy(update={
        "case_store_url": f"postgresql+psycopg://root@localhost:5432/{name}"})
    cases = CaseServices(settings, lambda: EventProducer(settings), lambda _customer: None)
    server = create_engine(SERVERS["postgresql"], isolation_level="AUTOCOMMIT")
    cases.start()
    try:
        assert cases.intake is not None and cases.relay is not None
        alert = stream_alert("card-1", "C1", 0)
        produce(settings, ALERTS, [(alert["card_id"], orjson.dumps(alert))])
        wait_for(lambda: cases.intake is not None
                 and cases.intake.state == "waiting_for_store", 60)
        checks, details = cases.readiness()
        assert checks == {"case_intake": True}, details  # the relay is reported, not a check
        assert details["label_relay"]["healthy"] is False  # it cannot reach the store
        assert details["case_store"]["reachable"] is False
        assert name in details["case_store"]["error"]
        assert details["case_intake"]["state"] == "waiting_for_store"

        with server.connect() as conn:  # the database appears: both threads catch up
            conn.execute(text(f"CREATE DATABASE {name}"))
        wait_for(lambda: cases.intake is not None and cases.intake.stored == 1, 90)
        wait_for(lambda: cases.relay is not None and cases.relay.healthy, 60)
        checks, details = cases.readiness()
        assert all(checks.values()) and details["case_store"]["reachable"] is True
        assert cases.store().queue().total == 1
    finally:
        cases.stop()
        with server.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        server.dispose()
