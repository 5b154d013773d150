"""The writes of a RocksStore not yet committed: one WriteBatch per loop cycle (the group
commit), readable before it commits.

rocksdict has no indexed write batch (RocksDB's WriteBatchWithIndex), so the pending writes
are kept here as well, per column family, with the record ranges dropped in the cycle;
reads merge them over the database (``lookup``; ``iterate`` sorts the pending keys of its
range: a dict costs a write less than a sorted map, and scans in a writing cycle are few).
``commit`` turns them into one WriteBatch: the dropped ranges first (DeleteRange), then every
pending key's final value, so the batch leaves the database exactly as the merged view reads
it. Nothing here
reaches the database until ``commit``: abandoning a cycle is dropping this object.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

from rocksdict import Rdict, ReadOptions, WriteBatch, WriteOptions

from zring.storage.rocks_format import CF_RECORDS

__all__ = ["Families", "Pending", "items", "page"]

_ABSENT = object()


class Families:
    """The open database's column families: ``tables[name]`` (an Rdict on the family, to
    read) and ``handles[name]`` (for write batches). Every one must be dropped before the
    database closes: rocksdict 0.3.x keeps the LOCK file held while any is referenced."""

    def __init__(self, db: Rdict, names: tuple[str, ...]) -> None:
        self.db = db
        self.tables = {name: db.get_column_family(name) for name in names}
        self.handles = {name: db.get_column_family_handle(name) for name in names}

    def release(self) -> None:
        self.tables.clear()
        self.handles.clear()
        self.db = None   # type: ignore[assignment]


class Pending:
    """Pending writes per column family (key -> value, None: deleted) and dropped record
    ranges ([begin, end) keys)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.writes: dict[str, dict[bytes, bytes | None]] = {name: {} for name in names}
        self.records = self.writes[CF_RECORDS]
        self.dropped: list[tuple[bytes, bytes]] = []
        self.dirty = False

    def clear(self) -> None:
        for writes in self.writes.values():
            writes.clear()
        self.dropped.clear()
        self.dirty = False

    def put(self, family: str, key: bytes, value: bytes | None) -> None:
        self.writes[family][key] = value
        self.dirty = True

    def put_records(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        """``put`` of many (record key, stored value) at once."""
        self.records.update(pairs)
        self.dirty = True

    def drop_records(self, begin: bytes, end: bytes) -> None:
        """Every record with ``begin <= key < end`` goes (pending ones included)."""
        pending = self.records
        for key in [key for key in pending if begin <= key < end]:
            del pending[key]
        self.dropped.append((begin, end))
        self.dirty = True

    def lookup(self, family: str, key: bytes, tables: dict[str, Rdict]) -> bytes | None:
        found = self.writes[family].get(key, _ABSENT)
        if found is not _ABSENT:
            return found
        if family == CF_RECORDS and self._in_dropped(key):
            return None
        return tables[family].get(key)

    def lookup_records(self, keys: list[bytes], table: Rdict) -> list[bytes | None]:
        """``lookup`` of many record keys, those not pending read in one multi-get."""
        pending = self.records
        if not self.dropped and pending.keys().isdisjoint(keys):   # a cycle's next page
            return table.get(keys) if keys else []
        found: list = [pending.get(key, _ABSENT) for key in keys]
        missing = [i for i, value in enumerate(found) if value is _ABSENT]
        if missing:
            read = table.get([keys[i] for i in missing])
            for i, value in zip(missing, read):
                found[i] = None if self.dropped and self._in_dropped(keys[i]) else value
        return found

    def iterate(self, family: str, table: Rdict, begin: bytes,
                end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) with ``begin <= key < end`` (None: to the end) in key order, pending
        writes over the database's. One RocksDB iterator: a consistent view by itself."""
        stored = items(table, begin, end)
        ours, dropped = self._touching(family, begin, end)
        if not ours and not dropped:   # the cycle wrote elsewhere: no merge per item
            return stored
        return _merge(stored, iter(ours), self.writes[family], dropped)

    def page(self, family: str, table: Rdict, begin: bytes, end: bytes, count: int,
             scanner: Scanner | None = None) -> list[tuple[bytes, bytes]]:
        """The first ``count`` items ``iterate`` gives; when the pending writes touch none of
        them, read through ``scanner`` (see ``Scanner``) or by RocksDB into a list at once."""
        ours, dropped = self._touching(family, begin, end)
        if ours or dropped:
            return list(islice(_merge(items(table, begin, end), iter(ours),
                                      self.writes[family], dropped), count))
        if scanner is not None:
            return scanner.page(table, begin, end, count)
        return page(table, begin, end, count)

    def pages(self, family: str, table: Rdict, begin: bytes, end: bytes, count: int,
              scanner: Scanner | None = None) -> Iterator[list[tuple[bytes, bytes]]]:
        """``iterate`` as lists of up to ``count`` items (each a ``page``), until the end."""
        while True:
            found = self.page(family, table, begin, end, count, scanner)
            if found:
                yield found
            if len(found) < count:
                return
            begin = found[-1][0] + b"\x00"

    def _touching(self, family: str, begin: bytes, end: bytes | None
                  ) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
        """The pending keys in [begin, end), sorted, and the dropped ranges meeting it."""
        pending = self.writes[family]
        ours = sorted(key for key in pending if begin <= key and (end is None or key < end)) \
            if pending else []
        dropped = [(b, e) for b, e in self.dropped if e > begin and (end is None or b < end)] \
            if family == CF_RECORDS else []
        return ours, dropped

    def commit(self, families: Families, options: WriteOptions) -> None:
        """One WriteBatch of everything pending, written with ``options``; raises what
        rocksdict raises (the caller translates it). Clears nothing: the caller does, on
        success or failure alike. No column-family handle stays in this frame: a failed
        write's traceback would keep the database open (and its LOCK held) as long as the
        exception lives, and a store reopens its database after a failed write."""
        batch = self._batch(families.handles)
        try:
            families.db.write(batch, options)
        finally:
            del batch

    def _batch(self, handles: dict) -> WriteBatch:
        batch = WriteBatch(raw_mode=True)
        records = handles[CF_RECORDS]
        for begin, end in self.dropped:
            batch.delete_range(begin, end, records)
        for family, writes in self.writes.items():
            if not writes:
                continue
            handle = handles[family]
            put, delete = batch.put, batch.delete
            for key, value in writes.items():
                if value is None:
                    delete(key, handle)
                else:
                    put(key, value, handle)
        return batch

    def _in_dropped(self, key: bytes) -> bool:
        return any(begin <= key < end for begin, end in self.dropped)


def items(table: Rdict, begin: bytes, end: bytes | None, *,
          verify: bool = False) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of ``table`` with ``begin <= key < end`` (None: to the end), in order.

    Two rocksdict 0.3.x quirks are handled here. An iterator does not keep its ReadOptions
    alive, and the upper bound lives in them: once they are freed the bound dangles and a
    scan ends early (or runs on), so this generator holds them while the iteration lasts.
    And ``items()`` ends at the first error (a block whose checksum fails) as if the data
    ended there, without raising it: when it ends, an iterator placed just after the last
    key it gave says whether that was the end (and raises RocksDB's error if it was not)."""
    options = ReadOptions()
    if end is not None:
        options.set_iterate_upper_bound(end)
    if verify:   # ``zring check``: read every block through its checksum, bypassing the cache
        options.set_verify_checksums(True)
        options.fill_cache(False)
    last = None
    for last, value in table.items(from_key=begin, read_opt=options):
        yield last, value
    probe = table.iter(options)
    probe.seek(begin if last is None else last + b"\x00")
    probe.status()   # raises the error that ended ``items()``, if one did
    if probe.valid():
        raise Exception(f"Corruption: a scan ended early, before {probe.key()!r}")
    del probe, options, end


def page(table: Rdict, begin: bytes, end: bytes, count: int) -> list[tuple[bytes, bytes]]:
    """``list(islice(items(table, begin, end), count))`` without a Python step per item:
    the same bound kept alive and the same check of a scan that ended early. Its blocks
    stay out of the block cache (a stream or a count reads each once: the cache keeps what
    clients read)."""
    options = ReadOptions()
    options.set_iterate_upper_bound(end)
    options.fill_cache(False)
    found = list(islice(table.items(from_key=begin, read_opt=options), count))
    if len(found) < count:
        probe = table.iter(options)
        probe.seek(found[-1][0] + b"\x00" if found else begin)
        probe.status()
        if probe.valid():
            raise Exception(f"Corruption: a scan ended early, before {probe.key()!r}")
        del probe
    del options, end
    return found


class Scanner:
    """One iterator over a table, reused by the scans of one loop cycle. A join asks for
    thousands of intervals of ~20 records each: a new iterator for each (and the second one
    that checks where a bulk read ended) cost twice what reading their records does, a seek
    of this one a fraction. It sees the table as it was when it was made, so it lives no
    longer than a cycle (whose writes commit when it ends); it has no upper bound, so it
    reads one key past a range, and a long range goes on in bulk after ``ONE_BY_ONE``."""

    ONE_BY_ONE = 64

    def __init__(self, table: Rdict) -> None:
        self.options = ReadOptions()   # kept alive with the iterator (see ``items``)
        self.options.fill_cache(False)
        self.iterator = table.iter(self.options)

    def page(self, table: Rdict, begin: bytes, end: bytes, count: int
             ) -> list[tuple[bytes, bytes]]:
        """``page(table, begin, end, count)``."""
        found: list[tuple[bytes, bytes]] = []
        iterator = self.iterator
        iterator.seek(begin)
        while iterator.valid():
            key = iterator.key()
            if key >= end:
                return found
            found.append((key, iterator.value()))
            if len(found) == count:
                return found
            if len(found) == self.ONE_BY_ONE:
                return found + page(table, key + b"\x00", end, count - len(found))
            iterator.next()
        iterator.status()   # raises the error that ended it, if one did
        return found


def _merge(stored: Iterator[tuple[bytes, bytes]], pending_keys: Iterator[bytes],
           pending: dict[bytes, bytes | None], dropped: list[tuple[bytes, bytes]]
           ) -> Iterator[tuple[bytes, bytes]]:
    def visible(items: Iterator[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
        for key, value in items:
            if key in pending or (dropped and any(b <= key < e for b, e in dropped)):
                continue
            yield key, value

    ours = ((key, pending[key]) for key in pending_keys)
    ours = ((key, value) for key, value in ours if value is not None)
    theirs = visible(stored)
    a, b = next(theirs, None), next(ours, None)
    while a is not None and b is not None:
        if a[0] < b[0]:
            yield a
            a = next(theirs, None)
        else:
            yield b
            b = next(ours, None)
    if a is not None:
        yield a
        yield from theirs
    if b is not None:
        yield b
        yield from ours
