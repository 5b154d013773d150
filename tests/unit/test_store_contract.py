"""The Store contract, run against every store: ``MemoryStore``, ``SQLiteStore`` and
``RocksStore``. Last writer wins, position-ordered ranges, tombstone collection, meta, hints,
group commit and the kept figures behave the same in each (the simulation relies on the
memory store behaving exactly like the durable ones). Tests of one store's files are in
test_storage.py.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zring.errors import StorageError
from zring.hashing import RING_SIZE, key_position
from zring.storage import MemoryStore, Record, RocksStore, SQLiteStore, Store
from zring.storage.base import Hint
from zring.versions import LOGICAL_BITS, Version

TOP = RING_SIZE - 1
KINDS = ["memory", "sqlite", "rocksdb"]
DURABLE = ["sqlite", "rocksdb"]


def every_store(directory: Path) -> list[Store]:
    return [open_kind(kind, directory) for kind in KINDS]


def assert_same_figures(stores: list[Store]) -> None:
    """Every store keeps the same figures. (SQLite's ``length`` counts a str value only up
    to its first NUL character: there the bytes figure may be lower.)"""
    figures = [store.stats() for store in stores]
    assert [f[:2] + f[3:] for f in figures] == [figures[0][:2] + figures[0][3:]] * len(stores)
    assert [f.bytes for store, f in zip(stores, figures)
            if not isinstance(store, SQLiteStore)] == [figures[0].bytes] * (len(stores) - 1)


def open_kind(kind: str, directory: Path) -> Store:
    """A store of ``kind`` in ``directory`` (the same files again on a second call)."""
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SQLiteStore(directory / "store.db")
    return RocksStore(directory / "store.rocks")


TOP = RING_SIZE - 1


def record(key: str, value: bytes | str | None, timestamp: int, node: str = "n1",
           position: int | None = None) -> Record:
    if position is None:
        position = key_position(key)
    return Record(key, value, Version(timestamp, node), position)


@pytest.fixture(params=KINDS)
def store(request, tmp_path):
    opened = open_kind(request.param, tmp_path)
    yield opened
    opened.close()


@pytest.fixture(params=DURABLE)
def durable(request, tmp_path):
    """(kind, a function opening the same durable store again)."""
    return request.param, lambda: open_kind(request.param, tmp_path)


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



# ------------------------------------------------------------------ every store agrees


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
        for store in every_store(Path(directory)):
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
            live = store.count()
            held = store.stats()
            assert held[:2] == (live, len(expected) - live)
            if not isinstance(store, SQLiteStore):   # see assert_same_figures
                assert held.bytes == sum(len(r.key.encode()) + len(r.value or "")
                                         for r in expected.values())
            store.close()


@settings(max_examples=60, deadline=None)
@given(writes=writes, cutoff=st.integers(min_value=-1, max_value=7),
       limit=st.integers(min_value=1, max_value=6))
def test_random_purges_agree_between_stores(writes, cutoff, limit):
    with tempfile.TemporaryDirectory() as directory:
        stores = every_store(Path(directory))
        for store in stores:
            store.put_many(record(k, v, t, n) for k, v, t, n in writes)
        purged = [store.purge_tombstones(cutoff, limit=limit) for store in stores]
        assert purged == [purged[0]] * len(stores)
        memory, *durables = (store.scan_range(0, TOP) for store in stores)
        for durable in durables:
            assert [r for r in memory if not r.is_tombstone] == [
                r for r in durable if not r.is_tombstone]
            # which of several equally old tombstones go first is not promised; how many is
            assert sorted(r.version.timestamp for r in memory if r.is_tombstone) == sorted(
                r.version.timestamp for r in durable if r.is_tombstone)
        # counts agree; the bytes are each store's own: with equally old tombstones, which
        # one a limited purge takes is not promised, and their keys' sizes may differ
        figures = [store.stats() for store in stores]
        assert [f[:2] + f[3:] for f in figures] == [figures[0][:2] + figures[0][3:]] * len(stores)
        for store, held in zip(stores, figures):
            if not isinstance(store, SQLiteStore):   # (its length() stops at a NUL)
                assert held.bytes == sum(len(r.key.encode()) + len(r.value or "")
                                         for r in store.scan_range(0, TOP))
        assert all(r.version.timestamp >= cutoff for r in memory if r.is_tombstone) or (
            purged[0] == limit)
        for store in stores:
            store.close()


@settings(max_examples=60, deadline=None)
@given(held=writes, batch=st.lists(st.tuples(
    st.sampled_from(["a", "b", "c", "ключ", "e", "f", "g", "h"]),
    st.one_of(st.none(), st.binary(max_size=4), st.text(max_size=4)),
    st.integers(min_value=0, max_value=5), st.sampled_from(["n1", "n2", "ü"])),
    max_size=8, unique_by=lambda item: item[0]), through=st.sampled_from(
        ["write_if_newer", "put_wire"]))
def test_a_batch_of_distinct_keys_part_held_agrees_between_stores(held, batch, through):
    # a joiner's page: most keys new, a few written meanwhile (each answered on its own)
    with tempfile.TemporaryDirectory() as directory:
        stores = every_store(Path(directory))
        answers = []
        for store in stores:
            store.put_many(record(k, v, t, n) for k, v, t, n in held)
            answers.append(getattr(store, through)([list(item) for item in batch]))
        assert answers == [answers[0]] * len(stores)
        memory, *durables = (store.scan_range(0, TOP) for store in stores)
        assert all(durable == memory for durable in durables)
        assert_same_figures(stores)
        for store in stores:
            if not isinstance(store, MemoryStore):
                assert store.check() == []
            store.close()


# range bounds at, just before and just after the positions of the keys ``writes`` uses
edges = st.sampled_from(sorted({0, TOP} | {min(max(key_position(k) + d, 0), TOP)
                                           for k in ["a", "b", "c", "ключ", "e"]
                                           for d in (-1, 0, 1)}))


@settings(max_examples=60, deadline=None)
@given(writes=writes, bounds=st.tuples(edges, edges), in_cycle=st.booleans())
def test_range_figures_pages_and_drops_agree_with_the_records(writes, bounds, in_cycle):
    # range_stats counts characters of str keys and values; a drop takes its records out of
    # the figures. ``in_cycle``: the writes are still pending in the cycle's group commit
    low, high = sorted(bounds)
    with tempfile.TemporaryDirectory() as directory:
        stores = every_store(Path(directory))
        for store in stores:
            with store.group_commit():
                store.put_many(record(k, v, t, n) for k, v, t, n in writes)
                if not in_cycle:
                    store.put(record("outside", b"x", 1))
            with store.group_commit():
                if not in_cycle:
                    store.put(record("outside", b"y", 2))   # a pending write elsewhere
                else:
                    store.put_many(record(k, v, t + 10, n) for k, v, t, n in writes[:3])
                inside = store.scan_range(low, high)
                assert page_through(store, low, high, 1) == [r.key for r in inside]
                expected = (len(inside), sum(len(r.key) + len(r.value or "") for r in inside))
                stats = store.range_stats(low, high)
                if not isinstance(store, SQLiteStore):   # see assert_same_figures
                    assert stats == expected
                assert store.delete_range(low, high) == len(inside)
                assert store.scan_range(low, high) == []
            held = store.stats()
            rest = store.scan_range(0, TOP)
            assert (held.keys, held.tombstones) == (
                sum(not r.is_tombstone for r in rest), sum(r.is_tombstone for r in rest))
            if not isinstance(store, SQLiteStore):
                assert held.bytes == sum(len(r.key.encode()) + len(r.value or "") for r in rest)
        assert_same_figures(stores)
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
        stores = every_store(Path(directory))
        for op, arg in ops:
            if op == "add":
                batch = [hint(t, k, v, ts, created_ms=c) for t, k, v, ts, c in arg]
                results = [s.add_hints(batch) for s in stores]
                assert results == [len(batch)] * len(stores)
            elif op == "delete":
                results = [s.delete_hints(arg) for s in stores]
                assert results == [results[0]] * len(stores)
            else:
                results = [s.expire_hints(arg) for s in stores]
                assert results == [results[0]] * len(stores)
            memory, *durables = stores
            for durable in durables:
                assert memory.hint_counts() == durable.hint_counts()
                assert memory.stats().hints == durable.stats().hints
                for target in ("n2", "n3", "n4"):
                    held = memory.hints_for(target, limit=limit)
                    assert held == durable.hints_for(target, limit=limit)
                    assert [type(h.record.value) for h in held] == [
                        type(h.record.value) for h in durable.hints_for(target, limit=limit)]
        for store in stores:
            store.close()



# ------------------------------------------------------------------ group commit


def test_group_commit_makes_one_transaction_visible_on_exit(durable):
    _, reopen = durable
    with reopen() as store:
        with store.group_commit():
            store.put(_gc_record("a"))
            store.put_many([_gc_record("b"), _gc_record("c")])
            store.set_meta("m", b"1")
            store.set_meta("join_progress", b"p")
            assert store.get("a") is not None  # our own writes are visible inside
            assert store.get_meta("join_progress") == b"p"
            assert [r.key for r in store.scan_range(0, TOP)] == sorted(
                "abc", key=key_position)
        store.sync()
    with reopen() as reopened:
        assert reopened.count() == 3 and reopened.get_meta("m") == b"1"
        assert reopened.get_meta("join_progress") == b"p"


def test_group_commit_rolls_back_when_the_cycle_fails(store):
    store.put(_gc_record("kept"))
    store.add_hints([hint("n2", "h", "v", 1)])
    before = store.stats()
    with pytest.raises(RuntimeError), store.group_commit():
        store.put(_gc_record("lost"))
        store.put(record("kept", None, 1 << 30))
        store.add_hints([hint("n2", "h2", "v", 1)])
        store.delete_range(0, TOP)
        store.set_meta("m", b"lost")
        raise RuntimeError("crash in the middle of a cycle")
    if isinstance(store, MemoryStore):
        return   # the memory store has no transactions (the simulation never fails a cycle)
    assert store.get("lost") is None and store.get("kept").value == b"v"
    assert store.stats() == before and store.get_meta("m") is None
    assert len(store.hints_for("n2")) == 1
    with store.group_commit():  # usable again afterwards
        store.put(_gc_record("after"))
    assert store.get("after") is not None and store.count() == 2


def test_a_failing_call_inside_a_group_commit_leaves_the_rest(store):
    with store.group_commit():
        store.put(_gc_record("first"))
        with pytest.raises(ValueError):
            store.put_many([_gc_record("half"), _gc_record("bad", position=-1)])
        store.put(_gc_record("second"))
    assert store.get("first") and store.get("second") and store.get("half") is None


def test_reads_inside_a_group_commit_see_its_writes_and_drops(store):
    put_at(store, {"a": 10, "b": 20, "c": 30, "d": 40})
    with store.group_commit():
        store.put(record("x", "new", 5, position=25))
        assert store.delete_range(15, 35) == 3          # b, c and the pending x
        store.put(record("c", "again", 9, position=30))  # written after the drop
        store.put(record("e", None, 9, position=50))
        assert [r.key for r in store.scan_range(0, TOP)] == ["a", "c", "d", "e"]
        assert store.get("b") is None and store.get_wire_many(["b", "c"])[0] is None
        assert list(store.keys()) == ["a", "c", "d"]
        assert store.stats()[:2] == (3, 1)
    assert [r.key for r in store.scan_range(0, TOP)] == ["a", "c", "d", "e"]
    assert store.purge_tombstones(10) == 1 and store.count(include_tombstones=True) == 3


def test_persists_across_reopen_with_figures(durable):
    _, reopen = durable
    with reopen() as store:
        store.put_many([record("k1", "v1", 1), record("k2", b"v2", 2), record("k3", None, 3)])
        store.add_hints([hint("n2", "h", "hv", 4, created_ms=7)])
        store.set_meta("members", b"m")
        figures, hints = store.stats(), store.hints_for("n2")
    with reopen() as store:
        assert store.stats() == figures and store.hints_for("n2") == hints
        assert store.get("k2").value == b"v2" and store.get("k3").is_tombstone
        assert store.get_meta("members") == b"m"
        store.add_hints([hint("n2", "h2", "hv", 4)])
        assert store.hints_for("n2")[-1].hint_id > hints[0].hint_id   # ids never reused
        assert store.check() == []


def _gc_record(key, position=None):
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
