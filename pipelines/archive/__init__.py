"""The archiver: `transactions` → the Parquet lake, exactly once per txn_id."""

from pipelines.archive.archiver import Archiver, ArchiveStats

__all__ = ["ArchiveStats", "Archiver"]
