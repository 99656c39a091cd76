"""TEMPORARY: the old home of the dead-letter records (now kestrel/dlq.py), kept for the
modules that still import them from here; removed at integration."""

# TEMPORARY re-export for pipelines/stream/processor.py, tests/stream/*; removed at integration
from kestrel.dlq import MAX_PAYLOAD_CHARS, dead_letter

__all__ = ["MAX_PAYLOAD_CHARS", "dead_letter"]
