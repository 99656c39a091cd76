"""Dagster resources: the project's services, chosen per environment in one place.

Every resource is built from :class:`kestrel.settings.Settings`, so Dagster and the CLI talk
to the same Spark master, Feast registry, MLflow store, broker and Redis. ``resources_for``
is the one place that decides; a deployment changes the environment (``KESTREL_*``), never
this file. Each resource carries only the settings' values (plain strings, as Dagster's
config wants) and opens its client lazily, so loading the definitions costs nothing.
"""


import json
from typing import Any

import dagster as dg

from kestrel.settings import Settings, get_settings

# every SecretStr setting: only ever from the environment, never in Dagster's config
SECRETS = tuple(name for name, f in Settings.model_fields.items()
                if "SecretStr" in str(f.annotation))


class KestrelSettings(dg.ConfigurableResource):
    """The project's settings: ``values`` (JSON) holds what the environment that built the
    definitions set explicitly; anything else (and every secret) still comes from
    ``KESTREL_*`` in the process that runs the step. Secrets are never put in here: Dagster
    shows resource config in its UI."""

    values: str = "{}"

    def get(self) -> Settings:
        # constructed afresh (not the process-wide cache), so a long-lived `dagster dev`
        # sees a changed environment on its next run, and tests can set KESTREL_* per test
        return Settings(**json.loads(self.values))


class SparkResource(dg.ConfigurableResource):
    """A Spark session on the configured master (started on first use, then reused)."""

    settings: KestrelSettings

    def session(self) -> Any:
        from pipelines.batch.session import spark_session

        return spark_session(self.settings.get())


class FeastResource(dg.ConfigurableResource):
    """The Feast store over feature_repo/ with the registry and stores from the settings."""

    settings: KestrelSettings

    def store(self) -> Any:
        from pipelines.features.store import feature_store

        return feature_store(self.settings.get())


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking and registry at the settings' URI."""

    settings: KestrelSettings

    def client(self) -> Any:
        import mlflow
        from mlflow import MlflowClient

        uri = self.settings.get().mlflow_uri
        mlflow.set_tracking_uri(uri)
        return MlflowClient(tracking_uri=uri)


class KafkaResource(dg.ConfigurableResource):
    """The Kafka-protocol broker (admin checks; producers come from kestrel.producer)."""

    settings: KestrelSettings

    def answers(self) -> bool:
        from kestrel.kafka import broker_answers

        return broker_answers(self.settings.get())


class RedisResource(dg.ConfigurableResource):
    """The Redis online store / caches."""

    settings: KestrelSettings

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.settings.get().redis_url)


def resources_for(settings: Settings | None = None) -> dict[str, Any]:
    """The resources of one environment, every one from the same settings."""
    s = settings or get_settings()
    values = s.model_dump(mode="json", exclude=set(SECRETS), exclude_defaults=True)
    values["var_dir"] = str(s.var_dir.resolve())  # a `dagster dev` may run from elsewhere
    base = KestrelSettings(values=json.dumps(values, sort_keys=True))
    return {
        "kestrel": base,
        "spark": SparkResource(settings=base),
        "feast": FeastResource(settings=base),
        "mlflow": MLflowResource(settings=base),
        "kafka": KafkaResource(settings=base),
        "redis": RedisResource(settings=base),
    }
