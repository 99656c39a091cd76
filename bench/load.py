"""An open-loop HTTP load generator, run as its own process (`python -m bench.load`).

Requests are due on a fixed schedule (request i at t0 + i / rate), whether or not earlier
ones have answered, and each latency is measured from the request's *scheduled* time, so a
slow server is charged for the queue it causes (no coordinated omission). At most
``concurrency`` requests are in flight (default 64, one keep-alive connection each); a
request due while all are busy waits for one, and that wait counts in its latency.

The client is a minimal HTTP/1.1 keep-alive client on asyncio streams (requests are
pre-encoded bytes; responses are read by Content-Length or chunked framing). A general
client (httpx) spent more CPU per request than the service under test on this 2-core
machine, so the generator, not the server, set the figures.

Input: a JSON spec on stdin ``{"url" | "urls", "rate", "seconds", "headers", "bodies",
"method", "concurrency"}``; output: ``{"latencies_ms": [...], "errors": n, "statuses": {...},
"send_lag_p99_ms": x}`` on stdout. The send lag is how late the generator itself started a
request after it was due and a connection was free; a large value means the load process was
CPU-starved (or every connection was busy) and the latencies overstate the server's.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import orjson


def _request(method: str, url: str, headers: dict[str, str], body: bytes | None) -> bytes:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target or '/'} HTTP/1.1", f"host: {parts.netloc}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "host"]
    if body is not None:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def _response(reader: asyncio.StreamReader) -> int:
    """Read one response; returns its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def _run(spec: dict[str, Any]) -> dict[str, Any]:
    rate, seconds = float(spec["rate"]), float(spec["seconds"])
    urls: list[str] = spec.get("urls") or [spec["url"]]
    method = spec.get("method", "POST")
    headers = spec.get("headers") or {}
    bodies = [orjson.dumps(b) if b is not None else None for b in spec["bodies"]]
    wire = [_request(method, urls[i % len(urls)], headers, bodies[i % len(bodies)])
            for i in range(max(len(urls), len(bodies)))]
    concurrency = int(spec.get("concurrency", 64))
    total = int(rate * seconds)
    split = urlsplit(urls[0])
    host, port = split.hostname or "127.0.0.1", split.port or 80
    latencies: list[float] = []
    lags: list[float] = []
    statuses: Counter[int] = Counter()
    errors = 0
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(wire[0])  # warm the connection before the clock starts
        await _response(reader)
        return reader, writer

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal errors
        while (job := await queue.get()) is not None:
            i, due = job
            now = time.perf_counter()
            lags.append((now - due) * 1000)
            try:
                writer.write(wire[i % len(wire)])
                statuses[await _response(reader)] += 1
                latencies.append((time.perf_counter() - due) * 1000)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
        writer.close()

    pairs = [await connect() for _ in range(concurrency)]
    workers = [asyncio.create_task(connection(r, w)) for r, w in pairs]
    t0 = time.perf_counter() + 0.05
    for i in range(total):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((i, due))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    lags.sort()
    return {"latencies_ms": latencies, "errors": errors,
            "send_lag_p99_ms": lags[int(0.99 * (len(lags) - 1))] if lags else 0.0,
            "statuses": {str(k): v for k, v in statuses.items()}}


def main() -> None:
    spec = orjson.loads(sys.stdin.buffer.read())
    sys.stdout.buffer.write(orjson.dumps(asyncio.run(_run(spec))))


if __name__ == "__main__":
    main()
