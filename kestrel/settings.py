"""The one place Kestrel reads its configuration from.

Every setting comes from the environment with the prefix ``KESTREL_`` (or a ``.env`` file in
the working directory); nothing else in the project reads ``os.environ``. The object is
frozen: a process sees one configuration for its whole life, which keeps the stream, the
archiver and the services from disagreeing halfway through a run.

Secrets (``pan_token_key``, ``jwt_secret``, ``audit_key``) are only ever taken from the
environment. The environment (``KESTREL_ENV``) defaults to ``prod``: there a missing secret is
an error and every process refuses to start without it. ``dev`` (a laptop: ``make demo``)
generates a missing secret once and keeps it under ``var/secrets/``; ``test`` is what the test
suite runs as: secrets are given explicitly, as in production, but development conveniences
(``kestrel token``, long-lived tokens) stay on.
"""

from __future__ import annotations

import os
import secrets as _secrets
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kestrel.errors import ConfigError

MIN_SECRET_LENGTH = 32
SecretName = Literal["pan_token_key", "jwt_secret", "audit_key"]
CASE_DECISION_ACTIONS = ("decline", "challenge")  # the decision actions that may open a case
MAX_TOKEN_TTL_SECONDS = 24 * 3600


class Settings(BaseSettings):
    """Kestrel settings; see the README's settings table for each one."""

    model_config = SettingsConfigDict(
        env_prefix="KESTREL_", env_file=".env", extra="ignore", frozen=True,
        populate_by_name=True,
    )

    env: Literal["dev", "test", "prod"] = Field(
        "prod", description="Deployment environment: `prod` (default) refuses to start without "
        "its secrets; `dev` generates them under var/ (a laptop); `test` is the test suite's."
    )
    var_dir: Path = Field(
        Path("var"), description="Runtime files: lake, logs, pid files, registries."
    )
    log_level: str = Field("INFO", description="Log level of the JSON logs.")

    # --- Kafka ---------------------------------------------------------------------------
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap address; `kestrel up` listens here."
    )
    transactions_partitions: int = Field(8, ge=1, description="Partitions of `transactions`.")
    topic_partitions: int = Field(4, ge=1, description="Partitions of every other topic.")
    topic_retention_ms: int = Field(
        7 * 24 * 3600 * 1000, description="retention.ms set explicitly on every topic."
    )
    topic_retention_bytes: int = Field(
        -1, description="retention.bytes set explicitly on every topic (-1: unbounded)."
    )
    producer_linger_ms: int = Field(10, ge=0, description="Producer linger.ms (batching).")
    consumer_session_timeout_ms: int = Field(
        6000, ge=1000, description="Consumer group session.timeout.ms (a join takes ~half)."
    )

    # --- Redis ---------------------------------------------------------------------------
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis for online features.")

    # --- Feast ---------------------------------------------------------------------------
    feast_registry_url: str | None = Field(
        None, description="SQLAlchemy URL of a SQL Feast registry (e.g. postgresql+psycopg://"
        "…); unset: a file registry at <var_dir>/feast/registry.db."
    )
    feast_registry_cache_ttl_seconds: int = Field(
        60, ge=0, description="Seconds a process trusts its cached Feast registry (0: load once)."
    )
    feast_online_key_ttl_seconds: int | None = Field(
        None, ge=1, description="Redis EXPIRE on an entity's online-feature hash after each "
        "write (unset: the feature retention; it also expires the entity's batch features)."
    )
    feature_retention_days: int = Field(
        30, ge=1, description="How long an entity's features are kept after its last event: "
        "the online key's TTL (unless KESTREL_FEAST_ONLINE_KEY_TTL_SECONDS) and the stream "
        "views' Feast ttl. Training and serving agree for entities seen within it "
        "(docs/feature-state.md)."
    )

    # --- Spark ---------------------------------------------------------------------------
    spark_master: str = Field("local[*]", description="Spark master for the batch jobs.")
    spark_driver_memory: str = Field(
        "4g", description="Spark driver memory (local mode: the whole JVM heap)."
    )
    spark_shuffle_partitions: int = Field(
        4, ge=1, description="spark.sql.shuffle.partitions (small: a few cores, small data)."
    )

    # --- Lake and archiver ---------------------------------------------------------------
    archive_batch_records: int = Field(
        50_000, ge=1, description="Archiver: most records written in one batch."
    )
    archive_batch_seconds: float = Field(
        2.0, gt=0, description="Archiver: longest wait before a partial batch is written."
    )

    # --- Stream processor ----------------------------------------------------------------
    stream_batch_records: int = Field(
        20_000, ge=1, description="Stream: most records applied and committed in one batch."
    )
    stream_batch_ms: int = Field(
        200, ge=1, description="Stream: longest wait (ms) before a partial batch is committed."
    )
    allowed_lateness_seconds: int = Field(
        600, ge=0, description="Events older than the partition's stream time minus this "
        "go to `transactions.late`."
    )
    event_time_earliest: datetime = Field(
        datetime(2000, 1, 1, tzinfo=UTC), description="Earliest event_time accepted anywhere "
        "(HTTP 400; consumers send older records to the DLQ)."
    )
    event_time_ahead_seconds: int | None = Field(
        None, ge=0, description="How far past now an event_time may lie (unset: the allowed "
        "lateness)."
    )
    alert_velocity_count: int = Field(
        8, ge=2, description="Velocity rule: transactions of one card within 10 minutes."
    )
    stream_metrics_port: int = Field(
        9464, ge=0, le=65535, description="`kestrel stream` serves Prometheus /metrics here "
        "(127.0.0.1; 0 turns it off)."
    )
    insight_schema_version: int = Field(
        1, ge=1, description="Version in insight cache keys `insight:user:{id}:v{N}`."
    )

    # --- Labels --------------------------------------------------------------------------
    label_delay_days: float = Field(
        7.0, ge=0, description="Days between a transaction and its ground-truth label."
    )
    retrain_min_new_labels: int = Field(
        1000, ge=1, description="Dagster sensor: new labels since the last training request "
        "that trigger a retraining run."
    )

    # --- Models (MLflow) -----------------------------------------------------------------
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (unset: a SQLite file at "
        "<var_dir>/mlflow/mlflow.db, artifacts under <var_dir>/mlflow/artifacts)."
    )
    model_name: str = Field(
        "kestrel-fraud", description="Registered MLflow model that decisioning serves."
    )
    champion_alias: str = Field(
        "champion", description="Registry alias of the model version decisioning serves."
    )
    alert_challenges_per_day: float = Field(
        100.0, gt=0, description="Alert budget: transactions a day the model may send to a "
        "challenge; training sets the challenge threshold to stay within it."
    )
    alert_declines_per_day: float = Field(
        10.0, gt=0, description="Transactions a day the model may decline outright; "
        "training sets the decline threshold to stay within it."
    )
    train_seed: int = Field(42, ge=0, description="Seed of every model `kestrel train` fits.")
    training_min_coverage: float = Field(
        0.95, ge=0, le=1, description="Training sets: least share of rows with a value each "
        "feature must reach where one is due (a stream feature: rows whose entity was seen "
        "earlier in the set); below it `kestrel train` and `kestrel training-set` stop and "
        "name the features and the command that fills them."
    )

    # --- HTTP service --------------------------------------------------------------------
    serve_host: str = Field("127.0.0.1", description="Address `kestrel serve` binds.")
    serve_port: int = Field(3000, ge=1, le=65535, description="Port `kestrel serve` binds.")
    serve_workers: int = Field(
        2, ge=1, description="Worker processes of `kestrel serve` (each runs its own event "
        "loop; a decision is CPU under the GIL, so one per core)."
    )
    max_batch_events: int = Field(
        10_000, ge=1, description="Largest batch POST /v1/events/transactions accepts (413)."
    )
    max_body_bytes: int = Field(
        64 * 1024, ge=1024, description="Largest body of a one-event request (one "
        "transaction, one label): 413 as soon as more arrives."
    )
    max_batch_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest body of a batch request: 413 as soon "
        "as more arrives."
    )

    # --- Secrets (environment only) ------------------------------------------------------
    pan_token_key: SecretStr | None = Field(
        None, description="HMAC key that turns card numbers into card_id tokens."
    )
    jwt_secret: SecretStr | None = Field(
        None, description="HS256 secret for API bearer tokens (development auth; off when a "
        "JWKS URL is set)."
    )
    audit_key: SecretStr | None = Field(
        None, description="HMAC key that anchors each audit file's hash chain."
    )
    jwt_issuer: str = Field("kestrel", description="`iss` claim required on API tokens.")
    jwt_audience: str | None = Field(
        None, description="`aud` claim required on API tokens (unset: not checked)."
    )
    jwt_customer_claim: str = Field(
        "customer_id", description="Claim of a bot token that names the one customer it may "
        "read (identity providers may use another name)."
    )
    token_ttl_seconds: int = Field(
        3600, ge=1, le=MAX_TOKEN_TTL_SECONDS, description="Longest lifetime of an API token: "
        "`kestrel token` mints no longer, the service refuses tokens whose exp - iat is longer."
    )
    jwt_jwks_url: str | None = Field(
        None, description="JWKS URL of the identity provider; RS256 tokens are verified "
        "with its keys (production auth)."
    )
    jwt_public_key_file: Path | None = Field(
        None, description="PEM public key that verifies RS256 tokens (instead of a JWKS URL)."
    )

    # --- Decisioning and insights (serving/) ---------------------------------------------
    score_budget_ms: float = Field(
        50.0, gt=0, description="Latency budget of a decision; past it rules alone decide "
        "(degraded=true)."
    )
    decision_publish_linger_ms: int = Field(
        100, ge=0, le=10_000, description="linger.ms of the producer that publishes scored "
        "transactions and decisions (nobody waits for their acknowledgement; at 400 req/s, "
        "10 ms cost 0.9 ms of worker CPU per decision and a quarter core in the broker)."
    )
    publish_timeout_ms: int = Field(
        5000, ge=100, le=120_000, description="Longest the service waits for the broker: "
        "ingest and labels answer 503 (Retry-After) past it; scored transactions and "
        "decisions it has not acknowledged by then go to the local spool."
    )
    spool_max_bytes: int = Field(
        256 * 1024 * 1024, ge=1024 * 1024, description="Bound of each worker's local spool "
        "(<var_dir>/spool: scored transactions and decisions the broker did not take, "
        "republished in order when it answers); past it a decision says its records were "
        "dropped; past half of it /v1/ready answers 503."
    )
    rules_path: Path | None = Field(
        None, description="Rules YAML of POST /v1/score (unset: serving/rules.yaml)."
    )
    model_poll_seconds: float = Field(
        10.0, gt=0, description="How often serving checks whether the champion alias moved."
    )
    insight_cache_ttl_seconds: int = Field(
        300, ge=1, description="TTL of the insight cache entries `insight:user:{id}:v{N}`."
    )
    rate_limit_per_second: float = Field(
        2000.0, ge=0, description="Per-client token bucket refill rate (requests/s; 0: off)."
    )
    rate_limit_burst: float = Field(
        4000.0, ge=1, description="Per-client token bucket size (requests)."
    )
    rate_limit_clients: str | None = Field(
        None, validation_alias=AliasChoices("KESTREL_RATE_LIMIT_CLIENTS",
                                            "KESTREL_RATE_LIMIT_TENANTS"),
        description="Per-client overrides, `client=rate:burst,...` (KESTREL_RATE_LIMIT_TENANTS "
        "is accepted as an alias)."
    )
    rate_limit_event_cost: float = Field(
        0.1, gt=0, description="Tokens one event of a batch costs (a batch costs at least 1, "
        "at most the burst)."
    )
    rate_limit_explain_factor: float = Field(
        3.0, ge=1, description="Cost multiplier of a batch scored with `reasons=all`."
    )
    case_intake: bool = Field(
        True, description="`kestrel serve` runs the case intake: topics `alerts` and "
        "`decisions` into the case store (serving/case_intake.py)."
    )
    label_relay: bool = Field(
        True, description="`kestrel serve` runs the label relay: the case store's label "
        "outbox to topic `labels`, each label once (serving/label_relay.py)."
    )
    audit_fsync_ms: float = Field(
        100.0, ge=0, description="Audit records are written at once and fsynced at most this "
        "often (0: after every write)."
    )
    audit_queue_records: int = Field(
        100_000, ge=1, description="Most audit records waiting for the disk in one worker; "
        "past it (or while the audit disk is full or failing) decisions say `audited: false` "
        "and ingest and labels answer 503."
    )

    # --- Case store (cases/) -------------------------------------------------------------
    case_store_url: str | None = Field(
        None, description="SQLAlchemy URL of the case store: postgresql+psycopg://… or a "
        "MySQL-protocol store such as TiDB (mysql+pymysql://…); unset: a SQLite file at "
        "<var_dir>/cases/cases.db (WAL), which KESTREL_ENV=prod refuses."
    )
    case_store_busy_timeout_ms: int = Field(
        5000, ge=0, description="SQLite case store: how long a writer waits for another "
        "process's write lock before failing."
    )
    case_retention_days: int = Field(
        365, ge=1, description="Closed cases (with their alerts) and published label outbox "
        "rows older than this are pruned; open cases and cases with a SAR never are."
    )
    case_prune_interval_seconds: int = Field(
        3600, ge=60, description="How often the case intake prunes what is past retention."
    )
    case_decision_actions: str = Field(
        "decline", description="Comma list of decision actions that open or join a case: "
        "`decline`, `challenge`."
    )
    case_challenge_min_score: float = Field(
        0.9, ge=0, le=1, description="A challenge scored at or above this opens a case even "
        "when `challenge` is not in KESTREL_CASE_DECISION_ACTIONS."
    )
    case_sla_hours: str = Field(
        "multi_country=4,velocity=8,decision=24,*=24", description="Hours a case may wait "
        "before it is overdue, per rule (`decision`: a case opened by a flagged decision; "
        "`*`: any other); the queue shows overdue cases first within their priority."
    )

    @field_validator("case_decision_actions")
    @classmethod
    def _case_actions(cls, value: str) -> str:
        """A comma list of known actions, normalised (``challenge, DECLINE`` →
        ``challenge,decline``); an unknown one is a ConfigError, never ignored."""
        actions = [a.strip().lower() for a in value.split(",") if a.strip()]
        unknown = sorted(set(actions) - set(CASE_DECISION_ACTIONS))
        if unknown:
            raise ConfigError(
                f"KESTREL_CASE_DECISION_ACTIONS names {', '.join(map(repr, unknown))}: give a "
                f"comma list of {' and '.join(CASE_DECISION_ACTIONS)} (e.g. `decline` or "
                "`decline,challenge`); an allowed payment never opens a case")
        return ",".join(a for a in CASE_DECISION_ACTIONS if a in actions)

    # --- Investigator console (serving/console/) ------------------------------------------
    console_session_ttl_seconds: int = Field(
        8 * 3600, ge=60, description="A console session ends this long after sign-in (and "
        "at sign-out); the signing-in token's own expiry does not extend it."
    )
    console_idle_timeout_seconds: int = Field(
        3600, ge=60, description="A console session unused for this long ends."
    )

    # --- derived paths -------------------------------------------------------------------
    @property
    def lake_dir(self) -> Path:
        return self.var_dir / "lake"

    @property
    def spool_dir(self) -> Path:
        return self.var_dir / "spool"

    @property
    def run_dir(self) -> Path:
        return self.var_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "log"

    @property
    def mlflow_dir(self) -> Path:
        return (self.var_dir / "mlflow").resolve()

    @property
    def mlflow_uri(self) -> str:
        """The tracking URI every MLflow client of the project uses."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.mlflow_dir / 'mlflow.db'}"

    @property
    def case_store(self) -> str:
        """The case store's URL; the SQLite default only outside prod (a file on one host's
        disk is not a production store: two hosts would each have their own cases)."""
        if self.case_store_url:
            return self.case_store_url
        if self.env == "prod":
            raise ConfigError(
                "KESTREL_CASE_STORE_URL is not set: with KESTREL_ENV=prod give the case "
                "store's database (postgresql+psycopg://… or mysql+pymysql://… for TiDB); "
                "the SQLite default under var/ is for KESTREL_ENV=dev and test")
        return f"sqlite:///{(self.var_dir / 'cases' / 'cases.db').resolve()}"

    @property
    def case_actions(self) -> frozenset[str]:
        """The decision actions that open or join a case (KESTREL_CASE_DECISION_ACTIONS)."""
        return frozenset(a for a in self.case_decision_actions.split(",") if a)

    @property
    def event_time_ahead(self) -> int:
        """Seconds an event_time may lie in the future."""
        if self.event_time_ahead_seconds is None:
            return self.allowed_lateness_seconds
        return self.event_time_ahead_seconds

    def required_secrets(self) -> tuple[SecretName, ...]:
        """The secrets a deployment needs: the JWT secret only when no identity provider
        verifies tokens."""
        names: tuple[SecretName, ...] = ("pan_token_key", "audit_key")
        if not (self.jwt_jwks_url or self.jwt_public_key_file):
            names += ("jwt_secret",)
        return names

    def check_secrets(self) -> None:
        """Refuse to go on without the deployment's secrets outside dev (every process calls
        this at start): one error naming each missing setting."""
        if self.env == "dev":
            return
        missing = [n for n in self.required_secrets() if getattr(self, n) is None]
        if missing:
            names = ", ".join(f"KESTREL_{n.upper()}" for n in missing)
            raise ConfigError(
                f"{names} not set: with KESTREL_ENV={self.env} every secret must come from the "
                "environment (KESTREL_ENV=dev is for a laptop: it generates them under var/)")
        for name in self.required_secrets():
            self.secret(name)  # length checks

    def secret(self, name: SecretName) -> bytes:
        """The secret's bytes; in dev a missing one is generated once under var/secrets."""
        value: SecretStr | None = getattr(self, name)
        if value is not None:
            raw = value.get_secret_value()
            if len(raw) < MIN_SECRET_LENGTH:
                raise ConfigError(f"KESTREL_{name.upper()} must be at least {MIN_SECRET_LENGTH} "
                                  "characters long (HMAC-SHA256 wants a 32-byte key)")
            return raw.encode()
        if self.env != "dev":
            raise ConfigError(
                f"KESTREL_{name.upper()} is not set; outside KESTREL_ENV=dev every secret "
                "must come from the environment"
            )
        return _dev_secret(self.var_dir / "secrets" / name)


def _dev_secret(path: Path) -> bytes:
    """Read or create a development secret (mode 0600) so every local process agrees."""
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{_secrets.token_hex(4)}.tmp")
    tmp.write_text(_secrets.token_urlsafe(32))
    tmp.chmod(0o600)
    try:
        # link() fails if another process won the race; then its key is the key.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes().strip()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
