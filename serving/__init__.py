"""HTTP services: ingestion now; decisioning, insights, labels and alerts later."""
