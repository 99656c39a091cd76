"""Dagster resources: the project's services, chosen per environment in one place.

Every resource is built from :class:`kestrel.settings.Settings`, so Dagster and the CLI talk
to the same Spark master, Feast registry, MLflow store, broker and Redis. ``resources_for``
is the one place that decides; a deployment changes the environment (``KESTREL_*``), never
this file. Each resource carries only the settings' values (plain strings, as Dagster's
config wants) and opens its client lazily, so loading the definitions costs nothing.
"""


from pathlib import Path
from typing import Any

import dagster as dg

from kestrel.settings import Settings, get_settings


class KestrelSettings(dg.ConfigurableResource):  # type: ignore[misc]
    """The project's settings; ``var_dir`` and the service addresses may be overridden."""

    var_dir: str
    env: str = "dev"
    kafka_bootstrap: str = ""
    redis_url: str = ""
    spark_master: str = ""
    mlflow_tracking_uri: str = ""

    def get(self) -> Settings:
        overrides: dict[str, Any] = {"var_dir": Path(self.var_dir), "env": self.env}
        for name in ("kafka_bootstrap", "redis_url", "spark_master", "mlflow_tracking_uri"):
            value = getattr(self, name)
            if value:
                overrides[name] = value
        # read afresh (not the process-wide cache): a long-lived `dagster dev` picks up a
        # changed environment on its next run, and tests can set KESTREL_* per test
        return Settings().model_copy(update=overrides)


class SparkResource(dg.ConfigurableResource):  # type: ignore[misc]
    """A Spark session on the configured master (started on first use, then reused)."""

    settings: KestrelSettings

    def session(self) -> Any:
        from pipelines.batch.session import spark_session

        return spark_session(self.settings.get())


class FeastResource(dg.ConfigurableResource):  # type: ignore[misc]
    """The Feast store over feature_repo/ with the registry and stores from the settings."""

    settings: KestrelSettings

    def store(self) -> Any:
        from pipelines.features.store import feature_store

        return feature_store(self.settings.get())


class MLflowResource(dg.ConfigurableResource):  # type: ignore[misc]
    """MLflow tracking and registry at the settings' URI."""

    settings: KestrelSettings

    def client(self) -> Any:
        import mlflow
        from mlflow import MlflowClient

        uri = self.settings.get().mlflow_uri
        mlflow.set_tracking_uri(uri)
        return MlflowClient(tracking_uri=uri)


class KafkaResource(dg.ConfigurableResource):  # type: ignore[misc]
    """The Kafka-protocol broker (admin checks; producers come from pipelines.ingest)."""

    settings: KestrelSettings

    def answers(self) -> bool:
        from kestrel.kafka import broker_answers

        return broker_answers(self.settings.get())


class RedisResource(dg.ConfigurableResource):  # type: ignore[misc]
    """The Redis online store / caches."""

    settings: KestrelSettings

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.settings.get().redis_url)


def resources_for(settings: Settings | None = None) -> dict[str, Any]:
    """The resources of one environment, every one from the same settings."""
    s = settings or get_settings()
    base = KestrelSettings(
        var_dir=str(s.var_dir.resolve()), env=s.env, kafka_bootstrap=s.kafka_bootstrap,
        redis_url=s.redis_url, spark_master=s.spark_master,
        mlflow_tracking_uri=s.mlflow_tracking_uri or "")
    return {
        "kestrel": base,
        "spark": SparkResource(settings=base),
        "feast": FeastResource(settings=base),
        "mlflow": MLflowResource(settings=base),
        "kafka": KafkaResource(settings=base),
        "redis": RedisResource(settings=base),
    }
