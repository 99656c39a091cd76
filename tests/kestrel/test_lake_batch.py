"""kestrel.lake_batch: the lock that keeps one consumer per lake."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kestrel.errors import ServiceError
from kestrel.lake_batch import exclusive


def test_a_second_holder_is_refused_with_the_owner_pid(tmp_path: Path) -> None:
    lock = tmp_path / "_archiver.lock"
    with exclusive(lock, "archiver"):
        assert lock.read_text() == str(os.getpid())
        refused = pytest.raises(ServiceError, match=rf"another archiver \(pid {os.getpid()}\)")
        with refused, exclusive(lock, "archiver"):
            pass
    with exclusive(lock, "archiver"):  # released when the first block ended
        pass
