"""`kestrel up`, `down`, `status`: the local services (broker, Redis, the HTTP service) and
what runs on them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from cli.common import fail, load_settings

if TYPE_CHECKING:
    from rich.console import Console

    from kestrel.settings import Settings


def up() -> None:
    """Start the local broker (and Redis when none answers); create the topics."""
    from kestrel.errors import KestrelError
    from kestrel.services import start_broker, start_redis

    settings = load_settings()
    try:
        typer.echo(start_broker(settings))
        typer.echo(start_redis(settings))
    except KestrelError as exc:
        fail(exc)


def down() -> None:
    """Stop what `kestrel up` started, and nothing else."""
    from kestrel.services import BROKER, HTTP, REDIS, stop

    settings = load_settings()
    for name in (HTTP, BROKER, REDIS):
        typer.echo(stop(settings, name))


def status() -> None:
    """Each service, its address, whether it answers; topics, partitions, consumed offsets."""
    from rich.console import Console
    from rich.table import Table

    from kestrel.kafka import committed_offsets, topic_partitions
    from kestrel.services import report
    from kestrel.topics import CONSUMER_GROUPS, TOPICS

    settings = load_settings()
    console = Console()
    services = Table(title="services")
    for col in ("service", "address", "answers", "started by kestrel", "pid"):
        services.add_column(col)
    answering = {}
    for r in report(settings):
        answering[r.name] = r.answers
        services.add_row(r.name, r.address, "yes" if r.answers else "[red]no[/red]",
                         "yes" if r.started_by_kestrel else "no", str(r.pid or "-"))
    console.print(services)
    if not answering.get("broker"):
        console.print("broker does not answer: run `kestrel up`")
        raise typer.Exit(1)
    parts = topic_partitions(settings)
    topics = Table(title="topics")
    for col in ("topic", "partitions", "consumer group", "consumed (committed offsets)"):
        topics.add_column(col)
    for spec in TOPICS:
        n = parts.get(spec.name)
        groups = [g for g, ts in CONSUMER_GROUPS.items() if spec.name in ts]
        if n is None:
            topics.add_row(spec.name, "[red]missing[/red]", "", "")
            continue
        if not groups:
            topics.add_row(spec.name, str(n), "-", "-")
        for g in groups:
            offs = committed_offsets(settings, g, spec.name, n)
            total = sum(o for o in offs.values() if o > 0)
            shown = " ".join(f"{p}:{o if o >= 0 else '-'}" for p, o in sorted(offs.items()))
            topics.add_row(spec.name, str(n), g, f"{total} ({shown})")
    console.print(topics)
    _print_stream_status(settings, console)


def _print_stream_status(settings: Settings, console: Console) -> None:
    """Live stream instances, from the summaries they keep in Redis."""
    import redis as redis_lib
    from rich.table import Table

    from kestrel.services import redis_answers
    from pipelines.stream.metrics import read_summaries
    from pipelines.stream.processor import GROUP_ID

    if not redis_answers(settings.redis_url):
        return
    summaries = read_summaries(redis_lib.Redis.from_url(settings.redis_url), GROUP_ID)
    table = Table(title="stream processors (last minute)")
    for col in ("instance", "events/s", "applied", "dup", "late", "invalid", "alerts",
                "freshness p50/p99 ms", "lag s (max)", "/metrics"):
        table.add_column(col)
    for s in summaries:
        t = s["totals"]
        lag = max(s["lag_seconds"].values(), default=0.0)
        port = s.get("metrics_port")
        table.add_row(s["instance"], f"{s['events_per_s']:,.0f}", f"{t.get('applied', 0):,}",
                      f"{t.get('duplicate', 0):,}", f"{t.get('late', 0):,}",
                      f"{t.get('invalid', 0):,}", f"{t.get('alerts', 0):,}",
                      f"{s['freshness_p50_ms']} / {s['freshness_p99_ms']}", f"{lag:.1f}",
                      f"127.0.0.1:{port}" if port else "-")
    if not summaries:
        table.add_row("none running", "", "", "", "", "", "", "", "", "")
    console.print(table)
