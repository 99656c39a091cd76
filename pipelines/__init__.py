"""Kestrel's data pipelines: simulator, ingestion producer, stream processor, archiver, batch jobs.

Each subpackage moves events one step along the flow in DESIGN.md; they depend on the
``kestrel`` kernel and never on each other's internals.
"""
