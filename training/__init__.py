"""Training: point-in-time training sets, the validation protocol, models, metrics and the
MLflow registry with its promotion gate. ``training.pipeline`` holds the plain functions the
CLI (`kestrel train`) and the Dagster assets call."""
