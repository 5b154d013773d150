"""RocksDB store (through ``rocksdict``): a log-structured alternative to the SQLite store.

The layout (column families, key and value encodings) is in ``rocks_format``: records are
keyed by big-endian ring position + key, so a range streams in order and drops with one
DeleteRange; hints, meta and transfer progress sit in column families of their own.

Every write goes through the pending writes of ``rocks_batch``: inside the node's group
commit, a loop cycle's writes (records, their tombstone index, the figures, the transfer
progress that counts them) become ONE WriteBatch when the cycle ends; outside one, each call
is its own batch. Reads merge the pending writes over the database, so a cycle sees its own
writes. Last writer wins is decided here (a read before each write: one multi-get per call),
and the figures ``stats`` reports (records, tombstones, bytes, hints per target: as the SQLite
store's triggers keep them) are kept in memory and written in every batch, so they commit,
and survive a crash, with the writes they count. A stream's page, a range's count and a drop's
read RocksDB into lists (no Python step per item), bypassing the block cache; a page whose
keys are not held (a joiner's) is taken without comparing versions.

Durability (``sync``): True (``--fsync always``) writes each batch with a synced WAL write;
False (``periodic``) leaves the WAL write in the OS until ``sync()`` syncs the WAL (the node
calls it every ``fsync_period_s``). Either survives the process dying; only the first, or a
``sync()`` since, survives power loss.

A failed write (a full disk) leaves RocksDB refusing every later write, even once space is
freed, until the database is reopened (rocksdict cannot resume it in place). So a failed
commit marks the store: the batch is dropped (the figures go back to what is stored) and the
next commit reopens the database first; until that succeeds, writes are refused at once and
reads go on, through the failed handle and then through a read-only one (opened beside it
before it is closed: reads never stop). A reopen that fails (the disk is still full) is
retried at the next commit after a delay that doubles up to ``reopen_max_delay_s``. Logged:
``store_write_failed``, ``store_read_only``, ``store_reopen_failed``, ``store_reopened``.

Failures are StorageErrors naming the store directory with the SQLite store's ``reason``
details ("locked", "damaged", "foreign", "format", "closed", "error": ``rocks_format``).
rocksdict 0.3.x quirks handled here: a column-family object still referenced keeps the LOCK
after ``close`` (``Families.release`` drops them all first), and snapshot iterators ignore
the snapshot (no snapshot is used: each scan reads one iterator, a consistent view itself).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import chain, islice
from pathlib import Path

import structlog
from rocksdict import Rdict, WriteOptions

from zring.errors import StorageError
from zring.hashing import RING_SIZE, key_position
from zring.storage import rocks_check
from zring.storage.base import Record, Store, StoreStats, position_group_cut
from zring.storage.rocks_batch import Families, Pending, Scanner
from zring.storage.rocks_format import (
    CF_META,
    CF_RECORDS,
    CF_TOMBSTONES,
    COLUMN_FAMILIES,
    COUNTS,
    FORMAT_VERSION,
    KIND_TOMBSTONE,
    TIMESTAMP_LIMIT,
    VALUE_HEADER,
    decode_counts,
    encode_counts,
    meta_family,
    position_end,
    position_start,
    rocks_error,
    translating_errors,
)
from zring.storage.rocks_hints import HintMethods
from zring.storage.rocks_open import open_database, open_read_only
from zring.storage.rocks_records import (
    counted,
    decode_record,
    decode_records,
    range_figures,
    record_row,
    wire_rows,
)

__all__ = ["RocksStore"]

_KEYS_BATCH = 1000
_SCAN_PAGE = 10_000   # records read at once by a count or a drop
_HEADER = VALUE_HEADER.size
_unpack_header = VALUE_HEADER.unpack_from
log = structlog.get_logger("zring.storage")


class _Positions:
    """``position_group_cut``'s positions of a page of items, compared as their 8 bytes
    (big-endian: equal and ordered as the integers), taken only where it looks."""

    def __init__(self, items: list[tuple[bytes, bytes]]) -> None:
        self.items = items

    def __getitem__(self, index: int) -> bytes:
        return self.items[index][0][:8]


class RocksStore(HintMethods, Store):
    """A ``Store`` in the RocksDB directory at ``path`` (created, with its parent, if
    missing). ``sync=True``: every commit is a synced WAL write (``--fsync always``)."""

    reopen_first_delay_s = 0.1   # after a failed write: the second reopen try, and on
    reopen_max_delay_s = 2.0     # doubling up to this

    def __init__(self, path: str | os.PathLike, *, sync: bool = False) -> None:
        self.path = Path(path)
        self._closed = False
        self._depth = 0   # group commits entered
        self._pending = Pending(COLUMN_FAMILIES)
        self._scan: Scanner | None = None   # the cycle's reused iterator
        self._write_options = WriteOptions()
        self._write_options.sync = sync
        self._live = self._tombstones = self._bytes = 0
        self._next_hint_id = 1
        self._hint_counts: dict[str, int] = {}
        self._write_failure: str | None = None   # set: writes refused until a reopen
        self._read_only = False   # reading through a read-only handle meanwhile
        self._failed_at = self._reopen_at = 0.0   # time.monotonic()
        self._reopen_delay = 0.0
        self._reopen_tries = 0
        self._db, self._families = open_database(self.path)
        self._tables = self._families.tables
        self._records = self._tables[CF_RECORDS]
        try:
            self._load_figures()
        except BaseException:
            self._closed = True
            self._release()
            raise

    # ------------------------------------------------------------------ records

    @translating_errors
    def get(self, key: str) -> Record | None:
        position = key_position(key)
        row_key = position.to_bytes(8, "big") + key.encode("utf-8")
        raw = self._pending.lookup(CF_RECORDS, row_key, self._tables)
        return None if raw is None else decode_record(row_key, raw)

    @translating_errors
    def get_wire(self, key: str) -> list | None:
        record = self.get(key)
        return None if record is None else [record.key, record.value, *record.version]

    @translating_errors
    def get_wire_many(self, keys: list[str]) -> list[list | None]:
        row_keys = [key_position(k).to_bytes(8, "big") + k.encode("utf-8") for k in keys]
        answers: list[list | None] = []
        for row_key, raw in zip(row_keys, self._pending.lookup_records(row_keys,
                                                                       self._records)):
            if raw is None:
                answers.append(None)
            else:
                key, value, (timestamp, writer), _ = decode_record(row_key, raw)
                answers.append([key, value, timestamp, writer])
        return answers

    @translating_errors
    def put(self, record: Record) -> bool:
        with self.group_commit():
            return self._upsert([record_row(record)])[0] is None

    @translating_errors
    def put_many(self, records: Iterable[Record]) -> int:
        rows = [record_row(record) for record in records]  # all checked before any write
        with self.group_commit():
            return sum(answer is None for answer in self._upsert(rows))

    @translating_errors
    def put_wire(self, items: list) -> tuple[int, int]:
        rows, size = wire_rows(items)
        with self.group_commit():
            self._upsert(rows)
        return len(rows), size

    @translating_errors
    def write_if_newer(self, items: list) -> list[list | None]:
        """See ``Store.write_if_newer``: items in order, each against what is held at that
        point (an earlier item of the batch included)."""
        rows, _ = wire_rows(items)
        with self.group_commit():
            answers = self._upsert(rows, equal_taken=True)
        return [None if answer is None else [answer[0], answer[1].decode("utf-8")]
                for answer in answers]

    def _upsert(self, rows: list[tuple], equal_taken: bool = False) -> list:
        """Apply last writer wins to ``rows`` (``record_row``/``wire_rows`` tuples: row key,
        timestamp, writer bytes, stored value, counted size); per row None (stored, or with
        ``equal_taken`` an equal version held) or the held (timestamp, writer bytes) that
        refused it. The only read (one multi-get) comes before the first change."""
        keys = [row[0] for row in rows]
        held = self._pending.lookup_records(keys, self._records)
        current = dict(zip(keys, held))
        fresh = held.count(None)
        if len(current) < len(rows) or not fresh:   # a key twice, or every key held
            return self._compare(rows, current, equal_taken)
        # no key twice: a row whose key is not held is taken whatever the others do (a
        # joiner's page: all but the few keys clients wrote meanwhile)
        if fresh == len(rows):
            return self._insert(rows)
        self._insert([row for row, raw in zip(rows, held) if raw is None])
        contested = [i for i, raw in enumerate(held) if raw is not None]
        answers: list = [None] * len(rows)
        for i, answer in zip(contested, self._compare([rows[i] for i in contested], current,
                                                      equal_taken)):
            answers[i] = answer
        return answers

    def _compare(self, rows: list[tuple], current: dict[bytes, bytes | None],
                 equal_taken: bool) -> list:
        """``_upsert`` of ``rows`` in order, each against ``current[row key]`` (what is held,
        updated with each row taken)."""
        put = self._pending.put
        answers: list = []
        for row_key, timestamp, writer, stored, size in rows:
            old = current[row_key]
            if old is not None:
                old_ts, old_kind, length = _unpack_header(old)
                old_writer = old[_HEADER:_HEADER + length]
                if (timestamp, writer) <= (old_ts, old_writer):
                    answers.append(None if equal_taken and (timestamp, writer) == (
                        old_ts, old_writer) else (old_ts, old_writer))
                    continue
                self._forget_counted(row_key, old)
            current[row_key] = stored
            put(CF_RECORDS, row_key, stored)
            self._bytes += size
            if stored[8] == KIND_TOMBSTONE:
                self._tombstones += 1
                put(CF_TOMBSTONES, stored[:8] + row_key, b"")
            else:
                self._live += 1
            answers.append(None)
        return answers

    def _insert(self, rows: list[tuple]) -> list:
        """``_upsert`` of ``rows`` (distinct keys) none of which is held: every one taken."""
        self._pending.put_records((row[0], row[3]) for row in rows)
        tombstones = [row for row in rows if row[3][8] == KIND_TOMBSTONE]
        for row_key, _, _, stored, _ in tombstones:
            self._pending.put(CF_TOMBSTONES, stored[:8] + row_key, b"")
        self._bytes += sum(row[4] for row in rows)
        self._tombstones += len(tombstones)
        self._live += len(rows) - len(tombstones)
        return [None] * len(rows)

    def _forget_counted(self, row_key: bytes, raw: bytes) -> None:
        """Take the stored record ``raw`` out of the figures and the tombstone index."""
        is_tombstone, size = counted(row_key, raw)
        self._bytes -= size
        if is_tombstone:
            self._tombstones -= 1
            self._pending.put(CF_TOMBSTONES, raw[:8] + row_key, None)
        else:
            self._live -= 1

    @translating_errors
    def range_stats(self, low: int, high: int) -> tuple[int, int]:
        records, _, _, size = range_figures(self._pages(low, high))
        return records, size

    @translating_errors
    def scan_range(self, low: int, high: int, *, after: int | None = None,
                   limit: int = 1000) -> list[Record]:
        """See ``Store.scan_range`` (and ``SQLiteStore.scan_range``: a page never splits the
        records that share a position)."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        start = low if after is None else max(low, after + 1)
        items = self._page(start, high, limit + 1)
        if len(items) > limit:
            cut = position_group_cut(_Positions(items), limit)
            if cut:
                del items[cut:]
            else:
                last = int.from_bytes(items[limit - 1][0][:8], "big")
                items = list(self._range(last, last))
        return decode_records(items)

    def _range(self, low: int, high: int) -> Iterator[tuple[bytes, bytes]]:
        low, high = max(low, 0), min(high, RING_SIZE - 1)
        if low > high:
            return iter(())
        return self._pending.iterate(CF_RECORDS, self._records, position_start(low),
                                     position_end(high))

    def _page(self, low: int, high: int, count: int) -> list[tuple[bytes, bytes]]:
        """The first ``count`` items of ``_range``, read at once (a stream's page)."""
        low, high = max(low, 0), min(high, RING_SIZE - 1)
        if low > high:
            return []
        return self._pending.page(CF_RECORDS, self._records, position_start(low),
                                  position_end(high), count, self._scanner())

    def _pages(self, low: int, high: int) -> Iterator[tuple[bytes, bytes]]:
        """``_range`` read a page at a time (no Python step per item between them)."""
        low, high = max(low, 0), min(high, RING_SIZE - 1)
        if low > high:
            return iter(())
        return chain.from_iterable(self._pending.pages(
            CF_RECORDS, self._records, position_start(low), position_end(high), _SCAN_PAGE,
            self._scanner()))

    def _scanner(self) -> Scanner | None:
        """The cycle's reused iterator over the records (None outside a group commit:
        nothing would end its life before the next write)."""
        if not self._depth:
            return None
        if self._scan is None:
            self._scan = Scanner(self._records)
        return self._scan

    @translating_errors
    def delete_range(self, low: int, high: int) -> int:
        low, high = max(low, 0), min(high, RING_SIZE - 1)
        if low > high:
            return 0
        index: list[bytes] = []   # read all before changing anything
        gone, live, size, _ = range_figures(self._pages(low, high), index)
        with self.group_commit():
            for entry in index:
                self._pending.put(CF_TOMBSTONES, entry, None)
            self._pending.drop_records(position_start(low), position_end(high))
            self._live -= live
            self._tombstones -= gone - live
            self._bytes -= size
        return gone

    @translating_errors
    def delete_keys(self, keys: Iterable[str]) -> int:
        row_keys = list(dict.fromkeys(key_position(k).to_bytes(8, "big") + k.encode("utf-8")
                                      for k in keys))
        held = self._pending.lookup_records(row_keys, self._records)
        with self.group_commit():
            for row_key, raw in zip(row_keys, held):
                if raw is not None:
                    self._forget_counted(row_key, raw)
                    self._pending.put(CF_RECORDS, row_key, None)
        return sum(raw is not None for raw in held)

    def keys(self, *, include_tombstones: bool = False) -> Iterator[str]:
        """Every key in position order, read in batches (no iterator stays open while the
        caller holds this one, and the caller may write to the store meanwhile)."""
        if self._closed:
            raise rocks_error(self.path, RuntimeError(), closed=True)
        return self._iter_keys(include_tombstones)

    def _iter_keys(self, include_tombstones: bool) -> Iterator[str]:
        begin = b""
        while True:
            batch = self._keys_batch(begin)
            for row_key, kind in batch:
                if include_tombstones or kind != KIND_TOMBSTONE:
                    yield row_key[8:].decode("utf-8")
            if len(batch) < _KEYS_BATCH:
                return
            begin = batch[-1][0] + b"\x00"

    @translating_errors
    def _keys_batch(self, begin: bytes) -> list[tuple[bytes, int]]:
        items = self._pending.iterate(CF_RECORDS, self._records, begin, None)
        return [(row_key, raw[8]) for row_key, raw in islice(items, _KEYS_BATCH)]

    @translating_errors
    def count(self, *, include_tombstones: bool = False) -> int:
        return self._live + (self._tombstones if include_tombstones else 0)

    @translating_errors
    def stats(self) -> StoreStats:
        return StoreStats(self._live, self._tombstones, self._bytes,
                          sum(self._hint_counts.values()))

    @translating_errors
    def purge_tombstones(self, older_than_ts: int, *, limit: int = 10_000) -> int:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if older_than_ts <= 0:
            return 0  # timestamps are never negative
        cutoff = min(older_than_ts, TIMESTAMP_LIMIT).to_bytes(8, "big")
        entries = [key for key, _ in islice(self._pending.iterate(
            CF_TOMBSTONES, self._tables[CF_TOMBSTONES], b"", cutoff), limit)]
        row_keys = [entry[8:] for entry in entries]
        held = self._pending.lookup_records(row_keys, self._records)
        purged = 0
        with self.group_commit():
            for entry, row_key, raw in zip(entries, row_keys, held):
                if raw is not None and raw[:8] == entry[:8] and raw[8] == KIND_TOMBSTONE:
                    self._forget_counted(row_key, raw)   # drops the index entry too
                    self._pending.put(CF_RECORDS, row_key, None)
                    purged += 1
                else:   # an index entry without its tombstone (never written so)
                    self._pending.put(CF_TOMBSTONES, entry, None)
        return purged

    # ------------------------------------------------------------------ meta

    @translating_errors
    def get_meta(self, name: str) -> bytes | None:
        raw = self._pending.lookup(meta_family(name), name.encode("utf-8"), self._tables)
        return None if raw is None else bytes(raw)

    @translating_errors
    def set_meta(self, name: str, value: bytes) -> None:
        with self.group_commit():
            self._pending.put(meta_family(name), name.encode("utf-8"), bytes(value))

    # ------------------------------------------------------------------ durability

    @contextmanager
    def group_commit(self) -> Iterator[None]:
        """Every write inside in one WriteBatch, written on the way out (synced under
        ``sync=True``); on an exception, or if the write fails, none of them happened."""
        if self._closed:
            raise rocks_error(self.path, RuntimeError(), closed=True)
        if self._depth:   # a call inside the cycle: the cycle's batch takes its writes
            yield
            return
        if self._write_failure is not None and time.monotonic() >= self._reopen_at:
            self._reopen()
        self._depth = 1
        saved = self._figures()
        try:
            yield
        except BaseException:
            self._depth = 0
            self._scan = None
            self._abandon(saved)
            raise
        self._depth = 0
        self._scan = None   # it sees the database before this cycle's writes
        if not self._pending.dirty:
            return
        if self._write_failure is not None:   # RocksDB would refuse it: not reopened yet
            self._abandon(saved)
            raise self._refusal()
        self._pending.put(CF_META, COUNTS, encode_counts(*self._figures()))
        try:
            self._pending.commit(self._families, self._write_options)
        except Exception as exc:
            self._abandon(saved)
            error = rocks_error(self.path, exc)
            self._write_failed(error)
            raise error from exc
        self._pending.clear()
        self._reopen_delay = 0.0

    @translating_errors
    def sync(self) -> None:
        if self._write_failure is not None:   # the failed or read-only handle syncs nothing
            raise self._refusal()
        self._db.flush_wal(True)

    def check(self) -> list[str]:
        """See ``Store.check`` and ``rocks_check``: reads the whole store."""
        if self._closed:
            raise rocks_error(self.path, RuntimeError(), closed=True)
        return rocks_check.store_problems(self._tables, (
            self._live, self._tombstones, self._bytes, self._next_hint_id,
            self._hint_counts))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        try:
            self._release()
        except Exception as exc:
            raise rocks_error(self.path, exc) from exc

    def __repr__(self) -> str:
        return f"RocksStore({str(self.path)!r})"

    # ------------------------------------------------------------------ internals

    def _figures(self) -> tuple:
        return (self._live, self._tombstones, self._bytes, self._next_hint_id,
                dict(self._hint_counts))

    def _abandon(self, saved: tuple) -> None:
        self._pending.clear()
        (self._live, self._tombstones, self._bytes, self._next_hint_id,
         self._hint_counts) = saved

    # ------------------------------------------------------------------ a failed write

    @property
    def writable(self) -> bool:
        """False from a failed commit until the database is reopened (reads go on)."""
        return self._write_failure is None

    def _write_failed(self, error: StorageError) -> None:
        """A commit failed: RocksDB now refuses every write until the database is reopened,
        which the next commit tries (at once the first time; then after a growing delay)."""
        now = time.monotonic()
        if self._write_failure is None:
            self._failed_at = now
            self._reopen_tries = 0
        self._write_failure = str(error)
        self._reopen_at = now + self._reopen_delay
        log.error("store_write_failed", path=str(self.path), error=str(error),
                  reopen_in_s=round(self._reopen_delay, 3))
        self._reopen_delay = self._next_delay()

    def _next_delay(self) -> float:
        return min(max(self._reopen_delay * 2, self.reopen_first_delay_s),
                   self.reopen_max_delay_s)

    def _refusal(self) -> StorageError:
        wait = max(0.0, self._reopen_at - time.monotonic())
        return StorageError(f"store {self.path} takes no writes until it reopens its database "
                            f"(next try in {wait:.1f} s): a write failed: "
                            f"{self._write_failure}", path=str(self.path), reason="error")

    def _reopen(self) -> None:
        """Clear RocksDB's error after a failed write: reopen the database. A read-only handle
        is opened first, beside the failed one, and replaces it (the read-write open needs
        the lock the failed handle holds): if the read-write open fails, reads go on through
        it and the next commit after the delay tries again."""
        self._reopen_tries += 1
        if not self._read_only:
            try:
                self._swap(*open_read_only(self.path))
            except StorageError as exc:
                self._reopen_failed(exc)
                return
            self._read_only = True
            log.warning("store_read_only", path=str(self.path))
        try:
            db, families = open_database(self.path)
        except StorageError as exc:
            self._reopen_failed(exc)
            return
        self._swap(db, families)
        self._read_only = False
        self._write_failure = None
        try:
            self._load_figures()   # what is stored, the failed batch not in it
        except StorageError as exc:
            self._write_failed(exc)
            return
        log.info("store_reopened", path=str(self.path), tries=self._reopen_tries,
                 refused_writes_s=round(time.monotonic() - self._failed_at, 3),
                 records=self._live, tombstones=self._tombstones)

    def _reopen_failed(self, exc: StorageError) -> None:
        self._reopen_at = time.monotonic() + self._reopen_delay
        log.warning("store_reopen_failed", path=str(self.path), error=str(exc),
                    read_only=self._read_only, tries=self._reopen_tries,
                    retry_in_s=round(self._reopen_delay, 3))
        self._reopen_delay = self._next_delay()

    def _swap(self, db: Rdict, families: Families) -> None:
        """Read and write through ``db`` from now on; the handle it replaces is closed (a
        failed one cannot flush on the way: dropping it, with its column families, closes
        it and frees the lock)."""
        old_db, old_families = self._db, self._families
        self._scan = None
        self._db, self._families = db, families
        self._tables = families.tables
        self._records = self._tables[CF_RECORDS]
        old_families.release()
        try:
            old_db.close()
        except Exception:   # the failure is the one already logged
            pass
        del old_db

    def _release(self) -> None:
        # rocksdict quirk: every column-family object must go before close, or the LOCK
        # file stays held and the next open in this process fails
        self._tables = self._records = self._scan = None   # type: ignore[assignment]
        self._families.release()
        self._db.close()

    @translating_errors
    def _load_figures(self) -> None:
        meta = self._tables[CF_META]
        stored_format = meta.get(b"format")
        if stored_format is None and meta.get(COUNTS) is None and not any(
                True for _ in islice(self._records.keys(), 1)):
            with self.group_commit():   # a new store
                self._pending.put(CF_META, b"format", FORMAT_VERSION)
            return
        if stored_format is None:
            raise StorageError(f"{self.path} is damaged: it holds data but no storage format",
                               path=str(self.path), reason="damaged")
        if stored_format != FORMAT_VERSION:
            raise StorageError(f"{self.path} has storage format {stored_format!r}; this "
                               f"version of zring reads format {FORMAT_VERSION!r} only",
                               path=str(self.path), reason="format")
        try:
            (self._live, self._tombstones, self._bytes, self._next_hint_id,
             self._hint_counts) = decode_counts(meta.get(COUNTS) or b"")
        except ValueError:   # unreadable figures: count them again (``check`` says so)
            self._recount()

    def _recount(self) -> None:
        recounted = rocks_check.recount(self._tables)
        (self._live, self._tombstones, self._bytes, self._next_hint_id,
         self._hint_counts) = recounted
        with self.group_commit():
            self._pending.put(CF_META, COUNTS, encode_counts(*recounted))

