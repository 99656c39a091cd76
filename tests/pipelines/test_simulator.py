"""The transaction simulator: determinism, fraud statistics, event contract, lake output."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from kestrel.events import LabelEvent, TransactionEvent
from kestrel.iso import COUNTRIES, CURRENCIES
from kestrel.lake import LABEL_SCHEMA, TRANSACTION_SCHEMA, list_files, read_table
from kestrel.mcc import MCC_CATEGORIES, category_of
from kestrel.pan import CardTokenizer, luhn_valid, redact_pans
from pipelines.simulator import (
    SCENARIO_NAMES,
    SimulationConfig,
    Simulator,
    geography,
    iter_days,
    labels_for,
    write_to_lake,
)
from pipelines.simulator.cards import synthetic_pans
from pipelines.simulator.reach import terminals_within
from pipelines.simulator.scenarios import CUSTOMER_DAYS, TERMINAL_DAYS

TOKENIZE = CardTokenizer(b"simulator-test-key-0123456789").token
TINY = SimulationConfig(customers=200, terminals=400, days=5, seed=7)
# The handbook's population (5,000 customers, 10,000 terminals) over 60 instead of 183 days.
# Scenarios 2 and 3 make ≈ 56 / terminals and ≈ 14 / customers of all payments fraud once
# their 28- / 14-day windows are full, whatever the number of days, so the fraud rate is only
# comparable with the handbook's ≈ 0.8 % at the handbook's population size (1,000 customers ×
# 2,000 terminals gives ≈ 4 %). Over 60 days: ≈ 0.43 % (2) + 0.25 % (3, still ramping up)
# + 0.10 % (4: 1.5 bursts × 6.5 a day) + 0.02 % (5) + 0.05 % (1) ≈ 0.85 %; seeds 0–7 gave
# 0.82–0.90 %. The band below is that expectation ± ~25 %.
STATS = SimulationConfig(days=60, seed=42)
FRAUD_RATE_BAND = (0.0065, 0.0110)
DAY_US = 86_400 * 10**6


def _frame(batches) -> pd.DataFrame:
    """All batches as one frame: transactions, truth and the day index of each row."""
    out = []
    for index, batch in enumerate(batches):
        frame = batch.transactions.to_pandas()
        frame["scenario"] = batch.truth["scenario"].to_numpy()
        frame["is_fraud"] = batch.truth["is_fraud"].to_numpy()
        frame["day"] = index
        out.append(frame)
    return pd.concat(out, ignore_index=True)


@pytest.fixture(scope="module")
def stats():
    simulator = Simulator(STATS, TOKENIZE)
    batches = list(simulator)
    return simulator, batches, _frame(batches)


@pytest.fixture(scope="module")
def tiny_batches():
    return list(iter_days(TINY, TOKENIZE))


# --- building blocks ------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"customers": 0}, "customers must be a positive integer"),
        ({"terminals": -5}, "terminals must be a positive integer"),
        ({"days": 1.5}, "days must be a positive integer"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"scenarios": frozenset({1, 6})}, r"unknown fraud scenarios \[6\]"),
        ({"label_delay_days": -1.0}, "label_delay_days must be"),
        ({"label_delay_days": float("nan")}, "label_delay_days must be"),
    ],
)
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        SimulationConfig(**changes)


def test_too_few_terminals_for_card_testing_is_a_clear_error():
    config = SimulationConfig(customers=10, terminals=1, days=2)
    with pytest.raises(ValueError, match=r"scenario 4 .* at least 3 countries"):
        Simulator(config, TOKENIZE)
    batch = Simulator(replace(config, scenarios=frozenset({1, 2, 3})), TOKENIZE).day(1)
    assert batch.day == date(2018, 4, 2)


def test_mcc_categories():
    assert category_of("5411") == "groceries"
    assert category_of("6011") == "cash"
    assert category_of("0000") == "other"
    assert all(re.fullmatch(r"[0-9]{4}", code) for code in MCC_CATEGORIES)


def test_geography_is_real_and_plausible():
    assert len(set(geography.COUNTRIES)) == 25
    assert set(geography.COUNTRIES) <= COUNTRIES
    assert set(geography.CURRENCIES) <= CURRENCIES
    x = np.array([0.0, 99.9, 100.0, 50.0])
    y = np.array([0.0, 99.9, 100.0, 50.0])
    assert list(geography.countries(x, y)) == ["PT", "FI", "FI", "AT"]
    assert list(geography.currencies(x, y)) == ["EUR", "EUR", "EUR", "EUR"]
    assert geography.latitude(np.array([0.0, 100.0])).tolist() == [36.0, 56.0]
    assert geography.longitude(np.array([0.0, 100.0])).tolist() == pytest.approx([-9.0, 26.0])


def test_reach_matches_brute_force():
    rng = np.random.default_rng(3)
    cx, cy, tx, ty = (rng.uniform(0, 100, n) for n in (300, 300, 900, 900))
    offsets, flat = terminals_within(cx, cy, tx, ty, 5.0)
    dist = np.hypot(cx[:, None] - tx[None, :], cy[:, None] - ty[None, :])
    for i in range(len(cx)):
        assert flat[offsets[i]:offsets[i + 1]].tolist() == np.flatnonzero(dist[i] < 5.0).tolist()


def test_profiles_follow_the_handbook(stats):
    simulator, _, frame = stats
    population = simulator.population
    customers, terminals = population.customers, population.terminals
    assert (len(customers), len(terminals)) == (5000, 10000)
    assert customers.mean_amount.min() >= 5 and customers.mean_amount.max() <= 100
    assert np.allclose(customers.std_amount, customers.mean_amount / 2)
    assert customers.mean_per_day.min() >= 0 and customers.mean_per_day.max() <= 4
    assert customers.reach_offsets[-1] == len(customers.reach)
    # π·5² ≈ 78.5 terminals per customer away from the edges, fewer near them
    assert 70 <= customers.reach_counts.mean() <= 80
    assert list(customers.home_countries[:50]) == list(
        geography.countries(customers.x[:50], customers.y[:50]))
    assert 0.27 <= population.cards / 5000 - 1 <= 0.33
    shares = np.bincount(terminals.channel, minlength=3) / len(terminals)
    assert shares == pytest.approx([0.85, 0.10, 0.05], abs=0.015)
    second_cards = set(population.card_ids.to_pylist()[5000:])
    two_card_customers = {f"C{c:05d}" for c in np.flatnonzero(customers.second_card >= 0)}
    legit = frame[(frame.scenario == 0) & frame.customer_id.isin(two_card_customers)]
    assert legit.card_id.isin(second_cards).mean() == pytest.approx(0.3, abs=0.02)


def test_synthetic_pans_are_distinct_luhn_valid_16_digits():
    pans = synthetic_pans(5000, np.random.default_rng(1))
    assert len(set(pans)) == 5000
    assert all(len(p) == 16 and p.isdigit() and luhn_valid(p) for p in pans)


# --- determinism ----------------------------------------------------------------------------

KEY_COLUMNS = ["txn_id", "event_time", "amount", "card_id", "terminal_id", "device_id"]


def test_same_seed_gives_identical_tables(tiny_batches):
    again = list(iter_days(TINY, TOKENIZE))
    for a, b in zip(tiny_batches, again, strict=True):
        assert a.day == b.day
        assert a.transactions.equals(b.transactions)
        assert a.truth.equals(b.truth)


def test_other_seed_gives_other_tables(tiny_batches):
    other = list(iter_days(replace(TINY, seed=8), TOKENIZE))
    for a, b in zip(tiny_batches, other, strict=True):
        for column in ("amount", "event_time", "card_id"):
            assert a.transactions[column].to_pylist() != b.transactions[column].to_pylist()


def test_a_day_alone_equals_that_day_of_a_full_run(tiny_batches):
    alone = Simulator(TINY, TOKENIZE).day(3)
    assert alone.transactions.equals(tiny_batches[3].transactions)
    assert alone.truth.equals(tiny_batches[3].truth)
    # ... and does not depend on how many days the run has
    longer = Simulator(replace(TINY, days=40), TOKENIZE).day(3)
    assert longer.transactions.equals(tiny_batches[3].transactions)


def test_disabling_scenarios_leaves_the_rest_unchanged(tiny_batches):
    subset = list(iter_days(replace(TINY, scenarios=frozenset({1, 2, 3})), TOKENIZE))
    for full, part in zip(tiny_batches, subset, strict=True):
        keep = pa.compute.less_equal(full.truth["scenario"], 3)
        mine = full.transactions.filter(keep).drop_columns(["txn_id"])
        assert mine.equals(part.transactions.drop_columns(["txn_id"]))


@pytest.mark.parametrize("scenarios", [frozenset(), frozenset({1, 2}), frozenset({3, 5})])
def test_disabled_scenarios_make_no_fraud(scenarios):
    config = replace(TINY, days=20, scenarios=scenarios)
    seen = set()
    for batch in iter_days(config, TOKENIZE):
        seen |= set(batch.truth["scenario"].to_pylist())
    assert seen - {0} <= scenarios
    if scenarios:
        assert seen - {0}, "the enabled scenarios produced no fraud at all in 20 days"


# --- shape of a day -------------------------------------------------------------------------

def test_day_batches_follow_the_lake_contract(tiny_batches):
    for index, batch in enumerate(tiny_batches):
        txns, truth = batch.transactions, batch.truth
        assert batch.day == TINY.start + timedelta(days=index)
        assert txns.schema.equals(TRANSACTION_SCHEMA)
        assert truth.column_names == ["txn_id", "is_fraud", "scenario"]
        assert truth.schema.field("scenario").type == pa.int8()
        assert truth["txn_id"].equals(txns["txn_id"])
        ids = txns["txn_id"].to_pylist()
        prefix = f"{TINY.txn_id_prefix}.{batch.day:%Y%m%d}"
        assert ids == [f"{prefix}.{i:06d}" for i in range(len(ids))]
        times = txns["event_time"].to_pylist()
        assert times == sorted(times)
        midnight = datetime(batch.day.year, batch.day.month, batch.day.day, tzinfo=UTC)
        assert midnight <= times[0] and times[-1] < midnight + timedelta(days=1)
        frame = txns.to_pandas()
        assert ((frame.amount > 0) & (frame.amount <= 1_000_000)).all()
        assert (frame.amount.round(2) == frame.amount).all()
        assert frame.mcc.str.fullmatch(r"[0-9]{4}").all()
        assert set(frame.currency) <= CURRENCIES and set(frame.country) <= COUNTRIES
        assert set(frame.channel) <= {"pos", "ecom", "atm"}
        assert frame.device_id[frame.channel != "ecom"].isna().all()
        assert frame.device_id[frame.channel == "ecom"].notna().all()
        assert (frame.mcc[frame.channel == "atm"] == "6011").all()
        assert (frame.schema_version == 1).all()


def test_sample_rows_validate_as_events(stats):
    _, batches, _ = stats
    for batch in batches[::10]:
        txns = batch.transactions
        fraud = np.flatnonzero(batch.truth["is_fraud"].to_numpy())
        rows = np.unique(np.concatenate([np.arange(0, txns.num_rows, 97), fraud]))
        sample = txns.take(rows).to_pylist()
        for row in sample:
            event = TransactionEvent.model_validate(row)
            assert event.event_time.utcoffset() == timedelta(0)
        for row in labels_for(batch, 7.0).take(rows).to_pylist():
            LabelEvent.model_validate(row)


def test_no_card_number_in_any_output(tiny_batches):
    pan = re.compile(r"(?<![0-9])[0-9]{16}(?![0-9])")
    for batch in tiny_batches:
        tables = [batch.transactions, batch.truth, labels_for(batch, TINY.label_delay_days)]
        for table in tables:
            for name in table.column_names:
                if not pa.types.is_string(table.schema.field(name).type):
                    continue
                values = [v for v in table[name].to_pylist() if v is not None]
                text = "\n".join(values)
                assert not [m for m in pan.findall(text) if luhn_valid(m)], name
                assert redact_pans(text) == text, name
                if name == "txn_id":
                    assert all(re.fullmatch(r"tx-[0-9a-f]{8}\.\d{8}\.\d{6}", v) for v in values)
    card_ids = set(tiny_batches[0].transactions["card_id"].to_pylist())
    assert all(c.startswith("card_") and len(c) == 37 for c in card_ids)


# --- fraud statistics (handbook population, 60 days) ----------------------------------------

def test_fraud_rate_is_near_the_handbook(stats):
    _, _, frame = stats
    rate = frame.is_fraud.mean()
    assert FRAUD_RATE_BAND[0] <= rate <= FRAUD_RATE_BAND[1], rate
    counts = frame.scenario.value_counts().to_dict()
    # expectations over 60 days: (4) 60 × 1.5 × 6.5 ≈ 585, (5) 60 × 1 × 2 = 120,
    # (2) ≈ 2 × (406 + 32 × 28) terminal-days × ≈ 1 payment ≈ 2,600,
    # (3) ≈ 3 × (105 + 46 × 14) customer-days × 2 payments / 3 ≈ 1,500, (1) ≈ 0.05 % ≈ 300
    assert 400 <= counts[4] <= 800
    assert 70 <= counts[5] <= 180
    assert 1800 <= counts[2] <= 3400
    assert 1000 <= counts[3] <= 2000
    assert 150 <= counts[1] <= 500
    assert len(frame) == pytest.approx(5000 * 2 * 60, rel=0.05)


def test_high_amounts_are_fraud(stats):
    _, _, frame = stats
    assert frame.is_fraud[frame.amount > 220].all()
    assert (frame.amount[frame.scenario == 1] > 220).all()
    assert (frame.is_fraud == (frame.scenario > 0)).all()


def test_compromised_terminals_are_fraud_for_28_days(stats):
    simulator, _, frame = stats
    terminal_ids = simulator.population.terminals.ids.to_pylist()
    for first_day, row in enumerate(simulator.scenarios.terminal_schedule):
        for terminal in row:
            window = frame[(frame.terminal_id == terminal_ids[terminal])
                           & (frame.day >= first_day) & (frame.day < first_day + TERMINAL_DAYS)]
            assert window.is_fraud.all()
    # outside every window, a terminal's payments are fraud only through other scenarios
    assert (frame.scenario == 2).sum() > 0


def test_compromised_customer_fraud_is_inside_the_window(stats):
    simulator, _, frame = stats
    customer_ids = simulator.population.customers.ids.to_pylist()
    hits = frame[frame.scenario == 3]
    for day, group in hits.groupby("day"):
        rows = simulator.scenarios.customer_schedule[max(0, day - CUSTOMER_DAYS + 1):day + 1]
        active = {customer_ids[c] for c in rows.ravel()}
        assert set(group.customer_id) <= active


def test_card_testing_bursts_would_trip_the_stream_rule(stats):
    _, _, frame = stats
    bursts = frame[frame.scenario == 4].groupby(["card_id", "device_id"])
    assert len(bursts) > 0
    for _, burst in bursts:
        span = burst.event_time.max() - burst.event_time.min()
        assert len(burst) >= 5
        assert burst.country.nunique() >= 3
        assert span < pd.Timedelta(minutes=5)
        assert (burst.channel == "ecom").all()
        assert burst.amount.between(1, 10).all()


def test_account_takeover_uses_a_never_seen_device(stats):
    simulator, _, frame = stats
    customers = simulator.population.customers
    mean = dict(zip(customers.ids.to_pylist(), customers.mean_amount, strict=True))
    ato = frame[frame.scenario == 5]
    assert len(ato) > 0
    for (customer, device), group in ato.groupby(["customer_id", "device_id"]):
        earlier = frame[(frame.customer_id == customer)
                        & (frame.event_time < group.event_time.min())]
        assert device not in set(earlier.device_id.dropna())
        assert not (frame.device_id[frame.scenario != 5] == device).any()
        assert (group.channel == "ecom").all()
        assert group.amount.between(5 * mean[customer] - 0.01, 10 * mean[customer] + 0.01).all()


# --- labels ---------------------------------------------------------------------------------

def test_labels_are_the_truth_known_later(tiny_batches):
    batch = tiny_batches[2]
    labels = labels_for(batch, 1.5)
    assert labels.schema.equals(LABEL_SCHEMA)
    assert labels["txn_id"].equals(batch.truth["txn_id"])
    assert labels["is_fraud"].equals(batch.truth["is_fraud"])
    reasons = [SCENARIO_NAMES[s] for s in batch.truth["scenario"].to_pylist()]
    assert labels["reason"].to_pylist() == reasons
    assert set(labels["source"].to_pylist()) == {"simulator"}
    assert labels["analyst_id"].null_count == labels.num_rows
    delay = timedelta(days=1.5)
    assert labels["labelled_at"].to_pylist() == [
        t + delay for t in batch.transactions["event_time"].to_pylist()]


# --- lake -----------------------------------------------------------------------------------

def test_write_to_lake_replaces_instead_of_duplicating(tmp_path: Path, tiny_batches):
    lake = tmp_path / "lake"
    calls = []
    config = replace(TINY, label_delay_days=0.5)  # labels of one day span two partitions
    summary = write_to_lake(config, lake, TOKENIZE, progress=lambda *a: calls.append(a))
    generated = pa.concat_tables([b.transactions for b in tiny_batches])

    assert [c[:2] for c in calls] == [(i + 1, TINY.days) for i in range(TINY.days)]
    assert calls[-1][2] == generated.num_rows == summary.transactions
    assert summary.days == TINY.days
    assert (summary.customers, summary.terminals) == (TINY.customers, TINY.terminals)
    truth = np.concatenate([b.truth["scenario"].to_numpy() for b in tiny_batches])
    assert summary.frauds == int((truth > 0).sum())
    assert summary.frauds_per_scenario == {
        SCENARIO_NAMES[k]: int((truth == k).sum()) for k in range(1, 6)}
    for day in (TINY.start + timedelta(days=i) for i in range(TINY.days)):
        assert (lake / f"transactions/event_date={day}/simulated.parquet").is_file()
        for known in (day, day + timedelta(days=1)):
            assert (lake / f"labels/labelled_date={known}/simulated-from-{day}.parquet").is_file()
    assert summary.files_written == len(list_files(lake, "transactions")) + len(
        list_files(lake, "labels")) == TINY.days * 3

    def read_back() -> tuple[pa.Table, pa.Table]:
        txns = read_table(lake, "transactions").drop_columns(["event_date"])
        labels = read_table(lake, "labels").drop_columns(["labelled_date"])
        return txns.sort_by("txn_id"), labels.sort_by("txn_id")

    txns, labels = read_back()
    assert txns.equals(generated.sort_by("txn_id"))
    expected_labels = pa.concat_tables(labels_for(b, 0.5) for b in tiny_batches)
    assert labels.equals(expected_labels.sort_by("txn_id"))

    # the same run again leaves every file as it was (mtime included: the batch jobs'
    # fingerprints see no change); then the default 7-day delay: old labels gone
    stamps = {p: p.stat().st_mtime_ns for p in lake.rglob("*.parquet")}
    write_to_lake(config, lake, TOKENIZE)
    assert read_back()[0].num_rows == generated.num_rows
    assert {p: p.stat().st_mtime_ns for p in lake.rglob("*.parquet")} == stamps
    write_to_lake(TINY, lake, TOKENIZE)
    txns, labels = read_back()
    assert txns.equals(generated.sort_by("txn_id"))
    assert labels.num_rows == generated.num_rows
    assert len(list_files(lake, "labels")) == TINY.days
    known = date(2018, 4, 8)
    assert (lake / f"labels/labelled_date={known}/simulated-from-2018-04-01.parquet").is_file()
