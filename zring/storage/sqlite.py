"""SQLite store: the durable default, one file per node.

One connection in WAL mode with explicit transactions. Last writer wins is decided inside the
upsert itself, so a put is one statement and a batch is one ``executemany``. Ring positions are
unsigned 64-bit but SQLite integers are signed, so a position is stored shifted down by 2**63,
which keeps their order. This module does file I/O only: no clock, no sleeping, no threads
(SQLite's busy handler waits at most ``BUSY_TIMEOUT_MS``, and only if another process holds
the file).

Records are clustered by ring position: the table's primary key is ``(pos, key)``, so the
rows a range stream delivers (in position order) land next to each other instead of all over
a key-ordered table, and range scans, drops and repair hashing read consecutive pages. There
is no index on ``key``: a key's position is a function of the key (``key_position``), so a
get, a delete and the last-writer-wins upsert compute it and search the primary key (one
B-tree, and a streamed row updates one B-tree, not two).

Hints (hinted handoff) sit in their own table, in id order per target; several hints for one
key may coexist (the replay applies last writer wins at the target). Tables and indexes added
after a format was first written are created with IF NOT EXISTS on open, so an existing file
gains them (no released data predates them).

Format "2" is the position-clustered layout. Format "1" (the same columns and encodings in a
table clustered by key, with a ``(pos, key)`` index) is migrated on open: in one transaction
the rows are copied in position order into a new table that then replaces the old one. An
interrupted migration rolls back and is redone on the next open. The old table's pages go to
the file's free list, reused by later writes; the file does not shrink by itself.

Every failure is a ``StorageError`` naming the file, with a ``reason`` detail ("locked",
"damaged", "foreign", "format", "closed" or "error") so callers can tell a file another process
holds from a damaged one. ``check`` verifies a whole file (``zring check``).
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TypeVar

from zring.errors import ProtocolError, StorageError
from zring.hashing import RING_SIZE, key_position
from zring.storage.base import (
    Hint,
    Record,
    Store,
    StoreStats,
    position_group_cut,
    record_from_wire,
)
from zring.versions import Version

__all__ = ["BUSY_TIMEOUT_MS", "CACHE_KIB", "FORMAT_VERSION", "SQLiteStore"]

FORMAT_VERSION = b"2"  # bump with any change to the schema or to how a column is encoded
BUSY_TIMEOUT_MS = 100  # only another process can hold the file; never stall the poll loop long
CACHE_KIB = 64 * 1024  # page cache ceiling: random-key inserts slow down ~2x once it thrashes
WAL_AUTOCHECKPOINT_PAGES = 16_384  # 64 MiB of 4 KiB pages
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024  # what a checkpointed WAL file is truncated to
_SYNCHRONOUS_MODES = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
_MIN_SQLITE = (3, 24, 0)  # upsert (3.24) and row-value comparison (3.15)

_MIGRATED_FORMATS = frozenset({b"1"})  # older formats rebuilt into this one on open
# what a store file must hold (format "2" with its additions); ``check`` reports any missing
_REQUIRED_OBJECTS = frozenset({"records", "meta", "hints",
                               "hints_by_target", "hints_by_created",
                               "records_tombstones_by_ts", "record_counts", "hint_counts",
                               "records_counted_insert", "records_counted_update",
                               "records_counted_delete", "hints_counted_insert",
                               "hints_counted_delete"})
# SQLite primary result codes meaning the file itself is damaged, not merely busy or absent
_DAMAGE_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_LOCKED_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
# what a damaged file can raise: the sqlite3 module fails to decode an error message that
# quotes junk from the file (a mangled schema) with a bare UnicodeDecodeError
_SQLITE_ERRORS = (sqlite3.Error, UnicodeDecodeError)

# ``check`` reads each row's columns as blobs (text that is not UTF-8 must not fail to decode)
_CHECK_ROWS = """
SELECT CAST(key AS BLOB), typeof(key), typeof(value),
       CASE typeof(value) WHEN 'text' THEN CAST(value AS BLOB) END,
       CASE typeof(ts) WHEN 'integer' THEN ts END,
       typeof(writer), CAST(writer AS BLOB),
       CASE typeof(pos) WHEN 'integer' THEN pos END
FROM {table}
"""
_MAX_ROW_PROBLEMS = 20  # listed per table (and of the integrity check); the rest are counted

_POSITION_SHIFT = 1 << 63  # stored pos = position - 2**63: signed, same order
_TIMESTAMP_LIMIT = 1 << 63
_KEYS_BATCH = 1000

# The primary key's columns are declared first, in its order (as they are stored anyway):
# SQLite 3.40.0 to 3.41.0 ``integrity_check`` reports false "NULL value" errors in a WITHOUT
# ROWID table whose primary key columns are declared in another order.
_RECORDS_TABLE = """
    CREATE TABLE {name} (
        pos    INTEGER NOT NULL, -- ring position - 2**63
        key    TEXT NOT NULL,
        value,                   -- untyped: TEXT stays str, BLOB stays bytes; NULL: tombstone
        ts     INTEGER NOT NULL, -- version timestamp (HLC)
        writer TEXT NOT NULL,    -- version node id
        PRIMARY KEY (pos, key)   -- clustered by position: streamed ranges append
    ) WITHOUT ROWID
    """
_SCHEMA = (
    _RECORDS_TABLE.format(name="records"),
    "CREATE TABLE meta (name TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID",
)
# Format "1" -> "2", inside the open's transaction. The old table is renamed first so the new
# one is created with the same statement as in a new file; dropping the old table drops its
# indexes. Reads only the columns, so it does not depend on the old table's indexes.
_MIGRATE_RECORDS = (
    "ALTER TABLE records RENAME TO records_old",
    _RECORDS_TABLE.format(name="records"),
    """
    INSERT INTO records (key, value, ts, writer, pos)
    SELECT key, value, ts, writer, pos FROM records_old ORDER BY pos, key
    """,
    "DROP TABLE records_old",
)
# Run on every open, after the format check (and any migration): a file written before these
# existed gains them. Anything that changes an existing table or column needs a format bump.
_SCHEMA_ADDITIONS = (
    """
    CREATE TABLE IF NOT EXISTS hints (
        id         INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused: ids only grow
        target     TEXT NOT NULL,    -- the node id the write belongs to
        key        TEXT NOT NULL,
        value,                       -- as in records; NULL: tombstone
        ts         INTEGER NOT NULL,
        writer     TEXT NOT NULL,
        pos        INTEGER NOT NULL, -- ring position - 2**63, as in records
        created_ms INTEGER NOT NULL  -- wall-clock ms when the hint was stored
    )
    """,
    "CREATE INDEX IF NOT EXISTS hints_by_target ON hints (target, id)",
    "CREATE INDEX IF NOT EXISTS hints_by_created ON hints (created_ms)",
    # for tombstone garbage collection (oldest tombstones first); partial, so live writes
    # never touch it
    "CREATE INDEX IF NOT EXISTS records_tombstones_by_ts ON records (ts) WHERE value IS NULL",
    # Exact figures for status, kept by triggers in every write's own transaction (so they
    # commit, roll back and survive a crash with it): the records and bytes a node holds and
    # its hints per target, without a COUNT or GROUP BY on the node's loop. Recounted once
    # on every open.
    """
    CREATE TABLE IF NOT EXISTS record_counts (
        id         INTEGER PRIMARY KEY CHECK (id = 0),
        live       INTEGER NOT NULL,
        tombstones INTEGER NOT NULL,
        bytes      INTEGER NOT NULL  -- keys (UTF-8) and values, tombstones' keys included
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS hint_counts (
        target TEXT PRIMARY KEY NOT NULL,
        count  INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    """
    CREATE TRIGGER IF NOT EXISTS records_counted_insert AFTER INSERT ON records BEGIN
        UPDATE record_counts SET live = live + (NEW.value IS NOT NULL),
            tombstones = tombstones + (NEW.value IS NULL),
            bytes = bytes + length(CAST(NEW.key AS BLOB)) + coalesce(length(NEW.value), 0)
        WHERE id = 0;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS records_counted_update AFTER UPDATE ON records BEGIN
        UPDATE record_counts
        SET live = live + (NEW.value IS NOT NULL) - (OLD.value IS NOT NULL),
            tombstones = tombstones + (NEW.value IS NULL) - (OLD.value IS NULL),
            bytes = bytes + length(CAST(NEW.key AS BLOB)) + coalesce(length(NEW.value), 0)
                          - length(CAST(OLD.key AS BLOB)) - coalesce(length(OLD.value), 0)
        WHERE id = 0;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS records_counted_delete AFTER DELETE ON records BEGIN
        UPDATE record_counts SET live = live - (OLD.value IS NOT NULL),
            tombstones = tombstones - (OLD.value IS NULL),
            bytes = bytes - length(CAST(OLD.key AS BLOB)) - coalesce(length(OLD.value), 0)
        WHERE id = 0;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS hints_counted_insert AFTER INSERT ON hints BEGIN
        INSERT INTO hint_counts (target, count) VALUES (NEW.target, 1)
        ON CONFLICT (target) DO UPDATE SET count = count + 1;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS hints_counted_delete AFTER DELETE ON hints BEGIN
        UPDATE hint_counts SET count = count - 1 WHERE target = OLD.target;
        DELETE FROM hint_counts WHERE target = OLD.target AND count <= 0;
    END
    """,
)
# what the triggers keep, counted from the tables themselves (on open, and by ``check``)
_RECOUNT_RECORDS = """
SELECT count(value), count(*) - count(value),
       coalesce(sum(length(CAST(key AS BLOB)) + coalesce(length(value), 0)), 0)
FROM records
"""
_RECOUNT_HINTS = "SELECT target, count(*) FROM hints GROUP BY target"
_SET_RECORD_COUNTS = """
INSERT INTO record_counts (id, live, tombstones, bytes) VALUES (0, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    live = excluded.live, tombstones = excluded.tombstones, bytes = excluded.bytes
"""
_RECORD_COUNTS = "SELECT live, tombstones, bytes FROM record_counts WHERE id = 0"

_UPSERT = """
INSERT INTO records (key, value, ts, writer, pos) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (pos, key) DO UPDATE SET
    value = excluded.value, ts = excluded.ts, writer = excluded.writer
WHERE (excluded.ts, excluded.writer) > (records.ts, records.writer)
"""
_GET = "SELECT value, ts, writer FROM records WHERE pos = ? AND key = ?"
_GET_MANY_PREFIX = "SELECT key, value, ts, writer FROM records WHERE pos IN ("
_GET_MANY: dict[int, str] = {}   # the query for each number of keys, built once
_MAX_IN = 500                    # keys per query (well under SQLite's variable limit)
_SCAN = """
SELECT key, value, ts, writer, pos FROM records
WHERE pos BETWEEN ? AND ? ORDER BY pos, key LIMIT ?
"""
_SCAN_POSITION = "SELECT key, value, ts, writer, pos FROM records WHERE pos = ? ORDER BY key"
_RANGE_STATS = """
SELECT count(*), sum(length(CAST(key AS BLOB)) + coalesce(length(value), 0)) FROM records
WHERE pos BETWEEN ? AND ?
"""
_DELETE_RANGE = "DELETE FROM records WHERE pos BETWEEN ? AND ?"
_DELETE_KEY = "DELETE FROM records WHERE pos = ? AND key = ?"
_KEYS_FIRST = "SELECT pos, key, value IS NULL FROM records ORDER BY pos, key LIMIT ?"
_KEYS_NEXT = """
SELECT pos, key, value IS NULL FROM records
WHERE (pos, key) > (?, ?) ORDER BY pos, key LIMIT ?
"""
# oldest first through the partial index records_tombstones_by_ts (which holds each row's
# primary key), then each delete by primary key. (Not one ``(pos, key) IN`` statement: SQLite
# runs a row-value IN subquery twice.)
_OLD_TOMBSTONES = """
SELECT pos, key FROM records WHERE value IS NULL AND ts {op} ? ORDER BY ts LIMIT ?
"""
_OLD_TOMBSTONES_BELOW = _OLD_TOMBSTONES.format(op="<")
_OLD_TOMBSTONES_UP_TO = _OLD_TOMBSTONES.format(op="<=")  # cutoffs past the column's range
_GET_META = "SELECT value FROM meta WHERE name = ?"
_SET_META = """
INSERT INTO meta (name, value) VALUES (?, ?)
ON CONFLICT (name) DO UPDATE SET value = excluded.value
"""

_ADD_HINT = """
INSERT INTO hints (target, key, value, ts, writer, pos, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)
"""
_HINTS_FOR = """
SELECT id, key, value, ts, writer, pos, created_ms FROM hints
WHERE target = ? ORDER BY id LIMIT ?
"""
_DELETE_HINT = "DELETE FROM hints WHERE id = ?"
_HINT_COUNTS = "SELECT target, count FROM hint_counts"
_EXPIRE_HINTS = "DELETE FROM hints WHERE created_ms < ?"

_Method = TypeVar("_Method", bound=Callable)


def _translating_errors(method: _Method) -> _Method:
    """Re-raise any ``_SQLITE_ERRORS`` from ``method`` as a ``StorageError`` naming the file."""

    @functools.wraps(method)
    def translated(self: SQLiteStore, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except _SQLITE_ERRORS as exc:
            raise self._storage_error(exc) from exc

    return translated  # type: ignore[return-value]


class SQLiteStore(Store):
    """A ``Store`` in the SQLite file at ``path`` (created, with its directory, if missing).

    ``synchronous="NORMAL"`` (the default) survives a crash of the process; ``"FULL"`` also
    survives power loss, at the price of an fsync per commit.

    ``connect`` opens the connection (``connect(path, isolation_level=None)``); a test seam
    only: tests/powerloss.py passes one that goes through a power-loss VFS. Whatever it
    returns must behave as a ``sqlite3.Connection`` and raise ``sqlite3`` errors.
    """

    def __init__(self, path: str | os.PathLike, *, synchronous: str = "NORMAL",
                 connect: Callable[..., sqlite3.Connection] = sqlite3.connect) -> None:
        self.path = Path(path)
        self._closed = False
        synchronous = synchronous.upper()
        if synchronous not in _SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS_MODES)}")
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise StorageError(f"SQLite {sqlite3.sqlite_version} is too old for {self.path}; "
                               f"zring needs {'.'.join(map(str, _MIN_SQLITE))} or newer",
                               path=str(self.path), reason="error")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the directory for {self.path}: {exc}",
                               path=str(self.path), reason="error") from exc
        try:
            self._conn = connect(self.path, isolation_level=None)
        except _SQLITE_ERRORS as exc:
            raise self._storage_error(exc) from exc
        self._cursor = self._conn.cursor()  # reused: saves a cursor object per call
        self._batch_depth = 0
        self._batch_began = False   # the current group commit opened its transaction
        try:
            self._configure(synchronous)
            self._open_schema()
        except BaseException:
            self._closed = True
            self._release()
            raise

    # ------------------------------------------------------------------ records

    @_translating_errors
    def get(self, key: str) -> Record | None:
        # fetchall, not fetchone: reading to the end resets the statement, which ends the
        # read transaction instead of holding a WAL snapshot open until the next call
        position = key_position(key)
        rows = self._cursor.execute(_GET, (position - _POSITION_SHIFT, key)).fetchall()
        if not rows:
            return None
        value, timestamp, writer = rows[0]
        return Record(key, value, Version(timestamp, writer), position)

    @_translating_errors
    def get_wire(self, key: str) -> list | None:
        rows = self._cursor.execute(_GET, (key_position(key) - _POSITION_SHIFT, key)).fetchall()
        if not rows:
            return None
        value, timestamp, writer = rows[0]
        return [key, value, timestamp, writer]

    @_translating_errors
    def get_wire_many(self, keys: list[str]) -> list[list | None]:
        # one query per run of keys (the primary key serves each IN position): half the cost
        # of a statement per key
        found: dict[str, list] = {}
        shift = _POSITION_SHIFT
        execute = self._cursor.execute
        for start in range(0, len(keys), _MAX_IN):
            run = keys[start:start + _MAX_IN]
            query = _GET_MANY.get(len(run)) or _GET_MANY.setdefault(
                len(run), _GET_MANY_PREFIX + ",".join("?" * len(run)) + ")")
            for row in execute(query, [key_position(k) - shift for k in run]).fetchall():
                found[row[0]] = list(row)
        return [found.get(key) for key in keys]

    @_translating_errors
    def put(self, record: Record) -> bool:
        self._join_batch()
        self._cursor.execute(_UPSERT, _row(record))  # autocommit: one statement, one commit
        return self._cursor.rowcount > 0

    @_translating_errors
    def put_many(self, records: Iterable[Record]) -> int:
        with self._transaction():
            self._cursor.executemany(_UPSERT, map(_row, records))
            return self._cursor.rowcount

    @_translating_errors
    def put_wire(self, items: list) -> tuple[int, int]:
        """See ``Store.put_wire``: rows straight from wire records (the streaming path)."""
        rows, size = _wire_rows(items)
        self._upsert_rows(rows)
        return len(rows), size

    @_translating_errors
    def write_if_newer(self, items: list) -> list[list | None]:
        """See ``Store.write_if_newer``. The upsert's own last-writer-wins check decides;
        only when it changed fewer rows than it was given (some refused, or resent) are the
        held versions read back to say which: the common case costs no read."""
        rows, _ = _wire_rows(items)
        self._upsert_rows(rows)
        changed = self._cursor.rowcount   # for executemany, the rows of every run
        if changed == len(rows):
            return [None] * len(rows)
        # held now: the newer of what was there and what came (a later write of the same
        # key in this batch supersedes an earlier one, which then counts as refused)
        held = {wire[0]: (wire[2], wire[3]) for wire in self.get_wire_many(
            [row[0] for row in rows]) if wire is not None}
        answers: list[list | None] = []
        for key, _, timestamp, writer, _ in rows:
            newest = held.get(key)
            answers.append(list(newest) if newest is not None and newest > (timestamp, writer)
                           else None)
        return answers

    def _upsert_rows(self, rows: list[tuple]) -> None:
        if len(rows) == 1:  # one statement is atomic by itself: no savepoint around it
            self._join_batch()
            self._cursor.execute(_UPSERT, rows[0])
        elif rows:
            with self._transaction():
                self._cursor.executemany(_UPSERT, rows)

    @_translating_errors
    def range_stats(self, low: int, high: int) -> tuple[int, int]:
        if low > high:
            return 0, 0
        records, size = self._cursor.execute(
            _RANGE_STATS, (low - _POSITION_SHIFT, high - _POSITION_SHIFT)).fetchall()[0]
        return records, size or 0

    @_translating_errors
    def scan_range(self, low: int, high: int, *, after: int | None = None,
                   limit: int = 1000) -> list[Record]:
        """See ``Store.scan_range``. A page never ends partway through records that share a
        position (a hash collision), so paging with ``after=page[-1].position`` skips nothing.
        To keep that promise a page may hold fewer than ``limit`` records, or, only when more
        than ``limit`` records share one position, all of them."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        start = low if after is None else max(low, after + 1)
        if start > high:
            return []
        rows = self._scan(start, high, limit + 1)
        if len(rows) > limit:
            rows = self._whole_position_groups(rows, limit)
        shift = _POSITION_SHIFT
        return [Record(key, value, Version(timestamp, writer), pos + shift)
                for key, value, timestamp, writer, pos in rows]

    @_translating_errors
    def delete_range(self, low: int, high: int) -> int:
        if low > high:
            return 0
        self._join_batch()
        self._cursor.execute(_DELETE_RANGE, (low - _POSITION_SHIFT, high - _POSITION_SHIFT))
        return self._cursor.rowcount

    @_translating_errors
    def delete_keys(self, keys: Iterable[str]) -> int:
        with self._transaction():
            shift = _POSITION_SHIFT
            self._cursor.executemany(_DELETE_KEY, ((key_position(key) - shift, key)
                                                   for key in keys))
            return self._cursor.rowcount

    def keys(self, *, include_tombstones: bool = False) -> Iterator[str]:
        """Every key in position order, read in batches so no statement stays open while the
        caller holds the iterator (the caller may write to the store meanwhile)."""
        try:
            rows = self._conn.execute(_KEYS_FIRST, (_KEYS_BATCH,)).fetchall()
        except _SQLITE_ERRORS as exc:
            raise self._storage_error(exc) from exc
        return self._iter_keys(rows, include_tombstones)

    @_translating_errors
    def count(self, *, include_tombstones: bool = False) -> int:
        live, tombstones, _ = self._cursor.execute(_RECORD_COUNTS).fetchall()[0]
        return live + tombstones if include_tombstones else live

    @_translating_errors
    def stats(self) -> StoreStats:
        live, tombstones, size = self._cursor.execute(_RECORD_COUNTS).fetchall()[0]
        hints = sum(count for _, count in self._cursor.execute(_HINT_COUNTS).fetchall())
        return StoreStats(live, tombstones, size, hints)

    @_translating_errors
    def purge_tombstones(self, older_than_ts: int, *, limit: int = 10_000) -> int:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if older_than_ts <= 0:
            return 0  # timestamps are never negative
        if older_than_ts < _TIMESTAMP_LIMIT:
            query, cutoff = _OLD_TOMBSTONES_BELOW, older_than_ts
        else:  # past a signed 64-bit parameter: every tombstone (all are < 2**63) is older
            query, cutoff = _OLD_TOMBSTONES_UP_TO, _TIMESTAMP_LIMIT - 1
        with self._transaction():
            rows = self._cursor.execute(query, (cutoff, limit)).fetchall()
            self._cursor.executemany(_DELETE_KEY, rows)
            return self._cursor.rowcount if rows else 0

    # ------------------------------------------------------------------ meta

    @_translating_errors
    def get_meta(self, name: str) -> bytes | None:
        rows = self._cursor.execute(_GET_META, (name,)).fetchall()
        return bytes(rows[0][0]) if rows else None

    @_translating_errors
    def set_meta(self, name: str, value: bytes) -> None:
        # autocommit: committed on return, as durable as ``synchronous`` makes it
        self._join_batch()
        self._cursor.execute(_SET_META, (name, bytes(value)))

    # ------------------------------------------------------------------ hints

    @_translating_errors
    def add_hints(self, hints: Iterable[Hint]) -> int:
        with self._transaction():
            self._cursor.executemany(_ADD_HINT, map(_hint_row, hints))
            return self._cursor.rowcount

    @_translating_errors
    def hints_for(self, target: str, *, limit: int = 1000) -> list[Hint]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        rows = self._cursor.execute(_HINTS_FOR, (target, limit)).fetchall()
        shift = _POSITION_SHIFT
        return [Hint(hint_id, target,
                     Record(key, value, Version(timestamp, writer), pos + shift), created_ms)
                for hint_id, key, value, timestamp, writer, pos, created_ms in rows]

    @_translating_errors
    def delete_hints(self, hint_ids: Iterable[int]) -> int:
        with self._transaction():
            self._cursor.executemany(_DELETE_HINT, ((hint_id,) for hint_id in hint_ids))
            return self._cursor.rowcount

    @_translating_errors
    def hint_counts(self) -> dict[str, int]:
        return dict(self._cursor.execute(_HINT_COUNTS).fetchall())  # kept by triggers

    @_translating_errors
    def expire_hints(self, created_before_ms: int) -> int:
        self._join_batch()
        self._cursor.execute(_EXPIRE_HINTS, (created_before_ms,))  # autocommit
        return self._cursor.rowcount

    def check(self) -> list[str]:
        """See ``Store.check``. ``PRAGMA integrity_check`` reads every page and index entry;
        then the tables, indexes, format and records layout (primary key ``(pos, key)``, a
        unique index on ``key``) a store needs; then every record and hint row:
        column types, UTF-8 text, and a position that matches the key's hash (which catches
        a damaged key). SQLite keeps no checksums, so junk inside a value's bytes goes
        unnoticed; junk in the file's structure does not. A file too damaged to answer is
        reported as a problem, not raised."""
        if self._closed:
            raise StorageError(f"store {self.path} is closed", path=str(self.path),
                               reason="closed")
        with closing(self._conn.cursor()) as cursor:
            try:
                rows = cursor.execute("PRAGMA integrity_check").fetchall()
            except _SQLITE_ERRORS as exc:
                return [f"integrity check failed: {exc}"]
            problems = _integrity_problems(rows)
            try:
                names = {name for (name,) in cursor.execute(
                    "SELECT name FROM sqlite_master WHERE type IN ('table', 'index', 'trigger')")}
                missing = sorted(_REQUIRED_OBJECTS - names)
                if missing:
                    problems.append(f"missing tables, indexes or triggers: {', '.join(missing)}")
                problems += _layout_problems(cursor, names)
                if "meta" in names:
                    rows = cursor.execute(_GET_META, ("format",)).fetchall()
                    found = bytes(rows[0][0]) if rows else None
                    if found != FORMAT_VERSION:
                        problems.append(f"format is {found!r}, expected {FORMAT_VERSION!r}")
                for table in ("records", "hints"):
                    if table in names:
                        problems += _damaged_rows(cursor, table)
                if {"records", "record_counts", "hints", "hint_counts"} <= names:
                    problems += _count_problems(cursor)
            except _SQLITE_ERRORS as exc:
                problems.append(f"cannot read the store: {exc}")
        return problems

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._release()
        except _SQLITE_ERRORS as exc:
            raise self._storage_error(exc) from exc

    def _release(self) -> None:
        # The cursor first: a statement a failed read left unfinished would otherwise keep
        # the connection, and its exclusive lock on the file, alive after close.
        self._cursor.close()
        self._conn.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # ------------------------------------------------------------------ internals

    def _storage_error(self, exc: Exception) -> StorageError:
        """``exc`` as a StorageError naming the file, with a ``reason`` detail: "closed",
        "locked" (another process holds the file), "damaged" (the file is corrupt) or
        "error" (anything else: I/O, permissions, a full disk)."""
        path = str(self.path)
        if self._closed:
            return StorageError(f"store {path} is closed", path=path, reason="closed")
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF  # primary of extended
        if code in _LOCKED_CODES:
            return StorageError(f"store {path} is locked: is another node or process "
                                f"using it? ({exc})", path=path, reason="locked")
        if isinstance(exc, UnicodeDecodeError):
            return StorageError(f"store {path} is damaged: SQLite failed with a message "
                                f"quoting junk from the file ({exc})", path=path,
                                reason="damaged")
        if code in _DAMAGE_CODES or str(exc).startswith("Could not decode to UTF-8"):
            return StorageError(f"store {path} is damaged: {exc}", path=path, reason="damaged")
        return StorageError(f"store {path}: {exc}", path=path, reason="error")

    def _configure(self, synchronous: str) -> None:
        try:
            # Exclusive locking, set before the first read of the file: the connection keeps
            # its file lock instead of taking and dropping it per transaction (half the cost
            # of a get), WAL needs no shared-memory file, and a second process opening the
            # same store (two nodes given one data directory) fails fast instead of sharing it.
            self._conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            # the first statement that reads the file: a file that is not SQLite fails here
            journal_mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchall()[0][0]
            self._conn.execute(f"PRAGMA synchronous = {synchronous}")
            # A checkpoint syncs the files: at SQLite's default (every 4 MB of WAL) a range
            # stream spent a third of its time in them. The node checkpoints every second
            # anyway (``sync``); this bounds the WAL in between.
            self._conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
            self._conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
        except _SQLITE_ERRORS as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_NOTADB:
                raise StorageError(f"{self.path} is not a zring store (not a SQLite database)",
                                   path=str(self.path), reason="damaged") from exc
            raise self._storage_error(exc) from exc
        if journal_mode.lower() != "wal" and str(self.path) != ":memory:":
            raise StorageError(f"cannot put {self.path} in WAL mode (journal mode stays "
                               f"{journal_mode!r}); is it on a network file system?",
                               path=str(self.path), reason="error")

    @_translating_errors
    def _open_schema(self) -> None:
        """Create the tables in an empty file, or check that the file is a store we can read."""
        with self._transaction():
            tables = {name for (name,) in self._cursor.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}
            if not tables:
                for statement in _SCHEMA + _SCHEMA_ADDITIONS:
                    self._cursor.execute(statement)
                self._cursor.execute(_SET_META, ("format", FORMAT_VERSION))
            else:
                self._check_format(tables)
                for statement in _SCHEMA_ADDITIONS:
                    self._cursor.execute(statement)
        try:
            with self._transaction():
                self._recount()
        except _SQLITE_ERRORS:
            pass  # a damaged file: it still opens, so ``check`` can say what is wrong

    def _check_format(self, tables: set[str]) -> None:
        if not {"records", "meta"} <= tables:
            raise StorageError(f"{self.path} is a SQLite database but not a zring store "
                               f"(it has tables {sorted(tables)})", path=str(self.path),
                               reason="foreign")
        rows = self._cursor.execute(_GET_META, ("format",)).fetchall()
        found = rows[0][0] if rows else None
        if found in _MIGRATED_FORMATS:
            self._migrate()
        elif found != FORMAT_VERSION:
            raise StorageError(f"{self.path} has storage format {found!r}; this version of "
                               f"zring reads format {FORMAT_VERSION!r} only",
                               path=str(self.path), reason="format")

    def _recount(self) -> None:
        """Set the triggers' figures from the tables (one pass; on every open)."""
        self._cursor.execute(_SET_RECORD_COUNTS, self._cursor.execute(
            _RECOUNT_RECORDS).fetchall()[0])
        self._cursor.execute("DELETE FROM hint_counts")
        self._cursor.executemany("INSERT INTO hint_counts (target, count) VALUES (?, ?)",
                                 self._cursor.execute(_RECOUNT_HINTS).fetchall())

    def _migrate(self) -> None:
        """Rebuild an older format's records table as this format's (inside the open's
        transaction: all or nothing), then record the new format."""
        for statement in _MIGRATE_RECORDS:
            self._cursor.execute(statement)
        self._cursor.execute(_SET_META, ("format", FORMAT_VERSION))

    @contextmanager
    def group_commit(self) -> Iterator[None]:
        # The transaction opens at the batch's first write (_transaction): a poll cycle
        # that only reads costs no BEGIN/COMMIT.
        self._batch_depth += 1
        if self._batch_depth == 1:
            self._batch_began = False
        try:
            yield
        except BaseException:
            self._batch_depth -= 1
            if self._batch_depth == 0:
                self._abandon()
            raise
        self._batch_depth -= 1
        if self._batch_depth:
            return
        if self._batch_began and not self._conn.in_transaction:
            # SQLite rolled the whole transaction back after an error (a full disk, an I/O
            # error) that its caller survived: the writes before it are gone too
            raise self._storage_error(sqlite3.OperationalError(
                "the loop cycle's transaction was rolled back by SQLite after an error"))
        if self._conn.in_transaction:
            try:
                self._commit()
            except BaseException:
                self._abandon()   # a failed COMMIT (a full disk) may leave it open
                raise

    def _abandon(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except _SQLITE_ERRORS:
            pass  # rolled back by SQLite itself, or the connection is gone

    @_translating_errors
    def _begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    @_translating_errors
    def _commit(self) -> None:
        self._conn.execute("COMMIT")

    @_translating_errors
    def sync(self) -> None:
        # In WAL mode with synchronous=NORMAL commits are not fsynced; a checkpoint syncs
        # the WAL, then the database file.
        if not self._conn.in_transaction:
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _join_batch(self) -> None:
        """Inside a group commit, a write opens the batch's transaction if it is not open
        (once: a transaction SQLite rolled back must fail the batch, not start afresh)."""
        if self._batch_depth and not self._conn.in_transaction:
            if self._batch_began:
                raise self._storage_error(sqlite3.OperationalError(
                    "the loop cycle's transaction was rolled back by SQLite after an error"))
            self._begin()
            self._batch_began = True

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        if self._batch_depth:  # inside a group commit: a savepoint keeps this call atomic
            self._join_batch()
            self._conn.execute("SAVEPOINT call")
            try:
                yield
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK TO call")
                    self._conn.execute("RELEASE call")
                raise
            self._conn.execute("RELEASE call")
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self._conn.in_transaction:  # SQLite rolls back by itself after some I/O errors
                self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _scan(self, low: int, high: int, limit: int) -> list[tuple]:
        return self._cursor.execute(
            _SCAN, (low - _POSITION_SHIFT, high - _POSITION_SHIFT, limit)).fetchall()

    def _whole_position_groups(self, rows: list[tuple], limit: int) -> list[tuple]:
        """Cut ``rows`` (``limit + 1`` long) to at most ``limit`` without splitting a
        position group; if one group fills the page, return the whole group."""
        cut = position_group_cut([row[4] for row in rows], limit)
        if cut:
            return rows[:cut]
        return self._cursor.execute(_SCAN_POSITION, (rows[limit - 1][4],)).fetchall()

    def _iter_keys(self, rows: list[tuple], include_tombstones: bool) -> Iterator[str]:
        while rows:
            for _, key, is_tombstone in rows:
                if include_tombstones or not is_tombstone:
                    yield key
            if len(rows) < _KEYS_BATCH:
                return
            last_pos, last_key, _ = rows[-1]
            try:
                rows = self._conn.execute(_KEYS_NEXT, (last_pos, last_key, _KEYS_BATCH)).fetchall()
            except _SQLITE_ERRORS as exc:
                raise self._storage_error(exc) from exc


def _wire_rows(items: list) -> tuple[list[tuple], int]:
    """Upsert parameters of wire records from a peer, each checked (a bad one raises the
    precise ProtocolError), and the bytes of their keys and values."""
    rows = []
    size = 0
    shift = _POSITION_SHIFT
    for item in items:
        if item.__class__ is not list or len(item) != 4:
            raise ProtocolError("a record must be [key, value, timestamp, writer]")
        key, value, timestamp, writer = item
        if (key.__class__ is not str or writer.__class__ is not str
                or timestamp.__class__ is not int or not 0 <= timestamp < _TIMESTAMP_LIMIT
                or (value is not None and value.__class__ is not bytes
                    and value.__class__ is not str)):
            record_from_wire(item)  # raises the precise ProtocolError
        rows.append((key, value, timestamp, writer, key_position(key) - shift))
        size += len(key) + (len(value) if value is not None else 0)
    return rows, size


def _row(record: Record) -> tuple:
    """``record`` as upsert parameters, checked against the column ranges."""
    key, value, (timestamp, writer), position = record
    if not 0 <= position < RING_SIZE:
        raise ValueError(f"position {position} of {key!r} is outside [0, 2**64)")
    if not 0 <= timestamp < _TIMESTAMP_LIMIT:
        raise ValueError(f"timestamp {timestamp} of {key!r} is outside [0, 2**63)")
    return key, value, timestamp, writer, position - _POSITION_SHIFT


def _integrity_problems(rows: list[tuple[str]]) -> list[str]:
    """``PRAGMA integrity_check`` rows (one may hold several lines) as at most
    ``_MAX_ROW_PROBLEMS`` problems plus a count of the rest."""
    lines = [line.strip() for (message,) in rows for line in str(message).splitlines()]
    lines = [line for line in lines if line and line != "ok" and not line.startswith("***")]
    problems = [f"integrity: {line}" for line in lines[:_MAX_ROW_PROBLEMS]]
    if len(lines) > len(problems):
        problems.append(f"integrity: {len(lines) - len(problems)} more problems")
    return problems


def _layout_problems(cursor: sqlite3.Cursor, names: set[str]) -> list[str]:
    """How the records table differs from this format's layout: gets, upserts, scans and
    drops all search its primary key, (pos, key)."""
    problems = []
    if "records" in names:
        primary = [name for (name,) in cursor.execute(
            "SELECT name FROM pragma_table_info('records') WHERE pk > 0 ORDER BY pk")]
        if primary != ["pos", "key"]:
            problems.append(f"records table has primary key ({', '.join(primary)}), "
                            f"expected (pos, key)")
    return problems


def _count_problems(cursor: sqlite3.Cursor) -> list[str]:
    """Where the triggers' figures differ from the tables' (they never should)."""
    problems = []
    kept = cursor.execute(_RECORD_COUNTS).fetchall()
    counted = cursor.execute(_RECOUNT_RECORDS).fetchall()[0]
    if not kept or tuple(kept[0]) != tuple(counted):
        problems.append(f"record counts {tuple(kept[0]) if kept else None} differ from the "
                        f"records (live, tombstones, bytes) {tuple(counted)}")
    hints = dict(cursor.execute(_HINT_COUNTS).fetchall())
    if hints != dict(cursor.execute(_RECOUNT_HINTS).fetchall()):
        problems.append("hint counts differ from the hints held")
    return problems


def _damaged_rows(cursor: sqlite3.Cursor, table: str) -> list[str]:
    """Problems with the rows of ``table`` ("records" or "hints"), at most
    ``_MAX_ROW_PROBLEMS`` of them plus a count of the rest. Columns are read as blobs so
    that damaged text is reported instead of failing to decode."""
    problems: list[str] = []
    damaged = 0
    for row in cursor.execute(_CHECK_ROWS.format(table=table)):
        found = _row_problems(*row)
        if found:
            damaged += 1
            if len(problems) < _MAX_ROW_PROBLEMS:
                key = row[0].decode("utf-8", "replace") if row[0] is not None else None
                problems.append(f"{table} row {key!r}: {'; '.join(found)}")
    if damaged > len(problems):
        problems.append(f"{table}: {damaged - len(problems)} more damaged rows")
    return problems


def _row_problems(raw_key: bytes | None, key_type: str, value_type: str,
                  text_value: bytes | None, timestamp: int | None, writer_type: str,
                  raw_writer: bytes | None, pos: int | None) -> list[str]:
    found = []
    if key_type != "text" or not _is_utf8(raw_key):
        found.append(f"key is not UTF-8 text ({key_type})")
    if value_type not in ("text", "blob", "null"):
        found.append(f"value is {value_type}, not text, blob or null")
    elif value_type == "text" and not _is_utf8(text_value):
        found.append("text value is not UTF-8")
    if timestamp is None or timestamp < 0:
        found.append("timestamp is not a non-negative integer")
    if writer_type != "text" or not _is_utf8(raw_writer):
        found.append(f"writer is not UTF-8 text ({writer_type})")
    if pos is None:
        found.append("position is not an integer")
    elif raw_key is not None and pos + _POSITION_SHIFT != key_position(raw_key):
        found.append("position does not match the key's hash")
    return found


def _is_utf8(raw: bytes | None) -> bool:
    if raw is None:
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _hint_row(hint: Hint) -> tuple:
    """``hint`` as insert parameters, checked against the column ranges (its id is ignored)."""
    _, target, record, created_ms = hint
    if not 0 <= created_ms < _TIMESTAMP_LIMIT:
        raise ValueError(f"created_ms {created_ms} of the hint for {target!r} is outside "
                         f"[0, 2**63)")
    return (target, *_row(record), created_ms)
