"""Anti-entropy: two replicas compare hash trees of what they share and exchange only the
records under the leaves that differ (as Dynamo, Riak's AAE and Cassandra's repair do). Pure.

The tree of a replica pair covers the records both should hold (their positions' preference
lists contain both nodes). Its leaves are 4,096 segments of the position space (the top 12
bits of a position); a leaf's hash is the sum (mod 2**64) of its records' digests, so it is
independent of scan order; the root hashes the leaves. Equal roots end a session after one
message each way. Otherwise the initiator pulls the differing segments from the peer and asks
the peer to pull the same segments back, both keeping the newest version of each key.

Under the differing leaves the pair compares versions key by key (the peer sends each
key's version, not its value), then each side sends only the records the other lacks or holds
in an older version.

Trees and version lists are built a page of records at a time, between other work, so one
over a million records does not stall the node's loop (or its heartbeats).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

import xxhash

from zring.ring import HashRing
from zring.storage.base import Record, Store
from zring.versions import Version

__all__ = ["SEGMENT_BITS", "SEGMENTS", "TreeBuilder", "VersionCollector", "record_digest",
           "segment_intervals", "differing_segments", "keys_to_exchange", "RepairSession"]

SEGMENT_BITS = 12
SEGMENTS = 1 << SEGMENT_BITS
_SEGMENT_SHIFT = 64 - SEGMENT_BITS
_MASK64 = (1 << 64) - 1
_xxh3_64 = xxhash.xxh3_64_intdigest


def record_digest(record: Record) -> int:
    """What a replica pair must agree on for one key: key, version and tombstone-ness."""
    flag = b"\x00" if record.value is None else b"\x01"
    return _xxh3_64(b"%s\x00%d\x00%s\x00%s" % (record.key.encode("utf-8", "surrogatepass"),
                                               record.version.timestamp,
                                               record.version.node_id.encode("utf-8"), flag))


def segment_intervals(segments: list[int]) -> list[tuple[int, int]]:
    """Inclusive position intervals of these segments, adjacent ones merged."""
    intervals: list[tuple[int, int]] = []
    for segment in sorted(set(segments)):
        low, high = segment << _SEGMENT_SHIFT, ((segment + 1) << _SEGMENT_SHIFT) - 1
        if intervals and intervals[-1][1] + 1 == low:
            intervals[-1] = (intervals[-1][0], high)
        else:
            intervals.append((low, high))
    return intervals


def differing_segments(ours: array, theirs: array) -> list[int]:
    return [s for s in range(SEGMENTS) if ours[s] != theirs[s]]


def shared(ring: HashRing, replicas: int, a: str, b: str) -> Callable[[int], bool]:
    """Whether a position's preference list holds both nodes."""
    def both(position: int) -> bool:
        nodes = ring.get_nodes_at(position, replicas)
        return a in nodes and b in nodes
    return both


@dataclass
class TreeBuilder:
    """Leaf hashes over this node's records shared with ``peer``, built page by page."""

    store: Store
    belongs: Callable[[int], bool]
    page_records: int
    leaves: array = field(default_factory=lambda: array("Q", bytes(8 * SEGMENTS)))
    records: int = 0
    done: bool = False
    _after: int | None = None

    def step(self) -> None:
        """Hash one page of records; sets ``done`` after the last."""
        if self.done:
            return
        page = self.store.scan_range(0, _MASK64, after=self._after, limit=self.page_records)
        leaves = self.leaves
        for record in page:
            if self.belongs(record.position):
                segment = record.position >> _SEGMENT_SHIFT
                leaves[segment] = (leaves[segment] + record_digest(record)) & _MASK64
                self.records += 1
        if len(page) < self.page_records:
            self.done = True
        else:
            self._after = page[-1].position

    def root(self) -> int:
        return _xxh3_64(self.leaves.tobytes())


@dataclass
class VersionCollector:
    """Key -> version of this node's shared records in ``intervals``, page by page."""

    store: Store
    intervals: list[tuple[int, int]]
    belongs: Callable[[int], bool]
    page_records: int
    versions: dict[str, Version] = field(default_factory=dict)
    done: bool = False
    _index: int = 0
    _after: int | None = None

    def step(self) -> None:
        if self._index >= len(self.intervals):
            self.done = True
            return
        low, high = self.intervals[self._index]
        page = self.store.scan_range(low, high, after=self._after, limit=self.page_records)
        for record in page:
            if self.belongs(record.position):
                self.versions[record.key] = record.version
        if len(page) < self.page_records:
            self._index += 1
            self._after = None
            self.done = self._index >= len(self.intervals)
        else:
            self._after = page[-1].position


def keys_to_exchange(ours: dict[str, Version],
                     theirs: dict[str, Version]) -> tuple[list[str], list[str]]:
    """(keys to fetch from the peer, keys to send it): whoever holds the newer version."""
    fetch = [key for key, version in theirs.items()
             if key not in ours or version > ours[key]]
    send = [key for key, version in ours.items()
            if key not in theirs or version > theirs[key]]
    return fetch, send


@dataclass
class RepairSession:
    """The initiator's side of one repair with one peer."""

    peer: str
    ring_fingerprint: int
    tree: TreeBuilder
    started_at: float
    peer_leaves: array | None = None
    peer_root: int | None = None
    segments: list[int] | None = None      # differing segments, once both trees are known
    phase: str = "hashing"                 # hashing -> comparing -> exchanging -> done|failed
    ours: VersionCollector | None = None
    theirs: dict[str, Version] = field(default_factory=dict)
    theirs_done: bool = False
    records_pulled: int = 0
    records_pushed: int = 0
    bytes_exchanged: int = 0
    error: str = ""
