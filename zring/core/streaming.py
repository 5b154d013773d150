"""Moving ranges between nodes: paged pulls (join, takeover) and paged pushes (leave,
rebalance). Pure state machines: they ask the node to send requests and are fed the replies.

A pull asks one source for the records in a chunk of intervals, page by page, resuming after
the last position received; a page that fails is retried from the same cursor, so a pull
interrupted by a timeout neither skips nor (harmfully) repeats anything: applying a record
twice is a no-op under last-writer-wins.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from zring.protocol import Message, MsgType, ProtocolError, record_from_wire, record_to_wire
from zring.storage.base import Record, Store

__all__ = ["RangePull", "RecordPush", "Interval", "chunk_intervals"]

Interval = tuple[int, int]  # inclusive positions
# (node_id, msg_type, body, on_reply(node_id, reply | None, now) -> effects) -> effects
CallFn = Callable[[str, MsgType, dict, Callable], list]


def chunk_intervals(intervals: list[Interval], per_chunk: int) -> list[list[Interval]]:
    ordered = sorted(set(intervals))
    return [ordered[i:i + per_chunk] for i in range(0, len(ordered), per_chunk)] or []


@dataclass(slots=True)
class _Chunk:
    source: str
    intervals: list[Interval]
    after: int | None = None       # resume cursor: last position received
    retry_at: float = 0.0


@dataclass
class RangePull:
    """Fetch ``intervals`` from each source into ``store``."""

    name: str
    store: Store
    sources: dict[str, list[Interval]]
    per_chunk: int
    page_records: int
    in_flight_per_source: int
    retry_s: float
    records_received: int = 0
    bytes_received: int = 0
    cancelled: bool = False
    _queues: dict[str, deque[_Chunk]] = field(default_factory=dict)
    _in_flight: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for source, intervals in self.sources.items():
            chunks = chunk_intervals(intervals, self.per_chunk)
            if chunks:
                self._queues[source] = deque(_Chunk(source, c) for c in chunks)
                self._in_flight[source] = 0

    @property
    def done(self) -> bool:
        return not self.cancelled and not any(self._queues.values()) and not any(
            self._in_flight.values())

    def pending_sources(self) -> list[str]:
        return [s for s in self._queues if self._queues[s] or self._in_flight[s]]

    def drop_source(self, source: str) -> int:
        """Give up on a source (it is gone); returns how many chunks were abandoned."""
        abandoned = len(self._queues.get(source, ()))
        if source in self._queues:
            self._queues[source].clear()
        return abandoned

    def pump(self, call: CallFn, now: float) -> list:
        """Issue every page request allowed now."""
        effects: list = []
        if self.cancelled:
            return effects
        for source, queue in self._queues.items():
            while queue and self._in_flight[source] < self.in_flight_per_source:
                if queue[0].retry_at > now:
                    break
                chunk = queue.popleft()
                self._in_flight[source] += 1
                body = {"intervals": [list(i) for i in chunk.intervals], "after": chunk.after,
                        "limit": self.page_records}
                effects += call(source, MsgType.RANGE_PULL, body,
                                lambda node, reply, t, c=chunk: self._on_page(c, reply, t))
        return effects

    def next_retry_at(self) -> float | None:
        times = [q[0].retry_at for s, q in self._queues.items()
                 if q and self._in_flight[s] < self.in_flight_per_source]
        return min(times) if times else None

    def _on_page(self, chunk: _Chunk, reply: Message | None, now: float) -> list:
        self._in_flight[chunk.source] -= 1
        if self.cancelled:
            return []
        queue = self._queues[chunk.source]
        if reply is None or reply.type != MsgType.OK:
            chunk.retry_at = now + self.retry_s
            queue.appendleft(chunk)
            return []
        try:
            records = [record_from_wire(item) for item in reply.body.get("records", [])]
        except ProtocolError:
            chunk.retry_at = now + self.retry_s
            queue.appendleft(chunk)
            return []
        if records:
            self.store.put_many(records)
            self.records_received += len(records)
            self.bytes_received += sum(_record_size(r) for r in records)
        if reply.body.get("more") and records:
            chunk.after = records[-1].position
            queue.appendleft(chunk)
        return []


@dataclass
class RecordPush:
    """Page through this node's records and send each to the nodes ``route`` names;
    records ``drop`` approves are deleted locally once every target acknowledged them."""

    name: str
    store: Store
    route: Callable[[Record], list[str]]
    drop: Callable[[Record], bool]
    page_records: int
    retry_s: float
    max_bytes: int = 8 * 1024 * 1024   # per batch: each target's message stays well below
    records_sent: int = 0
    records_dropped: int = 0
    cancelled: bool = False
    _after: int | None = None
    _scan_done: bool = False
    _outstanding: dict[str, list[Record]] = field(default_factory=dict)
    _waiting: int = 0
    _page_drops: list[Record] = field(default_factory=list)
    _retry_at: float = 0.0

    @property
    def done(self) -> bool:
        return self._scan_done and self._waiting == 0 and not self._outstanding

    def pump(self, call: CallFn, now: float) -> list:
        effects: list = []
        if self.cancelled or self._waiting or now < self._retry_at:
            return effects
        if self._outstanding:  # a page whose sends failed: resend what is left
            return self._send_outstanding(call)
        if self._page_drops:
            self.records_dropped += self.store.delete_keys(r.key for r in self._page_drops
                                                           if self._unchanged(r))
            self._page_drops = []
        while not self._scan_done and not self._outstanding:
            page = self.store.scan_range(0, (1 << 64) - 1, after=self._after,
                                         limit=self.page_records)
            if not page:
                self._scan_done = True
                break
            size = 0
            for index, record in enumerate(page):
                targets = self.route(record)
                for target in targets:
                    self._outstanding.setdefault(target, []).append(record)
                if self.drop(record):
                    self._page_drops.append(record)
                self._after = record.position
                size += _record_size(record)
                following = page[index + 1] if index + 1 < len(page) else None
                if following is None:
                    self._scan_done = len(page) < self.page_records
                elif size >= self.max_bytes and following.position != record.position:
                    break  # a byte-sized batch: the rest of the page is read again next time
            if not self._outstanding and self._page_drops:
                self.records_dropped += self.store.delete_keys(r.key for r in self._page_drops)
                self._page_drops = []
        return self._send_outstanding(call)

    def _unchanged(self, record: Record) -> bool:
        current = self.store.get(record.key)
        return current is not None and current.version == record.version

    def next_retry_at(self) -> float | None:
        if self._outstanding and not self._waiting:
            return self._retry_at
        return None

    def _send_outstanding(self, call: CallFn) -> list:
        effects: list = []
        for target, records in list(self._outstanding.items()):
            self._waiting += 1
            body = {"records": [record_to_wire(r) for r in records]}
            effects += call(target, MsgType.REPLICA_WRITE, body,
                            lambda node, reply, t, n=len(records): self._on_ack(node, reply, t, n))
        return effects

    def _on_ack(self, target: str, reply: Message | None, now: float, count: int) -> list:
        self._waiting -= 1
        if reply is not None and reply.type == MsgType.OK:
            self._outstanding.pop(target, None)
            self.records_sent += count
        else:
            self._retry_at = now + self.retry_s
        return []


def _record_size(record: Record) -> int:
    value = record.value
    size = len(record.key)
    if value is not None:
        size += len(value)
    return size
