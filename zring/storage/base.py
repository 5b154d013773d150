"""The Store interface every node core writes through (pure interface: no I/O here).

A store holds one record per key: the newest value the node has seen, or a tombstone, with its
version and the key's ring position. ``put`` applies last-writer-wins itself, so replaying or
reordering writes is harmless. Records are indexed by position so a ring range streams (and is
dropped) without a scan of every key.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

from zring.errors import ProtocolError
from zring.hashing import key_position
from zring.versions import Version

__all__ = ["Hint", "Record", "Store", "StoreStats", "Value", "position_group_cut",
           "checked_wire", "record_from_wire", "record_size", "record_to_wire"]

Value = bytes | str


class Record(NamedTuple):
    key: str
    value: Value | None      # None: tombstone (the key was deleted at ``version``)
    version: Version
    position: int            # zring.hashing.key_position(key), unsigned 64-bit

    @property
    def is_tombstone(self) -> bool:
        return self.value is None


def record_to_wire(record: Record) -> list:
    return [record.key, record.value, record.version.timestamp, record.version.node_id]


def checked_wire(item: object) -> tuple:
    """``(key, value, timestamp, writer)`` of a wire record, checked the fast way (a bad
    one raises the precise ProtocolError of ``record_from_wire``)."""
    if item.__class__ is not list or len(item) != 4:
        raise ProtocolError("a record must be [key, value, timestamp, writer]")
    key, value, timestamp, writer = item
    if (key.__class__ is not str or writer.__class__ is not str
            or timestamp.__class__ is not int or not 0 <= timestamp < 1 << 63
            or (value is not None and value.__class__ is not bytes
                and value.__class__ is not str)):
        record_from_wire(item)  # raises the precise ProtocolError
    return key, value, timestamp, writer


def record_from_wire(item: object) -> Record:
    """A record from a peer (``[key, value, timestamp, writer]``), checked field by field;
    its position is recomputed rather than trusted."""
    if not isinstance(item, list) or len(item) != 4:
        raise ProtocolError("a record must be [key, value, timestamp, writer]")
    key, value, timestamp, writer = item
    if not isinstance(key, str):
        raise ProtocolError("record key must be a str")
    if value is not None and not isinstance(value, (bytes, str)):
        raise ProtocolError("record value must be bytes, str or nil")
    if type(timestamp) is not int or not 0 <= timestamp < (1 << 63):
        raise ProtocolError("record timestamp must be an int in [0, 2**63)")
    if not isinstance(writer, str):
        raise ProtocolError("record writer must be a str")
    return Record(key, value, Version(timestamp, writer), key_position(key))


def record_size(record: Record) -> int:
    """Bytes of key and value, the figure transfers and plans count."""
    value = record.value
    return len(record.key) + (len(value) if value is not None else 0)


def position_group_cut(positions: list[int], limit: int) -> int:
    """Where to cut a page of ``limit + 1`` scanned positions so no group of equal positions
    is split (a cursor is a position): the cut index, or 0 when one group fills the page
    and the caller must return that whole group."""
    last = positions[limit - 1]
    if positions[limit] != last:
        return limit
    end = limit - 1
    while end > 0 and positions[end - 1] == last:
        end -= 1
    return end


class StoreStats(NamedTuple):
    """What a store holds, exact at every moment (kept with each write, drop and stream)."""

    keys: int          # live records
    tombstones: int
    bytes: int         # UTF-8 keys and values of every record, tombstones' keys included
    hints: int


class Hint(NamedTuple):
    """A write this node holds for a replica that was down when it was made."""

    hint_id: int             # assigned by the store; 0 before it is stored
    target: str              # the node id the write belongs to
    record: Record
    created_ms: int          # wall-clock ms when the hint was stored (for the hint window)


class Store(ABC):
    """A node's durable (or, for tests, in-memory) record table."""

    @abstractmethod
    def get(self, key: str) -> Record | None:
        """The record for ``key`` (a tombstone included), or None if never seen."""

    def get_wire(self, key: str) -> list | None:
        """``get`` as a wire record ``[key, value, timestamp, writer]`` (batch reads)."""
        record = self.get(key)
        return None if record is None else record_to_wire(record)

    def get_wire_many(self, keys: list[str]) -> list[list | None]:
        """``get_wire`` for each of ``keys``, in order (a store may look them up together)."""
        return [self.get_wire(key) for key in keys]

    @abstractmethod
    def put(self, record: Record) -> bool:
        """Store ``record`` unless the held version is newer or equal; True if stored."""

    @abstractmethod
    def put_many(self, records: Iterable[Record]) -> int:
        """``put`` each record in one transaction; returns how many were stored."""

    def write_if_newer(self, items: list) -> list[list | None]:
        """Apply client writes from a coordinator (wire records, checked as ``put_wire``
        checks them): each is taken unless the store holds a newer version of its key (an
        equal one: the same write, taken already). Returns, per item, None (taken) or the
        newer version held, ``[timestamp, writer]``: the coordinator must not count that
        replica, so a write acknowledged after another always carries the newer version."""
        answers: list[list | None] = []
        taken: dict[str, Record] = {}
        for item in items:
            record = record_from_wire(item)
            held = taken.get(record.key) or self.get(record.key)
            if held is not None and held.version > record.version:
                answers.append(list(held.version))
                continue
            answers.append(None)
            taken[record.key] = record
        self.put_many(taken.values())
        return answers

    def put_wire(self, items: list) -> tuple[int, int]:
        """Apply records from a peer in wire form (see ``record_from_wire``), all or none;
        returns (records, bytes of keys and values). Stores may override it with a path
        that skips building ``Record`` objects (range streaming moves millions)."""
        records = [record_from_wire(item) for item in items]
        self.put_many(records)
        return len(records), sum(map(record_size, records))

    def range_stats(self, low: int, high: int) -> tuple[int, int]:
        """(records, bytes of keys and values) with positions in [low, high], tombstones
        included: what streaming the range would move."""
        records = size = 0
        after = None
        while page := self.scan_range(low, high, after=after, limit=1000):
            records += len(page)
            size += sum(map(record_size, page))
            after = page[-1].position
        return records, size

    @abstractmethod
    def scan_range(self, low: int, high: int, *, after: int | None = None,
                   limit: int = 1000) -> list[Record]:
        """Records with ``low <= position <= high`` (and ``position > after`` when given),
        ordered by position then key, at most ``limit``. Tombstones included."""

    @abstractmethod
    def delete_range(self, low: int, high: int) -> int:
        """Forget every record with ``low <= position <= high``; returns how many."""

    @abstractmethod
    def delete_keys(self, keys: Iterable[str]) -> int:
        """Forget these records outright (no tombstone); returns how many."""

    @abstractmethod
    def keys(self, *, include_tombstones: bool = False) -> Iterator[str]:
        """Every key held, in position order."""

    @abstractmethod
    def count(self, *, include_tombstones: bool = False) -> int:
        """How many keys are held (cheap: from the kept figures)."""

    @abstractmethod
    def stats(self) -> StoreStats:
        """Records, bytes and hints held, exact (cheap: kept with every write)."""

    @abstractmethod
    def purge_tombstones(self, older_than_ts: int, *, limit: int = 10_000) -> int:
        """Forget (garbage-collect) up to ``limit`` tombstones whose version timestamp is
        below ``older_than_ts`` (an HLC timestamp, ms << 16), oldest first; live records are
        never touched. Returns how many went; fewer than ``limit`` means none is left."""

    @abstractmethod
    def get_meta(self, name: str) -> bytes | None:
        """A small named blob the node keeps beside its data (its membership, its clock)."""

    @abstractmethod
    def set_meta(self, name: str, value: bytes) -> None:
        """Durably replace the named blob."""

    # Hints (hinted handoff): durable like records, kept apart from them.

    @abstractmethod
    def add_hints(self, hints: Iterable[Hint]) -> int:
        """Store hints durably in one transaction (their ``hint_id`` is ignored and assigned);
        returns how many were stored."""

    @abstractmethod
    def hints_for(self, target: str, *, limit: int = 1000) -> list[Hint]:
        """The oldest hints for ``target``, at most ``limit``, oldest first."""

    @abstractmethod
    def delete_hints(self, hint_ids: Iterable[int]) -> int:
        """Forget these hints (delivered or expired); returns how many."""

    @abstractmethod
    def hint_counts(self) -> dict[str, int]:
        """How many hints are held for each target."""

    @abstractmethod
    def expire_hints(self, created_before_ms: int) -> int:
        """Drop hints created before ``created_before_ms``; returns how many."""

    # Durability. The node's loop runs each poll cycle inside ``group_commit()`` and sends
    # its replies only after it returns, so one commit (one fsync under ``always``) covers
    # every write of the cycle and nothing is acknowledged before it is committed.

    @contextmanager
    def group_commit(self) -> Iterator[None]:
        """Make every write inside one transaction, committed on exit."""
        yield

    def sync(self) -> None:  # noqa: B027 - optional: a store without files has nothing to sync
        """Force what is committed to stable storage (the ``periodic`` fsync policy)."""

    def check(self) -> list[str]:
        """Verify the store's files: human-readable problems, empty when it is healthy.
        Slow (it reads everything): for ``zring check``, not for a running node."""
        return []

    @abstractmethod
    def close(self) -> None:
        """Release files and connections; the store is unusable afterwards."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
