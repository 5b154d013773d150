"""Moving ranges between nodes: paged pulls (join, takeover) and paged pushes (leave,
rebalance). Pure state machines: they ask the node to send requests and are fed the replies.

A pull asks one source for the records in a chunk of intervals, page by page, resuming after
the last position received; a page that fails is retried from the same cursor, so a pull
interrupted by a timeout neither skips nor (harmfully) repeats anything: applying a record
twice is a no-op under last-writer-wins.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from zring.protocol import Message, MsgType, ProtocolError, record_to_wire
from zring.storage.base import Record, Store, record_size

__all__ = ["RangePull", "RecordPush", "Interval", "chunk_intervals", "subtract_intervals"]

Interval = tuple[int, int]  # inclusive positions
# (node_id, msg_type, body, on_reply(node_id, reply | None, now) -> effects, now) -> effects
CallFn = Callable[[str, MsgType, dict, Callable, float], list]


def subtract_intervals(intervals: list[Interval], removed: list[Interval]) -> list[Interval]:
    """The parts of sorted, disjoint ``intervals`` outside every interval of ``removed``
    (inclusive bounds)."""
    cuts = sorted(removed)
    result: list[Interval] = []
    index = 0
    for low, high in sorted(intervals):
        while index < len(cuts) and cuts[index][1] < low:
            index += 1
        start = low
        scan = index
        while scan < len(cuts) and cuts[scan][0] <= high and start <= high:
            cut_low, cut_high = cuts[scan]
            if cut_low > start:
                result.append((start, cut_low - 1))
            start = max(start, cut_high + 1)
            scan += 1
        if start <= high:
            result.append((start, high))
    return result


def chunk_intervals(intervals: list[Interval], per_chunk: int) -> list[list[Interval]]:
    ordered = sorted(set(intervals))
    return [ordered[i:i + per_chunk] for i in range(0, len(ordered), per_chunk)] or []


@dataclass(slots=True)
class _Chunk:
    chunk_id: int
    source: str
    intervals: list[Interval]
    fallbacks: tuple[str, ...] = ()   # other holders to pull from instead if source is gone
    after: int | None = None          # resume cursor: last position received
    retry_at: float = 0.0
    _wire: list[list[int]] | None = None
    _highs: list[int] | None = None

    def remaining(self) -> list[list[int]]:
        """The chunk's intervals not yet passed by the cursor, as sent on the wire (every
        page request would otherwise carry the whole chunk again)."""
        if self._wire is None:
            self._wire = [list(i) for i in self.intervals]
            self._highs = [high for _, high in self.intervals]
        if self.after is None:
            return self._wire
        return self._wire[bisect_right(self._highs, self.after):]


# (source, fallbacks, intervals): pull ``intervals`` from ``source``; should it be gone, pull
# them from every fallback instead (any one of them may lack a write the others have)
PullGroup = tuple[str, tuple[str, ...], list[Interval]]


@dataclass
class RangePull:
    """Fetch each group's intervals from its source into ``store``.

    Chunks are numbered in a deterministic order, so ``progress()`` (chunks finished and the
    cursor of each one under way) saved with the records lets a pull restarted after a crash
    skip what it already has (``resume``)."""

    name: str
    store: Store
    groups: list[PullGroup]
    per_chunk: int
    page_records: int
    in_flight_per_source: int
    retry_s: float
    resume: dict | None = None
    call: CallFn | None = None   # sends a request: each reply issues the next pages itself
    records_received: int = 0
    bytes_received: int = 0
    cancelled: bool = False
    _queues: dict[str, deque[_Chunk]] = field(default_factory=dict)
    _in_flight: dict[str, int] = field(default_factory=dict)
    _copies: dict[int, int] = field(default_factory=dict)   # chunk id -> copies unfinished
    _done: set[int] = field(default_factory=set)
    _cursors: dict[int, int] = field(default_factory=dict)  # chunk id -> last position
    _gone: set[str] = field(default_factory=set)            # sources rerouted away from
    _dropped: set[str] = field(default_factory=set)         # sources given up on
    _failing: set[str] = field(default_factory=set)         # last request to it failed

    def __post_init__(self) -> None:
        resume = self.resume or {}
        done = set(resume.get("done", ()))
        cursors = {int(k): v for k, v in resume.get("cursors", {}).items()}
        self.records_received = resume.get("records", 0)
        self.bytes_received = resume.get("bytes", 0)
        chunk_id = 0
        for source, fallbacks, intervals in sorted(self.groups):
            for chunk in chunk_intervals(intervals, self.per_chunk):
                if chunk_id in done:
                    self._done.add(chunk_id)
                else:
                    after = cursors.get(chunk_id)
                    if after is not None:
                        self._cursors[chunk_id] = after
                    self._queue(_Chunk(chunk_id, source, chunk, tuple(fallbacks), after))
                    self._copies[chunk_id] = 1
                chunk_id += 1
        self.chunks = chunk_id

    def _queue(self, chunk: _Chunk, front: bool = False) -> None:
        queue = self._queues.setdefault(chunk.source, deque())
        self._in_flight.setdefault(chunk.source, 0)
        if front:
            queue.appendleft(chunk)
        else:
            queue.append(chunk)

    @property
    def done(self) -> bool:
        return not self.cancelled and not self._copies

    @property
    def resumed(self) -> int:
        """Chunks a resumed pull found finished already."""
        return len(self._done) if self.resume else 0

    def progress(self) -> dict:
        return {"done": sorted(self._done), "cursors": dict(self._cursors),
                "records": self.records_received, "bytes": self.bytes_received}

    def pending_sources(self) -> list[str]:
        return [s for s in self._queues if self._queues[s] or self._in_flight[s]]

    def failing(self, source: str) -> bool:
        """Its last page request went unanswered or failed (a busy node's late heartbeat
        alone is no reason to pull its ranges from every other replica)."""
        return source in self._failing

    def reroute(self, source: str) -> int:
        """``source`` is gone: pull its queued chunks from their fallbacks (chunks in flight
        follow when they fail). Chunks without fallbacks wait for it. Returns chunks moved."""
        self._gone.add(source)
        queue = self._queues.get(source, deque())
        kept: deque[_Chunk] = deque()
        moved = 0
        while queue:
            chunk = queue.popleft()
            if self._move_to_fallbacks(chunk):
                moved += 1
            else:
                kept.append(chunk)
        if source in self._queues:
            self._queues[source] = kept
        return moved

    def drop_source(self, source: str) -> int:
        """Give up on ``source`` (removed; other holders cover its data): its chunks count
        as finished. Returns how many queued chunks were abandoned."""
        self._dropped.add(source)
        queue = self._queues.get(source, deque())
        abandoned = len(queue)
        while queue:
            self._finish_copy(queue.popleft())
        return abandoned

    def _finish_copy(self, chunk: _Chunk) -> None:
        self._copies[chunk.chunk_id] -= 1
        if not self._copies[chunk.chunk_id]:
            del self._copies[chunk.chunk_id]
            self._cursors.pop(chunk.chunk_id, None)
            self._done.add(chunk.chunk_id)

    def _move_to_fallbacks(self, chunk: _Chunk) -> bool:
        fallbacks = [f for f in chunk.fallbacks if f not in self._gone]
        if not fallbacks:
            return False
        self._copies[chunk.chunk_id] += len(fallbacks) - 1
        self._cursors.pop(chunk.chunk_id, None)  # copies' cursors differ: none is resumable
        for fallback in fallbacks:
            self._queue(_Chunk(chunk.chunk_id, fallback, chunk.intervals, (), chunk.after))
        return True

    def pump(self, now: float) -> list:
        """Issue every page request allowed now."""
        effects: list = []
        if self.cancelled:
            return effects
        call = self.call
        for source, queue in list(self._queues.items()):
            while queue and self._in_flight[source] < self.in_flight_per_source:
                if queue[0].retry_at > now:
                    break
                chunk = queue.popleft()
                self._in_flight[source] += 1
                body = {"intervals": chunk.remaining(), "after": chunk.after,
                        "limit": self.page_records}
                effects += call(source, MsgType.RANGE_PULL, body,
                                lambda node, reply, t, c=chunk: self._page_arrived(c, reply, t),
                                now)
        return effects

    def next_retry_at(self) -> float | None:
        times = [q[0].retry_at for s, q in self._queues.items()
                 if q and self._in_flight[s] < self.in_flight_per_source]
        return min(times) if times else None

    def _retry(self, chunk: _Chunk, now: float) -> None:
        if chunk.source in self._dropped:
            self._finish_copy(chunk)
            return
        if chunk.source in self._gone and self._move_to_fallbacks(chunk):
            return
        chunk.retry_at = now + self.retry_s
        self._queue(chunk, front=True)

    def _page_arrived(self, chunk: _Chunk, reply: Message | None, now: float) -> list:
        self._in_flight[chunk.source] -= 1
        if self.cancelled:
            return []
        if reply is None or reply.type != MsgType.OK:
            self._failing.add(chunk.source)
            self._retry(chunk, now)
            return self.pump(now)
        try:
            received, size = self.store.put_wire(reply.body.get("records", []))
        except (ProtocolError, ValueError):
            self._failing.add(chunk.source)
            self._retry(chunk, now)
            return self.pump(now)
        self._failing.discard(chunk.source)
        self.records_received += received
        self.bytes_received += size
        last = reply.body.get("last")
        if reply.body.get("more") and type(last) is int and (
                chunk.after is None or last > chunk.after):
            chunk.after = last
            if self._copies.get(chunk.chunk_id) == 1:
                self._cursors[chunk.chunk_id] = last
            self._queue(chunk, front=True)
            return self.pump(now)
        self._finish_copy(chunk)
        return self.pump(now)


@dataclass(slots=True)
class _Page:
    """One page of a push: its records' copies still to be acknowledged, per target."""

    end: int                                  # position of its last record
    records: int
    size: int
    outstanding: dict[str, list[Record]]
    drops: list[Record]
    waiting: int = 0                          # sends awaiting an answer
    retry_at: float = 0.0


@dataclass
class RecordPush:
    """Page through this node's records and send each to the nodes ``route`` names, a few
    pages in flight; records ``drop`` approves are deleted locally once every target
    acknowledged them (and only if unchanged since).

    ``progress()`` is the position up to which every record was acknowledged (pages complete
    in order); a push created with it as ``resume`` (after a crash) starts from there."""

    name: str
    store: Store
    route: Callable[[Record], list[str]]
    drop: Callable[[Record], bool]
    page_records: int
    retry_s: float
    max_bytes: int = 8 * 1024 * 1024   # per page: each target's message stays well below
    resume: dict | None = None
    pages_in_flight: int = 3
    call: CallFn | None = None   # sends a request: each answer issues the next pages itself
    records_sent: int = 0     # record copies the targets acknowledged
    records_dropped: int = 0
    records_done: int = 0     # records scanned whose every copy was acknowledged
    bytes_done: int = 0
    cancelled: bool = False
    _after: int | None = None          # scan cursor
    _acked_after: int | None = None    # every record up to here is acknowledged
    _scan_done: bool = False
    _pages: deque[_Page] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if self.resume:
            self._after = self._acked_after = self.resume.get("after")
            self.records_done = self.resume.get("records", 0)
            self.bytes_done = self.resume.get("bytes", 0)

    @property
    def done(self) -> bool:
        return self._scan_done and not self._pages

    def progress(self) -> dict:
        return {"after": self._acked_after, "records": self.records_done,
                "bytes": self.bytes_done}

    def pump(self, now: float) -> list:
        if self.cancelled:
            return []
        effects: list = []
        for page in self._pages:  # pages whose sends failed: resend what is left
            if page.outstanding and not page.waiting and now >= page.retry_at:
                effects += self._send(page, now)
        while not self._scan_done and len(self._pages) < self.pages_in_flight:
            page = self._read_page()
            if page is None:
                break
            self._pages.append(page)
            effects += self._send(page, now)
        self._complete_pages()
        return effects

    def _read_page(self) -> _Page | None:
        records = self.store.scan_range(0, (1 << 64) - 1, after=self._after,
                                        limit=self.page_records)
        if not records:
            self._scan_done = True
            return None
        outstanding: dict[str, list[Record]] = {}
        drops: list[Record] = []
        count = size = 0
        for index, record in enumerate(records):
            for target in self.route(record):
                outstanding.setdefault(target, []).append(record)
            if self.drop(record):
                drops.append(record)
            self._after = record.position
            count += 1
            size += record_size(record)
            following = records[index + 1] if index + 1 < len(records) else None
            if following is None:
                self._scan_done = len(records) < self.page_records
            elif size >= self.max_bytes and following.position != record.position:
                break  # a byte-sized page: the rest is read again next time
        return _Page(self._after, count, size, outstanding, drops)

    def _complete_pages(self) -> None:
        while self._pages and not self._pages[0].outstanding and not self._pages[0].waiting:
            page = self._pages.popleft()
            if page.drops:  # a newer write since the page was read stays
                self.records_dropped += self.store.delete_keys(
                    r.key for r in page.drops if self._unchanged(r))
            self.records_done += page.records
            self.bytes_done += page.size
            self._acked_after = page.end

    def _unchanged(self, record: Record) -> bool:
        current = self.store.get(record.key)
        return current is not None and current.version == record.version

    def next_retry_at(self) -> float | None:
        times = [p.retry_at for p in self._pages if p.outstanding and not p.waiting]
        return min(times) if times else None

    def _send(self, page: _Page, now: float) -> list:
        effects: list = []
        for target, records in list(page.outstanding.items()):
            page.waiting += 1
            body = {"records": [record_to_wire(r) for r in records]}
            effects += self.call(target, MsgType.REPLICA_WRITE, body,
                                 lambda node, reply, t, p=page, n=len(records):
                                 self._copies_answered(p, node, reply, t, n), now)
        return effects

    def _copies_answered(self, page: _Page, target: str, reply: Message | None, now: float,
                count: int) -> list:
        page.waiting -= 1
        if self.cancelled:
            return []
        if reply is not None and reply.type == MsgType.OK:
            page.outstanding.pop(target, None)
            self.records_sent += count
            self._complete_pages()
            return self.pump(now)
        page.retry_at = now + self.retry_s
        return []
