"""Redis keys that one part of Kestrel writes and another reads, defined once.

- the batch insight doc and the day's top spenders: written by materialization
  (pipelines/features/materialize.py), read by the insights service (serving/insights.py);
- a customer's recent transactions: written by the stream (pipelines/stream/processor.py,
  entries in pipelines/stream/recent.py), read by the insights service;
- the insights service's cache entry: written by the service, deleted by the stream for each
  applied transaction and by materialization for each rewritten doc.

A writer and a reader that spelled a key differently would fail silently (an insight never
invalidated, a list never read), so both import it from here.
"""

from __future__ import annotations


def insight_doc_key(customer_id: str) -> str:
    return f"kestrel:insights:customer:{customer_id}"


def top_spenders_key(day: str) -> str:
    """``day``: YYYY-MM-DD."""
    return f"kestrel:insights:top_spenders:{day}"


def recent_key(customer_id: str) -> str:
    """A list of the customer's most recent transactions, newest first."""
    return f"kestrel:recent:{customer_id}"


def insight_cache_key(customer_id: str, schema: int) -> str:
    """``schema``: Settings.insight_schema_version."""
    return f"insight:user:{customer_id}:v{schema}"
