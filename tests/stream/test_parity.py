"""Online/offline parity on the path production runs: every row the stream wrote to the online
store equals what Feast's point-in-time join reads at its time and what the per-event engine
computes, and Redis holds the last row written per key, feature by feature."""

from __future__ import annotations

import pytest

from kestrel.settings import Settings
from kestrel.windows import ENTITIES, feature_names
from pipelines.stream.parity import run_parity

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_replayed_days_have_zero_mismatches(settings: Settings) -> None:
    report = run_parity(settings, days=3, customers=400, terminals=800,
                        progress=lambda *_: None)
    assert report.transactions > 2000
    names = {n for e in ENTITIES for n in feature_names(e)}
    assert set(report.features) == names
    # paced replay: most (entity, event) rows reach the online store (3 per transaction)
    assert report.online_rows > 2 * report.transactions
    assert report.redis_keys > 0
    for name, fp in report.features.items():
        # each of its entity's online rows offline and per event, each key in Redis
        assert fp.compared >= report.transactions * 1.5, name
        assert fp.mismatches == 0, (name, fp.examples)
    assert report.not_comparable == 0
