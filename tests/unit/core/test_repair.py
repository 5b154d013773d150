"""core/repair.py: the pure pieces of anti-entropy (hash trees over shared ranges, the
segments and keys two replicas exchange)."""

from __future__ import annotations

from array import array

from zring.core.repair import (
    SEGMENT_BITS,
    SEGMENTS,
    TreeBuilder,
    VersionCollector,
    differing_segments,
    keys_to_exchange,
    record_digest,
    segment_intervals,
    shared,
)
from zring.hashing import key_position
from zring.ring import HashRing
from zring.storage import MemoryStore
from zring.storage.base import Record
from zring.versions import Version

SHIFT = 64 - SEGMENT_BITS


def record(key: str, value=b"v", timestamp: int = 1 << 20, writer: str = "w") -> Record:
    return Record(key, value, Version(timestamp, writer), key_position(key))


def store_of(records) -> MemoryStore:
    store = MemoryStore()
    for r in records:
        store.put(r)
    return store


def built(store, belongs=lambda position: True, page_records: int = 10) -> TreeBuilder:
    tree = TreeBuilder(store, belongs, page_records)
    for _ in range(10_000):
        if tree.done:
            return tree
        tree.step()
    raise AssertionError("the tree never finished")


KEYS = [f"k{i}" for i in range(40)]


def test_a_digest_covers_key_version_and_tombstone_ness_but_not_the_value():
    base = record("k")
    assert record_digest(base) == record_digest(record("k", b"other value"))
    assert record_digest(base) != record_digest(record("k", timestamp=2 << 20))
    assert record_digest(base) != record_digest(record("k", writer="x"))
    assert record_digest(base) != record_digest(record("k", None))       # a tombstone
    assert record_digest(base) != record_digest(record("j"))


def test_a_tree_is_built_a_page_at_a_time():
    tree = TreeBuilder(store_of(record(k) for k in KEYS[:25]), lambda p: True, 10)
    steps = 0
    while not tree.done:
        tree.step()
        steps += 1
    assert steps == 3 and tree.records == 25   # 10 + 10 + 5 (a short page ends it)
    leaves = array("Q", tree.leaves)
    tree.step()                                # done: another step changes nothing
    assert tree.leaves == leaves and tree.records == 25


def test_a_tree_depends_on_the_records_not_on_order_or_page_size():
    records = [record(k) for k in KEYS]
    one = built(store_of(records), page_records=7)
    other = built(store_of(reversed(records)), page_records=1000)
    assert one.root() == other.root() and one.leaves == other.leaves
    assert one.root() != built(MemoryStore()).root()


def test_one_differing_record_makes_its_segment_differ_and_no_other():
    records = [record(k) for k in KEYS]
    changed = records[7]._replace(version=Version(2 << 20, "w"))
    ours = built(store_of(records))
    theirs = built(store_of(records[:7] + [changed] + records[8:]))
    assert ours.root() != theirs.root()
    assert differing_segments(ours.leaves, theirs.leaves) == [changed.position >> SHIFT]
    missing = built(store_of(records[1:]))
    assert differing_segments(ours.leaves, missing.leaves) == [records[0].position >> SHIFT]
    assert differing_segments(ours.leaves, ours.leaves) == []


def test_a_tree_hashes_only_the_records_it_is_told_belong():
    records = [record(k) for k in KEYS]
    half = 1 << 63
    tree = built(store_of(records), belongs=lambda position: position < half)
    below = [r for r in records if r.position < half]
    assert tree.records == len(below) and 0 < len(below) < len(records)
    assert tree.root() == built(store_of(below)).root()


def test_segment_intervals_cover_segments_and_merge_neighbours():
    width = 1 << SHIFT
    assert segment_intervals([3]) == [(3 * width, 4 * width - 1)]
    assert segment_intervals([5, 3, 4, 9, 4]) == [(3 * width, 6 * width - 1),
                                                  (9 * width, 10 * width - 1)]
    assert segment_intervals([SEGMENTS - 1]) == [((SEGMENTS - 1) * width, (1 << 64) - 1)]
    assert segment_intervals([]) == []


def test_version_collector_pages_through_its_intervals_only():
    records = [record(k) for k in KEYS]
    store = store_of(records)
    segments = sorted({r.position >> SHIFT for r in records[:5]})
    intervals = segment_intervals(segments)
    collector = VersionCollector(store, intervals, lambda p: True, page_records=2)
    for _ in range(1000):
        if collector.done:
            break
        collector.step()
    inside = {r.key: r.version for r in records if (r.position >> SHIFT) in segments}
    assert collector.done and collector.versions == inside
    assert set(inside) >= {r.key for r in records[:5]} and len(inside) < len(records)


def test_keys_to_exchange_goes_by_the_newer_version_each_way():
    old, new = Version(1, "w"), Version(2, "w")
    ours = {"same": old, "ours-newer": new, "only-ours": old, "theirs-newer": old}
    theirs = {"same": old, "ours-newer": old, "only-theirs": old, "theirs-newer": new}
    fetch, send = keys_to_exchange(ours, theirs)
    assert sorted(fetch) == ["only-theirs", "theirs-newer"]
    assert sorted(send) == ["only-ours", "ours-newer"]
    assert keys_to_exchange(ours, dict(ours)) == ([], [])


def test_shared_is_true_where_both_nodes_replicate_a_position():
    ring = HashRing(["a", "b", "c", "d", "e"], vnodes=16)
    both = shared(ring, 2, "a", "b")
    positions = [key_position(f"p{i}") for i in range(500)]
    expected = [set(ring.get_nodes_at(p, 2)) == {"a", "b"} for p in positions]
    assert [both(p) for p in positions] == expected
    assert any(expected) and not all(expected)
    assert shared(ring, 2, "a", "b")(positions[0]) == shared(ring, 2, "b", "a")(positions[0])
