"""The Feast feature store, configured from kestrel.settings and nothing else.

``feature_repo/feature_store.yaml`` holds ``${KESTREL_FEAST_*}`` placeholders. Feast 0.67's own
loader fills them with ``os.path.expandvars`` on the raw text before parsing the YAML (unset
variables stay as written). Here the same textual substitution runs over ``feast_env(settings)``
instead of the process environment, so the kernel's rule holds (only Settings reads the
environment) and the plain ``feast`` CLI, given the same variables, sees the same config.

``apply`` is ``feast apply`` for this repo, callable from code: it imports the definitions with
the caller's Settings pinned (their offline paths live under ``var_dir``), then runs Feast's own
apply on them.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlparse

import yaml
from feast import FeatureService, FeatureStore, FeatureView, Project, RepoConfig
from feast.base_feature_view import BaseFeatureView
from feast.repo_contents import RepoContents
from feast.repo_operations import apply_total_with_repo_instance, parse_repo

from kestrel.errors import ConfigError, KestrelError
from kestrel.settings import Settings

# Feast warns on every on-demand view use; ours are python-mode and small. Said once here.
warnings.filterwarnings("ignore", message="On demand feature view is an experimental feature")

REPO_DIR = Path(__file__).resolve().parents[2] / "feature_repo"
REPO_PACKAGE = "kestrel_repo"
YAML_FILE = REPO_DIR / "feature_store.yaml"

# posixpath.expandvars' pattern: $NAME or ${NAME}; unknown names are left as they are.
_VAR = re.compile(r"\$(\w+|\{[^}]*\})")


def registry_path(settings: Settings) -> Path:
    """The file registry used when no SQL registry URL is set."""
    return (settings.var_dir / "feast" / "registry.db").resolve()


def redis_connection_string(redis_url: str) -> str:
    """Turn ``redis[s]://[user:pass@]host:port/db`` into Feast's ``host:port,db=0,...``.

    Feast splits the string on commas and JSON-decodes every ``key=value``, so a comma in a
    value, or a password that JSON reads as something other than itself (``1e3``), is refused.
    """
    url = urlparse(redis_url)
    if url.scheme not in ("redis", "rediss"):
        raise ConfigError(f"KESTREL_REDIS_URL={redis_url!r}: Feast's Redis online store needs "
                          "a redis:// or rediss:// URL (no unix sockets)")
    params: dict[str, str] = {"db": url.path.lstrip("/") or "0"}
    params.update(parse_qsl(url.query))
    if url.username:
        params["username"] = unquote(url.username)
    if url.password:
        params["password"] = unquote(url.password)
    if url.scheme == "rediss":
        params["ssl"] = "true"
    for key, value in params.items():
        if "," in value:
            raise ConfigError(f"KESTREL_REDIS_URL: {key} contains a comma, which Feast's "
                              "connection string cannot carry")
    if "password" in params:
        with contextlib.suppress(json.JSONDecodeError):
            if str(json.loads(params["password"])) != params["password"]:
                raise ConfigError("KESTREL_REDIS_URL: Feast would read the password as "
                                  "JSON and change it; choose another password")
    host = url.hostname or "127.0.0.1"
    hostport = f"[{host}]:{url.port or 6379}" if ":" in host else f"{host}:{url.port or 6379}"
    return ",".join([hostport, *(f"{k}={v}" for k, v in params.items())])


def feast_env(settings: Settings) -> dict[str, str]:
    """The ``KESTREL_FEAST_*`` variables ``feature_store.yaml`` expects, from Settings."""
    registry_url = settings.feast_registry_url
    ttl = settings.feast_registry_cache_ttl_seconds
    key_ttl = online_key_ttl_seconds(settings)
    env = {
        "KESTREL_FEAST_REDIS": redis_connection_string(settings.redis_url),
        "KESTREL_FEAST_REGISTRY_TYPE": "sql" if registry_url else "file",
        "KESTREL_FEAST_REGISTRY": registry_url or str(registry_path(settings)),
        "KESTREL_FEAST_REGISTRY_TTL": str(int(ttl)),
        "KESTREL_FEAST_KEY_TTL": str(key_ttl),
    }
    for name, value in env.items():
        if "'" in value:  # the YAML single-quotes these values
            raise ConfigError(f"{name} may not contain a single quote: {value!r}")
    return env


def online_key_ttl_seconds(settings: Settings) -> int:
    """The Redis TTL of an entity's online-feature hash: a retention bound, not a feature
    semantic (docs/feature-state.md). By default the feature retention, which is also the
    stream views' Feast ttl, so an entity seen within it is served what training joins."""
    return settings.feast_online_key_ttl_seconds or settings.feature_retention_days * 86_400


def check_retention(settings: Settings, views: list[FeatureView]) -> None:
    """Refuse (KESTREL_ENV=prod; elsewhere a warning, tests use short TTLs) an online key
    TTL shorter than a view's ttl: the online store would drop an entity's row while
    training still joins it, so training would see a value scoring no longer could."""
    key_ttl = online_key_ttl_seconds(settings)
    longer = sorted(v.name for v in views
                    if v.ttl is not None and v.ttl.total_seconds() > key_ttl)
    if not longer:
        return
    message = (f"the online key TTL ({key_ttl} s) is shorter than the ttl of "
               f"{', '.join(longer)}: raise KESTREL_FEATURE_RETENTION_DAYS (or unset "
               "KESTREL_FEAST_ONLINE_KEY_TTL_SECONDS) so online rows outlive what training "
               "joins")
    if settings.env == "prod":
        raise ConfigError(message)
    warnings.warn(message, stacklevel=2)


def expand(text: str, env: dict[str, str]) -> str:
    """``os.path.expandvars`` over ``env`` instead of ``os.environ``."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1).removeprefix("{").removesuffix("}")
        return env.get(name, match.group(0))

    return _VAR.sub(value, text)


def repo_config(settings: Settings) -> RepoConfig:
    """The RepoConfig Feast would load from the YAML, given ``feast_env(settings)``."""
    raw = yaml.safe_load(expand(YAML_FILE.read_text(), feast_env(settings)))
    left = [v for v in _strings(raw) if "${" in v]
    if left:
        raise ConfigError(f"{YAML_FILE} uses variables feast_env does not provide: {left}")
    return RepoConfig(repo_path=REPO_DIR, **raw)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def feature_store(settings: Settings) -> FeatureStore:
    """A FeatureStore over this repo's registry, online and offline stores."""
    config = repo_config(settings)
    if config.registry.registry_type == "file":
        Path(config.registry.path).parent.mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(REPO_DIR), config=config)


@contextlib.contextmanager
def _importable_repo(settings: Settings) -> Iterator[None]:
    """Feast imports each repo file by a module name relative to the cwd; give it that, with
    fresh modules (the definitions depend on the Settings pinned here) and the cwd restored."""
    added = str(REPO_DIR) not in sys.path
    if added:
        sys.path.insert(0, str(REPO_DIR))
    for name in [m for m in sys.modules if m.split(".")[0] == REPO_PACKAGE]:
        del sys.modules[name]
    common = importlib.import_module(f"{REPO_PACKAGE}.common")
    common.pin(settings)
    try:
        with contextlib.chdir(REPO_DIR):
            yield
    finally:
        common.pin(None)
        if added:
            sys.path.remove(str(REPO_DIR))


def load_repo(settings: Settings) -> RepoContents:
    """Import feature_repo/ the way ``feast apply`` does, for ``settings``.

    Feast needs the cwd to be the repo while it imports, and the cwd is per process: call this
    at startup, not while other threads open relative paths (``var_dir`` defaults to one).
    The var dir is made absolute first: the sources' paths are resolved while the cwd is
    the repo, and a relative ``var`` would land them in ``feature_repo/var``.
    """
    settings = settings.model_copy(update={"var_dir": settings.var_dir.resolve()})
    with _importable_repo(settings):
        return parse_repo(REPO_DIR)


@dataclass(frozen=True)
class ApplySummary:
    """What the registry holds for the project after an apply."""

    project: str
    registry: str
    entities: tuple[str, ...]
    data_sources: tuple[str, ...]
    feature_views: tuple[str, ...]
    on_demand_feature_views: tuple[str, ...]
    feature_services: tuple[str, ...]

    def lines(self) -> list[str]:
        kinds = ("entities", "data_sources", "feature_views", "on_demand_feature_views",
                 "feature_services")
        return [f"project {self.project} (registry {self.registry})",
                *(f"  {k.replace('_', ' ')}: {', '.join(getattr(self, k))}" for k in kinds)]


def summarize(store: FeatureStore) -> ApplySummary:
    project = store.project
    return ApplySummary(
        project=project,
        registry=_without_password(store.config.registry.path),
        entities=tuple(sorted(e.name for e in store.list_entities() if e.name != "__dummy")),
        data_sources=tuple(sorted(s.name for s in store.list_data_sources())),
        feature_views=tuple(sorted(v.name for v in store.list_feature_views())),
        on_demand_feature_views=tuple(sorted(
            v.name for v in store.list_on_demand_feature_views())),
        feature_services=tuple(sorted(s.name for s in store.list_feature_services())),
    )


def _without_password(path: str) -> str:
    url = urlparse(path)
    if url.password:
        return path.replace(f":{url.password}@", ":***@", 1)
    return path


def apply(settings: Settings, echo: Callable[[str], None] = print) -> ApplySummary:
    """Register (or update) every definition in feature_repo/, like ``feast apply``.

    Source validation is skipped: it checks that each Parquet table already exists, and the
    feature log and batch tables are created later by the pipelines that write them.
    """
    store = feature_store(settings)
    repo = load_repo(settings)
    check_retention(settings, list(repo.feature_views))
    if not repo.projects:
        repo.projects.append(Project(name=store.project,
                                     description=store.config.project_description or ""))
    apply_total_with_repo_instance(store, store.project, store.registry, repo,
                                   skip_source_validation=True)
    summary = summarize(store)
    for line in summary.lines():
        echo(line)
    return summary


# --- drift between the registry and feature_repo/, and the service lock ---------------------

LOCK_FILE = REPO_DIR / "services.lock.json"
APPLY_COMMAND = "kestrel features apply"


class RegistryDrift(KestrelError):
    """The Feast registry holds other definitions than feature_repo/ (a view's schema or a
    service's feature list): the message names the command that registers the repo's."""


class ServiceLockError(KestrelError):
    """A feature service version pinned in feature_repo/services.lock.json was edited."""


Outputs = dict[str, list[str]]
"""A feature service's outputs: view (or on-demand view) name → feature names, in order."""


def service_outputs(service: FeatureService) -> Outputs:
    return {p.name: [f.name for f in p.features] for p in service.feature_view_projections}


def view_schema(view: BaseFeatureView) -> dict[str, str]:
    """A view's features as name → Feast type (the entity columns are not features)."""
    return {f.name: str(f.dtype) for f in view.features}


@dataclass(frozen=True)
class Definitions:
    """What a side (the registry or the repo) defines: views' schemas, services' outputs."""

    views: dict[str, dict[str, str]]
    services: dict[str, Outputs]


def repo_definitions(repo: RepoContents) -> Definitions:
    views = {v.name: view_schema(v) for v in [*repo.feature_views, *repo.on_demand_feature_views]}
    return Definitions(views, {s.name: service_outputs(s) for s in repo.feature_services})


def registry_definitions(store: FeatureStore) -> Definitions:
    """What the registry holds now (its cache bypassed: another process may have applied)."""
    registry, project = store.registry, store.project
    views = [*registry.list_feature_views(project, allow_cache=False),
             *registry.list_on_demand_feature_views(project, allow_cache=False)]
    services = registry.list_feature_services(project, allow_cache=False)
    return Definitions({v.name: view_schema(v) for v in views},
                       {s.name: service_outputs(s) for s in services})


def compare_definitions(registry: Definitions, repo: Definitions) -> list[str]:
    """Every difference that matters to readers of the registry, one phrase each: a view or
    service the registry lacks, a feature missing, extra or of another type, a service whose
    projection lists other features (order included: it is the column order of its reads).
    Objects only the registry holds are not drift (``feast apply`` would delete them; nothing
    the repo defines reads them)."""
    problems: list[str] = []
    for name, schema in repo.views.items():
        held = registry.views.get(name)
        if held is None:
            problems.append(f"view {name} is not registered")
            continue
        missing = [f for f in schema if f not in held]
        extra = [f for f in held if f not in schema]
        retyped = [f"{f} {held[f]}→{t}" for f, t in schema.items() if f in held and held[f] != t]
        for what, names in (("lacks", missing), ("has removed", extra), ("retypes", retyped)):
            if names:
                problems.append(f"view {name} {what} {', '.join(names)}")
    for name, outputs in repo.services.items():
        held_outputs = registry.services.get(name)
        if held_outputs is None:
            problems.append(f"service {name} is not registered")
        elif held_outputs != outputs:
            changed = sorted(v for v in {*outputs, *held_outputs}
                             if outputs.get(v) != held_outputs.get(v))
            problems.append(f"service {name} reads other features of {', '.join(changed)}")
    return problems


def registry_drift(settings: Settings, repo: RepoContents | None = None,
                   store: FeatureStore | None = None) -> list[str] | None:
    """The differences between the registry and feature_repo/ (``[]``: none); None when the
    registry holds nothing of this project yet (never applied)."""
    store = store or feature_store(settings)
    held = registry_definitions(store)
    if not held.views and not held.services:
        return None
    return compare_definitions(held, repo_definitions(repo or load_repo(settings)))


def drift_message(problems: list[str]) -> str:
    shown = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3
                                       else "")
    return (f"the Feast registry differs from feature_repo/ ({shown}); run `{APPLY_COMMAND}` "
            "to register the repository's definitions")


def check_registry(settings: Settings, repo: RepoContents | None = None) -> bool:
    """Raise :class:`RegistryDrift` when the registry differs from the repo (what
    ``kestrel stream`` runs at start). A registry never applied is not drift: the stream
    writes Redis and the log without it; returns False then, True when it matches."""
    problems = registry_drift(settings, repo)
    if problems:
        raise RegistryDrift(drift_message(problems))
    return problems is not None


def ensure_applied(settings: Settings, echo: Callable[[str], None] = print) -> list[str]:
    """Apply the repo when the registry lacks it or differs from it (what ``kestrel train``
    and ``kestrel training-set`` run first, and ``kestrel parity`` may); returns the
    differences that were fixed (``["never applied"]`` for an empty registry, ``[]``: the
    registry already matched and nothing was done)."""
    problems = registry_drift(settings)
    if problems == []:
        return []
    fixed = problems if problems is not None else ["never applied"]
    echo(f"the Feast registry differs from feature_repo/ ({'; '.join(fixed)}): "
         f"applying it ({APPLY_COMMAND}) …")
    apply(settings, echo=lambda line: echo(f"  {line}"))
    return fixed


def read_lock(path: Path = LOCK_FILE) -> dict[str, Outputs]:
    if not path.exists():
        return {}
    data: dict[str, Outputs] = json.loads(path.read_text())["services"]
    return data


def lock_problems(services: dict[str, Outputs], locked: dict[str, Outputs]) -> list[str]:
    """Locked service versions whose outputs changed or that disappeared (one line each)."""
    problems = []
    for name, outputs in locked.items():
        now = services.get(name)
        if now is None:
            problems.append(f"{name} is locked but no longer declared")
        elif now != outputs:
            diff = sorted(v for v in {*now, *outputs} if now.get(v) != outputs.get(v))
            problems.append(f"{name} changed its features of {', '.join(diff)}")
    return problems


def locked_services(repo: RepoContents) -> dict[str, Outputs]:
    """The services the lock covers: the versioned model inputs (kestrel.features'
    STREAM_INPUTS). customer_insights_v1 follows its views on purpose (no model reads it)."""
    from kestrel.features import STREAM_INPUTS

    return {s.name: service_outputs(s) for s in repo.feature_services if s.name in STREAM_INPUTS}


def update_lock(settings: Settings, path: Path = LOCK_FILE) -> list[str]:
    """Add every declared model-input service version missing from the lock; refuse (raise
    ServiceLockError) when a locked version changed. Returns the versions added."""
    services = locked_services(load_repo(settings))
    locked = read_lock(path)
    problems = lock_problems(services, locked)
    if problems:
        raise ServiceLockError(lock_message(problems))
    added = sorted(set(services) - set(locked))
    if added:
        doc = {"about": "Outputs of each feature service version a model may be trained on; "
                        "a locked version never changes (declare a new version instead). "
                        "`kestrel features lock` adds new versions.",
               "services": {**locked, **{n: services[n] for n in added}}}
        path.write_text(json.dumps(doc, indent=2) + "\n")
    return added


def lock_message(problems: list[str]) -> str:
    return (f"locked feature service versions were edited ({'; '.join(problems)}): a served "
            "version never changes; declare a new version (fraud_scoring_vN in "
            "kestrel/features/definitions.py STREAM_INPUTS and feature_repo/kestrel_repo/"
            "services.py), then run `kestrel features lock` to lock it")
