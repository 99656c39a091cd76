"""Kestrel's Dagster project: `dagster dev -m dagster_project.definitions` loads ``defs``."""
