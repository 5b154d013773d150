"""The replica side: records written and read for a coordinator (a peer, or a token-aware
client coordinating its own quorum), hints kept for a peer, and pages of a range for a node
that streams it."""

from __future__ import annotations

from collections.abc import Callable

from zring.core.batching import BATCH_MAX_BYTES, MAX_BATCH_KEYS, encoded_size
from zring.core.clocks import NodeClock
from zring.core.context import NodeContext, Part
from zring.core.effects import Effect, Reply, ok
from zring.core.topology import Topology
from zring.errors import InvalidRequest, NotCoordinated, ProtocolError
from zring.hashing import key_position
from zring.protocol import Message, MsgType, record_from_wire, record_to_wire
from zring.storage.base import Hint, Record, record_size

__all__ = ["Replica"]

# a pull asks for stream_intervals_per_pull intervals, a repair for its differing segments
MAX_SCAN_INTERVALS = 65_536


class Replica(Part):
    def __init__(self, ctx: NodeContext, clock: NodeClock, topology: Topology,
                 ready: Callable[[float], bool]) -> None:
        self.ctx = ctx
        self.clock = clock
        self.topology = topology
        self.ready = ready   # whether the node coordinates reads and writes yet
        self.handlers = {
            MsgType.DIRECT_WRITE: self._on_direct_write,
            MsgType.DIRECT_READ: self._on_direct_read,
            MsgType.DIRECT_READ_MANY: self._on_direct_read_many,
            MsgType.DIRECT_WRITE_MANY: self._on_direct_write_many,
            MsgType.REPLICA_WRITE: self._on_replica_write,
            MsgType.REPLICA_READ: self._on_replica_read,
            MsgType.REPLICA_READ_MANY: self._on_replica_read_many,
            MsgType.HINT_WRITE: self._on_hint_write,
            MsgType.RANGE_PULL: self._on_range_pull,
        }

    def _on_replica_write(self, route, message: Message, now: float) -> list[Effect]:
        """Records from a peer. A client write's (``cond``) is taken only where we hold no
        newer version; the reply names the others. Other records (read repair, hints,
        repair) keep the newer of the two, as every copy of a key does."""
        self.ctx.check_serving()
        items = message.body["records"]
        self._check_record_sizes(items)
        received, refused = self._take(items, bool(message.body.get("cond")), now)
        body = {"received": received}
        if refused:
            body["newer"] = refused
        return [ok(route, message.request_id, body)]

    def _take(self, items: list, cond: bool, now: float) -> tuple[int, list]:
        """Store wire records (the store checks each one's fields), after checking their
        newest timestamp against our clock. ``cond``: a client write, each record taken
        only where we hold no newer version of its key; otherwise the newer of the two
        copies stays. Returns (records taken, [[index, timestamp, writer] of each refused
        record and the newer version held])."""
        newest = max((item[2] for item in items if type(item[2]) is int), default=None)
        if newest is not None:
            self.clock.check_peer_timestamp(newest, now)
        if cond:
            answers = self.ctx.store.write_if_newer(items)
            refused = [[index, *held] for index, held in enumerate(answers) if held is not None]
            received = len(items) - len(refused)
            if refused:
                self.ctx.stats["replica_writes_refused_newer"] += len(refused)
        else:
            (received, _), refused = self.ctx.store.put_wire(items), []
        if newest is not None:
            self.clock.hlc.observe(newest)
            self.clock.note_stamp(newest)
        return received, refused

    # -------------------------------------------------- a client coordinating its own quorum

    def _direct_key(self, body: dict, now: float) -> str:
        """The key of a client-coordinated request, if we take it (see _direct_keys)."""
        return self._direct_keys(body, [body["key"]], now)[0]

    def _direct_keys(self, body: dict, keys: list, now: float) -> list:
        """The keys of a client-coordinated request, if we take it: we must be one of each
        key's ``n`` replicas on the ring the client routes by, with no ring change under
        way (then each key has one preference list, and the client's quorum is the one
        every coordinator counts) and ready (a restarted node may hold an old ring).
        Anything else is a node's to coordinate (with write sets, hints, spares)."""
        self.ctx.check_serving()
        keys = [self.ctx.check_key(key) for key in keys]
        n = body["n"]
        if not 1 <= n <= 64:
            raise InvalidRequest(f"n={n} must be between 1 and 64")
        topology = self.topology
        ring = topology.ring
        me = self.ctx.node_id
        if ring.fingerprint() != body["ring"]:
            why = "the client's ring is not ours"
        elif not topology.steady():
            why = "a ring change is under way"
        elif not self.ready(now):
            why = f"{me} is starting"
        elif me not in ring or (len(ring) > n and  # else every member holds every key
                                any(me not in ring.get_nodes_at(key_position(key), n)
                                    for key in keys)):
            why = f"{me} is not one of the {n} replicas of every key asked"
        else:
            return keys
        self.ctx.stats["direct_refused"] += 1
        raise NotCoordinated(f"{why}: send the request to a node to coordinate",
                             ring=ring.fingerprint())

    def _on_direct_write(self, route, message: Message, now: float) -> list[Effect]:
        """A client's write of a key to us, one of its replicas: stamped by the client,
        taken unless we hold a newer version (the reply then names it, as a coordinator's
        replica write does), after the commit. ``cond`` False: a read's write-back, which
        keeps the newer of the two copies."""
        body = message.body
        key = self._direct_key(body, now)
        value, ts, writer = body["value"], body["ts"], body["writer"]
        if value is not None and len(value) > self.ctx.config.max_value_bytes:
            raise InvalidRequest(f"value of {len(value)} bytes exceeds the limit of "
                                 f"{self.ctx.config.max_value_bytes}")
        if not ts < 1 << 63 or not 0 < len(writer) <= 256:
            raise InvalidRequest("a write's ts must be an int in [0, 2**63) with a writer id "
                                 "of 1 to 256 characters")
        _, refused = self._take([[key, value, ts, writer]], body.get("cond", True), now)
        self.ctx.stats["direct_writes"] += 1
        reply = {"stored": not refused}
        if refused:
            reply["newer"] = refused[0][1:]
        return [ok(route, message.request_id, reply)]

    def _on_direct_read(self, route, message: Message, now: float) -> list[Effect]:
        """A client's read of our copy of a key (it counts its own quorum)."""
        key = self._direct_key(message.body, now)
        self.ctx.stats["direct_reads"] += 1
        return [ok(route, message.request_id, {"record": self.ctx.store.get_wire(key)},
                   only_reads=True)]

    def _on_direct_read_many(self, route, message: Message, now: float) -> list[Effect]:
        """A client's read of our copies of many keys (it counts each key's quorum)."""
        keys = message.body["keys"]
        if len(keys) > MAX_BATCH_KEYS or any(k.__class__ is not str for k in keys):
            raise ProtocolError(f"keys must be at most {MAX_BATCH_KEYS} strings")
        keys = self._direct_keys(message.body, keys, now)
        wires = self.ctx.store.get_wire_many(keys)
        if encoded_size(wires) > BATCH_MAX_BYTES:   # the client has a node read them
            raise InvalidRequest("these records are too large for one reply")
        self.ctx.stats["direct_reads"] += len(keys)
        return [ok(route, message.request_id, {"records": wires}, only_reads=True)]

    def _on_direct_write_many(self, route, message: Message, now: float) -> list[Effect]:
        """A client's writes of many keys to us, a replica of each: each taken unless we
        hold a newer version of its key; the reply names the refused, after the commit.
        Any bad item refuses the whole frame (the client has a node coordinate it, which
        tells each key's error)."""
        body = message.body
        items, writer = body["items"], body["writer"]
        if len(items) > MAX_BATCH_KEYS or not 0 < len(writer) <= 256:
            raise InvalidRequest(f"at most {MAX_BATCH_KEYS} items, and a writer id of 1 to "
                                 "256 characters")
        max_value = self.ctx.config.max_value_bytes
        for item in items:
            if item.__class__ is not list or len(item) != 3 or item[1].__class__ not in (
                    bytes, str) or item[2].__class__ is not int or not 0 <= item[2] < 1 << 63:
                raise InvalidRequest("an item must be [key, value, ts]")
            if len(item[1]) > max_value:
                raise InvalidRequest(f"a value exceeds the limit of {max_value} bytes")
        keys = self._direct_keys(body, [item[0] for item in items], now)
        if not items:
            return [ok(route, message.request_id, {"received": 0})]
        wires = [[key, item[1], item[2], writer] for key, item in zip(keys, items, strict=True)]
        received, refused = self._take(wires, True, now)
        reply = {"received": received}
        if refused:
            reply["newer"] = refused
        self.ctx.stats["direct_writes"] += len(items)
        return [ok(route, message.request_id, reply)]

    # -------------------------------------------------------------- records

    def _check_record_sizes(self, items: list) -> None:
        max_value = self.ctx.config.max_value_bytes
        for item in items:
            if item.__class__ is not list or len(item) != 4:
                raise ProtocolError("a record must be [key, value, timestamp, writer]")
            key, value = item[0], item[1]
            if (key.__class__ is str and self.ctx.key_too_long(key)) or (
                    value is not None and hasattr(value, "__len__")
                    and len(value) > max_value):
                raise InvalidRequest("record exceeds the key or value size limit")

    def _records_from_peer(self, items: list, now: float) -> list[Record]:
        records = []
        for item in items:
            record = record_from_wire(item)
            if len(record.key.encode("utf-8", "surrogatepass")) > self.ctx.config.max_key_bytes or (
                    record.value is not None
                    and len(record.value) > self.ctx.config.max_value_bytes):
                raise InvalidRequest("record exceeds the key or value size limit")
            records.append(record)
        if records:
            newest = max(r.version.timestamp for r in records)
            self.clock.check_peer_timestamp(newest, now)
            self.clock.hlc.observe(newest)
            self.clock.note_stamp(newest)
        return records

    def _on_replica_read(self, route, message: Message, now: float) -> list[Effect]:
        self.ctx.check_serving()
        record = self.ctx.store.get(message.body["key"])
        body = {"record": None if record is None else record_to_wire(record)}
        return [ok(route, message.request_id, body, only_reads=True)]

    def _on_replica_read_many(self, route, message: Message, now: float) -> list[Effect]:
        self.ctx.check_serving()
        keys = message.body["keys"]
        if len(keys) > MAX_BATCH_KEYS or any(k.__class__ is not str for k in keys):
            raise ProtocolError(f"keys must be at most {MAX_BATCH_KEYS} strings")
        wires = self.ctx.store.get_wire_many(keys)
        if encoded_size(wires) > BATCH_MAX_BYTES:  # the coordinator reads these one by one
            raise InvalidRequest("these records are too large for one reply")
        return [Reply(route, Message(MsgType.OK, message.request_id, {"records": wires}),
                      only_reads=True)]

    def _on_hint_write(self, route, message: Message, now: float) -> list[Effect]:
        target = message.body["target"]
        records = self._records_from_peer(message.body["records"], now)
        stored = self.ctx.store.add_hints(Hint(0, target, record, int(now * 1000))
                                      for record in records)
        self.ctx.stats["hints_stored"] += stored
        return [Reply(route, Message(MsgType.OK, message.request_id, {"stored": stored}))]

    def _on_range_pull(self, route, message: Message, now: float) -> list[Effect]:
        """A page of our records in the given intervals, after a cursor position."""
        self.ctx.check_serving()  # a node that left is wiping its store: its pages are partial
        body = message.body
        limit = min(max(body["limit"], 1), self.ctx.config.stream_batch_records)
        records, more, last = self.scan_intervals(body["intervals"], body.get("after"), limit,
                                                   None)
        reply = {"records": [record_to_wire(r) for r in records], "more": more, "last": last}
        return [ok(route, message.request_id, reply, only_reads=True)]

    def scan_intervals(self, intervals: list, after: int | None, limit: int, keep):
        """Up to ``limit`` scanned records (those ``keep`` accepts) in sorted ``intervals``
        after position ``after``; returns (records, more, last position scanned)."""
        if len(intervals) > MAX_SCAN_INTERVALS:
            raise InvalidRequest("too many intervals in one request")
        records: list[Record] = []
        scanned = size = 0
        last = None
        more = False
        for interval in intervals:
            if (not isinstance(interval, list) or len(interval) != 2
                    or any(type(v) is not int or not 0 <= v < 1 << 64 for v in interval)):
                raise InvalidRequest("intervals must be [low, high] position pairs")
            low, high = interval
            if after is not None and high <= after:
                continue
            # scan_range never splits records sharing one position across pages, nor do we:
            # the cursor is a position
            page = self.ctx.store.scan_range(low, high, after=after, limit=limit - scanned)
            for index, record in enumerate(page):
                scanned += 1
                last = record.position
                if keep is None or keep(record.position):
                    records.append(record)
                    size += record_size(record)
                following = page[index + 1] if index + 1 < len(page) else None
                if size >= self.ctx.config.stream_batch_bytes and (
                        following is None or following.position != record.position):
                    more = True
                    break
            if more or scanned >= limit:
                more = True
                break
        return records, more, last
