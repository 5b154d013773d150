"""Stores: last writer wins, position-ordered ranges, meta, hints, and the SQLite file contract.

Every behavioural test runs against both ``MemoryStore`` and ``SQLiteStore``: the simulation
relies on the memory store behaving exactly like the durable one.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zring.errors import StorageError
from zring.hashing import RING_SIZE, key_position
from zring.storage import MemoryStore, Record, SQLiteStore, Store, sqlite_check, sqlite_schema
from zring.storage import sqlite as sqlite_store
from zring.storage.base import Hint
from zring.versions import LOGICAL_BITS, Version

TOP = RING_SIZE - 1


def record(key: str, value: bytes | str | None, timestamp: int, node: str = "n1",
           position: int | None = None) -> Record:
    if position is None:
        position = key_position(key)
    return Record(key, value, Version(timestamp, node), position)


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    if request.param == "memory":
        opened: Store = MemoryStore()
    else:
        opened = SQLiteStore(tmp_path / "store.db")
    yield opened
    opened.close()


def hint(target: str, key: str, value: bytes | str | None, timestamp: int,
         created_ms: int = 1000, position: int | None = None) -> Hint:
    return Hint(0, target, record(key, value, timestamp, position=position), created_ms)


def put_at(store: Store, positions: dict[str, int]) -> None:
    """Store one live record per key at a chosen position (collisions and edges on demand)."""
    store.put_many(record(key, f"v-{key}", 1, position=pos) for key, pos in positions.items())


def page_through(store: Store, low: int, high: int, limit: int) -> list[str]:
    keys: list[str] = []
    after = None
    while page := store.scan_range(low, high, after=after, limit=limit):
        # over the limit only when one position group fills the page
        assert len(page) <= limit or len({r.position for r in page}) == 1
        keys.extend(r.key for r in page)
        after = page[-1].position
    return keys


# ------------------------------------------------------------------ last writer wins


def test_get_missing_key_is_none(store):
    assert store.get("nothing") is None


def test_get_wire_many_matches_get_wire_key_by_key(store):
    # over one query's run of keys, with misses, duplicates, tombstones and str values
    store.put_many(record(f"k{i}", f"v{i}" if i % 3 else b"b", i + 1) for i in range(1200))
    store.put(record("k7", None, 5000))
    keys = [f"k{i}" for i in range(0, 1300, 2)] + ["k7", "k8", "k8", "missing"]
    many = store.get_wire_many(keys)
    assert many == [store.get_wire(key) for key in keys]
    assert many[-4] == ["k7", None, 5000, "n1"] and many[-1] is None
    assert store.get_wire_many([]) == []


def test_newer_version_wins_and_older_or_equal_is_ignored(store):
    assert store.put(record("k", "first", 10))
    assert not store.put(record("k", "older", 9))
    assert not store.put(record("k", "same version", 10))
    assert store.get("k").value == "first"
    assert store.put(record("k", "newer", 11))
    assert store.get("k") == record("k", "newer", 11)


def test_node_id_breaks_timestamp_ties(store):
    assert store.put(record("k", "from a", 10, node="a"))
    assert store.put(record("k", "from b", 10, node="b"))
    assert not store.put(record("k", "from a again", 10, node="a"))
    assert store.get("k").version == Version(10, "b")


def test_tombstone_wins_when_newer_and_blocks_older_writes(store):
    store.put(record("k", b"v", 10))
    assert store.put(record("k", None, 11))
    held = store.get("k")
    assert held.is_tombstone and held.version == Version(11, "n1")
    assert not store.put(record("k", b"late", 10))
    assert store.get("k").is_tombstone
    assert store.put(record("k", b"revived", 12))
    assert store.get("k").value == b"revived"


def test_put_many_applies_lww_in_order_and_counts_stored(store):
    store.put(record("a", "held", 5))
    batch = [record("a", "old", 4), record("b", "b1", 1), record("b", "b2", 2),
             record("b", "b0", 0), record("c", None, 3)]
    assert store.put_many(batch) == 3
    assert store.get("a").value == "held"
    assert store.get("b").value == "b2"
    assert store.get("c").is_tombstone
    assert store.put_many([]) == 0


def test_put_many_is_all_or_nothing(store):
    bad = record("bad", "v", 1, position=RING_SIZE)
    with pytest.raises(ValueError):
        store.put_many([record("good", "v", 1), bad])
    assert store.get("good") is None


def test_out_of_range_position_or_timestamp_is_refused(store):
    with pytest.raises(ValueError, match="position"):
        store.put(record("k", "v", 1, position=-1))
    with pytest.raises(ValueError, match="timestamp"):
        store.put(record("k", "v", 1 << 63))
    assert store.count(include_tombstones=True) == 0


# ------------------------------------------------------------------ values and keys


@pytest.mark.parametrize("value", [b"", "", b"\x00\xffbytes", "text", "ünïcødé ✓", b"1", "1"])
def test_values_round_trip_with_their_type(store, value):
    store.put(record("k", value, 1))
    held = store.get("k").value
    assert held == value and type(held) is type(value)


def test_unicode_and_odd_keys(store):
    keys = ["ключ", "键", "emoji 🎉", "", "with\x00nul", "a" * 1000]
    store.put_many(record(key, key, 1) for key in keys)
    for key in keys:
        assert store.get(key) == record(key, key, 1)
    assert sorted(store.keys()) == sorted(keys)


def test_large_value(store):
    value = bytes(range(256)) * 4096  # 1 MiB
    store.put(record("big", value, 1))
    assert store.get("big").value == value


# ------------------------------------------------------------------ ranges


def test_scan_range_bounds_are_inclusive_and_ordered(store):
    put_at(store, {"a": 10, "b": 20, "c": 30, "d": 40})
    assert [r.key for r in store.scan_range(20, 30)] == ["b", "c"]
    assert [r.key for r in store.scan_range(0, TOP)] == ["a", "b", "c", "d"]
    assert [r.key for r in store.scan_range(11, 19)] == []
    assert store.scan_range(30, 20) == []  # wrapping ranges are split by the caller
    assert [r.key for r in store.scan_range(0, TOP, after=20)] == ["c", "d"]
    assert [r.key for r in store.scan_range(25, TOP, after=5)] == ["c", "d"]
    assert store.scan_range(0, 40, after=40) == []
    assert [r.key for r in store.scan_range(0, TOP, limit=3)] == ["a", "b", "c"]


def test_scan_range_includes_tombstones(store):
    store.put(record("gone", None, 5, position=7))
    assert store.scan_range(0, 10) == [record("gone", None, 5, position=7)]


def test_positions_at_both_ends_of_the_ring_round_trip(store):
    # the SQLite backend stores position - 2**63 in a signed column; order must survive it
    edges = {"zero": 0, "one": 1, "below_mid": (1 << 63) - 1, "mid": 1 << 63,
             "above_mid": (1 << 63) + 1, "second_top": TOP - 1, "top": TOP}
    put_at(store, edges)
    assert {r.key: r.position for r in store.scan_range(0, TOP)} == edges
    by_position = sorted(edges, key=edges.get)
    assert [r.key for r in store.scan_range(0, TOP)] == by_position
    assert list(store.keys()) == by_position
    assert [r.key for r in store.scan_range(1 << 63, TOP)] == ["mid", "above_mid", "second_top",
                                                                "top"]
    assert [r.key for r in store.scan_range(0, (1 << 63) - 1)] == ["zero", "one", "below_mid"]
    assert [r.key for r in store.scan_range(TOP, TOP)] == ["top"]
    assert store.scan_range(0, TOP, after=TOP) == []
    assert store.delete_range(TOP - 1, TOP) == 2
    assert store.delete_range(0, 0) == 1
    assert [r.key for r in store.scan_range(0, TOP)] == ["one", "below_mid", "mid", "above_mid"]


def test_get_is_not_confused_by_another_key_at_the_same_position(store):
    # a get searches the key at its own position (a hash collision puts two keys there)
    put_at(store, {"a": key_position("b"), "d": key_position("d")})
    assert store.get("b") is None
    assert store.get("d") == record("d", "v-d", 1)
    store.put(record("b", "v-b", 1))
    assert store.get("b") == record("b", "v-b", 1)
    assert [r.key for r in store.scan_range(key_position("b"), key_position("b"))] == ["a", "b"]
    assert store.delete_keys(["b"]) == 1
    assert store.get("b") is None and store.scan_range(0, TOP)[0].key in ("a", "d")


def test_cursor_paging_visits_every_record_once(store):
    positions = {f"k{i:03}": i * 7 for i in range(100)}
    put_at(store, positions)
    for limit in (1, 3, 10, 100, 1000):
        assert page_through(store, 0, TOP, limit) == sorted(positions, key=positions.get)
    assert page_through(store, 70, 140, 4) == [f"k{i:03}" for i in range(10, 21)]


def test_colliding_positions_order_by_key_and_never_split_a_page(store):
    # equal positions (a 64-bit hash collision) sort by key; a page ends only between
    # positions, so paging by ``after=position`` cannot skip the rest of a collision group
    put_at(store, {"a": 1, "c": 2, "b": 2, "d": 2, "e": 3, "f": 4, "g": 4})
    assert [r.key for r in store.scan_range(0, TOP)] == ["a", "b", "c", "d", "e", "f", "g"]
    assert [r.key for r in store.scan_range(0, TOP, limit=2)] == ["a"]
    assert [r.key for r in store.scan_range(0, TOP, limit=3)] == ["a"]
    assert [r.key for r in store.scan_range(0, TOP, limit=4)] == ["a", "b", "c", "d"]
    for limit in range(1, 9):
        assert page_through(store, 0, TOP, limit) == ["a", "b", "c", "d", "e", "f", "g"]


def test_group_larger_than_limit_comes_whole(store):
    put_at(store, {"x": 5, "y": 5, "z": 5, "after": 6})
    assert [r.key for r in store.scan_range(0, TOP, limit=2)] == ["x", "y", "z"]
    assert [r.key for r in store.scan_range(0, TOP, after=5, limit=2)] == ["after"]


def test_scan_limit_must_be_positive(store):
    with pytest.raises(ValueError):
        store.scan_range(0, TOP, limit=0)


def test_delete_range_is_inclusive_and_counts_tombstones(store):
    put_at(store, {"a": 10, "b": 20, "c": 30, "d": 40})
    store.put(record("b", None, 2, position=20))
    assert store.delete_range(20, 30) == 2
    assert store.get("b") is None and store.get("c") is None
    assert list(store.keys(include_tombstones=True)) == ["a", "d"]
    assert store.delete_range(40, 10) == 0
    assert store.delete_range(0, TOP) == 2
    assert store.count(include_tombstones=True) == 0


def test_delete_keys_forgets_records_outright(store):
    store.put_many([record("a", "1", 1), record("b", None, 1), record("c", "3", 1)])
    assert store.delete_keys(iter(["a", "b", "missing"])) == 2
    assert store.get("a") is None and store.get("b") is None
    assert list(store.keys(include_tombstones=True)) == ["c"]
    assert store.delete_keys([]) == 0
    assert store.put(record("a", "again", 0))  # no tombstone left behind: any version is new


def test_keys_in_position_order_and_tombstones_on_request(store):
    keys = [f"key{i}" for i in range(2500)]  # more than one SQLite keys() batch
    store.put_many(record(key, "v", 1) for key in keys)
    store.put_many(record(key, None, 2) for key in keys[::2])
    live = sorted(keys[1::2], key=lambda k: (key_position(k), k))
    assert list(store.keys()) == live
    assert list(store.keys(include_tombstones=True)) == sorted(
        keys, key=lambda k: (key_position(k), k))
    assert store.count() == 1250
    assert store.count(include_tombstones=True) == 2500


def test_writing_while_iterating_keys(store):
    store.put_many(record(f"k{i}", "v", 1) for i in range(1500))
    for key in store.keys():  # noqa: SIM118 - a Store is not iterable
        store.put(record(key, None, 2))
    assert store.count() == 0 and store.count(include_tombstones=True) == 1500


def test_count_follows_overwrites_and_tombstones(store):
    assert store.count() == 0
    store.put(record("a", "1", 1))
    store.put(record("a", "2", 2))
    store.put(record("b", None, 1))
    assert (store.count(), store.count(include_tombstones=True)) == (1, 2)
    store.put(record("b", "back", 2))
    store.put(record("a", None, 3))
    assert (store.count(), store.count(include_tombstones=True)) == (1, 2)


# ------------------------------------------------------------------ tombstone collection


def ms(milliseconds: int) -> int:
    """The HLC timestamp of a wall-clock millisecond (logical counter 0)."""
    return milliseconds << LOGICAL_BITS


def test_purge_tombstones_forgets_only_tombstones_older_than_the_cutoff(store):
    store.put_many([record("old-1", None, ms(100)), record("old-2", None, ms(199) + 5),
                    record("edge", None, ms(200)), record("new", None, ms(300)),
                    record("old-live", "v", ms(50)), record("old-bytes", b"", ms(60))])
    assert store.purge_tombstones(ms(200)) == 2
    assert store.get("old-1") is None and store.get("old-2") is None
    assert store.get("edge").is_tombstone and store.get("new").is_tombstone  # ts >= cutoff
    assert store.get("old-live").value == "v" and store.get("old-bytes").value == b""
    assert (store.count(), store.count(include_tombstones=True)) == (2, 4)
    assert [r.key for r in store.scan_range(0, TOP)] == sorted(
        ["edge", "new", "old-live", "old-bytes"], key=lambda k: (key_position(k), k))
    assert store.purge_tombstones(ms(200)) == 0  # nothing left below the cutoff
    assert store.purge_tombstones(ms(10_000)) == 2
    assert (store.count(), store.count(include_tombstones=True)) == (2, 2)


def test_purge_tombstones_honours_the_limit_oldest_first(store):
    store.put_many(record(f"k{i}", None, ms(1000 - i)) for i in range(25))
    store.put(record("live", "v", 1))
    assert store.purge_tombstones(ms(2000), limit=10) == 10
    left = {r.key for r in store.scan_range(0, TOP)}
    assert left == {f"k{i}" for i in range(15)} | {"live"}  # the 10 oldest went
    assert store.purge_tombstones(ms(2000), limit=10) == 10
    assert store.purge_tombstones(ms(2000), limit=10) == 5
    assert store.purge_tombstones(ms(2000), limit=10) == 0
    assert list(store.keys(include_tombstones=True)) == ["live"]


def test_purge_follows_overwrites_and_deletes(store):
    store.put(record("revived", None, ms(1)))
    store.put(record("revived", "back", ms(2)))        # a tombstone no more
    store.put(record("deleted", "v", ms(1)))
    store.put(record("deleted", None, ms(3)))          # a tombstone now, at ms(3)
    store.put(record("dropped", None, ms(1)))
    assert store.delete_keys(["dropped"]) == 1         # forgotten already
    store.put(record("ranged", None, ms(1), position=5))
    assert store.delete_range(5, 5) == 1
    assert store.purge_tombstones(ms(3)) == 0
    assert store.purge_tombstones(ms(4)) == 1
    assert store.get("deleted") is None and store.get("revived").value == "back"
    # once forgotten, an older write is taken again: why tombstones wait out a grace period
    assert store.put(record("deleted", "stale", ms(2)))


def test_purge_tombstones_limit_must_be_positive(store):
    with pytest.raises(ValueError):
        store.purge_tombstones(ms(1), limit=0)


def test_closed_store_refuses_purge(store):
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.purge_tombstones(ms(1))


def test_purge_tombstones_at_the_ends_of_the_timestamp_range(store):
    store.put_many([record("zero", None, 0), record("top", None, (1 << 63) - 1)])
    assert store.purge_tombstones(0) == 0
    assert store.purge_tombstones(-5) == 0
    assert store.purge_tombstones(1) == 1
    assert store.purge_tombstones(1 << 70) == 1  # any int is a valid cutoff
    assert store.count(include_tombstones=True) == 0


# ------------------------------------------------------------------ meta and lifecycle


def test_meta_round_trip(store):
    assert store.get_meta("members") is None
    store.set_meta("members", b"\x00one")
    store.set_meta("members", b"\x00two")
    store.set_meta("clock", bytearray(b"42"))
    assert store.get_meta("members") == b"\x00two"
    assert store.get_meta("clock") == b"42" and type(store.get_meta("clock")) is bytes


def test_closed_store_refuses_use(store):
    store.put(record("k", "v", 1))
    store.close()
    store.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        store.get("k")
    with pytest.raises(StorageError, match="closed"):
        store.put(record("k", "v", 2))


def test_context_manager_closes(store):
    with store as held:
        held.put(record("k", "v", 1))
    with pytest.raises(StorageError):
        store.count()


# ------------------------------------------------------------------ hints


def test_hints_come_back_oldest_first_with_ids_assigned(store):
    added = [hint("n2", f"k{i}", f"v{i}", i + 1, created_ms=100 + i) for i in range(5)]
    assert store.add_hints(added) == 5
    held = store.hints_for("n2")
    assert [h.record for h in held] == [h.record for h in added]
    assert [h.created_ms for h in held] == [100, 101, 102, 103, 104]
    assert all(h.target == "n2" for h in held)
    ids = [h.hint_id for h in held]
    assert ids == sorted(set(ids)) and ids[0] > 0  # assigned, distinct, increasing
    assert store.hints_for("n2", limit=2) == held[:2]
    assert store.hints_for("n2", limit=5000) == held


def test_add_hints_ignores_given_ids_and_ids_keep_growing(store):
    assert store.add_hints([Hint(42, "n2", record("a", "1", 1), 5)]) == 1
    assert store.add_hints(iter([hint("n2", "b", "2", 2), hint("n3", "c", "3", 3)])) == 2
    assert store.add_hints([]) == 0
    first, second = store.hints_for("n2")
    (third,) = store.hints_for("n3")
    assert first.hint_id < second.hint_id < third.hint_id
    # deleting the newest hint does not make its id free for the next one
    store.delete_hints([third.hint_id])
    store.add_hints([hint("n3", "d", "4", 4)])
    assert store.hints_for("n3")[0].hint_id > third.hint_id


def test_hints_are_kept_per_target(store):
    store.add_hints([hint("n2", "a", "for n2", 1), hint("n3", "a", "for n3", 1),
                     hint("n2", "b", "also n2", 2)])
    assert [(h.record.key, h.record.value) for h in store.hints_for("n2")] == [
        ("a", "for n2"), ("b", "also n2")]
    assert [(h.record.key, h.record.value) for h in store.hints_for("n3")] == [("a", "for n3")]
    assert store.hints_for("nobody") == []


def test_hints_for_one_key_are_not_deduplicated(store):
    store.add_hints([hint("n2", "k", "old", 1), hint("n2", "k", None, 3),
                     hint("n2", "k", "older", 0), hint("n2", "k", "old", 1)])
    assert [(h.record.value, h.record.version.timestamp) for h in store.hints_for("n2")] == [
        ("old", 1), (None, 3), ("older", 0), ("old", 1)]


def test_hints_keep_tombstones_types_and_positions(store):
    added = [hint("n2", "gone", None, 7), hint("n2", "bytes", b"\x00\xff", 8),
             hint("n2", "text", "ünï", 9), hint("n2", "top", "t", 10, position=TOP),
             hint("n2", "zero", "z", 11, position=0)]
    store.add_hints(added)
    held = store.hints_for("n2")
    assert [h.record for h in held] == [h.record for h in added]
    assert held[0].record.is_tombstone
    assert type(held[1].record.value) is bytes and type(held[2].record.value) is str
    assert held[0].record.position == key_position("gone")
    assert held[0].record.version == Version(7, "n1")


def test_hints_stay_out_of_the_records(store):
    store.put(record("live", "v", 1))
    store.add_hints([hint("n2", "hinted", "v", 1), hint("n2", "live", "newer", 5),
                     hint("n2", "dead", None, 1)])
    assert store.get("hinted") is None and store.get("dead") is None
    assert store.get("live") == record("live", "v", 1)
    assert list(store.keys(include_tombstones=True)) == ["live"]
    assert store.count(include_tombstones=True) == 1
    assert [r.key for r in store.scan_range(0, TOP)] == ["live"]
    assert store.delete_range(0, TOP) == 1
    assert len(store.hints_for("n2")) == 3  # dropping a range leaves the hints alone


def test_delete_hints(store):
    store.add_hints([hint("n2", f"k{i}", "v", 1) for i in range(4)] + [hint("n3", "x", "v", 1)])
    ids = [h.hint_id for h in store.hints_for("n2")]
    (other,) = store.hints_for("n3")
    assert store.delete_hints(iter([ids[0], ids[2], 10_000])) == 2
    assert [h.hint_id for h in store.hints_for("n2")] == [ids[1], ids[3]]
    assert store.delete_hints([ids[0]]) == 0  # already gone
    assert store.delete_hints([]) == 0
    assert store.delete_hints([ids[1], ids[3], other.hint_id]) == 3
    assert store.hints_for("n2") == [] and store.hints_for("n3") == []


def test_hint_counts(store):
    assert store.hint_counts() == {}
    store.add_hints([hint("n2", "a", "v", 1), hint("n2", "b", None, 1), hint("n3", "a", "v", 1)])
    assert store.hint_counts() == {"n2": 2, "n3": 1}
    store.delete_hints([h.hint_id for h in store.hints_for("n3")])
    assert store.hint_counts() == {"n2": 2}  # a target with no hints left is not listed


def test_expire_hints_by_creation_time(store):
    store.add_hints([hint("n2", "a", "v", 1, created_ms=100),
                     hint("n3", "b", "v", 1, created_ms=50),
                     hint("n2", "c", "v", 1, created_ms=200),
                     hint("n2", "d", "v", 1, created_ms=99)])
    assert store.expire_hints(100) == 2  # strictly before: 50 and 99
    assert [h.record.key for h in store.hints_for("n2")] == ["a", "c"]
    assert store.hint_counts() == {"n2": 2}
    assert store.expire_hints(100) == 0
    assert store.expire_hints(201) == 2
    assert store.hint_counts() == {}


def test_add_hints_is_all_or_nothing_and_checks_ranges(store):
    with pytest.raises(ValueError, match="position"):
        store.add_hints([hint("n2", "good", "v", 1),
                         hint("n2", "bad", "v", 1, position=RING_SIZE)])
    with pytest.raises(ValueError, match="timestamp"):
        store.add_hints([hint("n2", "bad", "v", 1 << 63)])
    with pytest.raises(ValueError, match="created_ms"):
        store.add_hints([hint("n2", "bad", "v", 1, created_ms=-1)])
    assert store.hint_counts() == {}


def test_hints_for_limit_must_be_positive(store):
    with pytest.raises(ValueError):
        store.hints_for("n2", limit=0)


def test_closed_store_refuses_hints(store):
    store.close()
    with pytest.raises(StorageError, match="closed"):
        store.add_hints([hint("n2", "k", "v", 1)])
    with pytest.raises(StorageError, match="closed"):
        store.hint_counts()


# ------------------------------------------------------------------ the SQLite file


def test_sqlite_persists_across_reopen(tmp_path):
    path = tmp_path / "nested" / "dir" / "node.db"  # parent directories are created
    with SQLiteStore(path) as first:
        first.put_many([record("a", b"bytes", 1), record("b", "text", 2), record("c", None, 3),
                        record("top", "t", 1, position=TOP)])
        first.set_meta("clock", b"123")
    with SQLiteStore(str(path), synchronous="full") as second:
        assert second.get("a").value == b"bytes"
        assert second.get("b") == record("b", "text", 2)
        assert second.get("c").is_tombstone
        assert second.scan_range(TOP, TOP) == [record("top", "t", 1, position=TOP)]
        assert second.get_meta("clock") == b"123"
        assert second.get_meta("format") == b"2"
        assert not second.put(record("b", "stale", 1))


def test_sqlite_hints_persist_across_reopen(tmp_path):
    path = tmp_path / "node.db"
    with SQLiteStore(path) as first:
        assert first.add_hints([hint("n2", "a", b"bytes", 1, created_ms=10),
                                hint("n2", "b", None, 2, created_ms=20),
                                hint("n3", "top", "t", 3, position=TOP)]) == 3
        held = first.hints_for("n2") + first.hints_for("n3")
    with SQLiteStore(path) as second:
        assert second.hints_for("n2") + second.hints_for("n3") == held
        assert second.hint_counts() == {"n2": 2, "n3": 1}
        second.add_hints([hint("n2", "c", "v", 4)])
        assert second.hints_for("n2")[-1].hint_id > max(h.hint_id for h in held)


def test_sqlite_store_without_hints_gains_them_on_open(tmp_path):
    # a file written before hints existed: no hints table, no tombstone index
    path = tmp_path / "old.db"
    with SQLiteStore(path) as store:
        store.put(record("k", "v", 1))
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE hints")
        conn.execute("DROP INDEX records_tombstones_by_ts")
    conn.close()
    with SQLiteStore(path) as reopened:
        assert reopened.get_meta("format") == b"2"
        assert reopened.get("k") == record("k", "v", 1)
        assert reopened.hint_counts() == {}
        reopened.add_hints([hint("n2", "k", "v", 2)])
        assert len(reopened.hints_for("n2")) == 1
    with sqlite3.connect(path) as conn:
        indexes = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index'")}
    conn.close()
    assert {"hints_by_target", "hints_by_created", "records_tombstones_by_ts"} <= indexes


def test_sqlite_hint_and_tombstone_queries_use_their_indexes(tmp_path):
    path = tmp_path / "node.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as conn:
        def plan(query: str, *args: object) -> str:
            return " ".join(row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", args))

        assert "hints_by_target" in plan(
            "SELECT * FROM hints WHERE target = ? ORDER BY id LIMIT 10", "n2")
        assert "hints_by_target" in plan("SELECT target, count(*) FROM hints GROUP BY target")
        assert "hints_by_created" in plan("DELETE FROM hints WHERE created_ms < ?", 5)
        assert "records_tombstones_by_ts" in plan(
            "SELECT key FROM records WHERE value IS NULL AND ts < ? ORDER BY ts", 5)
    conn.close()


@pytest.mark.parametrize("statement", ["_OLD_TOMBSTONES_BELOW", "_OLD_TOMBSTONES_UP_TO"])
def test_sqlite_purge_uses_the_tombstone_index(tmp_path, statement):
    path = tmp_path / "node.db"
    fill(path, 300)
    with sqlite3.connect(path) as conn:
        conn.execute("ANALYZE")  # with statistics too
        plan = [row[-1] for row in conn.execute(
            f"EXPLAIN QUERY PLAN {getattr(sqlite_store, statement)}", (5, 10))]
    conn.close()
    assert any("records_tombstones_by_ts" in step for step in plan), plan
    assert not any(step.startswith("SCAN records") for step in plan), plan


@pytest.mark.parametrize("analyze", [False, True])
def test_sqlite_record_queries_search_the_position_key(tmp_path, analyze):
    # records are clustered by (pos, key): ranges read the table itself in order, no sort;
    # a single key is searched at its position (no index on key at all)
    path = tmp_path / "node.db"
    fill(path, 300)
    by_position = "USING PRIMARY KEY (pos>? AND pos<?)"
    expected = {
        "_GET": "SEARCH records USING PRIMARY KEY (pos=? AND key=?)",
        "_DELETE_KEY": "SEARCH records USING PRIMARY KEY (pos=? AND key=?)",
        "_SCAN": f"SEARCH records {by_position}",
        "_RANGE_STATS": f"SEARCH records {by_position}",
        "_DELETE_RANGE": f"SEARCH records {by_position}",
        "_SCAN_POSITION": "SEARCH records USING PRIMARY KEY (pos=?)",
        "_KEYS_FIRST": "SCAN records",  # the table in primary key order
        "_KEYS_NEXT": "SEARCH records USING PRIMARY KEY ((pos,key)>(?,?))",
        "CHECK_ROWS": "SCAN records",
    }
    with sqlite3.connect(path) as conn:
        if analyze:
            conn.execute("ANALYZE")

        def plan(query: str, *args: object) -> list[str]:
            # SQLite before 3.36 says "SCAN TABLE records" where later ones say "SCAN records"
            return [row[-1].replace(" TABLE ", " ") for row in conn.execute(
                f"EXPLAIN QUERY PLAN {query}", args)]

        for name, step in expected.items():
            query = getattr(sqlite_check if name == "CHECK_ROWS" else sqlite_store,
                            name).format(table="records")
            assert plan(query, *(1,) * query.count("?")) == [step], name
        # the upsert writes the table alone (no other index on it to keep up), and nothing
        # loops over rows
        indexes = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'records'")}
        assert indexes == {"records_tombstones_by_ts"}  # partial: only tombstones enter it
        program = [(row[1], row[3]) for row in conn.execute(
            f"EXPLAIN {sqlite_store._UPSERT}", ("k", "v", 1, "n", 0))]
        assert not {"Rewind", "Next", "Prev", "SorterSort"} & {op for op, _ in program}
    conn.close()


FORMAT_1_SCHEMA = (  # the schema format "1" was written with, verbatim
    """
    CREATE TABLE records (
        key    TEXT PRIMARY KEY NOT NULL,
        value,                   -- untyped: TEXT stays str, BLOB stays bytes; NULL: tombstone
        ts     INTEGER NOT NULL, -- version timestamp (HLC)
        writer TEXT NOT NULL,    -- version node id
        pos    INTEGER NOT NULL  -- ring position - 2**63
    ) WITHOUT ROWID
    """,
    "CREATE INDEX records_by_position ON records (pos, key)",
    "CREATE TABLE meta (name TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID",
)
FORMAT_1_ADDITIONS = (  # what later format-"1" files also held
    """
    CREATE TABLE hints (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        target     TEXT NOT NULL,
        key        TEXT NOT NULL,
        value,
        ts         INTEGER NOT NULL,
        writer     TEXT NOT NULL,
        pos        INTEGER NOT NULL,
        created_ms INTEGER NOT NULL
    )
    """,
    "CREATE INDEX hints_by_target ON hints (target, id)",
    "CREATE INDEX hints_by_created ON hints (created_ms)",
    "CREATE INDEX records_tombstones_by_ts ON records (ts) WHERE value IS NULL",
)


def format_1_records() -> list[Record]:
    """Every kind of record: text, bytes and look-alike values, tombstones, odd keys, a big
    value, and more records than one keys() batch."""
    records = [record(f"key-{i}", None if i % 7 == 0 else (f"text-{i}" if i % 2 else
                                                           f"bytes-{i}".encode()),
                      ms(i), node=f"n{i % 3}")
               for i in range(2500)]
    records += [record("ключ", "ünïcødé ✓", 5), record("", b"", 6), record("with\x00nul", "", 7),
                record("one-text", "1", 8), record("one-bytes", b"1", 9),
                record("big", bytes(range(256)) * 4096, 10), record("gone", None, (1 << 63) - 1)]
    return records


def write_format_1(path: Path, records: list[Record], hints: list[Hint],
                   meta: dict[str, bytes], *, with_additions: bool = True) -> None:
    """A format-"1" store file as that format's code wrote it (WAL mode, old schema)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    for statement in FORMAT_1_SCHEMA + (FORMAT_1_ADDITIONS if with_additions else ()):
        conn.execute(statement)
    conn.executemany("INSERT INTO records (key, value, ts, writer, pos) VALUES (?, ?, ?, ?, ?)",
                     [(r.key, r.value, r.version.timestamp, r.version.node_id,
                       r.position - (1 << 63)) for r in records])
    if hints:
        conn.executemany("INSERT INTO hints (target, key, value, ts, writer, pos, created_ms) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)",
                         [(h.target, h.record.key, h.record.value, h.record.version.timestamp,
                           h.record.version.node_id, h.record.position - (1 << 63),
                           h.created_ms) for h in hints])
    conn.executemany("INSERT INTO meta (name, value) VALUES (?, ?)",
                     [("format", b"1"), *meta.items()])
    conn.execute("COMMIT")
    conn.close()


def schema_of(path: Path) -> tuple[set[str], list[str], int]:
    """(names of tables and indexes, primary key of records, schema version) of a file."""
    with closing(sqlite3.connect(path)) as conn:
        names = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
        primary = [name for (name,) in conn.execute(
            "SELECT name FROM pragma_table_info('records') WHERE pk > 0 ORDER BY pk")]
        version = conn.execute("PRAGMA schema_version").fetchone()[0]
    return names, primary, version


@pytest.mark.parametrize("with_additions", [True, False])
def test_sqlite_migrates_a_format_1_store(tmp_path, with_additions):
    path = tmp_path / "node.db"
    records = format_1_records()
    hints = [hint("n2", f"key-{i}", None if i % 5 == 0 else f"h{i}", ms(i), created_ms=100 + i)
             for i in range(30)] + [hint("n3", "ключ", b"\x00", 3)]
    meta = {"members": b"\x00membership" * 10, "clock": b"123"}
    write_format_1(path, records, hints if with_additions else [], meta,
                   with_additions=with_additions)
    names, primary, _ = schema_of(path)
    assert "records_by_position" in names and primary == ["key"]

    with SQLiteStore(path) as store:
        assert store.get_meta("format") == b"2"
        assert store.get_meta("members") == meta["members"]
        assert store.get_meta("clock") == meta["clock"]
        for rec in records:
            held = store.get(rec.key)
            assert held == rec and type(held.value) is type(rec.value)
        in_order = sorted(records, key=lambda r: (r.position, r.key))
        assert store.scan_range(0, TOP, limit=10_000) == in_order
        assert list(store.keys(include_tombstones=True)) == [r.key for r in in_order]
        assert store.count() == sum(not r.is_tombstone for r in records)
        assert store.count(include_tombstones=True) == len(records)
        if with_additions:
            held_hints = store.hints_for("n2", limit=100) + store.hints_for("n3")
            assert [(h.target, h.record, h.created_ms) for h in held_hints] == [
                (h.target, h.record, h.created_ms) for h in hints]
            assert [h.hint_id for h in held_hints] == list(range(1, len(hints) + 1))
        else:
            assert store.hint_counts() == {}
        assert store.check() == []
        # and it works as a store: last writer wins, hint ids keep growing
        assert not store.put(record("key-1", "stale", ms(0), node="n1"))
        assert store.put(record("key-1", "newer", ms(10_000)))
        store.add_hints([hint("n2", "later", "v", 1)])
        assert store.hints_for("n2", limit=100)[-1].hint_id == (
            len(hints) + 1 if with_additions else 1)
        assert store.check() == []
    names, primary, version = schema_of(path)
    assert primary == ["pos", "key"]
    assert not {"records_by_position", "records_old", "records_by_key"} & names
    with SQLiteStore(path) as again:  # migrated once: opening again changes nothing
        assert again.get_meta("format") == b"2" and again.get("key-1").value == "newer"
    assert schema_of(path)[2] == version


def test_sqlite_a_failed_migration_leaves_the_format_1_store_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "node.db"
    records = format_1_records()[:100]
    write_format_1(path, records, [hint("n2", "k", "v", 1)], {"members": b"m"})
    before = schema_of(path)
    failing = list(sqlite_schema.MIGRATE_RECORDS)
    failing.insert(-1, "SELECT no_such_column FROM records")  # after the old table is dropped
    monkeypatch.setattr(sqlite_schema, "MIGRATE_RECORDS", tuple(failing))
    with pytest.raises(StorageError, match="no_such_column"):
        SQLiteStore(path)
    assert schema_of(path) == before  # rolled back: old table, old indexes, nothing new
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT value FROM meta WHERE name = 'format'").fetchone() == (b"1",)
        assert conn.execute("SELECT count(*) FROM records").fetchone() == (len(records),)
    monkeypatch.undo()
    with SQLiteStore(path) as store:  # the next open migrates
        assert store.get_meta("format") == b"2" and store.count() == len(records) - 15
        assert store.hint_counts() == {"n2": 1} and store.check() == []


def test_sqlite_a_migration_cut_short_by_a_crash_is_redone(tmp_path):
    # the process dies after the old table is dropped, before the commit
    path = tmp_path / "node.db"
    records = format_1_records()
    write_format_1(path, records, [], {"members": b"m"})
    before = schema_of(path)
    crash = """
import os, sys
from zring.storage import sqlite_schema
from zring.storage.sqlite import SQLiteStore

def crashing(cursor):
    cursor.connection.execute("PRAGMA cache_size = 10")  # spill uncommitted pages into the WAL
    for statement in sqlite_schema.MIGRATE_RECORDS[:-1]:
        cursor.execute(statement)
    os._exit(3)

sqlite_schema.migrate = crashing
SQLiteStore(sys.argv[1])
"""
    done = subprocess.run([sys.executable, "-c", crash, str(path)], timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 3
    assert Path(f"{path}-wal").stat().st_size > 0  # frames of the uncommitted migration
    assert schema_of(path) == before
    with SQLiteStore(path) as store:
        assert store.get_meta("format") == b"2"
        assert store.scan_range(0, TOP, limit=10_000) == sorted(
            records, key=lambda r: (r.position, r.key))
        assert store.check() == []


def test_check_reports_a_records_table_of_the_wrong_layout(tmp_path):
    # format "2" claimed, old layout present (a stray tool): check says so, opening does not
    # migrate (only format "1" is migrated)
    path = tmp_path / "node.db"
    write_format_1(path, [record("k", "v", 1)], [], {})
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE meta SET value = x'32' WHERE name = 'format'")
    with SQLiteStore(path) as store:
        assert store.get("k").value == "v"
        problems = store.check()
    assert any("primary key (key), expected (pos, key)" in p for p in problems), problems


# ------------------------------------------------------------------ checking a store file


def fill(path: Path, count: int = 5000) -> None:
    """A store of ``count`` records (every 7th a tombstone), some hints and a membership."""
    with SQLiteStore(path) as store:
        store.put_many(record(f"key-{i}", None if i % 7 == 0 else f"value-{i}" * 5, ms(i))
                       for i in range(count))
        store.add_hints([hint("n2", f"key-{i}", b"v", ms(i)) for i in range(50)])
        store.set_meta("members", b"membership" * 10)
    assert not Path(f"{path}-wal").exists()  # closing checkpointed everything into the file


def damage(path: Path, offset: int, length: int, seed: int = 1) -> None:
    junk = random.Random(seed).randbytes(length)
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(junk)


def test_check_finds_nothing_wrong_with_a_healthy_store(tmp_path):
    path = tmp_path / "node.db"
    fill(path, 500)
    with SQLiteStore(path) as store:
        assert store.check() == []
        assert store.count() == 500 - 72


def test_memory_store_check_is_empty():
    assert MemoryStore().check() == []


def test_check_reports_a_wrong_format_and_missing_indexes(tmp_path):
    path = tmp_path / "node.db"
    with SQLiteStore(path) as store:
        store.put(record("k", "v", 1))
        store.set_meta("format", b"3")  # what a bug or a stray tool could leave behind
        store._conn.execute("DROP INDEX records_tombstones_by_ts")
        problems = store.check()
    assert any("format" in p and "b'3'" in p for p in problems), problems
    assert any("records_tombstones_by_ts" in p for p in problems), problems


def test_check_reports_damaged_rows(tmp_path):
    path = tmp_path / "node.db"
    with SQLiteStore(path) as store:
        store.put_many([record("good", "v", 1), record("moved", "v", 1), record("bad", "v", 1)])
        store.add_hints([hint("n2", "hinted", "v", 1)])
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE records SET pos = pos + 1 WHERE key = 'moved'")
        conn.execute("UPDATE records SET value = CAST(x'ff00' AS TEXT), ts = -1 "
                     "WHERE key = 'bad'")
        conn.execute("UPDATE hints SET key = CAST(x'c3' AS TEXT)")
    conn.close()
    with SQLiteStore(path) as store:
        problems = store.check()
        assert store.get("good").value == "v"
        with pytest.raises(StorageError, match="damaged") as caught:
            store.get("bad")  # junk that does not decode is damage, not a bare sqlite error
        assert caught.value.details["reason"] == "damaged"
    by_row = {problem.split(":")[0]: problem for problem in problems}
    assert len(by_row) == 3, problems
    assert "hash" in by_row["records row 'moved'"]
    assert "text value is not UTF-8" in by_row["records row 'bad'"]
    assert "timestamp" in by_row["records row 'bad'"]
    assert "key is not UTF-8" in by_row["hints row '\ufffd'"]


def test_check_caps_what_it_lists(tmp_path):
    path = tmp_path / "node.db"
    fill(path, 100)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE records SET pos = pos + 1")
    conn.close()
    with SQLiteStore(path) as store:
        problems = store.check()
    assert len(problems) == 21 and problems[-1] == "records: 80 more damaged rows"


@pytest.mark.parametrize("where", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_a_partly_overwritten_store_is_refused_or_reported(tmp_path, where):
    # never silently empty or healthy: either opening fails naming the file, or check()
    # lists problems (a page's worth of junk always hits some page's header)
    path = tmp_path / "node.db"
    fill(path)
    size = path.stat().st_size
    damage(path, int(size * where), 4096 + 100)
    try:
        store = SQLiteStore(path)
    except StorageError as exc:
        assert str(path) in str(exc) and exc.details["reason"] == "damaged"
        return
    with store:
        assert store.check() != []


def test_a_store_with_a_damaged_header_is_refused(tmp_path):
    path = tmp_path / "node.db"
    fill(path, 100)
    damage(path, 0, 100)
    with pytest.raises(StorageError, match="not a SQLite database") as caught:
        SQLiteStore(path)
    assert str(path) in str(caught.value) and caught.value.details["reason"] == "damaged"


def test_a_store_with_a_damaged_schema_is_refused(tmp_path):
    path = tmp_path / "node.db"
    fill(path, 100)
    damage(path, 100, 3000)  # the rest of page 1: sqlite_master
    with pytest.raises(StorageError) as caught:
        SQLiteStore(path)
    assert str(path) in str(caught.value) and caught.value.details["reason"] == "damaged"


def test_a_failed_read_does_not_keep_the_file_locked_after_close(tmp_path):
    path = tmp_path / "node.db"
    fill(path)
    damage(path, path.stat().st_size // 2, 8192)
    store = SQLiteStore(path)
    with pytest.raises(StorageError, match="damaged"):
        list(store.keys())
    store.close()
    with sqlite3.connect(path) as conn:  # would fail with "database is locked"
        conn.execute("PRAGMA schema_version").fetchall()
    conn.close()


def test_storage_errors_say_why(tmp_path):
    path = tmp_path / "node.db"
    with SQLiteStore(path) as first:
        with pytest.raises(StorageError) as caught:
            SQLiteStore(path)
        assert caught.value.details == {"path": str(path), "reason": "locked"}
        first.set_meta("format", b"999")
    with pytest.raises(StorageError) as caught:
        SQLiteStore(path)
    assert caught.value.details["reason"] == "format"
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE something (x)")
    conn.close()
    with pytest.raises(StorageError) as caught:
        SQLiteStore(other)
    assert caught.value.details["reason"] == "foreign"
    closed = SQLiteStore(tmp_path / "closed.db")
    closed.close()
    with pytest.raises(StorageError) as caught:
        closed.check()
    assert caught.value.details["reason"] == "closed"


def test_sqlite_uses_wal(tmp_path):
    path = tmp_path / "node.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_refuses_a_second_opener(tmp_path):
    # two nodes pointed at one data directory must not share (and corrupt) one store
    path = tmp_path / "node.db"
    with SQLiteStore(path) as first:
        with pytest.raises(StorageError, match="locked") as caught:
            SQLiteStore(path)
        assert str(path) in str(caught.value)
        first.put(record("k", "v", 1))
    with SQLiteStore(path) as again:
        assert again.get("k").value == "v"


def test_sqlite_refuses_a_file_that_is_not_sqlite(tmp_path):
    path = tmp_path / "garbage.db"
    garbage = b"this is not a database " * 200
    path.write_bytes(garbage)
    with pytest.raises(StorageError, match="not a SQLite database") as caught:
        SQLiteStore(path)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == garbage  # left alone, not replaced by an empty store


def test_sqlite_refuses_an_unknown_format(tmp_path):
    path = tmp_path / "future.db"
    with SQLiteStore(path) as store:
        store.set_meta("format", b"999")
    with pytest.raises(StorageError, match="format") as caught:
        SQLiteStore(path)
    assert str(path) in str(caught.value)


def test_sqlite_refuses_a_foreign_database(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE something (x)")
    conn.close()
    with pytest.raises(StorageError, match="not a zring store") as caught:
        SQLiteStore(path)
    assert str(path) in str(caught.value)


def test_sqlite_unopenable_path_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError) as caught:
        SQLiteStore(tmp_path)  # a directory
    assert str(tmp_path) in str(caught.value)


def test_sqlite_rejects_unknown_synchronous_mode(tmp_path):
    with pytest.raises(ValueError):
        SQLiteStore(tmp_path / "x.db", synchronous="sometimes; DROP TABLE records")


# ------------------------------------------------------------------ both stores agree


writes = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "ключ", "e"]),
        st.one_of(st.none(), st.binary(max_size=4), st.text(max_size=4)),
        st.integers(min_value=0, max_value=5),
        st.sampled_from(["n1", "n2", "ü"]),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(writes=writes, batched=st.booleans())
def test_random_writes_leave_each_key_at_its_greatest_version(writes, batched):
    expected: dict[str, Record] = {}
    stored_flags = []
    for key, value, timestamp, node in writes:
        rec = record(key, value, timestamp, node)
        newer = key not in expected or rec.version > expected[key].version
        stored_flags.append(newer)
        if newer:
            expected[key] = rec

    with tempfile.TemporaryDirectory() as directory:
        stores = [MemoryStore(), SQLiteStore(Path(directory) / "s.db")]
        for store in stores:
            records = [record(k, v, t, n) for k, v, t, n in writes]
            if batched:
                assert store.put_many(records) == sum(stored_flags)
            else:
                assert [store.put(r) for r in records] == stored_flags
            for key, rec in expected.items():
                held = store.get(key)
                assert held == rec and type(held.value) is type(rec.value)
            assert store.scan_range(0, TOP) == sorted(
                expected.values(), key=lambda r: (r.position, r.key))
            assert store.count() == sum(not r.is_tombstone for r in expected.values())
            store.close()


@settings(max_examples=60, deadline=None)
@given(writes=writes, cutoff=st.integers(min_value=-1, max_value=7),
       limit=st.integers(min_value=1, max_value=6))
def test_random_purges_agree_between_stores(writes, cutoff, limit):
    with tempfile.TemporaryDirectory() as directory:
        stores = [MemoryStore(), SQLiteStore(Path(directory) / "s.db")]
        for store in stores:
            store.put_many(record(k, v, t, n) for k, v, t, n in writes)
        purged = [store.purge_tombstones(cutoff, limit=limit) for store in stores]
        assert purged[0] == purged[1]
        memory, durable = (store.scan_range(0, TOP) for store in stores)
        assert [r for r in memory if not r.is_tombstone] == [
            r for r in durable if not r.is_tombstone]
        # which of several equally old tombstones go first is not promised; how many is
        assert sorted(r.version.timestamp for r in memory if r.is_tombstone) == sorted(
            r.version.timestamp for r in durable if r.is_tombstone)
        assert all(r.version.timestamp >= cutoff for r in memory if r.is_tombstone) or (
            purged[0] == limit)
        for store in stores:
            store.close()


hint_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.lists(st.tuples(
            st.sampled_from(["n2", "n3", "n4"]),
            st.sampled_from(["a", "b", "ключ"]),
            st.one_of(st.none(), st.binary(max_size=3), st.text(max_size=3)),
            st.integers(min_value=0, max_value=5),
            st.integers(min_value=0, max_value=20)), max_size=5)),
        st.tuples(st.just("delete"), st.lists(st.integers(min_value=1, max_value=40),
                                              max_size=5)),
        st.tuples(st.just("expire"), st.integers(min_value=0, max_value=21)),
    ),
    max_size=20,
)


@settings(max_examples=60, deadline=None)
@given(ops=hint_ops, limit=st.integers(min_value=1, max_value=8))
def test_random_hint_operations_agree_between_stores(ops, limit):
    with tempfile.TemporaryDirectory() as directory:
        stores = [MemoryStore(), SQLiteStore(Path(directory) / "s.db")]
        for op, arg in ops:
            if op == "add":
                batch = [hint(t, k, v, ts, created_ms=c) for t, k, v, ts, c in arg]
                results = [s.add_hints(batch) for s in stores]
                assert results == [len(batch)] * 2
            elif op == "delete":
                results = [s.delete_hints(arg) for s in stores]
                assert results[0] == results[1]
            else:
                results = [s.expire_hints(arg) for s in stores]
                assert results[0] == results[1]
            memory, durable = stores
            assert memory.hint_counts() == durable.hint_counts()
            for target in ("n2", "n3", "n4"):
                held = memory.hints_for(target, limit=limit)
                assert held == durable.hints_for(target, limit=limit)
                assert [type(h.record.value) for h in held] == [
                    type(h.record.value) for h in durable.hints_for(target, limit=limit)]
        for store in stores:
            store.close()


# ------------------------------------------------------------------ group commit


def test_group_commit_makes_one_transaction_visible_on_exit(tmp_path):
    from zring.storage import SQLiteStore
    path = tmp_path / "g.db"
    with SQLiteStore(path) as store:
        with store.group_commit():
            store.put(_gc_record("a"))
            store.put_many([_gc_record("b"), _gc_record("c")])
            store.set_meta("m", b"1")
            assert store.get("a") is not None  # our own writes are visible inside
        store.sync()
    with SQLiteStore(path) as reopened:
        assert reopened.count() == 3 and reopened.get_meta("m") == b"1"


def test_group_commit_rolls_back_when_the_cycle_fails(tmp_path):
    from zring.storage import SQLiteStore
    path = tmp_path / "r.db"
    with SQLiteStore(path) as store:
        store.put(_gc_record("kept"))
        with pytest.raises(RuntimeError), store.group_commit():
            store.put(_gc_record("lost"))
            raise RuntimeError("crash in the middle of a cycle")
        assert store.get("lost") is None and store.get("kept") is not None
        with store.group_commit():  # usable again afterwards
            store.put(_gc_record("after"))
        assert store.get("after") is not None


def test_a_failing_call_inside_a_group_commit_leaves_the_rest(tmp_path):
    from zring.storage import SQLiteStore
    with SQLiteStore(tmp_path / "s.db") as store:
        with store.group_commit():
            store.put(_gc_record("first"))
            with pytest.raises(ValueError):
                store.put_many([_gc_record("half"), _gc_record("bad", position=-1)])
            store.put(_gc_record("second"))
        assert store.get("first") and store.get("second") and store.get("half") is None


def _gc_record(key, position=None):
    from zring.hashing import key_position
    from zring.storage import Record
    from zring.versions import Version
    return Record(key, b"v", Version(1 << 20, "n"),
                  key_position(key) if position is None else position)



# ---------------------------------------------------------------- client writes, figures


def test_write_if_newer_takes_newer_and_equal_versions_and_names_what_refuses_the_rest(store):
    assert store.write_if_newer([["a", b"1", 10, "w"], ["b", None, 5, "w"]]) == [None, None]
    answers = store.write_if_newer([["a", b"old", 9, "w"],    # older than held: refused
                                    ["a", b"1", 10, "w"],     # the same write again: taken
                                    ["b", b"2", 6, "w"],      # newer than the tombstone
                                    ["c", b"3", 1, "w"]])     # new key
    assert answers == [[10, "w"], None, None, None]
    assert store.get("a").value == b"1" and store.get("b").value == b"2"
    # two writes of one key in a batch: the later (greater) one supersedes the first
    answers = store.write_if_newer([["d", b"x", 20, "w"], ["d", b"y", 21, "w"]])
    assert answers[1] is None and store.get("d").value == b"y"


def test_figures_stay_exact_through_every_kind_of_write(store):
    def counted():
        live = [k for k in store.keys()]
        everything = list(store.keys(include_tombstones=True))
        size = sum(len(k.encode()) + len(r.value or b"") for k in everything
                   if (r := store.get(k)) is not None)
        return len(live), len(everything) - len(live), size
    store.write_if_newer([[f"k{i}", b"v" * i, 10, "w"] for i in range(50)])
    store.put_wire([[f"k{i}", None, 20, "w"] for i in range(0, 50, 3)])   # tombstones
    store.put_many([record(f"s{i}", b"xyz", 5) for i in range(20)])
    store.delete_range(0, (1 << 63) - 1)
    store.purge_tombstones(1 << 40, limit=5)
    store.delete_keys(["k1", "k2", "nope"])
    held = store.stats()
    assert (held.keys, held.tombstones, held.bytes) == counted()
    assert store.count() == held.keys and store.count(include_tombstones=True) == \
        held.keys + held.tombstones


def test_a_transaction_sqlite_rolled_back_mid_cycle_fails_the_cycle(tmp_path):
    # SQLite rolls the whole transaction back after some errors (a full disk, I/O): the
    # cycle's earlier writes are gone, so its commit must fail, not commit what follows
    store = SQLiteStore(tmp_path / "store.db")
    with pytest.raises(StorageError, match="rolled back"):
        with store.group_commit():
            store.put(record("a", b"1", 10))
            store._conn.execute("ROLLBACK")   # as SQLite does by itself
            store.put(record("b", b"2", 10))
    with pytest.raises(StorageError, match="rolled back"):
        with store.group_commit():
            store.put(record("c", b"3", 10))
            store._conn.execute("ROLLBACK")
    assert store.get("a") is None and store.get("c") is None
    with store.group_commit():   # the next cycle starts afresh
        store.put(record("d", b"4", 10))
    assert store.get("d").value == b"4"
    store.close()


# ------------------------------------------------------------------ zring.storage.check


def test_check_store_of_a_healthy_and_a_damaged_data_dir(tmp_path):
    from zring.storage import STORE_FILE
    from zring.storage.check import check_store, move_store_aside
    with SQLiteStore(tmp_path / STORE_FILE) as store:
        store.put(Record("k", "v", Version(1, "n1"), key_position("k")))
    found = check_store(str(tmp_path))
    assert found.healthy and found.summary.startswith(f"ok: {tmp_path / STORE_FILE}, 1 keys")
    (tmp_path / STORE_FILE).write_bytes(b"not a database at all " * 300)
    found = check_store(str(tmp_path))
    assert not found.healthy and "not a zring store" in found.problems[0]
    [(source, target)] = move_store_aside(found.path)
    assert source == found.path and ".damaged-" in target and not Path(source).exists()


def test_check_store_without_a_store_names_the_directory(tmp_path):
    from zring.errors import ZringError
    from zring.storage.check import check_store
    with pytest.raises(ZringError, match="no store at .*is --data-dir right"):
        check_store(str(tmp_path))
