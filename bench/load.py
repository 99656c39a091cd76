"""An open-loop HTTP load generator, run as its own process (`python -m bench.load`).

Requests are sent on a fixed schedule (request i at t0 + i / rate), whether or not earlier
ones have answered, and each latency is measured from the request's *scheduled* time, so a
slow server is charged for the queue it causes (no coordinated omission). Input: a JSON spec
on stdin ``{"url", "rate", "seconds", "headers", "bodies": [...], "method"}``; output: JSON
``{"latencies_ms": [...], "errors": n, "statuses": {...}, "send_lag_p99_ms": x}`` on stdout;
a large send lag means the load process itself could not keep the schedule (CPU-starved),
so the latencies then overstate the server's.
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
    total = int(rate * seconds)
    latencies: list[float] = []
    lags: list[float] = []  # how late the generator itself sent each request
    statuses: Counter[int] = Counter()
    errors = 0
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(headers=spec.get("headers") or {}, limits=limits,
                                 timeout=30) as client:
        # warm the connection pool so the first second does not pay for connects
        await asyncio.gather(*(client.request(method, urls[0], content=bodies[0])
                               for _ in range(min(32, total))), return_exceptions=True)

        async def one(i: int, at: float) -> None:
            nonlocal errors
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lags.append((time.perf_counter() - at) * 1000)
            try:
                r = await client.request(method, urls[i % len(urls)],
                                         content=bodies[i % len(bodies)])
                statuses[r.status_code] += 1
                latencies.append((time.perf_counter() - at) * 1000)
            except httpx.HTTPError:
                errors += 1

        t0 = time.perf_counter() + 0.05
        await asyncio.gather(*(one(i, t0 + i / rate) for i in range(total)))
    lags.sort()
    return {"latencies_ms": latencies, "errors": errors,
            "send_lag_p99_ms": lags[int(0.99 * (len(lags) - 1))] if lags else 0.0,
            "statuses": {str(k): v for k, v in statuses.items()}}


def main() -> None:
    spec = orjson.loads(sys.stdin.buffer.read())
    sys.stdout.buffer.write(orjson.dumps(asyncio.run(_run(spec))))


if __name__ == "__main__":
    main()
