"""TEMPORARY: the old home of the event producer (now kestrel/producer.py), kept for the
modules that still import it from here; removed at integration. The HTTP ingest contract
that also lived here is serving/ingest.py."""

# TEMPORARY re-export for pipelines/stream/* and tests/stream/*; removed at integration
from kestrel.producer import EventProducer

__all__ = ["EventProducer"]
