"""Dead-letter records: an invalid event is kept, with the reason, and never stops a consumer.

The payload is stored as text with every card-number-like digit run redacted, so a client
that sent a raw PAN where it should not have cannot get it into Kafka through the DLQ. The
whole text is redacted before it is cut to MAX_PAYLOAD_CHARS (cut first, a number across the
cut would keep its start), and so are the reason and every error's path and reason: they
can quote the input (an unknown field's name, an unsupported schema_version).
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from kestrel.errors import EventValidationError
from kestrel.pan import redact_pans

MAX_PAYLOAD_CHARS = 64_000


def dead_letter(
    source_topic: str, partition: int, offset: int, raw: bytes | None, error: EventValidationError,
    consumer: str,
) -> tuple[str, bytes]:
    """The (key, value) of the DLQ record for one rejected input record."""
    text = redact_pans((raw or b"").decode("utf-8", errors="replace"))[:MAX_PAYLOAD_CHARS]
    value = {
        "reason": redact_pans(str(error)),
        "errors": [{"path": redact_pans(e.path), "reason": redact_pans(e.reason)}
                   for e in error.errors],
        "source": {"topic": source_topic, "partition": partition, "offset": offset},
        "consumer": consumer,
        "rejected_at": datetime.now(UTC).isoformat(),
        "payload": text,
    }
    return f"{source_topic}:{partition}:{offset}", orjson.dumps(value)
