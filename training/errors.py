"""Training's typed errors (root: kestrel.errors.KestrelError)."""

from __future__ import annotations

from kestrel.errors import KestrelError


class TrainingError(KestrelError):
    """A training set, a fold or a model cannot be built from what is there; the message
    says what to run or change."""
