"""Spark batch jobs over the lake: daily feature tables, insight tables, stream backfill."""
