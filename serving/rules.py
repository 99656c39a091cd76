"""The rules engine: block lists, amount limits and score thresholds, from a YAML file.

Config, not code: ``serving/rules.yaml`` (shipped with the package) or the file named by
``KESTREL_RULES_PATH``. ``decide`` is a pure function of the transaction, the score (None when
degraded) and the thresholds, so identical inputs give identical actions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kestrel.errors import ConfigError
from kestrel.events import TransactionEvent

DEFAULT_RULES = Path(__file__).with_name("rules.yaml")
SEVERITY = {"allow": 0, "challenge": 1, "decline": 2}


class _Blocked(BaseModel):
    model_config = ConfigDict(extra="forbid")
    countries: list[str] = Field(default_factory=list)
    mccs: list[str] = Field(default_factory=list)
    terminals: list[str] = Field(default_factory=list)


class _Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decline_above: float | None = None
    challenge_above: float | None = None
    challenge_above_by_channel: dict[str, float] = Field(default_factory=dict)


class _Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    challenge: float | None = None
    decline: float | None = None
    default_challenge: float = 0.5
    default_decline: float = 0.9


class _Degraded(BaseModel):
    model_config = ConfigDict(extra="forbid")
    challenge_above: float | None = None


class RulesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    blocked: _Blocked = Field(default_factory=_Blocked)
    amount_limits: _Limits = Field(default_factory=_Limits)
    thresholds: _Thresholds = Field(default_factory=_Thresholds)
    degraded: _Degraded = Field(default_factory=_Degraded)


@dataclass(frozen=True)
class RuleHit:
    rule: str
    action: str
    text: str


@dataclass(frozen=True)
class Outcome:
    action: str
    hits: tuple[RuleHit, ...] = field(default_factory=tuple)
    thresholds: tuple[float, float] | None = None


class RulesEngine:
    def __init__(self, config: RulesConfig, source: str = "<memory>"):
        self.config = config
        self.source = source
        self._countries = {c.upper() for c in config.blocked.countries}
        self._mccs = set(config.blocked.mccs)
        self._terminals = set(config.blocked.terminals)
        lim = config.amount_limits
        limits = [v for v in (lim.decline_above, lim.challenge_above,
                              *lim.challenge_above_by_channel.values()) if v is not None]
        # an amount at or below every limit hits no amount rule (degraded adds its own cap)
        self._amount_floor = min(limits, default=math.inf)

    @classmethod
    def from_file(cls, path: Path | None) -> RulesEngine:
        path = path or DEFAULT_RULES
        try:
            raw: Any = yaml.safe_load(path.read_text()) or {}
            return cls(RulesConfig.model_validate(raw), str(path))
        except FileNotFoundError:
            raise ConfigError(f"rules file {path} not found; set KESTREL_RULES_PATH") from None
        except (yaml.YAMLError, ValidationError) as exc:
            raise ConfigError(f"rules file {path} is invalid: {exc}") from None

    def thresholds(self, tags: dict[str, float | None]) -> tuple[float, float]:
        t = self.config.thresholds
        challenge = t.challenge if t.challenge is not None else tags.get("challenge")
        decline = t.decline if t.decline is not None else tags.get("decline")
        return (t.default_challenge if challenge is None else challenge,
                t.default_decline if decline is None else decline)

    def rule_hits(self, ev: TransactionEvent, degraded: bool) -> list[RuleHit]:
        hits: list[RuleHit] = []
        if ev.country in self._countries:
            hits.append(RuleHit("blocked_country", "decline",
                                f"payments from country {ev.country} are blocked"))
        if ev.mcc in self._mccs:
            hits.append(RuleHit("blocked_mcc", "decline",
                                f"merchant category {ev.mcc} is blocked"))
        if ev.terminal_id in self._terminals:
            hits.append(RuleHit("blocked_terminal", "decline",
                                f"terminal {ev.terminal_id} is blocked"))
        lim = self.config.amount_limits
        if lim.decline_above is not None and ev.amount > lim.decline_above:
            hits.append(RuleHit("amount_decline_limit", "decline",
                                f"amount {ev.amount:.2f} is above the decline limit "
                                f"{lim.decline_above:.2f}"))
        challenge = lim.challenge_above_by_channel.get(ev.channel, lim.challenge_above)
        if challenge is not None and ev.amount > challenge:
            hits.append(RuleHit("amount_challenge_limit", "challenge",
                                f"amount {ev.amount:.2f} is above the {ev.channel} challenge "
                                f"limit {challenge:.2f}"))
        cap = self.config.degraded.challenge_above
        if degraded and cap is not None and ev.amount > cap:
            hits.append(RuleHit("degraded_amount_limit", "challenge",
                                f"amount {ev.amount:.2f} is above {cap:.2f} while the model "
                                "is unavailable"))
        return hits

    def decide(self, ev: TransactionEvent, score: float | None,
               tags: dict[str, float | None]) -> Outcome:
        [outcome] = self.decide_many([ev], [score], tags)
        return outcome

    def decide_many(self, events: Sequence[TransactionEvent], scores: Sequence[float | None],
                    tags: dict[str, float | None]) -> list[Outcome]:
        """``decide`` of each event with its score. Most of a batch hits no rule: those
        events are told apart by a few set lookups and one comparison, and share one
        immutable outcome per action."""
        challenge, decline = self.thresholds(tags)
        thresholds = (challenge, decline)
        plain = {a: Outcome(a, (), thresholds) for a in SEVERITY}
        plain_degraded = Outcome("allow")
        cap = self.config.degraded.challenge_above
        degraded_floor = min(self._amount_floor, math.inf if cap is None else cap)
        countries, mccs, terminals = self._countries, self._mccs, self._terminals
        out: list[Outcome] = []
        for ev, score in zip(events, scores, strict=True):
            floor = self._amount_floor if score is not None else degraded_floor
            if (ev.amount > floor or ev.country in countries or ev.mcc in mccs
                    or ev.terminal_id in terminals):
                hits = self.rule_hits(ev, degraded=score is None)
            else:
                hits = []
            action = max((h.action for h in hits), key=SEVERITY.__getitem__) if hits \
                else "allow"
            if score is None:
                out.append(Outcome(action, tuple(hits)) if hits else plain_degraded)
                continue
            by_score = "decline" if score >= decline else "challenge" if score >= challenge \
                else "allow"
            if SEVERITY[by_score] > SEVERITY[action]:
                action = by_score
            out.append(Outcome(action, tuple(hits), thresholds) if hits else plain[action])
        return out
