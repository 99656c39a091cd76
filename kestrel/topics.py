"""The Kafka topics of DESIGN.md, with their keys and partition counts, defined once."""

from __future__ import annotations

from dataclasses import dataclass

from kestrel.settings import Settings

TRANSACTIONS = "transactions"
LABELS = "labels"
DECISIONS = "decisions"
ALERTS = "alerts"
TRANSACTIONS_DLQ = "transactions.dlq"
TRANSACTIONS_LATE = "transactions.late"
TRANSACTIONS_BY_TERMINAL = "transactions.by-terminal"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    description: str


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(TRANSACTIONS, "customer_id", "validated card transactions (tokenized)"),
    TopicSpec(LABELS, "txn_id", "fraud / legit labels from investigators, chargebacks, simulator"),
    TopicSpec(DECISIONS, "txn_id", "every scoring decision"),
    TopicSpec(ALERTS, "card_id", "rule hits raised by the stream processor"),
    TopicSpec(TRANSACTIONS_DLQ, "source offset", "invalid records with the reason"),
    TopicSpec(TRANSACTIONS_LATE, "customer_id", "events later than the allowed lateness"),
    TopicSpec(TRANSACTIONS_BY_TERMINAL, "terminal_id",
              "the stream's repartition of transactions by terminal (terminal state)"),
)


def partitions_for(topic: str, settings: Settings) -> int:
    """`transactions` (and its repartition) scale the stream; the rest share one count."""
    if topic in (TRANSACTIONS, TRANSACTIONS_BY_TERMINAL):
        return settings.transactions_partitions
    return settings.topic_partitions


def topic_configs(settings: Settings) -> dict[str, str]:
    """Explicit retention on every topic (the local broker reports only explicit configs)."""
    return {
        "retention.ms": str(settings.topic_retention_ms),
        "retention.bytes": str(settings.topic_retention_bytes),
    }


# Consumer groups of the project and the topics they read, for `kestrel status`.
CONSUMER_GROUPS: dict[str, tuple[str, ...]] = {
    "kestrel-archiver": (TRANSACTIONS,),
    "kestrel-stream": (TRANSACTIONS, TRANSACTIONS_BY_TERMINAL),
    "kestrel-labels": (LABELS,),
    "kestrel-case-intake": (ALERTS, DECISIONS),
}
