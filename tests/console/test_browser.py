"""The console in a real browser (Debian's Chromium driven by Playwright), against the app
served by uvicorn on a free port, with a real broker and Redis: cases come in through the
case intake (records on `alerts` and `decisions`), the label relay publishes console labels
to `labels`. An investigator signs in by typing a token, filters the queue, opens a case,
sees the SHAP chart and the map, adds a note (one holding a ``<script>``), labels a
transaction fraud and closes the case; the label is then on `labels` and, through the label
intake, in the label store. Also: a bot token is refused, a form stripped of its CSRF token
is refused, and no page logs a console error. The run writes the README's screenshots
(docs/img/console-queue.png, docs/img/console-case.png)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from confluent_kafka import Producer
from playwright.sync_api import ConsoleMessage, Page, expect, sync_playwright

from cases.store import CaseStore
from kestrel.kafka import producer_config
from kestrel.services import free_port
from kestrel.settings import Settings
from kestrel.topics import ALERTS, DECISIONS, LABELS
from labels.intake import LabelIntake
from labels.store import latest_labels
from serving.app import create_app
from serving.auth import mint_token
from tests.console.records import PLACES, alert, decision
from tests.pipelines.test_archive import read_topic

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 800}


class Served:
    def __init__(self, settings: Settings, url: str, store: CaseStore):
        self.settings, self.url, self.store = settings, url, store


@pytest.fixture
def served(services: Settings, tmp_path: Path) -> Iterator[Served]:
    """The app under uvicorn (a thread), its case intake and label relay running."""
    settings = services.model_copy(update={
        "case_store_url": f"sqlite:///{tmp_path / 'cases.db'}"})
    app = create_app(settings)
    runtime = app.state.runtime()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    runtime.cases.start()  # the worker's case intake and label relay, as `kestrel serve` runs
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield Served(settings, f"http://127.0.0.1:{port}", runtime.case_store())
    finally:
        server.should_exit = True
        thread.join(10)
        runtime.stop()


def _seed(served: Served) -> int:
    """The main case through the intake (an alert and a declined decision on `alerts` and
    `decisions`); a few older cases straight into the store for a realistic queue."""
    producer = Producer(producer_config(served.settings))
    main_alert = alert("C0042", "card-7f3a", 5)
    producer.produce(ALERTS, key=main_alert["alert_id"], value=orjson.dumps(main_alert))
    declined = decision("C0042", "card-7f3a", "txn-88af21", 0.97)
    producer.produce(DECISIONS, key=declined["txn_id"], value=orjson.dumps(declined))
    assert producer.flush(15) == 0
    now = datetime.now(UTC)
    for i, (hours, score) in enumerate([(30, 0.91), (6, 0.88), (2, 0.64), (1, 0.42),
                                        (12, 0.99)]):
        customer = f"C01{i:02d}"
        served.store.add_decision(decision(customer, f"card-{i}b", f"txn-{i}x", score),
                                  now - timedelta(hours=hours))
        if i % 2 == 0:
            served.store.add_alert(alert(customer, f"card-{i}b", 3 + i % 3, tag=f"v{i}",
                                         rule="velocity"),
                                   now - timedelta(hours=hours))
    deadline = time.monotonic() + 60
    while (case := served.store.open_case_of("C0042")) is None or \
            len(served.store.get(case.id).alerts) < 2:
        assert time.monotonic() < deadline, "the case intake did not store the records"
        time.sleep(0.2)
    return case.id


def _watch(page: Page, errors: list[str] | None = None) -> list[str]:
    """Every console error and uncaught exception of the page, with where it came from."""
    errors = [] if errors is None else errors

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            errors.append(f"console: {msg.text} ({msg.location.get('url')})")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    return errors


def _sign_in(page: Page, base: str, token: str) -> None:
    page.goto(base + "/console/")
    expect(page).to_have_url(base + "/console/sign-in?next=%2Fconsole%2F")
    page.fill("#token", token)
    page.click("button:has-text('Sign in')")


def _labels(settings: Settings) -> list[dict[str, Any]]:
    return [orjson.loads(m.value()) for m in read_topic(settings, LABELS, 1, timeout=30)]


def test_an_investigator_works_a_case_in_the_browser(served: Served) -> None:
    case_id = _seed(served)
    base = served.url
    investigator = mint_token(served.settings, "investigator", "console", subject="ana")
    bot = mint_token(served.settings, "bot", "assistant", customer="C0042")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
            page = context.new_page()
            errors = _watch(page)

            # a bot token is refused (403 page, no session), in a browser of its own
            outsider = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
            refused = outsider.new_page()
            refusal_errors = _watch(refused)
            _sign_in(refused, base, bot)
            expect(refused.locator("h1")).to_have_text("Not allowed")
            expect(refused.locator("main")).to_contain_text("may not use the investigator")
            refused.goto(base + "/console/")
            expect(refused.locator("h1")).to_have_text("Sign in")
            outsider.close()

            # the investigator signs in and filters the queue
            _sign_in(page, base, investigator)
            expect(page.locator("h1")).to_have_text("Queue")
            expect(page.locator("table.queue tbody tr")).to_have_count(6)
            expect(page.locator("tr.overdue")).not_to_have_count(0)
            page.screenshot(path=str(ROOT / "docs/img/console-queue.png"))
            page.select_option("select[name=band]", "≥ 0.9")
            page.fill("input[name=rule]", "multi_country")
            page.click("button:has-text('Filter')")
            rows = page.locator("table.queue tbody tr")
            expect(rows).to_have_count(1)
            expect(rows.first).to_contain_text("C0042")

            # open the case: the SHAP chart and the map are drawn
            rows.first.locator(f"a[href='/console/cases/{case_id}']").click()
            expect(page.locator("h1")).to_contain_text(f"Case #{case_id}")
            expect(page.locator("svg.chart-shap")).to_have_count(1)
            expect(page.locator("svg.chart-shap rect")).not_to_have_count(0)
            expect(page.locator("svg.chart-map")).to_have_count(1)
            expect(page.locator("svg.chart-map circle")).to_have_count(len(PLACES[:5]) + 1)
            expect(page.locator(".narrative")).to_contain_text("5 countries")

            # a note holding a script renders as text
            note = '<script>document.title="pwned"</script> called the customer'
            page.fill("#note-body", note)
            page.click("button:has-text('Add note')")
            expect(page.locator(".flash")).to_have_text("Your note is added.")
            expect(page.locator(".note p").first).to_have_text(note)
            assert page.title() != "pwned"

            # a form stripped of its CSRF token is refused, and nothing changes (in a second
            # tab of the same session)
            tab = context.new_page()
            _watch(tab, refusal_errors)
            tab.goto(f"{base}/console/cases/{case_id}")
            tab.locator("form.note-form input[name=csrf]").evaluate("e => e.remove()")
            tab.fill("#note-body", "posted without a token")
            tab.click("button:has-text('Add note')")
            expect(tab.locator("h1")).to_have_text("Not allowed")
            expect(tab.locator("main")).to_contain_text("security token")
            tab.close()
            page.reload()
            expect(page.locator(".note")).to_have_count(1)

            # label the declined transaction fraud, then close the case
            row = page.locator("table.evidence tr", has_text="txn-88af21")
            row.locator("input[value=fraud]").check()
            row.locator("input[name=reason]").fill("customer confirms the card was stolen")
            row.locator("button:has-text('Label')").click()
            expect(page.locator(".flash")).to_contain_text("label is recorded")
            expect(page.locator("table.evidence tr", has_text="txn-88af21")).to_contain_text(
                "labelled fraud")
            page.screenshot(path=str(ROOT / "docs/img/console-case.png"))
            page.select_option("#outcome", "confirmed_fraud")
            page.click("button:has-text('Close case')")
            expect(page.locator(".flash")).to_have_text("The case is closed.")
            expect(page.locator(".case-head")).to_contain_text("confirmed fraud")

            page.goto(base + "/console/report", wait_until="networkidle")
            expect(page.locator("h1")).to_have_text("Report")
            expect(page.locator("svg.chart-columns")).to_have_count(1)
            # the printable SAR draft (networkidle: the browser's icon request included)
            page.goto(f"{base}/console/cases/{case_id}/sar", wait_until="networkidle")
            expect(page.locator("h1")).to_contain_text(f"case {case_id}")
            expect(page.locator("body")).to_contain_text("called the customer")
            assert errors == [], errors  # the investigator's pages: not one console error
            # the refusals: the browser reports the 403 status of the page, nothing else
            assert len(refusal_errors) == 2, refusal_errors
            assert all("status of 403" in e for e in refusal_errors), refusal_errors
        finally:
            browser.close()

    labels = [label for label in _labels(served.settings) if label["txn_id"] == "txn-88af21"]
    assert len(labels) == 1
    assert labels[0]["is_fraud"] is True and labels[0]["analyst_id"] == "ana"
    assert labels[0]["source"] == "investigator"
    assert served.store.get(case_id).status == "closed"
    # and on into the label store training reads (the label intake: `labels` → the lake)
    LabelIntake(served.settings).run(idle_seconds=2.0)
    stored = latest_labels(served.settings.lake_dir)
    row = stored[stored["txn_id"] == "txn-88af21"]
    assert len(row) == 1 and bool(row["is_fraud"].iloc[0])
    assert row["source"].iloc[0] == "investigator"
    assert row["reason"].iloc[0] == "customer confirms the card was stolen"
