"""The Redis circuit breaker (serving/redis_guard.py) on its own, and the per-call timeouts of
the calls it guards against a socket that accepts connections and never answers — what a
SIGSTOPped Redis looks like from the client: the kernel completes the handshake, nothing
replies. No services; the live fault-injection suite is tests/faults/test_redis_frozen.py."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from kestrel.errors import ServiceUnavailable
from kestrel.resp import roundtrip
from kestrel.services import free_port
from kestrel.settings import Settings
from serving.ratelimit import LIMITER_TIMEOUT_S, RateLimiter
from serving.redis_guard import RedisGuard, RedisUnavailable

PING = b"*1\r\n$4\r\nPING\r\n"


class Probe:
    """The breaker's PING: refused until ``answer`` is set; counts its calls."""

    def __init__(self) -> None:
        self.answer = threading.Event()
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        if not self.answer.is_set():
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
        return True


def _guard(probe: Probe | None = None, **kw: float) -> RedisGuard:
    return RedisGuard("redis://127.0.0.1:1/0", probe or Probe(), probe_interval_s=0.02, **kw)


def _raise(exc: BaseException, after: float = 0.0) -> None:
    time.sleep(after)
    raise exc


def _until(check: object, timeout: float = 2.0) -> float:
    t0 = time.perf_counter()
    while not check():  # type: ignore[operator]
        assert time.perf_counter() - t0 < timeout, "condition not met in time"
        time.sleep(0.001)
    return time.perf_counter() - t0


def test_closed_it_passes_calls_and_their_answers_through() -> None:
    g = _guard()
    assert g.call("t", lambda a, b=0: a + b, 1, b=2) == 3
    # an error reply is Redis answering: it passes as it is and opens nothing
    with pytest.raises(ResponseError):
        g.call("t", _raise, ResponseError("WRONGTYPE Operation against a key"))
    assert not g.open and g.trips == 0 and g.reason is None


def test_a_failed_connection_opens_it_and_calls_then_fail_at_once() -> None:
    g = _guard()
    with pytest.raises(RedisUnavailable) as err:
        g.call("t", _raise, RedisConnectionError("Error 111 connecting. Connection refused."))
    assert g.open and g.trips == 1
    # a 503 for the HTTP layer, a RedisError for the callers that fail open or degrade
    assert isinstance(err.value, ServiceUnavailable) and isinstance(err.value, RedisError)
    assert "retry after 1 s" in str(err.value) and "127.0.0.1" not in str(err.value)
    called: list[int] = []
    t0 = time.perf_counter()
    for _ in range(100):
        with pytest.raises(RedisUnavailable, match="not answering"):
            g.call("t", called.append, 1)
    assert called == [] and g.fast_failures == 100
    assert time.perf_counter() - t0 < 0.1  # 100 refusals: no call waited
    with pytest.raises(RedisUnavailable):
        g.check("t")
    assert g.reason is not None and "circuit open" in g.reason
    g.close()


def test_timeouts_open_it_once_they_add_up_with_no_answer_between() -> None:
    g = _guard(trip_after_s=0.02)
    slow = RedisTimeoutError("Timeout reading from socket")
    with pytest.raises(RedisUnavailable) as err:
        g.call("t", _raise, slow, 0.012)
    assert err.value.timed_out and not g.open  # one short wait: Redis may just be busy
    assert g.call("t", lambda: "PONG") == "PONG"  # an answer: the count starts again
    with pytest.raises(RedisUnavailable):
        g.call("t", _raise, slow, 0.012)
    assert not g.open
    # the socket's own timeout (kestrel.resp.roundtrip reads the socket) counts the same
    with pytest.raises(RedisUnavailable):
        g.call("t", _raise, TimeoutError("timed out"), 0.012)
    assert g.open and "no answer in" in g.cause
    g.close()


def test_the_probe_closes_it_as_soon_as_redis_answers_and_sleeps_while_closed() -> None:
    probe = Probe()
    g = _guard(probe)
    g.trip("connection", "test")
    time.sleep(0.15)
    assert g.open and probe.calls >= 3  # PINGs every interval while open
    probe.answer.set()
    recovered = _until(lambda: not g.open)
    print(f"\nbreaker closed {recovered * 1000:.1f} ms after the PING answered")
    assert recovered < 0.5  # interval 20 ms: generous bound
    calls = probe.calls
    time.sleep(0.1)
    assert probe.calls == calls  # closed: no probing
    with pytest.raises(RedisUnavailable):  # reopens, and the same thread closes it again
        g.call("t", _raise, RedisConnectionError("reset"))
    _until(lambda: not g.open)
    assert g.trips == 2 and g.call("t", lambda: 1) == 1
    g.close()


def test_a_probe_that_breaks_keeps_probing() -> None:
    """A bug in the probe must not leave the breaker open for good."""
    calls: list[int] = []

    def buggy() -> bool:
        calls.append(1)
        if len(calls) < 3:
            raise KeyError("a bug")
        return True

    g = RedisGuard("redis://127.0.0.1:1/0", buggy, probe_interval_s=0.01)
    g.trip("timeout", "test")
    _until(lambda: not g.open)
    assert len(calls) == 3
    g.close()


def test_readiness_says_down_at_once_while_open() -> None:
    g = _guard()
    g.trip("connection", "test")
    client = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    t0 = time.perf_counter()
    assert g.answers(client) is False
    assert time.perf_counter() - t0 < 0.05
    g.close()


@pytest.fixture
def frozen() -> Iterator[str]:
    """The URL of a socket that listens and never accepts or reads: connections complete in
    the kernel, nothing ever answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"redis://127.0.0.1:{s.getsockname()[1]}/0"


def _client(url: str, timeout: float = 2.0) -> Redis:
    # as serving/runtime.py builds them: no retry, no CLIENT SETINFO on connect
    return Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=0.5,
                          retry=Retry(NoBackoff(), 0), health_check_interval=0,
                          driver_info=None)


def test_roundtrip_waits_its_own_timeout_not_the_clients(frozen: str) -> None:
    client = _client(frozen, timeout=2.0)
    t0 = time.perf_counter()
    with pytest.raises(TimeoutError):
        roundtrip(client, PING, 1, 0.03)
    waited = time.perf_counter() - t0
    print(f"\nroundtrip to a frozen socket gave up after {waited * 1000:.1f} ms (timeout 30 ms)")
    assert 0.025 <= waited < 0.5
    with pytest.raises(ValueError, match="positive"):
        roundtrip(client, PING, 1, 0.0)  # 0 would make the socket non-blocking


def test_the_limiter_fails_open_within_its_timeout_then_the_breaker_opens(
        frozen: str, settings: Settings) -> None:
    g = RedisGuard(frozen, Probe())
    limiter = RateLimiter(settings, _client(frozen), g)
    waits = []
    for _ in range(3):
        t0 = time.perf_counter()
        limiter.check("acme")  # let through: no RateLimited
        waits.append(time.perf_counter() - t0)
    print("\nlimiter waits on a frozen Redis (ms):", [round(w * 1000, 1) for w in waits])
    assert limiter.failed_open == 3
    # two 10 ms timeouts in a row open the breaker; the third call does not wait at all
    assert all(w < LIMITER_TIMEOUT_S + 0.1 for w in waits[:2])
    assert g.open and waits[2] < 0.005 and g.fast_failures == 1
    g.close()


def test_a_refused_connection_opens_it_at_once() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: Redis gone
    g = RedisGuard(url, Probe())
    t0 = time.perf_counter()
    with pytest.raises(RedisUnavailable, match="connection failed"):
        g.call("t", roundtrip, _client(url), PING, 1, 0.05)
    assert g.open and time.perf_counter() - t0 < 0.1
    g.close()


def test_a_decisions_feature_read_waits_only_what_is_left_of_its_budget(
        frozen: str, settings: Settings) -> None:
    """OnlineFeatures.read against a Redis that never answers: a read with 30 ms of budget
    left gives up after ~30 ms and opens the breaker; one with 5 ms left gives up after 5 ms
    as BudgetSpent (a short wait proves nothing about Redis: the breaker stays closed); one
    with none left does not touch Redis."""
    from kestrel.events import TransactionEvent
    from serving.features import BudgetSpent, OnlineFeatures
    from serving.fixtures import transaction

    events = [TransactionEvent.model_validate(transaction(1))]
    g = RedisGuard(frozen, Probe())
    features = OnlineFeatures(settings, _client(frozen, timeout=2.0), g)
    t0 = time.perf_counter()
    with pytest.raises(BudgetSpent, match="ran out before"):
        features.read(events, t0 - 0.001)
    assert time.perf_counter() - t0 < 0.005
    t0 = time.perf_counter()
    with pytest.raises(BudgetSpent, match="waiting"):
        features.read(events, t0 + 0.005)
    short = time.perf_counter() - t0
    assert not g.open
    t0 = time.perf_counter()
    with pytest.raises(RedisUnavailable):
        features.read(events, t0 + 0.03)
    waited = time.perf_counter() - t0
    print(f"\nfeature reads on a frozen Redis gave up after {short * 1000:.1f} ms (5 ms left) "
          f"and {waited * 1000:.1f} ms (30 ms left)")
    assert g.open and short < 0.1 and 0.025 <= waited < 0.3
    t0 = time.perf_counter()
    with pytest.raises(RedisUnavailable, match="not answering"):
        features.read(events, t0 + 0.03)
    assert time.perf_counter() - t0 < 0.005  # open: no wait at all
    g.close()
