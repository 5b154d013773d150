"""``zring migrate``: a SQLite store converted to RocksDB in place (zring.storage.migrate).

The copy must hold everything the SQLite store held (records of every kind, hints in order,
named blobs), the switch happens only after a verification, the SQLite store is kept as a
backup, and every refusal (a store in use, no store, a RocksDB store already, a foreign
RocksDB directory beside it) leaves the data directory as it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from zring import cli
from zring.errors import StorageError
from zring.hashing import RING_SIZE, key_position
from zring.storage import ROCKS_DIR, STORE_FILE, SQLiteStore, open_store
from zring.storage import migrate as migration
from zring.storage.base import Hint, Record
from zring.storage.migrate import MIGRATED_FROM, MigrationError, migrate_to_rocksdb
from zring.storage.rocks import RocksStore
from zring.versions import Version

ROOT = Path(__file__).resolve().parents[2]


def _record(key: str, value, ts: int = 1 << 20, writer: str = "n1") -> Record:
    return Record(key, value, Version(ts, writer), key_position(key))


def _fill(data_dir: Path, keys: int = 300) -> dict:
    """A SQLite store in ``data_dir`` with records, tombstones, hints and blobs; what it
    holds, to compare the RocksDB store with."""
    with SQLiteStore(data_dir / STORE_FILE) as store:
        records = [_record(f"k{n:04d}", os.urandom(n % 50)) for n in range(keys)]
        records += [_record(f"s{n}", "ünïcødé " * n) for n in range(20)]
        records += [_record(f"gone{n}", None, ts=(1 << 20) + n) for n in range(15)]
        store.put_many(records)
        hints = [Hint(0, target, _record(f"h{n}", f"v{n}".encode()), 1000 + n)
                 for n in range(40) for target in ("n2", "n3", "n2")]
        store.add_hints(hints)
        store.delete_hints([1, 2])
        store.set_meta("membership", b"\x00members\xff")
        store.set_meta("join_progress", b"progress")
        return _held(store)


def _held(store) -> dict:
    return {
        "records": store.scan_range(0, RING_SIZE - 1, limit=100_000),
        "hints": {target: [hint[1:] for hint in store.hints_for(target, limit=100_000)]
                  for target in sorted(store.hint_counts())},
        "stats": store.stats(),
        "meta": {name: store.get_meta(name) for name in ("membership", "join_progress")},
    }


def test_migrate_copies_everything_verifies_and_keeps_a_backup(tmp_path):
    held = _fill(tmp_path)
    lines: list[str] = []
    done = migrate_to_rocksdb(str(tmp_path), progress=lines.append)
    assert done.target == str(tmp_path / ROCKS_DIR)
    assert done.stats == held["stats"] and done.stats.hints == 118
    assert sorted(done.meta) == ["join_progress", "membership"]
    assert not done.finished_earlier_run
    assert any("verifying" in line for line in lines)
    # the SQLite store moved aside, whole (it still opens and holds everything)
    assert not (tmp_path / STORE_FILE).exists()
    backup = Path(done.backup)
    assert backup.name.startswith(f"{STORE_FILE}.migrated-") and backup.is_file()
    assert not list(tmp_path.glob("*.migrating"))
    with SQLiteStore(backup) as old:
        assert _held(old) == held
    with open_store(str(tmp_path), "rocksdb", fsync="always") as new:
        assert _held(new) == held
        assert new.check() == []
        assert new.get_meta(MIGRATED_FROM).startswith(str(tmp_path / STORE_FILE).encode())
        assert new.get_meta("format") == b"rocks-1"
        new.put(_record("after", b"migration", ts=1 << 30))   # a working store
    with pytest.raises(StorageError, match="holds a rocksdb store"):
        open_store(str(tmp_path), "sqlite")


def test_an_empty_store_migrates(tmp_path):
    SQLiteStore(tmp_path / STORE_FILE).close()
    done = migrate_to_rocksdb(str(tmp_path))
    assert (done.stats.keys, done.stats.hints) == (0, 0)
    with RocksStore(tmp_path / ROCKS_DIR) as store:
        assert store.count(include_tombstones=True) == 0


def test_a_store_in_use_is_refused(tmp_path):
    _fill(tmp_path, keys=10)
    with SQLiteStore(tmp_path / STORE_FILE) as running:   # as a node holds it
        running.put(_record("x", b"y"))
        with pytest.raises(MigrationError, match="in use .*stop the node"):
            migrate_to_rocksdb(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [STORE_FILE]


@pytest.mark.parametrize("case", ["no dir", "no store", "rocks only"])
def test_nothing_to_migrate_is_refused(tmp_path, case):
    if case == "rocks only":
        RocksStore(tmp_path / ROCKS_DIR).close()
    data_dir = tmp_path / "missing" if case == "no dir" else tmp_path
    message = {"no dir": "no data directory", "no store": "no SQLite store at",
               "rocks only": "holds a RocksDB store .* nothing to migrate"}[case]
    with pytest.raises(MigrationError, match=message):
        migrate_to_rocksdb(str(data_dir))


def test_a_foreign_rocksdb_store_beside_it_is_refused(tmp_path):
    held = _fill(tmp_path, keys=10)
    with RocksStore(tmp_path / ROCKS_DIR) as other:
        other.put(_record("other", b"store"))
    with pytest.raises(MigrationError, match="did not write"):
        migrate_to_rocksdb(str(tmp_path))
    with SQLiteStore(tmp_path / STORE_FILE) as store:
        assert _held(store) == held
    for kind in ("sqlite", "rocksdb"):   # and no node starts on either
        with pytest.raises(StorageError, match="holds both"):
            open_store(str(tmp_path), kind)


def test_a_damaged_store_is_refused(tmp_path):
    (tmp_path / STORE_FILE).write_bytes(b"not a database" * 100)
    with pytest.raises(MigrationError, match="zring check"):
        migrate_to_rocksdb(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [STORE_FILE]


def test_a_failed_copy_leaves_the_sqlite_store_in_use(tmp_path, monkeypatch):
    held = _fill(tmp_path, keys=50)
    real_copy = migration._copy

    def failing(sqlite, scratch, source):
        real_copy(sqlite, scratch, source)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(migration, "_copy", failing)
    with pytest.raises(OSError, match="No space"):
        migrate_to_rocksdb(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [STORE_FILE]
    with open_store(str(tmp_path), "sqlite") as store:
        assert _held(store) == held


def test_a_copy_that_differs_is_not_switched_to(tmp_path, monkeypatch):
    _fill(tmp_path, keys=50)
    real_copy = migration._copy

    def lossy(sqlite, scratch, source):
        real_copy(sqlite, scratch, source)
        with RocksStore(scratch) as rocks:   # one record lost, another changed
            rocks.delete_keys(["k0007"])
            rocks.put(_record("k0008", b"changed", ts=1 << 40))
            rocks.sync()

    monkeypatch.setattr(migration, "_copy", lossy)
    with pytest.raises(MigrationError, match="does not hold what"):
        migrate_to_rocksdb(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [STORE_FILE]

    def changed(sqlite, scratch, source):
        real_copy(sqlite, scratch, source)
        with RocksStore(scratch) as rocks:   # the same figures, another value
            record = rocks.get("k0009")
            rocks.delete_keys(["k0009"])
            rocks.put(record._replace(value=bytes(len(record.value))))
            rocks.sync()

    monkeypatch.setattr(migration, "_copy", changed)
    with pytest.raises(MigrationError, match="differs from .* at 'k0009'"):
        migrate_to_rocksdb(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [STORE_FILE]


def test_an_interrupted_switch_is_finished_by_running_it_again(tmp_path, monkeypatch):
    held = _fill(tmp_path, keys=50)
    (tmp_path / f"{ROCKS_DIR}.migrating").mkdir()   # a leftover of an older run
    (tmp_path / f"{ROCKS_DIR}.migrating" / "junk").write_bytes(b"x")

    def crash(source):
        raise KeyboardInterrupt   # the moment between the two renames

    monkeypatch.setattr(migration, "_move_aside", crash)
    with pytest.raises(KeyboardInterrupt):
        migrate_to_rocksdb(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [STORE_FILE, ROCKS_DIR]
    for kind in ("sqlite", "rocksdb"):
        with pytest.raises(StorageError, match="zring migrate` was interrupted"):
            open_store(str(tmp_path), kind)
    monkeypatch.undo()
    done = migrate_to_rocksdb(str(tmp_path))
    assert done.finished_earlier_run and done.stats == held["stats"]
    with open_store(str(tmp_path), "rocksdb") as store:
        assert _held(store) == held


def test_not_enough_free_space_is_refused(tmp_path, monkeypatch):
    _fill(tmp_path, keys=10)
    monkeypatch.setattr(migration.shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 10, 10))
    with pytest.raises(MigrationError, match="not enough free space"):
        migrate_to_rocksdb(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [STORE_FILE]


# ---------------------------------------------------------------------- the command

def test_cli_migrate(tmp_path, capsys):
    held = _fill(tmp_path, keys=30)
    assert cli.main(["migrate", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"migrated {tmp_path / STORE_FILE} -> {tmp_path / ROCKS_DIR}: 50 keys, " \
           f"15 tombstones" in out
    assert "verified" in out and "delete it once" in out and "--store rocksdb" in out
    with open_store(str(tmp_path), "rocksdb") as store:
        assert _held(store) == held
    assert cli.main(["migrate", "--data-dir", str(tmp_path)]) == 1
    assert "nothing to migrate" in capsys.readouterr().err


def test_cli_migrate_refuses_a_store_another_process_holds(tmp_path):
    """A real second process (as a running node) holds the SQLite store's lock."""
    _fill(tmp_path, keys=10)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from zring.storage import SQLiteStore
        store = SQLiteStore({str(tmp_path / STORE_FILE)!r})
        store.set_meta("held", b"1")
        print("holding", flush=True)
        sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "holding"
        ran = subprocess.run([sys.executable, "-m", "zring.cli", "migrate", "--data-dir",
                              str(tmp_path)], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert ran.returncode == 1
        assert "in use (locked): stop the node" in ran.stderr
        assert not list(tmp_path.glob(f"{ROCKS_DIR}*"))   # the node's -wal file stays
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    ran = subprocess.run([sys.executable, "-m", "zring.cli", "migrate", "--data-dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / ROCKS_DIR / "CURRENT").exists()
