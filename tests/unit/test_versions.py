"""Hybrid logical clock and last-writer-wins ordering."""

from hypothesis import given
from hypothesis import strategies as st

from zring.versions import LOGICAL_BITS, HybridClock, Version


def test_timestamps_follow_wall_time():
    clock = HybridClock()
    assert clock.now(1_000) == 1_000 << LOGICAL_BITS
    assert clock.now(2_000) == 2_000 << LOGICAL_BITS
    assert Version(clock.last, "n").physical_ms == 2_000


def test_a_stalled_or_backward_clock_still_moves_forward():
    clock = HybridClock()
    first = clock.now(5_000)
    assert clock.now(5_000) == first + 1
    assert clock.now(4_000) == first + 2  # wall clock went back: logical counter carries on


def test_observing_a_remote_timestamp_moves_past_it():
    clock = HybridClock()
    clock.now(1_000)
    remote = (9_000 << LOGICAL_BITS) + 7
    clock.observe(remote)
    assert clock.now(1_001) > remote
    clock.observe(5)  # an older one changes nothing
    assert clock.last > remote


@given(st.lists(st.one_of(st.tuples(st.just("tick"), st.integers(0, 1 << 40)),
                          st.tuples(st.just("observe"), st.integers(0, 1 << 56))),
                max_size=50))
def test_issued_timestamps_strictly_increase(events):
    clock = HybridClock()
    issued = []
    for kind, value in events:
        if kind == "tick":
            issued.append(clock.now(value))
        else:
            clock.observe(value)
            issued_floor = clock.last
            assert clock.now(0) > issued_floor
            issued.append(clock.last)
    assert issued == sorted(set(issued))


def test_versions_order_by_timestamp_then_node_id():
    assert Version(2, "a") > Version(1, "z")
    assert Version(1, "b") > Version(1, "a")
    assert max([Version(1, "a"), Version(3, "a"), Version(3, "b")]) == Version(3, "b")
