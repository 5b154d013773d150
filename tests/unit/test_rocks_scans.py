"""RocksStore's bulk reads (a stream's pages, a range's count, a drop's count) read RocksDB
a page at a time without Python per item: across page boundaries, beside a cycle's pending
writes, and on a damaged table file they answer as the record-by-record reads did."""

from __future__ import annotations

import pytest

from zring.errors import StorageError
from zring.hashing import RING_SIZE, key_position
from zring.storage import MemoryStore, Record, RocksStore
from zring.storage import rocks as rocks_module
from zring.versions import Version

TOP = RING_SIZE - 1


def record(key: str, value: bytes | str | None, timestamp: int = 1) -> Record:
    return Record(key, value, Version(timestamp, "n1"), key_position(key))


def mixed(count: int) -> list[Record]:
    """Bytes, str (some not ASCII) and tombstones, keys some not ASCII."""
    kinds = [b"bytes", "text", "тэкст", None]
    return [record(f"k{i}" if i % 5 else f"ключ{i}", kinds[i % 4]) for i in range(count)]


def test_counts_and_drops_agree_across_page_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(rocks_module, "_SCAN_PAGE", 7)
    records = mixed(200)
    memory = MemoryStore()
    memory.put_many(records)
    with RocksStore(tmp_path / "store.rocks") as store:
        store.put_many(records)
        quarter = RING_SIZE // 4
        for low, high in [(0, TOP), (quarter, 3 * quarter), (0, 0), (TOP // 2, TOP)]:
            assert store.range_stats(low, high) == memory.range_stats(low, high)
        with store.group_commit():   # pending writes in and around the range: merged
            for rec in records[:20]:
                store.put(rec._replace(version=Version(2, "n1"), value=b"newer"))
                memory.put(rec._replace(version=Version(2, "n1"), value=b"newer"))
            assert store.range_stats(quarter, 3 * quarter) == memory.range_stats(
                quarter, 3 * quarter)
            assert store.delete_range(quarter, 3 * quarter) == memory.delete_range(
                quarter, 3 * quarter)
        assert store.stats() == memory.stats() and store.check() == []
        assert store.scan_range(0, TOP, limit=10_000) == memory.scan_range(0, TOP, limit=10_000)


def test_a_cycle_reads_through_one_iterator_and_the_next_cycle_sees_its_writes(tmp_path,
                                                                              monkeypatch):
    monkeypatch.setattr(rocks_module.Scanner, "ONE_BY_ONE", 5)   # short and long ranges
    records = mixed(300)
    memory = MemoryStore()
    memory.put_many(records)
    ranges = [(0, TOP), (0, 0), (RING_SIZE // 3, RING_SIZE // 3 + RING_SIZE // 200)]
    with RocksStore(tmp_path / "store.rocks") as store:
        store.put_many(records)
        for _ in range(2):
            with store.group_commit():
                scanner = store._scanner()
                for low, high in ranges:
                    assert store.range_stats(low, high) == memory.range_stats(low, high)
                    for limit in (1, 3, 1000):
                        assert store.scan_range(low, high, limit=limit) == memory.scan_range(
                            low, high, limit=limit)
                assert store._scanner() is scanner   # one for the cycle
            assert store._scan is None and store._scanner() is None
            # written between two cycles: the next one's iterator sees it
            extra = record(f"extra{len(memory.scan_range(0, TOP))}", b"x")
            store.put(extra)
            memory.put(extra)
        with store.group_commit():
            assert store.scan_range(0, TOP, limit=1000) == memory.scan_range(0, TOP, limit=1000)


@pytest.mark.parametrize("in_cycle", [False, True, "one by one"])
def test_a_damaged_table_file_fails_a_scan_rather_than_ending_it_early(tmp_path, monkeypatch,
                                                                       in_cycle):
    if in_cycle == "one by one":   # the cycle's iterator reads it all, no bulk read after
        monkeypatch.setattr(rocks_module.Scanner, "ONE_BY_ONE", 10**9)
    path = tmp_path / "store.rocks"
    with RocksStore(path) as store:
        store.put_many(record(f"k{i}", b"v" * 100) for i in range(3000))
        store._db.flush()
    table = max(path.glob("*.sst"), key=lambda file: file.stat().st_size)   # the records
    data = bytearray(table.read_bytes())
    middle = len(data) // 3
    data[middle:middle + 64] = bytes(64)
    table.write_bytes(bytes(data))
    with RocksStore(path) as store:
        for read in (lambda: store.scan_range(0, TOP, limit=10_000),
                     lambda: store.range_stats(0, TOP), lambda: store.delete_range(0, TOP)):
            with pytest.raises(StorageError, match="damaged"):
                if in_cycle:   # through the cycle's iterator
                    with store.group_commit():
                        read()
                else:
                    read()
        assert store.count() == 3000   # the failed drop changed nothing
