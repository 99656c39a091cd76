"""The validation protocol of the handbook (Le Borgne et al., *Reproducible Machine Learning
for Credit Card Fraud Detection*): train, wait, test — prequentially.

A fold is a training window, then a delay period as long as the label delay, then a test
window. The model is trained at the start of the test window and can only know the labels
known then (``labelled_at < test_start``): with the delay period equal to the label delay,
that covers the training window, and the delay period's own transactions are unlabelled at
training time (they are used, without labels, to set the alert thresholds). Test folds step
back week by week from the end of the data; validation folds (where hyper-parameters are
chosen) are the same folds shifted back by the delay plus the test window, so no validation
test window overlaps a test fold's test window. In a test window, the cards already known to
be compromised (a fraud label known before that test day) are removed: the bank has blocked
them, a detector gets no credit for finding them again.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from kestrel.settings import Settings
from training.errors import TrainingError

DAY = timedelta(days=1)


def _at(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass(frozen=True)
class Fold:
    name: str
    train_start: datetime
    train_end: datetime  # = delay start
    test_start: datetime  # = delay end; the model is trained (and its labels known) here
    test_end: datetime

    @property
    def label_cutoff(self) -> datetime:
        return self.test_start

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name,
                "train": f"{self.train_start:%Y-%m-%d} … {self.train_end:%Y-%m-%d}",
                "delay": f"{self.train_end:%Y-%m-%d} … {self.test_start:%Y-%m-%d}",
                "test": f"{self.test_start:%Y-%m-%d} … {self.test_end:%Y-%m-%d}",
                "labels_known_before": self.label_cutoff.isoformat()}


@dataclass(frozen=True)
class Protocol:
    """Windows in whole days; ``end`` is the first day after the data (exclusive)."""

    end: date
    train_days: int = 7
    delay_days: int = 7
    test_days: int = 7
    folds: int = 4
    step_days: int = 7
    validation_folds: int = field(default=-1)

    def __post_init__(self) -> None:
        for name in ("train_days", "test_days", "folds", "step_days"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be at least 1")
        if self.delay_days < 0:
            raise TrainingError("delay_days must be >= 0")

    @classmethod
    def for_settings(cls, settings: Settings, end: date, **kw: int) -> Protocol:
        """The delay period is the label delay, rounded up to whole days."""
        return cls(end=end, delay_days=math.ceil(settings.label_delay_days), **kw)

    def _fold(self, name: str, test_end: date) -> Fold:
        test_start = test_end - self.test_days * DAY
        train_end = test_start - self.delay_days * DAY
        train_start = train_end - self.train_days * DAY
        return Fold(name, _at(train_start), _at(train_end), _at(test_start), _at(test_end))

    def test_folds(self) -> list[Fold]:
        return [self._fold(f"test-{k}", self.end - k * self.step_days * DAY)
                for k in range(self.folds)]

    def valid_folds(self) -> list[Fold]:
        n = self.folds if self.validation_folds < 0 else self.validation_folds
        shift = (self.delay_days + self.test_days) * DAY
        return [self._fold(f"valid-{k}", self.end - shift - k * self.step_days * DAY)
                for k in range(n)]

    def final_fold(self) -> Fold:
        """The production model's window: trained on the latest labelled days, now."""
        train_end = self.end - self.delay_days * DAY
        return Fold("final", _at(train_end - self.train_days * DAY), _at(train_end),
                    _at(self.end), _at(self.end))

    def span(self) -> tuple[date, date]:
        """First and last day (inclusive) any fold touches."""
        folds = [*self.test_folds(), *self.valid_folds(), self.final_fold()]
        return min(f.train_start for f in folds).date(), self.end - DAY

    def check(self, first_day: date, last_day: date) -> None:
        first, _ = self.span()
        if first < first_day or self.end - DAY > last_day:
            need = (self.end - first).days
            raise TrainingError(
                f"the protocol needs {first} … {self.end - DAY} ({need} days: {self.folds} "
                f"test folds of {self.test_days} days stepping back {self.step_days}, "
                f"training {self.train_days} days, delay {self.delay_days} days, and the "
                f"validation folds before them) but the lake holds {first_day} … {last_day}; "
                "simulate more days or pass fewer --folds / shorter windows")

    def fingerprint(self) -> str:
        text = "|".join(f"{f.name}:{f.train_start}:{f.test_start}:{f.test_end}"
                        for f in self.test_folds())
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def as_dict(self) -> dict[str, object]:
        return {"end": self.end.isoformat(), "train_days": self.train_days,
                "delay_days": self.delay_days, "test_days": self.test_days,
                "folds": self.folds, "step_days": self.step_days,
                "test_folds": [f.as_dict() for f in self.test_folds()],
                "validation_folds": [f.as_dict() for f in self.valid_folds()],
                "final": self.final_fold().as_dict()}
