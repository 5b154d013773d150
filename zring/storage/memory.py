"""In-memory store for tests and the simulation: the same rules as ``SQLiteStore``, no files.

Records live in a dict by key; a sorted list of ``(position, key)`` gives range scans and range
deletes without touching every key, and a sorted list of ``(timestamp, key)`` of the tombstones
gives tombstone collection, oldest first, without a scan. Hints (hinted handoff) live apart
from the records: a dict by id, and per target a dict in id order (ids only grow, so insertion
order is oldest first). Every rule the durable store enforces (last writer wins, position and
timestamp ranges, whole position groups per page) is enforced here too, so a simulated cluster
fails where a real one would.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

from sortedcontainers import SortedList

from zring.errors import StorageError
from zring.hashing import RING_SIZE
from zring.storage.base import Hint, Record, Store, StoreStats, position_group_cut

__all__ = ["MemoryStore"]

_TIMESTAMP_LIMIT = 1 << 63  # the durable store keeps timestamps in a signed 64-bit column


class MemoryStore(Store):
    """A ``Store`` held in process memory; ``close()`` only makes it unusable."""

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
        self._by_position: SortedList = SortedList()  # (position, key): collisions ordered by key
        self._tombstones: SortedList = SortedList()  # (timestamp, key) of each tombstone
        self._meta: dict[str, bytes] = {}
        self._hints: dict[int, Hint] = {}
        self._hints_by_target: dict[str, dict[int, Hint]] = {}  # each in id order
        self._last_hint_id = 0  # ids are never reused, like SQLite's AUTOINCREMENT
        self._bytes = 0  # of every record's key (UTF-8) and value, as SQLiteStore counts
        self._closed = False

    # ------------------------------------------------------------------ records

    def get(self, key: str) -> Record | None:
        self._check_open()
        return self._records.get(key)

    def put(self, record: Record) -> bool:
        self._check_open()
        _check_ranges(record)
        return self._apply(record)

    def put_many(self, records: Iterable[Record]) -> int:
        self._check_open()
        batch = list(records)
        for record in batch:  # all or nothing, like the durable store's transaction
            _check_ranges(record)
        return sum(self._apply(record) for record in batch)

    def scan_range(self, low: int, high: int, *, after: int | None = None,
                   limit: int = 1000) -> list[Record]:
        """See ``Store.scan_range``. A page never ends partway through records that share a
        position (a hash collision), so paging with ``after=page[-1].position`` skips nothing.
        To keep that promise a page may hold fewer than ``limit`` records, or, only when more
        than ``limit`` records share one position, all of them."""
        self._check_open()
        if limit < 1:
            raise ValueError("limit must be at least 1")
        start = low if after is None else max(low, after + 1)
        if start > high:
            return []
        entries = list(islice(self._entries_between(start, high), limit + 1))
        if len(entries) > limit:
            entries = self._whole_position_groups(entries, limit)
        return [self._records[key] for _, key in entries]

    def delete_range(self, low: int, high: int) -> int:
        self._check_open()
        if low > high:
            return 0
        first = self._by_position.bisect_left((low,))
        stop = self._by_position.bisect_left((high + 1,))
        doomed = self._by_position[first:stop]
        del self._by_position[first:stop]
        for _, key in doomed:
            self._forget(key)
        return len(doomed)

    def delete_keys(self, keys: Iterable[str]) -> int:
        self._check_open()
        deleted = 0
        for key in keys:
            record = self._records.get(key)
            if record is not None:
                self._by_position.remove((record.position, key))
                self._forget(key)
                deleted += 1
        return deleted

    def keys(self, *, include_tombstones: bool = False) -> Iterator[str]:
        self._check_open()
        # a snapshot, so the caller may write to the store while iterating
        if include_tombstones:
            return iter([key for _, key in self._by_position])
        records = self._records
        return iter([key for _, key in self._by_position if records[key].value is not None])

    def count(self, *, include_tombstones: bool = False) -> int:
        self._check_open()
        if include_tombstones:
            return len(self._records)
        return len(self._records) - len(self._tombstones)

    def stats(self) -> StoreStats:
        self._check_open()
        tombstones = len(self._tombstones)
        return StoreStats(len(self._records) - tombstones, tombstones, self._bytes,
                          len(self._hints))

    def purge_tombstones(self, older_than_ts: int, *, limit: int = 10_000) -> int:
        self._check_open()
        if limit < 1:
            raise ValueError("limit must be at least 1")
        doomed = list(islice(self._tombstones.irange(maximum=(older_than_ts,),
                                                     inclusive=(True, False)), limit))
        for _, key in doomed:
            held = self._records[key]
            self._by_position.remove((held.position, key))
            self._forget(key)
        return len(doomed)

    # ------------------------------------------------------------------ meta

    def get_meta(self, name: str) -> bytes | None:
        self._check_open()
        return self._meta.get(name)

    def set_meta(self, name: str, value: bytes) -> None:
        self._check_open()
        self._meta[name] = bytes(value)

    # ------------------------------------------------------------------ hints

    def add_hints(self, hints: Iterable[Hint]) -> int:
        self._check_open()
        batch = list(hints)
        for hint in batch:  # all or nothing, like the durable store's transaction
            _check_hint(hint)
        for hint in batch:
            self._last_hint_id += 1
            stored = hint._replace(hint_id=self._last_hint_id)
            self._hints[stored.hint_id] = stored
            self._hints_by_target.setdefault(stored.target, {})[stored.hint_id] = stored
        return len(batch)

    def hints_for(self, target: str, *, limit: int = 1000) -> list[Hint]:
        self._check_open()
        if limit < 1:
            raise ValueError("limit must be at least 1")
        return list(islice(self._hints_by_target.get(target, {}).values(), limit))

    def delete_hints(self, hint_ids: Iterable[int]) -> int:
        self._check_open()
        deleted = 0
        for hint_id in hint_ids:
            hint = self._hints.pop(hint_id, None)
            if hint is not None:
                self._forget_hint(hint)
                deleted += 1
        return deleted

    def hint_counts(self) -> dict[str, int]:
        self._check_open()
        return {target: len(held) for target, held in self._hints_by_target.items()}

    def expire_hints(self, created_before_ms: int) -> int:
        self._check_open()
        doomed = [hint for hint in self._hints.values() if hint.created_ms < created_before_ms]
        for hint in doomed:
            del self._hints[hint.hint_id]
            self._forget_hint(hint)
        return len(doomed)

    def close(self) -> None:
        self._closed = True

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("memory store is closed")

    def _apply(self, record: Record) -> bool:
        held = self._records.get(record.key)
        if held is None:
            self._by_position.add((record.position, record.key))
        elif record.version <= held.version:
            return False
        else:
            if held.position != record.position:
                self._by_position.remove((held.position, held.key))
                self._by_position.add((record.position, record.key))
            if held.value is None:
                self._tombstones.remove((held.version.timestamp, held.key))
            self._bytes -= _size(held)
        if record.value is None:
            self._tombstones.add((record.version.timestamp, record.key))
        self._records[record.key] = record
        self._bytes += _size(record)
        return True

    def _forget(self, key: str) -> None:
        """Drop ``key`` from the dict; the caller has already taken it out of the index."""
        record = self._records.pop(key)
        self._bytes -= _size(record)
        if record.value is None:
            self._tombstones.remove((record.version.timestamp, key))

    def _forget_hint(self, hint: Hint) -> None:
        """Drop ``hint`` from its target's dict; the caller has taken it out of ``_hints``."""
        held = self._hints_by_target[hint.target]
        del held[hint.hint_id]
        if not held:
            del self._hints_by_target[hint.target]

    def _entries_between(self, low: int, high: int) -> Iterator[tuple[int, str]]:
        # (p,) sorts before every (p, key) and (p + 1,) after them all
        return self._by_position.irange((low,), (high + 1,), inclusive=(True, False))

    def _whole_position_groups(self, entries: list[tuple[int, str]],
                               limit: int) -> list[tuple[int, str]]:
        """Cut ``entries`` (``limit + 1`` long) to at most ``limit`` without splitting a
        position group; if one group fills the page, return the whole group."""
        cut = position_group_cut([position for position, _ in entries], limit)
        if cut:
            return entries[:cut]
        last_position = entries[limit - 1][0]
        return list(self._entries_between(last_position, last_position))


def _size(record: Record) -> int:
    """Bytes of the key in UTF-8 and of the value (its characters if a str), as SQLite's
    ``length`` counts them in SQLiteStore's figures."""
    value = record.value
    return len(record.key.encode("utf-8", "surrogatepass")) + (
        0 if value is None else len(value))


def _check_ranges(record: Record) -> None:
    if not 0 <= record.position < RING_SIZE:
        raise ValueError(f"position {record.position} of {record.key!r} is outside [0, 2**64)")
    if not 0 <= record.version[0] < _TIMESTAMP_LIMIT:
        raise ValueError(f"timestamp {record.version[0]} of {record.key!r} is outside [0, 2**63)")


def _check_hint(hint: Hint) -> None:
    _check_ranges(hint.record)
    if not 0 <= hint.created_ms < _TIMESTAMP_LIMIT:
        raise ValueError(f"created_ms {hint.created_ms} of the hint for {hint.target!r} is "
                         f"outside [0, 2**63)")
