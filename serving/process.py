"""Run the HTTP service as a separate process (benchmarks, tests, scripts).

The child gets the caller's settings through the environment (the one way settings travel),
including the secrets, so tokens minted by the caller verify in the service.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import get_args

import httpx

from kestrel.errors import ServiceError
from kestrel.settings import SecretName, Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """This process's environment with ``settings`` spelled out as KESTREL_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREL_")}
    secrets = get_args(SecretName)
    for name, value in settings.model_dump(exclude=set(secrets)).items():
        if value is not None:  # unset stays unset
            env[f"KESTREL_{name.upper()}"] = str(value)
    for secret in secrets:
        if getattr(settings, secret) is not None or settings.env == "dev":
            env[f"KESTREL_{secret.upper()}"] = settings.secret(secret).decode()
    return env


@contextmanager
def running_service(settings: Settings, port: int, log: Path,
                    timeout: float = 90.0) -> Iterator[str]:
    """`kestrel serve` on 127.0.0.1:port until the block ends; yields its base URL."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1",
             "--port", str(port)],
            env=settings_env(settings), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise ServiceError(f"the HTTP service did not start; see {log}")
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
