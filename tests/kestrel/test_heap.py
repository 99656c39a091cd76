"""kestrel.heap.paused: automatic collection off inside, restored as it was after."""

from __future__ import annotations

import gc
import threading

import pytest

from kestrel import heap


@pytest.fixture(autouse=True)
def _collection_on():
    was = gc.isenabled()
    gc.enable()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_off_inside_and_back_on_after_even_on_error() -> None:
    with heap.paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), heap.paused():
        raise RuntimeError("the block failed")
    assert gc.isenabled()


def test_stays_off_when_it_was_off() -> None:
    gc.disable()
    with heap.paused():
        pass
    assert not gc.isenabled()


def test_overlapping_blocks_resume_when_the_last_ends() -> None:
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with heap.paused():
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    with heap.paused():
        thread.start()
        assert entered.wait(10)
    assert not gc.isenabled()  # the other block still runs
    release.set()
    thread.join(10)
    assert gc.isenabled()


def test_a_block_ending_inside_another_collects_the_young_generation() -> None:
    class Node:
        peer: Node | None = None

    gc.collect()
    done = threading.Event()

    def other() -> None:
        with heap.paused():
            for _ in range(1000):
                a, b = Node(), Node()
                a.peer, b.peer = b, a  # a cycle: only the collector frees it
            del a, b

        done.set()

    with heap.paused():
        thread = threading.Thread(target=other)
        thread.start()
        assert done.wait(10)
        thread.join(10)
        # collection is still off here, yet the other block's cycles are gone
        assert not gc.isenabled()
        assert not any(isinstance(o, Node) for o in gc.get_objects())
