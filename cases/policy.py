"""Which decisions open (or join) a case, from the settings.

A decision on `decisions` opens a case when its action is one of
``KESTREL_CASE_DECISION_ACTIONS`` (default ``decline``), or when it is a ``challenge`` scored
at or above ``KESTREL_CASE_CHALLENGE_MIN_SCORE`` (default 0.9). An ``allow`` never does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kestrel.settings import Settings


@dataclass(frozen=True)
class DecisionPolicy:
    actions: frozenset[str]  # actions that always open a case (decline, challenge)
    challenge_min_score: float  # a challenge at or above this opens one all the same

    @classmethod
    def from_settings(cls, settings: Settings) -> DecisionPolicy:
        return cls(settings.case_actions, settings.case_challenge_min_score)

    def flags(self, decision: dict[str, Any]) -> bool:
        """Whether this decision record opens or joins a case."""
        action = decision.get("action")
        if action in self.actions:
            return True
        if action != "challenge":
            return False
        score = decision.get("score")
        return isinstance(score, int | float) and score >= self.challenge_min_score
