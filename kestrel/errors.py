"""Kestrel's error tree: one root, one subclass per kind of failure.

The HTTP layer maps these to status codes in one table (serving/http_errors.py: 400, 401/403,
404, 409, 413, 429, 503); the CLI prints their message and exits non-zero. Messages say what to
do, not only what went wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from kestrel.pan import redact_pans


class KestrelError(Exception):
    """Root of every error Kestrel raises on purpose."""


class ConfigError(KestrelError):
    """A setting is missing or invalid; the message names the environment variable."""


class ServiceError(KestrelError):
    """A local service (broker, Redis) could not be started, reached or stopped."""


class ServiceUnavailable(ServiceError):
    """A service the operation needs does not answer (maps to HTTP 503)."""


class CaseStoreUnavailable(ServiceUnavailable):
    """The case store's database does not answer (HTTP 503 with Retry-After). Scoring does
    not need it; the case intake keeps its records and retries until it answers."""


@dataclass(frozen=True)
class FieldError:
    """One problem with one field: ``path`` like ``events[3].amount``. Both are redacted as
    they are made: a path can quote the input (an unknown field's name), and an error is
    answered, logged and dead-lettered."""

    path: str
    reason: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", redact_pans(self.path))
        object.__setattr__(self, "reason", redact_pans(self.reason))

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


class EventValidationError(KestrelError):
    """An event (or a batch of them) breaks its contract; carries every field error."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        shown = "; ".join(f"{e.path}: {e.reason}" for e in errors[:5])
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"invalid event: {shown}{more}")


class UnsupportedSchemaVersion(EventValidationError):
    """The event's ``schema_version`` is not one this build understands."""


class BatchTooLarge(KestrelError):
    """A batch exceeds the configured maximum (maps to HTTP 413)."""

    def __init__(self, size: int, limit: int):
        self.size, self.limit = size, limit
        super().__init__(
            f"batch of {size} events exceeds the limit of {limit}; split it "
            "(KESTREL_MAX_BATCH_EVENTS sets the limit)"
        )


class LakeError(KestrelError):
    """The Parquet lake is missing, unreadable or inconsistent."""


class NotFound(KestrelError):
    """The thing asked for does not exist (HTTP 404)."""


class AuthError(KestrelError):
    """No or a bad credential (HTTP 401)."""


class Forbidden(KestrelError):
    """A valid credential that may not do this (HTTP 403)."""


class RateLimited(KestrelError):
    """The client's bucket is empty (HTTP 429)."""

    def __init__(self, client: str, retry_after: int):
        super().__init__(f"client {client!r} is over its request rate; retry after "
                         f"{retry_after} s")
        self.client = client
        self.retry_after = retry_after


class BodyTooLarge(KestrelError):
    """A request body is longer than its route accepts (HTTP 413, answered as soon as the
    limit is passed, before the rest is read)."""

    def __init__(self, limit: int, setting: str):
        self.limit = limit
        super().__init__(f"the request body is larger than {limit} bytes; send less "
                         f"({setting} sets the limit)")


class Conflict(KestrelError):
    """An edit made from a stale read, or one that contradicts the stored state (HTTP 409):
    someone else changed the thing first. The message says what to reload."""
