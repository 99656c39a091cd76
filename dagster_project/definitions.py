"""The one ``Definitions`` object: assets, checks, jobs, schedules, sensor and resources.

Resources come from ``resources_for()`` — the settings of the environment Dagster runs in
(``KESTREL_*``), the same the CLI reads — so `dagster dev` and `kestrel batch` agree on the
lake, the Spark master, Redis, the broker and the MLflow store.
"""

from __future__ import annotations

import dagster as dg

from dagster_project.assets import features, lake, training
from dagster_project.automation import (
    batch_features_job,
    daily_training,
    hourly_batch_features,
    retrain_on_new_labels,
    training_job,
)
from dagster_project.checks import ALL_CHECKS
from dagster_project.resources import resources_for

ASSETS = [lake.lake_transactions, lake.label_table, features.stream_feature_history,
          features.batch_feature_tables, features.online_materialization, *training.ASSETS]

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=[*ALL_CHECKS, *training.CHECKS],
    jobs=[batch_features_job, training_job],
    schedules=[hourly_batch_features, daily_training],
    sensors=[retrain_on_new_labels],
    resources=resources_for(),
)
