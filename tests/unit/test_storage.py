"""The stores' files: SQLite's persistence, schema, indexes, migration, checks and failures;
RocksDB's reopening, damage, refusals and rocksdict's quirks; ``zring.storage.check`` and
``open_store``. The Store contract every store keeps (memory, SQLite, RocksDB) is
tested in test_store_contract.py.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from zring.errors import StorageError
from zring.hashing import RING_SIZE, key_position
from zring.storage import (
    ROCKS_DIR,
    MemoryStore,
    Record,
    RocksStore,
    SQLiteStore,
    open_store,
    sqlite_check,
    sqlite_schema,
)
from zring.storage import sqlite as sqlite_store
from zring.storage.base import Hint
from zring.versions import LOGICAL_BITS, Version

TOP = RING_SIZE - 1


def record(key: str, value: bytes | str | None, timestamp: int, node: str = "n1",
           position: int | None = None) -> Record:
    if position is None:
        position = key_position(key)
    return Record(key, value, Version(timestamp, node), position)


def hint(target: str, key: str, value: bytes | str | None, timestamp: int,
         created_ms: int = 1000, position: int | None = None) -> Hint:
    return Hint(0, target, record(key, value, timestamp, position=position), created_ms)


def ms(milliseconds: int) -> int:
    """The HLC timestamp of a wall-clock millisecond (logical counter 0)."""
    return milliseconds << LOGICAL_BITS


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


# ------------------------------------------------------------------ the RocksDB store


def rocks_fill(path: Path, count: int = 2000) -> RocksStore:
    store = RocksStore(path)
    store.put_many(record(f"key{i}", f"value {i}" * 3, i + 1) for i in range(count))
    store.put_many(record(f"key{i}", None, 10_000) for i in range(0, count, 7))
    return store


def test_rocks_reopens_in_the_same_process_and_refuses_a_second_opener(tmp_path):
    # rocksdict quirk: a column-family object still referenced keeps the LOCK after close
    path = tmp_path / "store.rocks"
    store = rocks_fill(path, 10)
    with pytest.raises(StorageError, match="locked") as refused:
        RocksStore(path)
    assert refused.value.details["reason"] == "locked"
    store.close()
    for _ in range(3):
        with RocksStore(path) as again:
            assert again.count() == 8
    probe = subprocess.run([sys.executable, "-c", (
        "import sys; from zring.storage import RocksStore\n"
        "from zring.errors import StorageError\n"
        f"try: RocksStore({str(path)!r})\n"
        "except StorageError as e: print(e.details['reason'])")],
        capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == ""   # closed: another process opens it
    with RocksStore(path):
        probe = subprocess.run(probe.args, capture_output=True, text=True, timeout=60)
        assert probe.stdout.strip() == "locked"


def test_rocksdict_iterators_are_their_own_consistent_view(tmp_path):
    # rocksdict quirk: a snapshot's iterator ignores the snapshot; the store uses none, and
    # relies on an iterator opened before a write not seeing it
    from rocksdict import Options, Rdict
    db = Rdict(str(tmp_path / "raw"), Options(raw_mode=True))
    try:
        for i in range(5):
            db.put(bytes([i]), b"a")
        snapshot = db.snapshot()
        items = db.items()
        db.put(b"\x09", b"b")
        assert [key for key, _ in items] == [bytes([i]) for i in range(5)]
        del snapshot, items
    finally:
        db.close()


def test_rocks_range_bounds_outlive_their_read_options(tmp_path):
    # rocksdict quirk: an iterator does not keep its ReadOptions (and upper bound) alive
    import gc

    from zring.storage.rocks_batch import items
    with RocksStore(tmp_path / "store.rocks") as store:
        put = [record(f"k{i}", "v", 1, position=i << 56) for i in range(256)]
        store.put_many(put)
        scans = [items(store._records, (i << 56).to_bytes(8, "big"),
                       ((i + 16) << 56).to_bytes(8, "big")) for i in range(0, 240, 16)]
        gc.collect()
        junk = [bytes([0x01]) * 9 for _ in range(10_000)]
        assert [len(list(scan)) for scan in scans] == [16] * 15
        del junk


def test_rocks_commit_failure_leaves_the_store_as_before(tmp_path, monkeypatch):
    with RocksStore(tmp_path / "store.rocks") as store:
        store.put(record("kept", b"v", 1))
        store.add_hints([hint("n2", "h", "v", 1)])
        before = (store.stats(), store.hint_counts(), store.get("kept"))

        def full_disk(*args):
            raise Exception("IO error: No space left on device")
        monkeypatch.setattr(store._pending, "commit", full_disk)
        with pytest.raises(StorageError, match="disk is full") as failed:
            with store.group_commit():
                store.put(record("lost", b"v", 1))
                store.put(record("kept", None, 2))
                store.add_hints([hint("n3", "h", "v", 1)])
        assert failed.value.details["reason"] == "error"
        monkeypatch.undo()
        assert (store.stats(), store.hint_counts(), store.get("kept")) == before
        assert store.get("lost") is None
        store.add_hints([hint("n3", "h", "v", 1)])
        assert [h.hint_id for h in store.hints_for("n3")] == [2]   # the lost id is reused
        assert store.check() == []


def test_rocks_committed_writes_survive_the_process_dying(tmp_path):
    path = tmp_path / "store.rocks"
    script = (
        "import os; from zring.storage import RocksStore, Record\n"
        "from zring.hashing import key_position; from zring.versions import Version\n"
        f"s = RocksStore({str(path)!r})\n"
        "for i in range(50):\n"
        "    with s.group_commit():\n"
        "        s.put(Record(f'k{i}', b'v', Version(i + 1, 'n'), key_position(f'k{i}')))\n"
        "        s.set_meta('join_progress', str(i).encode())\n"
        "s._pending.put('records', b'\\x00' * 8 + b'uncommitted', b'junk')\n"
        "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    with RocksStore(path) as store:
        assert store.count() == 50 and store.get_meta("join_progress") == b"49"
        assert store.check() == []


def test_rocks_check_reports_damaged_records_and_wrong_figures(tmp_path):
    from zring.storage.rocks_format import CF_RECORDS, CF_TOMBSTONES
    with rocks_fill(tmp_path / "store.rocks", 100) as store:
        assert store.check() == []
        records = store._tables[CF_RECORDS]
        wrong = key_position("moved") ^ 1
        records.put(wrong.to_bytes(8, "big") + b"moved", next(iter(records.values())))
        records.put(key_position("junk").to_bytes(8, "big") + b"junk", b"\x00\x01")
        store._tables[CF_TOMBSTONES].put(b"\x00" * 8 + b"nothing", b"")
        problems = store.check()
    text = "\n".join(problems)
    assert "'moved': position does not match the key's hash" in text
    assert "'junk': does not decode" in text
    assert "names no tombstone" in text
    assert "record counts stored (85, 15, " in text and "(86, 15, " in text


def test_rocks_check_store_finds_a_damaged_table_file_and_moves_the_store_aside(tmp_path):
    from zring.storage.check import check_store, move_store_aside
    path = tmp_path / ROCKS_DIR
    with rocks_fill(path, 3000) as store:
        store._db.flush()
    found = check_store(str(tmp_path))
    assert found.healthy and found.summary.startswith(
        f"ok: {path}, 2571 keys, 429 tombstones, format rocks-1")
    table = max(path.glob("*.sst"), key=lambda file: file.stat().st_size)   # the records
    data = bytearray(table.read_bytes())
    middle = len(data) // 3
    data[middle:middle + 64] = bytes(64)
    table.write_bytes(bytes(data))
    found = check_store(str(tmp_path))
    assert not found.healthy and any("Corruption" in p for p in found.problems)
    [(source, target)] = move_store_aside(found.path)
    assert source == str(path) and ".damaged-" in target and not path.exists()


def test_rocks_refuses_what_is_not_its_store(tmp_path):
    from rocksdict import Options, Rdict

    from zring.storage.rocks_format import CF_META
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"x")
    cases = {"damaged": not_a_dir, "foreign": tmp_path / "other"}
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    plain = Rdict(str(tmp_path / "plain"), Options(raw_mode=True))
    plain.put(b"someone", b"else's")
    plain.close()
    with_family = Rdict(str(tmp_path / "family"), Options(raw_mode=True))
    with_family.create_column_family("theirs", Options(raw_mode=True))
    with_family.close()
    for reason, path in [*cases.items(), ("foreign", tmp_path / "plain"),
                         ("foreign", tmp_path / "family")]:
        with pytest.raises(StorageError) as refused:
            RocksStore(path)
        assert refused.value.details["reason"] == reason, path
    with RocksStore(tmp_path / "old") as store:
        store._tables[CF_META].put(b"format", b"rocks-0")
    with pytest.raises(StorageError, match="format b'rocks-0'") as refused:
        RocksStore(tmp_path / "old")
    assert refused.value.details["reason"] == "format"


def test_rocks_opens_a_store_whose_creation_was_cut_short(tmp_path):
    """RocksDB creates column families one at a time: a crash while a new store is created
    leaves some of them (found by tests/unit/test_rocks_power_loss.py). Such a store, or an
    empty database with only "default", is opened and completed."""
    from rocksdict import Options, Rdict
    partial = Rdict(str(tmp_path / "partial"), Options(raw_mode=True))
    partial.create_column_family("records", Options(raw_mode=True))
    partial.close()
    Rdict(str(tmp_path / "empty"), Options(raw_mode=True)).close()
    for name in ("partial", "empty"):
        with RocksStore(tmp_path / name) as store:
            store.put(record("k", b"v", 5))
            assert store.get_meta("format") == b"rocks-1" and store.check() == []
        with RocksStore(tmp_path / name) as store:
            assert store.get("k").value == b"v"


def test_rocks_recounts_figures_it_cannot_read(tmp_path):
    from zring.storage.rocks_format import CF_META, COUNTS
    path = tmp_path / "store.rocks"
    with rocks_fill(path, 50) as store:
        store.add_hints([hint("n2", "h", "v", 1), hint("n2", "h", "v", 2)])
        figures, hints = store.stats(), store.hint_counts()
        store._tables[CF_META].put(COUNTS, b"\xc1")
    with RocksStore(path) as store:
        assert store.stats() == figures and store.hint_counts() == hints
        store.add_hints([hint("n3", "h", "v", 1)])
        assert store.hints_for("n3")[0].hint_id == 3 and store.check() == []


def test_open_store_picks_the_kind_and_refuses_the_other_kinds_directory(tmp_path):
    with open_store(str(tmp_path), "rocksdb", fsync="always") as store:
        assert isinstance(store, RocksStore) and store._write_options.sync
    with pytest.raises(StorageError, match="holds a rocksdb store .*--store rocksdb") as no:
        open_store(str(tmp_path), "sqlite")
    assert no.value.details["reason"] == "format"
    with open_store(str(tmp_path / "s"), "sqlite") as store:
        assert isinstance(store, SQLiteStore)
    with pytest.raises(StorageError, match="--store sqlite"):
        open_store(str(tmp_path / "s"), "rocksdb")
    with pytest.raises(ValueError):
        open_store(str(tmp_path), "lmdb")
