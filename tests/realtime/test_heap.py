"""The gateway's heap tending: survivors are frozen out of collections, young garbage is not,
frozen objects are still freed by reference counting, and a full collection frees frozen cycles."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from libs.runtime.heap import full_collection, settle


class Node:
    """A tracked object that can be part of a reference cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    """Two nodes that only reference each other; a weak reference to one of them."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()
    gc.collect()


def test_settle_freezes_what_is_alive() -> None:
    """After `settle`, a live object is in the permanent generation: collections skip it."""
    alive = [Node() for _ in range(100)]
    settle()
    assert gc.get_freeze_count() >= len(alive)
    collectable = {id(o) for o in gc.get_objects()}  # every generation but the permanent one
    assert not any(id(n) in collectable for n in alive)


def test_settle_collects_young_garbage_instead_of_freezing_it() -> None:
    """A cycle that became garbage before `settle` is collected, not kept frozen forever."""
    gc.disable()
    try:
        ref = cycle()
        assert ref() is not None
        settle()
    finally:
        gc.enable()
    assert ref() is None


def test_frozen_objects_are_still_freed_by_reference_counting() -> None:
    """Freezing does not keep an object alive: the last reference going frees it at once (a
    closed socket's objects go this way)."""
    node = Node()
    ref = weakref.ref(node)
    settle()
    del node
    assert ref() is None


def test_only_a_full_collection_frees_a_cycle_that_was_frozen() -> None:
    """A cycle frozen while alive and dropped later survives ordinary collections; the periodic
    full collection frees it and counts it."""
    a = Node()
    a.other = Node()
    a.other.other = a
    ref = weakref.ref(a)
    settle()
    del a
    gc.collect()
    assert ref() is not None
    assert full_collection() >= 2
    assert ref() is None
