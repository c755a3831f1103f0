"""The heap's full-collection policy (libs/runtime/heap.py): a full collection runs when the
permanent generation has grown past its mark, not while it stays there, and by the clock only
with a period set; its settings come from the environment."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from libs.runtime.heap import HeapConfig, HeapTender


class Node:
    """A tracked object that can be part of a reference cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None


def frozen_cycles(count: int) -> list[weakref.ref[Node]]:
    """`count` two-node cycles, frozen while alive and then dropped: garbage only a full
    collection frees. Weak references to one node of each."""
    cycles = []
    for _ in range(count):
        a, b = Node(), Node()
        a.other, b.other = b, a
        cycles.append(a)
    refs = [weakref.ref(a) for a in cycles]
    gc.collect(1)
    gc.freeze()
    del cycles, a, b
    return refs


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    """The test's frozen objects back in the oldest generation afterwards, for the next full
    collection to free (collecting here would walk the whole suite's heap after every test)."""
    yield
    gc.unfreeze()


def tender(**settings: float) -> tuple[HeapTender, list[float]]:
    """A tender on a clock the test moves, counting at every tick."""
    now = [0.0]
    config = HeapConfig(**{"check_every_s": 0.0, **settings})  # type: ignore[arg-type]
    return HeapTender(config, clock=lambda: now[0]), now


def test_planted_frozen_garbage_past_the_mark_fires_a_full_collection() -> None:
    """Frozen cycles dropped after the first count grow the permanent generation past its mark:
    the next tick collects fully and frees them, and the one after it does not again."""
    heap, _ = tender(growth_factor=1.1, min_growth=1000)
    assert heap.tick() is None  # the first count sets the mark
    mark = heap.mark
    assert mark is not None
    refs = frozen_cycles(mark // 10 + 1000)  # 2 objects each: the generation grows by over 20 %
    assert all(r() is not None for r in refs)
    assert heap.tick() == "growth"
    assert all(r() is None for r in refs)
    assert heap.tick() is None  # the mark is now the size after it


def test_growth_under_the_least_growth_collects_nothing() -> None:
    """Past the mark's growth factor, but fewer objects more than `min_growth`: no full
    collection, and frozen garbage stays until one comes."""
    heap, _ = tender(growth_factor=1.1, min_growth=10_000_000)
    heap.tick()
    refs = frozen_cycles((heap.mark or 0) // 10 + 1000)
    assert heap.tick() is None
    assert all(r() is not None for r in refs)


def test_the_count_waits_for_check_every_s() -> None:
    """Between counts the permanent generation is not walked: garbage past the mark is only
    collected at the first tick `check_every_s` after the last count."""
    heap, now = tender(growth_factor=1.1, min_growth=1000, check_every_s=60.0)
    heap.tick()
    frozen_cycles((heap.mark or 0) // 10 + 1000)
    now[0] = 59.0
    assert heap.tick() is None
    now[0] = 60.0
    assert heap.tick() == "growth"


def test_a_period_collects_by_the_clock_only_when_set() -> None:
    """With no period (the default) time alone never collects; with `full_every_s` one runs
    once it has passed since the start or the last one."""
    idle, now = tender()
    now[0] = 10 * 86400.0
    assert idle.tick() is None
    timed, now = tender(full_every_s=900.0)
    now[0] = 899.0
    assert timed.tick() is None
    now[0] = 900.0
    assert timed.tick() == "period"
    now[0] = 1799.0
    assert timed.tick() is None


def test_forcing_collects_what_was_frozen_and_counts_it() -> None:
    """`force` (SIGUSR1 in a service) frees frozen garbage and returns how much it found."""
    heap, _ = tender()
    refs = frozen_cycles(100)
    assert heap.force() >= 200
    assert all(r() is None for r in refs)


def test_settings_come_from_the_environment() -> None:
    """Each `HEAP_*` variable replaces its default; unset or empty ones keep it."""
    config = HeapConfig.from_env(
        {"HEAP_SETTLE_EVERY_S": "1", "HEAP_FULL_MIN_GROWTH": "5000", "HEAP_FULL_EVERY_S": ""}
    )
    assert config == HeapConfig(settle_every_s=1.0, min_growth=5000)
    assert isinstance(config.min_growth, int)
    assert HeapConfig.from_env({}) == HeapConfig()
