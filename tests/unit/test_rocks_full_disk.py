"""A RocksDB store after a failed write (a full disk): RocksDB refuses every later write
until the database is reopened, so the store reopens it at the next commit, keeps serving
reads while it cannot, retries with a growing delay, and drops the failed batch.

The first tests make the failures by hand (any user); the last one fills a small tmpfs
(root only: it skips otherwise)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import structlog
from structlog.testing import capture_logs

from zring.errors import StorageError
from zring.hashing import key_position
from zring.localcluster import load_tool
from zring.storage import Record, RocksStore
from zring.storage import rocks as rocks_module
from zring.versions import Version


def record(key: str, value: bytes | None, timestamp: int = 1) -> Record:
    return Record(key, value, Version(timestamp, "n1"), key_position(key))


def fast_retries(store: RocksStore) -> RocksStore:
    store.reopen_first_delay_s = 0.05
    store.reopen_max_delay_s = 0.2
    return store


def fail_commits(monkeypatch, store: RocksStore) -> None:
    def full_disk(*args):
        raise Exception("IO error: No space left on device: While appending to file")
    monkeypatch.setattr(store._pending, "commit", full_disk)


def events(logs: list[dict], name: str) -> list[dict]:
    return [entry for entry in logs if entry["event"] == name]


def test_a_failed_commit_reopens_the_database_at_the_next_one(tmp_path, monkeypatch):
    store = fast_retries(RocksStore(tmp_path / "store.rocks"))
    with store, capture_logs() as logs:
        store.put_many(record(f"kept{i}", b"v") for i in range(10))
        before = (store.stats(), store.get("kept3"))
        failed_db = store._db
        fail_commits(monkeypatch, store)
        with pytest.raises(StorageError, match="disk is full"):
            with store.group_commit():
                store.put(record("lost", b"v"))
                store.put(record("kept3", None, 2))
        monkeypatch.undo()
        assert not store.writable
        assert (store.stats(), store.get("kept3"), store.get("lost")) == (*before, None)
        assert store.put(record("next", b"v"))   # reopened first, then written
        assert store.writable and store._db is not failed_db
        assert store.get("lost") is None and store.count() == 11 and store.check() == []
    assert [e["event"] for e in logs if e["event"].startswith("store_")] == [
        "store_write_failed", "store_read_only", "store_reopened"]
    assert events(logs, "store_reopened")[0]["records"] == 10
    with RocksStore(tmp_path / "store.rocks") as again:   # the reopened handle let go of it
        assert again.count() == 11 and again.get("lost") is None and again.check() == []


def test_a_reopen_that_fails_keeps_reads_and_retries_later(tmp_path, monkeypatch):
    store = fast_retries(RocksStore(tmp_path / "store.rocks"))
    with store, capture_logs() as logs:
        store.put_many(record(f"kept{i}", b"v" * 10) for i in range(50))
        store.set_meta("ring", b"r")
        stats = store.stats()
        fail_commits(monkeypatch, store)
        with pytest.raises(StorageError):
            store.put(record("lost", b"v"))
        monkeypatch.undo()

        def still_full(path):
            raise StorageError(f"store {path}: the disk is full (IO error: No space left)",
                               path=str(path), reason="error")
        monkeypatch.setattr(rocks_module, "open_database", still_full)
        refused_at = time.monotonic()
        refusals = 0
        with pytest.raises(StorageError, match="takes no writes until it reopens"):
            store.put(record("refused", b"v"))   # tried to reopen: read-only now
        assert store._read_only
        for _ in range(20):   # refused at once until the delay is over: one try meanwhile
            with pytest.raises(StorageError, match="takes no writes"):
                store.put(record("refused", b"v"))
            refusals += 1
            # every read goes on, through the read-only handle
            assert [r.value for r in store.scan_range(0, 2**64 - 1)] == [b"v" * 10] * 50
            assert store.get_meta("ring") == b"r" and store.stats() == stats
        with pytest.raises(StorageError, match="takes no writes"):
            store.sync()
        tries = len(events(logs, "store_reopen_failed"))   # 0.05 s apart, 0.1 s, 0.2 s...
        assert tries <= 2 + (time.monotonic() - refused_at) / 0.05 and tries < refusals
        time.sleep(max(0.0, refused_at + 0.5 - time.monotonic()))
        with pytest.raises(StorageError, match="takes no writes"):   # the delay doubled
            with store.group_commit():
                store.put(record("refused", b"v"))
        delays = [e["retry_in_s"] for e in events(logs, "store_reopen_failed")]
        assert delays == sorted(delays) and delays[-1] <= 0.2 and delays[0] < delays[-1]
        monkeypatch.undo()   # space freed
        time.sleep(0.25)
        store.put(record("after", b"v"))
        store.sync()
        assert store.writable and not store._read_only
        assert store.get("refused") is None and store.get("lost") is None
        assert store.count() == 51 and store.check() == []
    reopened = events(logs, "store_reopened")
    assert len(reopened) == 1 and reopened[0]["tries"] == len(delays) + 1


def test_writes_failing_again_after_a_reopen_back_off(tmp_path, monkeypatch):
    # a reopen may succeed on a disk that is still full: the writes after it fail again,
    # and the next reopen waits (no reopen per loop cycle)
    store = fast_retries(RocksStore(tmp_path / "store.rocks"))
    with store, capture_logs() as logs:
        store.put(record("kept", b"v"))
        for _ in range(3):
            fail_commits(monkeypatch, store)   # the reopened store's Pending is the same one
            with pytest.raises(StorageError):
                store.put(record("lost", b"v"))
        monkeypatch.undo()
        waits = [e["reopen_in_s"] for e in events(logs, "store_write_failed")]
        assert waits[0] == 0 and all(w > 0 for w in waits[1:]), waits
        time.sleep(0.25)
        store.put(record("after", b"v"))
        assert store._reopen_delay == 0 and store.count() == 2 and store.check() == []


# ------------------------------------------------------------------ a real full disk


@pytest.fixture
def tiny_disk(tmp_path):
    """A 4 MB tmpfs (root only)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs that fills up")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"could not mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# fills a mounted file system with one file (never anything but a mount point)
fill = load_tool("safetycases").fill


def test_a_store_on_a_full_disk_writes_again_once_space_is_freed(tiny_disk):
    path = tiny_disk / "store.rocks"
    store = fast_retries(RocksStore(path))
    with store, capture_logs() as logs:
        store.put_many(record(f"kept{i}", b"v" * 100) for i in range(100))
        stats = store.stats()
        filler = fill(tiny_disk)
        # a write larger than a page needs a page the full tmpfs cannot give
        with pytest.raises(StorageError, match="disk is full"):
            store.put(record("big", b"x" * 10_000))
        for _ in range(10):   # refused (each reopen try fails: the disk is still full)
            with pytest.raises(StorageError):
                store.put(record("small", b"x"))
            assert store.get("kept7").value == b"v" * 100 and store.stats() == stats
            time.sleep(0.05)
        assert events(logs, "store_reopen_failed") and not store.writable
        assert len(list(store.keys())) == 100
        filler.unlink()
        time.sleep(0.25)
        store.put(record("after", b"x" * 10_000))
        assert store.writable and store.get("big") is None and store.get("small") is None
        assert store.count() == 101 and store.check() == []
    with RocksStore(path) as again:
        assert again.count() == 101 and again.get("kept99").value == b"v" * 100
        assert again.check() == []


def test_fill_refuses_a_directory_that_is_not_a_mount_point(tmp_path):
    with pytest.raises(RuntimeError, match="not a mount point"):
        fill(tmp_path)
    assert not (tmp_path / "filler").exists()


def test_a_node_logs_failing_syncs_once_then_a_count_every_few_seconds(monkeypatch):
    # a full disk fails the node's sync every fsync period: one event when it starts, a
    # count at most every SYNC_FAILURE_SUMMARY_S, one when it ends (not one a period)
    from types import SimpleNamespace

    from zring import server

    node = server.NodeServer.__new__(server.NodeServer)   # no sockets: _sync uses these
    full = [True]

    def sync():
        if full[0]:
            raise StorageError("store s: the disk is full")
    counted: list[str] = []
    node.store = SimpleNamespace(sync=sync)
    node.core = SimpleNamespace(count=counted.append)
    node.log = structlog.get_logger()
    node.sync_failures = server.FailureStreak(node.log, "sync")   # as __init__ makes it
    clock = [100.0]
    monkeypatch.setattr(server.time, "monotonic", lambda: clock[0])
    with capture_logs() as logs:
        for _ in range(12):   # one a second, as with fsync_period_s = 1
            node._sync()
            clock[0] += 1
        full[0] = False
        node._sync()
        node._sync()
        full[0] = True
        node._sync()
    assert [(e["event"], e.get("failures")) for e in logs] == [
        ("sync_failed", None), ("sync_still_failing", 5), ("sync_still_failing", 5),
        ("sync_recovered", 12), ("sync_failed", None)]
    assert logs[3]["failed_s"] == 12.0 and logs[2]["failing_s"] == 10.0
    assert counted == ["syncs_failed"] * 13
