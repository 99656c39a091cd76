"""Kafka client configuration and admin helpers, shared by every producer and consumer.

Client settings are tuned for the measured local broker (DESIGN.md): idempotent acks=all lz4
producers with large batches, consumers with manual commits and a ~6 s session timeout.
The same code talks to Apache Kafka / MSK / Confluent; only the bootstrap address changes.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from kestrel.errors import ServiceUnavailable
from kestrel.settings import Settings
from kestrel.topics import TOPICS, partitions_for, topic_configs

# librdkafka's own log lines go through Python logging (JSON, redacted), not raw stderr.
CLIENT_LOG = logging.getLogger("kestrel.kafka.client")


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "logger": CLIENT_LOG,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "lz4",
        "linger.ms": settings.producer_linger_ms,
        "batch.size": 1_000_000,
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.timeout.ms": 30_000,
    }
    conf.update(overrides)
    return conf


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "logger": CLIENT_LOG,
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.consumer_session_timeout_ms,
        "heartbeat.interval.ms": max(500, settings.consumer_session_timeout_ms // 6),
        "fetch.wait.max.ms": 10,
        "queued.min.messages": 100_000,
    }
    conf.update(overrides)
    return conf


def admin(settings: Settings) -> AdminClient:
    conf: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap, "logger": CLIENT_LOG}
    return AdminClient(conf)


def _port_open(bootstrap: str, timeout: float) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout):
            return True
    except (OSError, ValueError):
        return False


def broker_answers(settings: Settings, timeout: float = 2.0) -> bool:
    """True when a Kafka-protocol broker answers a metadata request at the bootstrap.

    A plain TCP connect goes first, so probing an absent broker is quick and quiet (librdkafka
    would retry and log every refused connection)."""
    if not _port_open(settings.kafka_bootstrap, timeout):
        return False
    try:
        admin(settings).list_topics(timeout=timeout)
        return True
    except KafkaException:
        return False


def ensure_topics(settings: Settings, timeout: float = 10.0) -> dict[str, str]:
    """Create the project's topics that do not exist yet; returns topic → 'created'/'exists'."""
    client = admin(settings)
    try:
        existing = set(client.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise ServiceUnavailable(
            f"no Kafka broker answers at KESTREL_KAFKA_BOOTSTRAP={settings.kafka_bootstrap}; "
            "run `kestrel up`"
        ) from exc
    result = {t.name: "exists" for t in TOPICS if t.name in existing}
    wanted = [
        NewTopic(t.name, partitions_for(t.name, settings), 1, config=topic_configs(settings))
        for t in TOPICS
        if t.name not in existing
    ]
    if wanted:
        for name, fut in client.create_topics(wanted, operation_timeout=timeout).items():
            try:
                fut.result()
                result[name] = "created"
            except KafkaException as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
                result[name] = "exists"
    return result


def topic_partitions(settings: Settings, timeout: float = 5.0) -> dict[str, int]:
    """Partition count of every topic on the broker."""
    md = admin(settings).list_topics(timeout=timeout)
    return {name: len(t.partitions) for name, t in md.topics.items()}


def committed_offsets(
    settings: Settings, group_id: str, topic: str, partitions: int, timeout: float = 5.0
) -> dict[int, int]:
    """Offsets a consumer group has committed per partition (-1: nothing committed)."""
    consumer = Consumer(consumer_config(settings, group_id))
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)],
                                 timeout=timeout)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


def topic_ids(settings: Settings, topics: list[str], timeout: float = 10.0) -> dict[str, str]:
    """The broker's id of each topic's current incarnation.

    A topic recreated (e.g. the memory-storage broker restarted) gets a new id and offsets
    from zero, so offsets stored for the old incarnation must not be applied to it.
    """
    client = admin(settings)  # keep the handle alive until the futures resolve
    try:
        futures = client.describe_topics(TopicCollection(topics))
        return {name: str(fut.result(timeout=timeout).topic_id) for name, fut in futures.items()}
    except KafkaException as exc:
        raise ServiceUnavailable(
            f"cannot describe topics {topics} at KESTREL_KAFKA_BOOTSTRAP="
            f"{settings.kafka_bootstrap} ({exc}); run `kestrel up` first"
        ) from exc
