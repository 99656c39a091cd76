"""The one Spark session every batch job uses, configured from Settings.

Local defaults suit a small machine (2 cores, some GiB): few shuffle partitions (the default
200 would spend more time scheduling empty tasks than computing), no UI, adaptive execution,
UTC everywhere, timestamps written as Parquet INT64 microseconds (what pyarrow, Feast and the
lake use; Spark's default INT96 is read back as nanoseconds without a time zone), and quiet
logs. Starting the JVM costs seconds; :func:`spark_session` reports how many, once per
process, so a job's own time is not confused with start-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kestrel.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

APP_NAME = "kestrel-batch"
LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")


@dataclass(frozen=True)
class SessionInfo:
    master: str
    startup_s: float  # 0.0 when an existing session was reused


_started: SessionInfo | None = None
_spark: SparkSession | None = None


def spark_config(settings: Settings) -> dict[str, str]:
    """Every setting the session is built with (exposed for tests and the README)."""
    return {
        "spark.master": settings.spark_master,
        "spark.app.name": APP_NAME,
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.sql.shuffle.partitions": str(settings.spark_shuffle_partitions),
        "spark.default.parallelism": str(settings.spark_shuffle_partitions),
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.extraJavaOptions": (
            f"-Duser.timezone=UTC -Dlog4j2.configurationFile=file:{LOG4J_CONFIG}"),
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.parquet.compression.codec": "zstd",
        "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
        # list the lake's partitions in the driver: a listing job costs more on a local disk
        "spark.sql.sources.parallelPartitionDiscovery.threshold": "100000",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
        "spark.hadoop.parquet.enable.summary-metadata": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }


def spark_session(settings: Settings,
                  echo: Callable[[str], None] | None = None) -> SparkSession:
    """The process's Spark session (created on first use, then reused)."""
    global _started, _spark
    from pyspark.sql import SparkSession

    if _spark is not None and _spark.sparkContext._jsc is not None:  # not stopped
        return _spark
    began = time.perf_counter()
    builder = SparkSession.builder
    for key, value in spark_config(settings).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    _spark = spark
    _started = SessionInfo(settings.spark_master, time.perf_counter() - began)
    if echo is not None:
        echo(f"spark session {settings.spark_master} started in {_started.startup_s:.1f} s")
    return spark


def session_info() -> SessionInfo | None:
    """Master and start-up time of this process's session (None before the first one)."""
    return _started


def stop_session() -> None:
    """Stop the process's session (the next spark_session starts a new JVM context)."""
    global _started, _spark
    if _spark is not None:
        _spark.stop()
    _spark = None
    _started = None
