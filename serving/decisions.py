"""Decisioning: features → champion model → rules → a decision with its reasons.

One code path for one transaction and for a batch (a batch is a list; Redis and XGBoost are
called once for all of it). A decision is degraded — rules alone decide — when the online
features cannot be read, no model is loaded or it fails, or the latency budget
(``KESTREL_SCORE_BUDGET_MS``) is spent before the model's score is in. Everything but
``latency_ms`` and ``unpublished`` is a function of the inputs, the stored features and the
model version, so identical inputs give identical outputs.

``unpublished`` says which of the decision's records (the scored transaction on
`transactions`, the decision on `decisions`) could not be handed to the broker when it was
made: ``{}`` normally; per topic ``"spooled"`` (the broker is stalled or gone: kept in the
local spool, republished in order when it answers) or ``"dropped"`` (the spool is full: lost,
and counted). It is not ``degraded``, which is about the score only.

The `decisions` record is the answer with ``decided_at`` spliced in and — for a decision that
is not an allow, what a case is opened from — ``customer_id``, ``card_id``, ``event_time``, the
``transaction`` and the scored ``features`` (:func:`decision_record`; docs/events.md). An
allow's record stays as small as the answer: most decisions are allows.

Reasons are XGBoost's exact TreeSHAP values (``pred_contribs``): the features that pushed the
score up the most, each with its value and a sentence.

``audited`` says whether the audit log took the decision's record (serving/audit.py): false
while its disk is full or failing, or its queue is full. The decision is answered all the
same (a payment does not wait for a log) and counted in ``kestrel_unaudited_decisions_total``;
like ``latency_ms`` it is not a function of the inputs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import orjson

from kestrel.events import TransactionEvent
from kestrel.feature_words import WHOLE_NUMBERS, missing
from kestrel.settings import Settings
from kestrel.topics import DECISIONS, TRANSACTIONS
from serving import metrics
from serving.audit import AuditLog
from serving.features import BudgetSpent, FeatureFrame, OnlineFeatures
from serving.model import ModelHolder
from serving.publisher import LIVE, Publisher, Route
from serving.redis_guard import RedisUnavailable
from serving.rules import Outcome, RulesEngine

log = logging.getLogger("kestrel.serving.decisions")
TOP_REASONS = 3
Explain = Literal["all", "flagged"]

_TEXT: dict[str, str] = {
    "txn_amount": "the amount is {v:.2f}",
    "amount_to_avg_30d": "the amount is {v:.1f}x the customer's 30-day average",
    "km_from_home": "the payment is {v:.0f} km from the customer's home",
    "km_from_last_txn": "the card was used {v:.0f} km away last time",
    "seconds_since_last_txn": "the card's previous payment was {v:.0f} s earlier",
    "txn_hour_of_day": "the payment is at {v:.0f}:00 UTC",
    "txn_is_night": "night-time payment flag is {v:.0f}",
    "txn_is_weekend": "weekend flag is {v:.0f}",
}
_ACTION_WORD = {"allow": "Allowed", "challenge": "Challenged", "decline": "Declined"}


def reason_text(feature: str, value: float) -> str:
    """A reason as a sentence; a sentinel (−1 for "no earlier payment", NaN) in words, never
    as a number (kestrel.feature_words)."""
    unknown = missing(feature, value)
    if unknown is not None:
        return unknown.sentence
    template = _TEXT.get(feature)
    if template:
        return template.format(v=value)
    if feature in WHOLE_NUMBERS:
        return f"{feature.replace('_', ' ')} is {value:.0f}"
    return f"{feature.replace('_', ' ')} is {value:.2f}"


def _drivers(reasons: list[dict[str, Any]]) -> str:
    return " and ".join([r["text"] for r in reasons[:2]]) or "no single feature"


def _top_contributions(contribs: Any) -> Any:
    """Per row, the indices of the TOP_REASONS largest contributions (bias column left out),
    largest first; ties go to the earlier feature, so the choice is deterministic."""
    values = contribs[:, :-1]
    return np.argsort(-values, axis=1, kind="stable")[:, :TOP_REASONS]


def decision_record(event: TransactionEvent, row: int, frame: FeatureFrame | None,
                    flagged: bool) -> bytes:
    """What the `decisions` record of a decision that is not an allow (what a case is opened
    from, a few in a hundred) carries besides the response, as ``,"k":v…`` to splice in:
    ``customer_id``, ``card_id``, ``event_time``, the ``transaction`` and the scored
    ``features`` (``{name: value}``, a missing value as null; null when the features could
    not be read). An allow's record is the response alone (``b""`` here): most decisions
    are allows, and a batch of 10,000 pays for every byte."""
    if not flagged:
        return b""
    head = {"customer_id": event.customer_id, "card_id": event.card_id,
            "event_time": event.event_time,
            "transaction": {k: getattr(event, k) for k in _TRANSACTION},
            "features": None if frame is None else {
                n: None if v != v else v for n, v in zip(frame.names, frame.x[row].tolist(),
                                                          strict=True)}}
    return b"," + orjson.dumps(head, option=orjson.OPT_UTC_Z)[1:-1]


_TRANSACTION = ("amount", "currency", "country", "lat", "lon", "mcc", "terminal_id", "channel",
                "event_time")


@dataclass(frozen=True)
class Decisions:
    """Decisions in request order, each encoded once as JSON: the response, the
    `decisions` record and the audit record carry those bytes (a batch of 10,000 encoded
    them three times)."""

    encoded: list[bytes]

    def batch_body(self) -> bytes:
        """The ``/v1/score/batch`` response."""
        return b'{"decisions":[%s],"count":%d}' % (b",".join(self.encoded), len(self.encoded))


class Decider:
    def __init__(self, settings: Settings, features: OnlineFeatures, model: ModelHolder,
                 rules: RulesEngine, publisher: Publisher | None, audit: AuditLog):
        self.settings = settings
        self.features = features
        self.model = model
        self.rules = rules
        self.publisher = publisher
        self.audit = audit
        self.budget_s = settings.score_budget_ms / 1000

    def score(self, events: Sequence[TransactionEvent], started: float | None = None,
              explain: Explain = "all") -> Decisions:
        """Decide every event. ``explain="flagged"`` computes reasons only for the decisions
        that challenge or decline (what a batch asks by default: exact SHAP costs seven
        times the prediction); ``"all"`` explains every decision."""
        t0 = started if started is not None else time.perf_counter()
        n = len(events)
        cause: str | None = None
        frame: FeatureFrame | None = None
        model = self.model.current  # one reference: its service and its booster agree
        # the features of the service the model was trained on (its feature_service tag)
        reader = self.features if model is None else self.features.for_service(
            model.feature_service)
        try:  # Redis waits at most what is left of the budget
            frame = reader.read(events, t0 + self.budget_s)
        except BudgetSpent:
            cause = "budget"
        except RedisUnavailable:  # logged when Redis goes and comes back (redis_guard.py),
            cause = "features"  # not once per decision; counted by cause below
        except Exception as exc:
            cause = "features"
            log.warning("online features unavailable, rules decide: %s", exc)
        t1 = time.perf_counter()
        metrics.STAGE_SECONDS.labels("features").observe(t1 - t0)
        probs: Any = None
        rows: Any = None
        if cause is None and model is None:
            cause = "model"
        if cause is None and t1 - t0 > self.budget_s:
            cause = "budget"
        if cause is None and model is not None and frame is not None:
            try:
                rows = model.matrix(frame)
                probs = model.probabilities(rows)
            except Exception as exc:
                cause = "model"
                log.exception("model failed, rules decide: %s", exc)
        t2 = time.perf_counter()
        if cause is None and t2 - t0 > self.budget_s:
            cause = "budget"
        degraded = cause is not None
        if degraded:
            metrics.DEGRADED.labels(cause).inc(n)
        tags = ({"challenge": model.threshold("challenge"), "decline": model.threshold("decline")}
                if model is not None else {})
        scores = [None] * n if degraded else [round(p, 6) for p in probs.tolist()]
        outcomes = self.rules.decide_many(events, scores, tags)
        t_rules = time.perf_counter()
        reasons: list[list[dict[str, Any]]] = [[] for _ in events]
        if not degraded and model is not None:
            which = [i for i, o in enumerate(outcomes) if explain == "all" or o.action != "allow"]
            if which:
                contribs = model.contributions(rows, which)
                for i, contrib, order in zip(which, contribs, _top_contributions(contribs),
                                             strict=True):
                    reasons[i] = self._reasons(model.features, rows.x[i], contrib, order)
        t3 = time.perf_counter()
        metrics.STAGE_SECONDS.labels("model").observe((t2 - t1) + (t3 - t_rules))
        version = None if degraded or model is None else model.version
        # what the broker cannot take now goes to the spool, or is lost when that is full:
        # known before the decision is encoded, so the decision says it (serving/publisher.py)
        route: Route = self.publisher.route() if self.publisher is not None else LIVE
        unpublished = {} if route == LIVE else {TRANSACTIONS: route, DECISIONS: route}
        out: list[dict[str, Any]] = [{
            "txn_id": ev.txn_id, "action": outcome.action, "score": score,
            "reasons": why,
            "rules": [{"rule": h.rule, "action": h.action, "text": h.text}
                      for h in outcome.hits],
            "explanation": self._explain(outcome, score, why, cause),
            "model_version": version,
            "degraded": degraded,
            "unpublished": unpublished,
        } for ev, score, outcome, why in zip(events, scores, outcomes, reasons, strict=True)]
        t4 = time.perf_counter()
        metrics.STAGE_SECONDS.labels("rules").observe((t_rules - t2) + (t4 - t3))
        latency_ms = round((t4 - t0) * 1000, 3)
        counts: dict[str, int] = {}
        # a full or failing audit disk does not hold a decision up: the decision says it
        audited = self.audit.admits("decisions", n)
        if not audited:
            metrics.UNAUDITED_DECISIONS.inc(n)
        for d in out:
            d["latency_ms"] = latency_ms
            d["audited"] = audited
            counts[d["action"]] = counts.get(d["action"], 0) + 1
        for action, count in counts.items():
            metrics.DECISIONS.labels(action, str(degraded).lower()).inc(count)
        decided = Decisions([orjson.dumps(d) for d in out])
        self._publish(events, decided, frame, version, cause, route,
                      [d["action"] != "allow" for d in out], audited=audited)
        return decided

    @staticmethod
    def _reasons(features: tuple[str, ...], row: Any, contrib: Any,
                 order: Any) -> list[dict[str, Any]]:
        """The row's top contributions; ``row`` is its values in ``features`` order."""
        values = contrib
        chosen = [int(j) for j in order if values[j] > 0] or [int(order[0])]
        out = []
        for j in chosen:
            value = float(row[j])
            out.append({"feature": features[j],
                        "value": None if value != value else value,
                        "contribution": round(float(values[j]), 6),
                        "text": reason_text(features[j], value)})
        return out

    @staticmethod
    def _explain(outcome: Outcome, score: float | None, reasons: list[dict[str, Any]],
                 cause: str | None) -> str:
        word = _ACTION_WORD[outcome.action]
        decisive = [h for h in outcome.hits if h.action == outcome.action] if outcome.hits \
            else []
        if cause is not None:
            why = {"features": "online features are unavailable",
                   "model": "no model is available", "budget": "the latency budget ran out"}[cause]
            if decisive:
                return f"{word} by rules alone ({why}): {decisive[0].text}."
            return f"{word} by rules alone ({why}): no rule objected."
        challenge, decline = outcome.thresholds or (1.0, 1.0)
        assert score is not None
        by_score = "decline" if score >= decline else "challenge" if score >= challenge \
            else "allow"
        if decisive and by_score != outcome.action:
            return f"{word} because {decisive[0].text}."
        if outcome.action == "allow":
            below = (f"Allowed: fraud score {score:.3f} is below the challenge threshold "
                     f"{challenge:.3f}")
            if not reasons:  # most of a batch: allowed, and explained only when asked
                return f"{below}."
            return f"{below}; the strongest risk signal was that {_drivers(reasons)}."
        drivers = _drivers(reasons)
        return (f"{word}: fraud score {score:.3f} is above the {outcome.action} threshold "
                f"{challenge if outcome.action == 'challenge' else decline:.3f}, mainly "
                f"because {drivers}.")

    def _publish(self, events: Sequence[TransactionEvent], decided: Decisions,
                 frame: FeatureFrame | None, version: str | None, cause: str | None,
                 route: Route, flagged: list[bool], audited: bool = True) -> None:
        now = datetime.now(UTC)
        inputs = [e.to_json() for e in events]  # one encoding for the topic and the audit
        if self.publisher is not None:
            # a decision's record is its response JSON with what a case needs appended
            # (decision_record) and ``decided_at``
            stamp = b',"decided_at":' + orjson.dumps(now, option=orjson.OPT_UTC_Z) + b"}"
            try:  # never blocks: produced without waiting, or spooled (serving/publisher.py)
                self.publisher.publish(route, (
                    (TRANSACTIONS, [(e.customer_id, raw)
                                    for e, raw in zip(events, inputs, strict=True)]),
                    (DECISIONS, [(e.txn_id, raw[:-1] + decision_record(e, i, frame, f) + stamp)
                                 for i, (e, raw, f) in enumerate(
                                     zip(events, decided.encoded, flagged, strict=True))])))
            except Exception:  # a decision is answered even then; the audit below keeps it
                log.exception("could not publish or spool %d decisions", len(events))
        # the feature vector as values in the order of ``feature_names`` (one list of names,
        # encoded once): built as {name: value} it cost a batch more than its scores did
        names = orjson.Fragment(orjson.dumps(frame.names if frame is not None else ()))
        rows = frame.rows_json() if frame is not None else [b"[]"] * len(events)
        if not audited:
            return  # refused: the decision says so
        self.audit.record_many("decisions", [{
            "at": now, "txn_id": ev.txn_id, "input": orjson.Fragment(raw),
            "feature_names": names, "features": orjson.Fragment(row),
            "model_version": version, "degraded_cause": cause, "output": orjson.Fragment(out)}
            for ev, raw, out, row in zip(events, inputs, decided.encoded, rows, strict=True)],
            admitted=True)
