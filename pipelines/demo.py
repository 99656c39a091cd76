"""`kestrel demo` (run by `make demo`): the main job end to end on a few simulated days.

Simulated transactions go through the ingestion producer into Kafka while the archiver
consumes them into the Parquet lake; the demo waits until every event is archived and prints
what happened and where to look. Later issues add the stream, batch, training and serving.
"""

from __future__ import annotations

import logging
import threading
import time

from rich.console import Console

from kestrel.errors import ServiceUnavailable
from kestrel.kafka import broker_answers
from kestrel.pan import CardTokenizer
from kestrel.settings import Settings
from pipelines.archive import Archiver
from pipelines.lake_summary import print_summary
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.to_kafka import stream_to_kafka

DEMO_CUSTOMERS = 5000
DEMO_TERMINALS = 10000


def run_demo(settings: Settings, days: int = 3, timeout: float = 300.0) -> None:
    console = Console()
    if not broker_answers(settings):
        raise ServiceUnavailable(
            f"no broker at KESTREL_KAFKA_BOOTSTRAP={settings.kafka_bootstrap}; run `kestrel up`")
    t0 = time.monotonic()
    logging.getLogger("kestrel.archive").setLevel(logging.WARNING)  # the demo prints progress
    config = SimulationConfig(customers=DEMO_CUSTOMERS, terminals=DEMO_TERMINALS, days=days,
                              label_delay_days=settings.label_delay_days)
    archiver = Archiver(settings)
    worker = threading.Thread(target=archiver.run, name="archiver", daemon=True)
    worker.start()
    console.print(f"[bold]1/3[/bold] archiver started (group kestrel-archiver) → "
                  f"{settings.lake_dir / 'transactions'}")
    console.print(f"[bold]2/3[/bold] streaming {days} simulated days ({DEMO_CUSTOMERS:,} "
                  f"customers, {DEMO_TERMINALS:,} terminals) through the ingest producer …")
    tokenize = CardTokenizer(settings.secret("pan_token_key")).token
    sent = stream_to_kafka(config, settings, tokenize)
    console.print(f"      published {sent.transactions:,} transactions ({sent.frauds:,} frauds) "
                  f"at {sent.events_per_s:,.0f} events/s, and {sent.labels:,} ground-truth "
                  f"labels (delay {settings.label_delay_days:g} days) to topic `labels`")
    console.print("[bold]3/3[/bold] waiting for the archiver to catch up …")
    deadline = time.monotonic() + timeout
    while archiver.stats.consumed < sent.transactions and time.monotonic() < deadline:
        if not worker.is_alive():
            raise ServiceUnavailable("the archiver stopped early; see the log above")
        time.sleep(0.2)
    archiver.request_stop()
    worker.join(30)
    s = archiver.stats
    if s.consumed < sent.transactions:
        raise ServiceUnavailable(f"archiver read {s.consumed:,} of {sent.transactions:,} events "
                                 f"within {timeout:.0f} s")
    console.print(f"      archived {s.written:,} new events into {s.files} files "
                  f"({s.duplicates:,} already in the lake, {s.invalid:,} invalid → DLQ)")
    print_summary(settings)
    console.print(f"\n[bold green]demo done[/bold green] in {time.monotonic() - t0:.1f} s. "
                  "Look at: `kestrel status` (services, topics, offsets), `kestrel lake` "
                  f"(partitions), {settings.lake_dir}/transactions (Parquet), "
                  f"{settings.log_dir} (service logs).")
