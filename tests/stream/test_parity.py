"""Online/offline parity: every served vector equals the offline builder's, feature by feature."""

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
    for name, fp in report.features.items():
        assert fp.compared >= report.transactions * 0.9, name
        assert fp.mismatches == 0, (name, fp.examples)
    assert report.not_comparable == 0
