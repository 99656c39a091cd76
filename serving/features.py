"""Online features of a feature service, read straight from Redis in Feast's format.

Feast's ``get_online_features`` builds protos and Arrow tables per call, too slow when a
decision needs five views and a batch up to 10,000 rows. The stored
layout is Feast's (kestrel/feast_codec.py, which also decodes): one hash per entity key holding
every view of that entity, fields ``mmh3("<view>:<feature>")``, values serialized ``feast.Value``.
So one pipelined round trip of three HMGETs per transaction (card, customer, terminal) reads
the whole vector, and N transactions cost one round trip for 3·N HMGETs.

The request-time features are Feast's own on-demand views of
feature_repo/kestrel_repo/request_views.py: their python-mode functions are taken from the
repo and called on the same inputs, so scoring runs the arithmetic training ran.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from redis import Redis

from kestrel.errors import KestrelError
from kestrel.events import TransactionEvent
from kestrel.feast_codec import ValueDecoder, feature_field
from kestrel.resp import roundtrip
from kestrel.settings import Settings
from pipelines.features.online_writer import ViewWriter
from pipelines.features.store import load_repo, repo_config

if TYPE_CHECKING:
    from feast.repo_contents import RepoContents
from serving.redis_guard import RedisGuard, RedisUnavailable

FEATURE_SERVICE = "fraud_scoring_v1"
"""The service read when no model is loaded (the frame is still audited and published); with
a model, the service its registry version's ``feature_service`` tag names."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_DECODER = ValueDecoder()  # the worker's memo of stored values, shared by every reader


@dataclass(frozen=True)
class _EntityRead:
    """The HMGET for one entity: its key builder, the (view feature, field) pairs, and the
    command's RESP encoding around the key (the fields never change, so they are encoded
    once)."""

    join_key: str
    writer: ViewWriter
    names: tuple[str, ...]
    fields: tuple[bytes, ...]

    @property
    def head(self) -> bytes:
        return b"*%d\r\n$5\r\nHMGET\r\n" % (len(self.fields) + 2)

    @property
    def tail(self) -> bytes:
        return b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in self.fields)


class BudgetSpent(KestrelError):
    """The decision's latency budget ran out before the online features were read: rules
    decide (degraded, cause ``budget``). Raise KESTREL_SCORE_BUDGET_MS if it happens often
    while Redis is healthy."""


@dataclass(frozen=True)
class FeatureFrame:
    """The feature values of a batch of transactions: row ``i`` is transaction ``i``, column
    ``j`` is ``names[j]``; NaN is missing. Columnar, so 10,000 rows go from Redis's replies
    to the model's matrix without a Python object per row."""

    names: tuple[str, ...]
    x: np.ndarray  # float64, shape (rows, len(names))

    def rows_json(self) -> list[bytes]:
        """Each row as a JSON array, NaN as null (the audit log's form). The matrix is
        encoded in one call and cut at its row boundaries (row by row, formatting the floats
        would cost several times as much)."""
        if not len(self.x):
            return []
        if not self.x.shape[1]:
            return [b"[]"] * len(self.x)
        whole = orjson.dumps(np.ascontiguousarray(self.x), option=orjson.OPT_SERIALIZE_NUMPY)
        return [b"[%s]" % row for row in whole[2:-2].split(b"],[")]


class UnknownFeatureService(KestrelError):
    """A model names a feature service feature_repo/ does not declare."""


class OnlineFeatures:
    """Reads one feature service's vector of transactions from Redis and adds request
    features: exactly the service's projections (a ``fraud_scoring_v1`` model never reads,
    nor depends on, a feature added to the views later). :meth:`for_service` gives the reader
    of another service over the same Redis client, so serving reads what the loaded model's
    ``feature_service`` tag names (serving/model.py).

    Reads go through ``guard``, the worker's Redis circuit breaker (serving/redis_guard.py):
    while it is open they fail at once, without touching Redis."""

    def __init__(self, settings: Settings, redis: Redis, guard: RedisGuard,
                 service: str = FEATURE_SERVICE, repo: RepoContents | None = None):
        repo = repo or load_repo(settings)
        config = repo_config(settings)
        found = next((s for s in repo.feature_services if s.name == service), None)
        if found is None:
            known = ", ".join(sorted(s.name for s in repo.feature_services))
            raise UnknownFeatureService(
                f"feature service {service!r} is not declared in feature_repo/ (declared: "
                f"{known}); deploy the code that declares it, or register a model trained "
                "on a declared one")
        projected = {p.name: [f.name for f in p.features]
                     for p in found.feature_view_projections}
        views = [v for v in repo.feature_views if v.name in projected]
        by_key: dict[str, list[tuple[ViewWriter, str]]] = {}
        for view in views:
            writer = ViewWriter(config, view)
            for name in projected[view.name]:
                by_key.setdefault(writer.join_key, []).append((writer, name))
        self._reads = [
            _EntityRead(key, pairs[0][0], tuple(name for _, name in pairs),
                        tuple(feature_field(w.view_name, name) for w, name in pairs))
            for key, pairs in sorted(by_key.items())
        ]
        odfvs = sorted((o for o in repo.on_demand_feature_views if o.name in projected),
                       key=lambda o: o.name)
        self._odfvs: list[Callable[[dict[str, Any]], dict[str, list[Any]]]] = [
            o.feature_transformation.udf for o in odfvs]  # type: ignore[union-attr]
        self.service = service
        self.request_names = tuple(f.name for o in odfvs for f in o.features)
        self.stored_names = tuple(n for r in self._reads for n in r.names)
        self.names = self.stored_names + self.request_names
        # the stored features the on-demand views read (the others are not passed to them)
        self._odfv_inputs = tuple(
            (name, self.stored_names.index(name)) for name in dict.fromkeys(
                f.name for o in odfvs for p in o.source_feature_view_projections.values()
                for f in p.features))
        self._resp = [(r.join_key, r.writer.key, r.head, r.tail) for r in self._reads]
        self.settings = settings
        self.redis = redis
        self.guard = guard
        self._repo = repo
        self._siblings: dict[str, OnlineFeatures] = {service: self}

    def for_service(self, service: str) -> OnlineFeatures:
        """The reader of ``service`` (this one when it is this service's), sharing the Redis
        client, the breaker and the loaded repo; built once per service."""
        reader = self._siblings.get(service)
        if reader is None:
            reader = OnlineFeatures(self.settings, self.redis, self.guard, service, self._repo)
            reader._siblings = self._siblings
            self._siblings[service] = reader
        return reader

    def service_names(self, service: str) -> tuple[str, ...]:
        """Every output of ``service`` (stored, then request-time): what a model tagged with
        it may read (raises UnknownFeatureService)."""
        return self.for_service(service).names

    def read(self, events: Sequence[TransactionEvent],
             deadline: float = math.inf) -> FeatureFrame:
        """Stored and request-time features of every event; raises on Redis errors
        (RedisUnavailable when Redis does not answer or the breaker is open) and BudgetSpent
        when ``deadline`` (``time.perf_counter()`` time) passes before Redis answers."""
        stored = self.fetch(events, deadline)
        return FeatureFrame(self.names,
                            np.hstack([stored, self.request_features(events, stored)]))

    def fetch(self, events: Sequence[TransactionEvent],
              deadline: float = math.inf) -> np.ndarray:
        """Stored features of every event (columns ``stored_names``), one pipelined round
        trip that waits for Redis until ``deadline`` at most (none: the client's socket
        timeout); raises as :meth:`read`.

        Each distinct card, customer and terminal is read and decoded once: a batch names
        the same entity many times (a card's payments of the day), and reading and decoding
        the replies costs more Python than anything else here. Each entity's values become
        one table, and each event's row is picked from it by index."""
        parts: list[bytes] = []
        positions: list[list[int]] = []
        distinct: list[dict[str, int]] = []
        for join_key, key_of, head, tail in self._resp:
            seen: dict[str, int] = {}
            positions.append([seen.setdefault(getattr(ev, join_key), len(seen))
                              for ev in events])
            distinct.append(seen)
            for entity in seen:
                key = key_of(entity)
                parts += (head, b"$%d\r\n" % len(key), key, b"\r\n", tail)
        timeout = None
        if deadline != math.inf:
            timeout = deadline - time.perf_counter()
            if timeout <= 0:
                raise BudgetSpent("the decision's latency budget ran out before the online "
                                  "features were read")
        try:
            replies = self.guard.call("features", roundtrip, self.redis, b"".join(parts),
                                      sum(map(len, distinct)), timeout)
        except RedisUnavailable as exc:
            if exc.timed_out and not self.guard.open:  # a short wait ran out, not Redis
                raise BudgetSpent(f"the decision's latency budget ran out waiting for the "
                                  f"online features ({exc})") from exc
            raise
        blocks: list[np.ndarray] = []
        start = 0
        for read, seen, rows in zip(self._reads, distinct, positions, strict=True):
            mine = replies[start:start + len(seen)]
            start += len(seen)
            values = _DECODER.decode_many(list(chain.from_iterable(mine)))
            table = np.array(values, dtype=np.float64).reshape(len(seen), len(read.names))
            blocks.append(table[np.array(rows, dtype=np.intp)])
        return np.hstack(blocks) if blocks else np.empty((len(events), 0))

    def request_features(self, events: Sequence[TransactionEvent],
                         stored: np.ndarray) -> np.ndarray:
        """The on-demand views' outputs for each event (columns ``request_names``); the
        views take missing stored inputs as NaN."""
        inputs: dict[str, list[Any]] = {
            "amount": [e.amount for e in events],
            "event_time_us": [_micros(e) for e in events],
            "lat": [e.lat for e in events],
            "lon": [e.lon for e in events],
        }
        for name, column in self._odfv_inputs:
            inputs[name] = stored[:, column].tolist()
        outputs: dict[str, list[Any]] = {}
        for udf in self._odfvs:
            outputs.update(udf(inputs))
        # None (a view's "missing") becomes NaN
        return np.array([outputs[name] for name in self.request_names],
                        dtype=np.float64).reshape(len(self.request_names), len(events)).T


def _micros(event: TransactionEvent) -> int:
    return (event.event_time - _EPOCH) // _MICROSECOND
