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
key may coexist (the replay applies last writer wins at the target).

The file's schema, format and migration are in ``sqlite_schema``, when writes commit (the
group commit) in ``sqlite_commit``, the whole-file check in ``sqlite_check``. Every failure is
a ``StorageError`` naming the file, with a ``reason`` detail ("locked", "damaged", "foreign",
"format", "closed" or "error": ``sqlite_errors``) so callers can tell a file another process
holds from a damaged one.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, closing
from pathlib import Path
from typing import TypeVar

from zring.errors import StorageError
from zring.hashing import RING_SIZE, key_position
from zring.storage import sqlite_schema
from zring.storage.base import (
    Hint,
    Record,
    Store,
    StoreStats,
    checked_wire,
    position_group_cut,
)
from zring.storage.sqlite_check import file_problems
from zring.storage.sqlite_commit import Transactions
from zring.storage.sqlite_errors import SQLITE_ERRORS, storage_error
from zring.storage.sqlite_schema import (
    FORMAT_VERSION,
    GET_META,
    HINT_COUNTS,
    POSITION_SHIFT,
    RECORD_COUNTS,
    SET_META,
    TIMESTAMP_LIMIT,
)
from zring.versions import Version

__all__ = ["BUSY_TIMEOUT_MS", "CACHE_KIB", "FORMAT_VERSION", "SQLiteStore"]

BUSY_TIMEOUT_MS = 100  # only another process can hold the file; never stall the poll loop long
CACHE_KIB = 64 * 1024  # page cache ceiling: random-key inserts slow down ~2x once it thrashes
WAL_AUTOCHECKPOINT_PAGES = 16_384  # 64 MiB of 4 KiB pages
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024  # what a checkpointed WAL file is truncated to
_SYNCHRONOUS_MODES = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
_MIN_SQLITE = (3, 24, 0)  # upsert (3.24) and row-value comparison (3.15)
_KEYS_BATCH = 1000

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

_ADD_HINT = """
INSERT INTO hints (target, key, value, ts, writer, pos, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)
"""
_HINTS_FOR = """
SELECT id, key, value, ts, writer, pos, created_ms FROM hints
WHERE target = ? ORDER BY id LIMIT ?
"""
_HINTS_AFTER = """
SELECT id, target, key, value, ts, writer, pos, created_ms FROM hints
WHERE id > ? ORDER BY id LIMIT ?
"""
_DELETE_HINT = "DELETE FROM hints WHERE id = ?"
_EXPIRE_HINTS = "DELETE FROM hints WHERE created_ms < ?"

_Method = TypeVar("_Method", bound=Callable)


def _translating_errors(method: _Method) -> _Method:
    """Re-raise any ``SQLITE_ERRORS`` from ``method`` as a ``StorageError`` naming the file."""

    @functools.wraps(method)
    def translated(self: SQLiteStore, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except SQLITE_ERRORS as exc:
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
        except SQLITE_ERRORS as exc:
            raise self._storage_error(exc) from exc
        self._cursor = self._conn.cursor()  # reused: saves a cursor object per call
        self._transactions = Transactions(self._conn, self._storage_error)
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
        rows = self._cursor.execute(_GET, (position - POSITION_SHIFT, key)).fetchall()
        if not rows:
            return None
        value, timestamp, writer = rows[0]
        return Record(key, value, Version(timestamp, writer), position)

    @_translating_errors
    def get_wire(self, key: str) -> list | None:
        rows = self._cursor.execute(_GET, (key_position(key) - POSITION_SHIFT, key)).fetchall()
        if not rows:
            return None
        value, timestamp, writer = rows[0]
        return [key, value, timestamp, writer]

    @_translating_errors
    def get_wire_many(self, keys: list[str]) -> list[list | None]:
        # one query per run of keys (the primary key serves each IN position): half the cost
        # of a statement per key
        found: dict[str, list] = {}
        shift = POSITION_SHIFT
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
        self._transactions.join_batch()
        self._cursor.execute(_UPSERT, _row(record))  # autocommit: one statement, one commit
        return self._cursor.rowcount > 0

    @_translating_errors
    def put_many(self, records: Iterable[Record]) -> int:
        return self._execute_many(_UPSERT, map(_row, records))

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
            self._transactions.join_batch()
            self._cursor.execute(_UPSERT, rows[0])
        elif rows:
            self._execute_many(_UPSERT, rows)

    @_translating_errors
    def range_stats(self, low: int, high: int) -> tuple[int, int]:
        if low > high:
            return 0, 0
        records, size = self._cursor.execute(
            _RANGE_STATS, (low - POSITION_SHIFT, high - POSITION_SHIFT)).fetchall()[0]
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
        shift = POSITION_SHIFT
        return [Record(key, value, Version(timestamp, writer), pos + shift)
                for key, value, timestamp, writer, pos in rows]

    @_translating_errors
    def delete_range(self, low: int, high: int) -> int:
        if low > high:
            return 0
        self._transactions.join_batch()
        self._cursor.execute(_DELETE_RANGE, (low - POSITION_SHIFT, high - POSITION_SHIFT))
        return self._cursor.rowcount

    @_translating_errors
    def delete_keys(self, keys: Iterable[str]) -> int:
        shift = POSITION_SHIFT
        return self._execute_many(_DELETE_KEY, ((key_position(key) - shift, key)
                                                for key in keys))

    def keys(self, *, include_tombstones: bool = False) -> Iterator[str]:
        """Every key in position order, read in batches so no statement stays open while the
        caller holds the iterator (the caller may write to the store meanwhile)."""
        try:
            rows = self._conn.execute(_KEYS_FIRST, (_KEYS_BATCH,)).fetchall()
        except SQLITE_ERRORS as exc:
            raise self._storage_error(exc) from exc
        return self._iter_keys(rows, include_tombstones)

    @_translating_errors
    def count(self, *, include_tombstones: bool = False) -> int:
        live, tombstones, _ = self._cursor.execute(RECORD_COUNTS).fetchall()[0]
        return live + tombstones if include_tombstones else live

    @_translating_errors
    def stats(self) -> StoreStats:
        live, tombstones, size = self._cursor.execute(RECORD_COUNTS).fetchall()[0]
        hints = sum(count for _, count in self._cursor.execute(HINT_COUNTS).fetchall())
        return StoreStats(live, tombstones, size, hints)

    @_translating_errors
    def purge_tombstones(self, older_than_ts: int, *, limit: int = 10_000) -> int:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if older_than_ts <= 0:
            return 0  # timestamps are never negative
        if older_than_ts < TIMESTAMP_LIMIT:
            query, cutoff = _OLD_TOMBSTONES_BELOW, older_than_ts
        else:  # past a signed 64-bit parameter: every tombstone (all are < 2**63) is older
            query, cutoff = _OLD_TOMBSTONES_UP_TO, TIMESTAMP_LIMIT - 1
        with self._transactions.call():
            rows = self._cursor.execute(query, (cutoff, limit)).fetchall()
            self._cursor.executemany(_DELETE_KEY, rows)
            return self._cursor.rowcount if rows else 0

    # ------------------------------------------------------------------ meta

    @_translating_errors
    def get_meta(self, name: str) -> bytes | None:
        rows = self._cursor.execute(GET_META, (name,)).fetchall()
        return bytes(rows[0][0]) if rows else None

    @_translating_errors
    def set_meta(self, name: str, value: bytes) -> None:
        # autocommit: committed on return, as durable as ``synchronous`` makes it
        self._transactions.join_batch()
        self._cursor.execute(SET_META, (name, bytes(value)))

    # ------------------------------------------------------------------ hints

    @_translating_errors
    def add_hints(self, hints: Iterable[Hint]) -> int:
        return self._execute_many(_ADD_HINT, map(_hint_row, hints))

    @_translating_errors
    def hints_for(self, target: str, *, limit: int = 1000) -> list[Hint]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        rows = self._cursor.execute(_HINTS_FOR, (target, limit)).fetchall()
        return [_hint_from_row(hint_id, target, *row) for hint_id, *row in rows]

    @_translating_errors
    def delete_hints(self, hint_ids: Iterable[int]) -> int:
        return self._execute_many(_DELETE_HINT, ((hint_id,) for hint_id in hint_ids))

    @_translating_errors
    def hint_counts(self) -> dict[str, int]:
        return dict(self._cursor.execute(HINT_COUNTS).fetchall())  # kept by triggers

    @_translating_errors
    def meta_items(self) -> list[tuple[str, bytes]]:
        """Every named blob, the storage format ("format") included, by name (``zring
        migrate`` copies them)."""
        return [(name, bytes(value)) for name, value in self._cursor.execute(
            "SELECT name, value FROM meta ORDER BY name").fetchall()]

    @_translating_errors
    def hints_after(self, after_id: int = 0, *, limit: int = 1000) -> list[Hint]:
        """Hints of every target with ids above ``after_id``, in id order (the order they
        were stored), at most ``limit`` (``zring migrate`` pages through them)."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        rows = self._cursor.execute(_HINTS_AFTER, (after_id, limit)).fetchall()
        return [_hint_from_row(*row) for row in rows]

    @_translating_errors
    def expire_hints(self, created_before_ms: int) -> int:
        self._transactions.join_batch()
        self._cursor.execute(_EXPIRE_HINTS, (created_before_ms,))  # autocommit
        return self._cursor.rowcount

    def check(self) -> list[str]:
        """See ``Store.check`` and ``sqlite_check``: reads the whole file."""
        if self._closed:
            raise StorageError(f"store {self.path} is closed", path=str(self.path),
                               reason="closed")
        with closing(self._conn.cursor()) as cursor:
            return file_problems(cursor)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._release()
        except SQLITE_ERRORS as exc:
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
        return storage_error(self.path, exc, closed=self._closed)

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
        except SQLITE_ERRORS as exc:
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
        with self._transactions.call():
            sqlite_schema.create_or_open(self._cursor, self.path)
        try:
            with self._transactions.call():
                sqlite_schema.recount(self._cursor)
        except SQLITE_ERRORS:
            pass  # a damaged file: it still opens, so ``check`` can say what is wrong

    def group_commit(self) -> AbstractContextManager[None]:
        return self._transactions.group_commit()

    @_translating_errors
    def sync(self) -> None:
        self._transactions.sync()

    def _execute_many(self, statement: str, rows: Iterable[tuple]) -> int:
        """``statement`` once per row, all or nothing; how many rows it changed."""
        with self._transactions.call():
            self._cursor.executemany(statement, rows)
            return self._cursor.rowcount

    def _scan(self, low: int, high: int, limit: int) -> list[tuple]:
        return self._cursor.execute(
            _SCAN, (low - POSITION_SHIFT, high - POSITION_SHIFT, limit)).fetchall()

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
            except SQLITE_ERRORS as exc:
                raise self._storage_error(exc) from exc


def _hint_from_row(hint_id: int, target: str, key: str, value, timestamp: int, writer: str,
                   pos: int, created_ms: int) -> Hint:
    return Hint(hint_id, target, Record(key, value, Version(timestamp, writer),
                                        pos + POSITION_SHIFT), created_ms)


def _wire_rows(items: list) -> tuple[list[tuple], int]:
    """Upsert parameters of wire records from a peer, each checked (a bad one raises the
    precise ProtocolError), and the bytes of their keys and values."""
    rows = []
    size = 0
    shift = POSITION_SHIFT
    for item in items:
        key, value, timestamp, writer = checked_wire(item)
        rows.append((key, value, timestamp, writer, key_position(key) - shift))
        size += len(key) + (len(value) if value is not None else 0)
    return rows, size


def _row(record: Record) -> tuple:
    """``record`` as upsert parameters, checked against the column ranges."""
    key, value, (timestamp, writer), position = record
    if not 0 <= position < RING_SIZE:
        raise ValueError(f"position {position} of {key!r} is outside [0, 2**64)")
    if not 0 <= timestamp < TIMESTAMP_LIMIT:
        raise ValueError(f"timestamp {timestamp} of {key!r} is outside [0, 2**63)")
    return key, value, timestamp, writer, position - POSITION_SHIFT


def _hint_row(hint: Hint) -> tuple:
    """``hint`` as insert parameters, checked against the column ranges (its id is ignored)."""
    _, target, record, created_ms = hint
    if not 0 <= created_ms < TIMESTAMP_LIMIT:
        raise ValueError(f"created_ms {created_ms} of the hint for {target!r} is outside "
                         f"[0, 2**63)")
    return (target, *_row(record), created_ms)
