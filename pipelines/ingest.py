"""TEMPORARY: the old home of the ingestion producer and the HTTP ingest contract, kept for
the modules that still import them from here; removed at integration. The producer lives in
kestrel/producer.py, the HTTP ingest contract in serving/ingest.py."""

# TEMPORARY re-export for pipelines/stream/processor.py, tests/stream/*; removed at integration
from kestrel.producer import EventProducer

# TEMPORARY re-export for serving/app.py; removed at integration
from serving.ingest import parse_events

__all__ = ["EventProducer", "parse_events"]
