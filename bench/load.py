"""An open-loop HTTP load generator, run as its own process (`python -m bench.load`).

Requests are due on a fixed schedule (request i at t0 + i / rate), whether or not earlier
ones have answered, and each latency is measured from the request's *scheduled* time, so a
slow server is charged for the queue it causes (no coordinated omission). At most
``concurrency`` requests are in flight (default 128, one keep-alive connection each); a
request due while all are busy waits for one, and that wait counts in its latency.

Input: a JSON spec on stdin ``{"url" | "urls", "rate", "seconds", "headers", "bodies",
"method", "concurrency"}``; output: ``{"latencies_ms": [...], "errors": n, "statuses": {...},
"send_lag_p99_ms": x}`` on stdout. The send lag is how late the generator itself started a
request after it was due and a connection was free of its own overhead; a large value means
the load process was CPU-starved and the latencies overstate the server's.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from typing import Any

import httpx
import orjson


async def _run(spec: dict[str, Any]) -> dict[str, Any]:
    rate, seconds = float(spec["rate"]), float(spec["seconds"])
    bodies = [orjson.dumps(b) if b is not None else None for b in spec["bodies"]]
    urls = spec.get("urls") or [spec["url"]]
    method = spec.get("method", "POST")
    concurrency = int(spec.get("concurrency", 128))
    total = int(rate * seconds)
    latencies: list[float] = []
    lags: list[float] = []
    statuses: Counter[int] = Counter()
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(headers=spec.get("headers") or {}, limits=limits,
                                 timeout=30) as client:
        for _ in range(min(16, total)):  # open a few connections before the clock starts
            await client.request(method, urls[0], content=bodies[0])

        async def one(i: int, due: float) -> None:
            nonlocal errors
            async with gate:
                lags.append((time.perf_counter() - due) * 1000)
                try:
                    r = await client.request(method, urls[i % len(urls)],
                                             content=bodies[i % len(bodies)])
                    statuses[r.status_code] += 1
                    latencies.append((time.perf_counter() - due) * 1000)
                except httpx.HTTPError:
                    errors += 1

        tasks = []
        t0 = time.perf_counter() + 0.05
        for i in range(total):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)
    lags.sort()
    return {"latencies_ms": latencies, "errors": errors,
            "send_lag_p99_ms": lags[int(0.99 * (len(lags) - 1))] if lags else 0.0,
            "statuses": {str(k): v for k, v in statuses.items()}}


def main() -> None:
    spec = orjson.loads(sys.stdin.buffer.read())
    sys.stdout.buffer.write(orjson.dumps(asyncio.run(_run(spec))))


if __name__ == "__main__":
    main()
