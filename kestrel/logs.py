"""Structured JSON logs, one object per line, with card numbers scrubbed.

Fields passed as ``extra={"txn_id": ...}`` land as top-level keys, so a transaction can be
followed through ingest, stream, archive and decisioning with one grep. Every rendered line
goes through :func:`kestrel.pan.redact_pans`: a card number that slips into a message or an
exception never reaches a log file.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from kestrel.pan import redact_pans

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        line = orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        return redact_pans(line)


def configure_logging(level: str = "INFO") -> None:
    """JSON logs on stderr; idempotent."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.handlers = [handler]
    root.setLevel(level)
    for noisy in ("py4j", "urllib3", "httpx", "feast.infra.registry", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
