"""MGET and MPUT: a client batch's keys read or written with one request per replica,
its own store's share done a loop cycle later (so every replica works at once), and any
key the fast path cannot take handed to the single-key path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from zring.core.batching import BATCH_MAX_BYTES, MAX_BATCH_KEYS, encoded_size
from zring.core.clocks import NodeClock
from zring.core.context import Handler, NodeContext, Part
from zring.core.coordinator import Coordinator
from zring.core.effects import Effect, Reply, Slot, answer, error, error_entry
from zring.core.hints import Hints
from zring.core.quorum import batch_write_outcome
from zring.core.topology import Topology
from zring.errors import InvalidRequest, ProtocolError, StorageError, ZringError, error_from_code
from zring.hashing import key_position
from zring.protocol import (
    Message,
    MsgType,
    is_read_wire,
    message_to_wire,
    record_from_wire,
    validate,
    wire_read_body,
)
from zring.storage.base import Hint

__all__ = ["MultiKey"]

# a bound on a batch result's encoded size besides its value (flags, version, node ids)
_RESULT_SIZE_BOUND = 1024


@dataclass(slots=True)
class _Batch:
    """A client's MGET/MPUT: one reply once every key's own operation has answered."""

    route: tuple[bytes, ...]
    request_id: int
    results: list
    pending: int
    closed: bool = False    # answered (or failed as a whole): late key replies are dropped
    writes: bool = False    # some result acknowledges a write (else it stands should the
    #                         loop cycle's commit fail: see effects.Reply.only_reads)


@dataclass(slots=True)
class _MultiRead:
    """An MGET's keys read in one pass per replica (index -> replies so far)."""

    batch: _Batch
    quorum: int
    keys: list
    n: int | None           # as the client sent them, for keys that take the single path
    r: int | None
    # index -> {node: its wire record [key, value, ts, writer] or None}
    replies: dict[int, dict[str, list | None]] = field(default_factory=dict)
    replicas: dict[int, list[str]] = field(default_factory=dict)

    def request(self, index: int) -> Message:
        return Message(MsgType.GET, 0, {"key": self.keys[index], "n": self.n, "r": self.r})


@dataclass(slots=True)
class _MultiWrite:
    """An MPUT's records sent once per replica (index -> acks, answers still due)."""

    batch: _Batch
    quorum: int
    items: list             # [key, value] or [key, value, ts] as the client sent them
    n: int | None           # as the client sent them, for keys that take the single path
    w: int | None
    writer: str | None
    wires: dict[int, list] = field(default_factory=dict)   # index -> its wire record
    replicas: dict[int, list[str]] = field(default_factory=dict)
    acks: dict[int, list[str]] = field(default_factory=dict)
    waiting: dict[int, int] = field(default_factory=dict)
    newer: dict[int, list] = field(default_factory=dict)   # index -> a refusal's version
    refused: dict[int, int] = field(default_factory=dict)  # index -> replicas that refused

    def request(self, index: int) -> Message:
        item = self.items[index]
        body = {"key": item[0], "value": item[1], "n": self.n, "w": self.w}
        if len(item) == 3:
            body["ts"], body["writer"] = item[2], self.writer
        return Message(MsgType.PUT, 0, body)


class MultiKey(Part):
    def __init__(self, ctx: NodeContext, topology: Topology, coordinator: Coordinator,
                 hints: Hints, clock: NodeClock) -> None:
        self.ctx = ctx
        self.topology = topology
        self.coordinator = coordinator
        self.hints = hints
        self.clock = clock
        # a batch key the fast path cannot take goes through the coordinator's handler
        self._single_key: dict[MsgType, Handler] = coordinator.handlers
        self.open_batches = 0   # client batches with keys still unanswered
        self.open_keys = 0      # their keys: they count towards max_pending_requests
        # a batch's own reads and writes, done one loop cycle later, once what it asked of
        # peers has left (both stores work at once): (ticks finished when queued, batch,
        # its request type, the work)
        self._own_work: list[tuple[int, _Batch, str, Callable[[float], list[Effect]]]] = []
        self.handlers = {MsgType.MGET: self._on_mget, MsgType.MPUT: self._on_mput}

    def tick(self, now: float) -> list[Effect]:
        """What earlier cycles queued (work queued from here on waits for the next tick)."""
        return self.run_own_work(now, self.ctx.ticks) if self._own_work else []

    def next_deadline(self, now: float) -> float | None:
        return now if self._own_work else None

    def own_work_queued(self) -> int:
        return len(self._own_work)

    def _on_mget(self, route, message: Message, now: float) -> list[Effect]:
        """Many reads at once: each replica asked once for all its keys (one local lookup
        pass, one REPLICA_READ_MANY per peer); records stay wire lists throughout. A key
        whose replicas fail falls back to the single-key path (stand-bys, its own error)."""
        keys = message.body["keys"]
        raw_n, raw_r = message.body.get("n"), message.body.get("r")
        n, quorum = self.ctx.quorum_args(message.body, "r", self.ctx.config.read_quorum)
        return self._run_batch(route, message, len(keys), lambda batch, effects: (
            self._start_mget(batch, effects, keys, raw_n, raw_r, n, quorum, now)))

    def _start_mget(self, batch: _Batch, effects: list[Effect], keys: list, raw_n,
                    raw_r, n: int, quorum: int, now: float) -> list[Effect]:
        me = self.ctx.node_id
        read = _MultiRead(batch, quorum, keys, raw_n, raw_r)
        by_target: dict[str, list[int]] = {}
        is_up, ring = self.ctx.members.is_up, self.topology.ring
        # every node holds every key (no more nodes than replicas): one list for all keys
        everywhere = ring.get_nodes_at(0, n) if len(ring) <= n else None
        asked_for: dict[tuple, list[str] | None] = {}   # preference list -> who is asked
        direct: list[int] = []    # R=1 keys we replicate: answered from our copy, no replies
        for index, key in enumerate(keys):
            if key.__class__ is not str or self.ctx.key_too_long(key):
                effects += self._single(batch, index, read.request(index), now)
                continue
            natural = everywhere or ring.get_nodes_at(key_position(key), n)
            replicas = tuple(natural)
            asked = asked_for.get(replicas, ())
            if asked == ():
                live = [x for x in natural if x == me or is_up(x, now)]
                # ourselves first, then peers in one fixed order: the keys of a batch share
                # as few peers as possible (one REPLICA_READ_MANY each)
                live.sort(key=self._read_preference)
                asked = asked_for[replicas] = live[:quorum] if len(live) >= quorum else None
            if asked is None:
                effects += self._single(batch, index, read.request(index), now)
                continue
            if quorum == 1 and asked[0] == me:  # our own copy is the answer
                direct.append(index)
                continue
            read.replies[index] = {}
            read.replicas[index] = natural
            for target in asked:
                by_target.setdefault(target, []).append(index)
        if direct:
            effects += self._answer_from_own_copies(read, direct)
        local = by_target.pop(me, [])
        if local and by_target:
            # the peers' reads leave with this cycle's effects; ours waits for the next
            # cycle, so both stores are read at the same time
            self._defer_own_work(read.batch, "MGET",
                                 lambda t: self._read_own_copies(read, local, t))
        elif local:
            effects += self._read_own_copies(read, local, now)
        for target, indexes in by_target.items():
            effects += self.ctx.calls.call(target, MsgType.REPLICA_READ_MANY,
                                           {"keys": [keys[i] for i in indexes]},
                                           lambda node, reply, t, ix=indexes: self._many_read(
                                               read, node, ix, reply, t), now)
        return effects

    def _read_own_copies(self, read: _MultiRead, indexes: list[int],
                         now: float) -> list[Effect]:
        """Our replies to an MGET's keys (those not answered or handed to the single-key
        path meanwhile)."""
        if read.batch.closed:
            return []
        indexes = [i for i in indexes if read.batch.results[i] is None and i in read.replies]
        effects: list[Effect] = []
        me = self.ctx.node_id
        for index, wire in zip(indexes, self.ctx.store.get_wire_many(
                [read.keys[i] for i in indexes]), strict=True):
            read.replies[index][me] = wire
            effects += self._multi_read_done(read, index, now)
        return effects

    def _defer_own_work(self, batch: _Batch, request_type: str,
                        work: Callable[[float], list[Effect]]) -> None:
        """Run ``work`` in the next loop cycle's tick, after this cycle's sends have left."""
        self._own_work.append((self.ctx.ticks, batch, request_type, work))

    def run_own_work(self, now: float, queued_before: int) -> list[Effect]:
        """The own reads and writes queued before ``queued_before`` ticks had finished."""
        due = [entry for entry in self._own_work if entry[0] < queued_before]
        if not due:
            return []
        self._own_work = [entry for entry in self._own_work if entry[0] >= queued_before]
        effects: list[Effect] = []
        for _, batch, request_type, work in due:
            try:
                effects += work(now)
            except Exception as exc:  # e.g. the store failed: the batch fails, as in a handler
                effects += self._fail_batch(batch, self.ctx.failure(exc, request_type))
        return effects

    def _fail_batch(self, batch: _Batch, exc: ZringError) -> list[Effect]:
        """A batch that cannot go on: one error reply (late key replies are dropped)."""
        if batch.closed:
            return []
        self._close_batch(batch)
        return [Reply(batch.route, error(batch.request_id, exc))]

    def _answer_from_own_copies(self, read: _MultiRead, indexes: list[int]) -> list[Effect]:
        """R=1 keys this node replicates: each answer is its own copy, as for a single GET
        (we are one of the key's replicas, so no ring hint)."""
        me, batch = self.ctx.node_id, read.batch
        results = batch.results
        wires = self.ctx.store.get_wire_many([read.keys[i] for i in indexes])
        for index, wire in zip(indexes, wires, strict=True):
            results[index] = wire_read_body(wire, [me])
        batch.pending -= len(indexes)
        return [] if batch.pending else self._finish_batch(batch)

    def _many_read(self, read: _MultiRead, node_id: str, indexes: list[int],
                      reply: Message | None, now: float) -> list[Effect]:
        wires = reply.body.get("records") if reply is not None and \
            reply.type == MsgType.OK else None
        if not (isinstance(wires, list) and len(wires) == len(indexes)
                and all(w is None or is_read_wire(w, read.keys[i])
                        for w, i in zip(wires, indexes, strict=True))):
            wires = None
        effects: list[Effect] = []
        results = read.batch.results
        # a clock from the future is refused (ours off: it cannot tell)
        bound = self.clock.read_bound(now)
        for position, index in enumerate(indexes):
            if results[index] is not None or index not in read.replies:
                continue  # answered, or already handed to the single-key path
            if wires is None:  # that replica failed: this key takes the careful path, once
                del read.replies[index]
                effects += self._single(read.batch, index, read.request(index), now)
                continue
            wire = wires[position]
            if wire is not None:
                if wire[2] > bound:   # from a clock that is off: never returned or observed
                    self.ctx.stats["future_timestamps_refused"] += 1
                    del read.replies[index]
                    effects += self._single(read.batch, index, read.request(index), now)
                    continue
                self.clock.hlc.observe(wire[2])
            read.replies[index][node_id] = wire
            effects += self._multi_read_done(read, index, now)
        return effects

    def _multi_read_done(self, read: _MultiRead, index: int, now: float) -> list[Effect]:
        replies = read.replies[index]
        if len(replies) < read.quorum or read.batch.results[index] is not None:
            return []
        wires = list(replies.values())
        first = wires[0]
        if any(w is None or first is None or w[2] != first[2] or w[3] != first[3]
               for w in wires[1:]) or (first is not None and not self.topology.sticks(
                   key_position(first[0]), len(read.replicas[index]), replies)):
            # the replicas disagree (or agree only in one ring of a change): the single-key
            # path writes the newest back to a write quorum before it answers (rare: a
            # write in flight or one that partly failed)
            del read.replies[index]
            return self._single(read.batch, index, read.request(index), now)
        body = self.coordinator.with_ring_hint(wire_read_body(first, list(replies)),
                                               read.replicas[index])
        return self._fill_result(read.batch, index, body)

    def _on_mput(self, route, message: Message, now: float) -> list[Effect]:
        """Many writes at once: while no ring change is under way and every replica is up
        (the common case), each replica gets one REPLICA_WRITE with all its records; any
        other key takes the single-key path (hints, joint quorums). Records stay wire lists
        ``[key, value, timestamp, writer]`` throughout."""
        items = message.body["items"]
        for item in items:
            if item.__class__ is not list or len(item) not in (2, 3):
                raise ProtocolError("an MPUT item must be [key, value] or [key, value, ts]")
        raw_n, raw_w = message.body.get("n"), message.body.get("w")
        writer = message.body.get("writer")
        n, quorum = self.ctx.quorum_args(message.body, "w", self.ctx.config.write_quorum)
        legacy = any(len(item) == 2 for item in items)
        bound = self.clock.check_for_writes(now, legacy) if items else 0
        return self._run_batch(route, message, len(items), lambda batch, effects: (
            self._start_mput(_MultiWrite(batch, quorum, items, raw_n, raw_w, writer), effects,
                             n, bound, now)))

    def _start_mput(self, write: _MultiWrite, effects: list[Effect], n: int, bound: int,
                    now: float) -> list[Effect]:
        me = self.ctx.node_id
        batch, quorum = write.batch, write.quorum
        by_target: dict[str, list[int]] = {}
        ring, is_up = self.topology.ring, self.ctx.members.is_up
        # no ring change under way: each key's one write set is its preference list
        steady = not self.topology.previous and not self.topology.future()
        all_up: dict[tuple, bool] = {}   # preference list -> every replica is up
        max_value, clock_ms = self.ctx.config.max_value_bytes, int(now * 1000)
        writer = write.writer
        client_writer = writer.__class__ is str and 0 < len(writer) <= 256
        for index, item in enumerate(write.items):
            key, value = item[0], item[1]
            if key.__class__ is not str or value.__class__ not in (bytes, str) or \
                    self.ctx.key_too_long(key) or len(value) > max_value:
                effects += self._single(batch, index, write.request(index), now)
                continue
            if len(item) == 3:
                ts = item[2]
                if ts.__class__ is not int or not 0 <= ts <= bound or not client_writer:
                    # refused by the single-key path, with the reason
                    effects += self._single(batch, index, write.request(index), now)
                    continue
            else:
                ts = None
            if steady:
                natural = ring.get_nodes_at(key_position(key), n)
            else:
                sets = self.topology.write_sets(key_position(key), n)
                natural = sets[0] if len(sets) == 1 else []
            replicas = tuple(natural)
            up = all_up.get(replicas)
            if up is None:
                up = all_up[replicas] = len(natural) >= quorum and all(
                    x == me or is_up(x, now) for x in natural)
            if not up:
                effects += self._single(batch, index, write.request(index), now)
                continue
            if ts is None:
                version = self.clock.hlc.version(clock_ms, me)
                if version.timestamp > bound:
                    effects += self._single(batch, index, write.request(index), now)
                    continue
                write.wires[index] = [key, value, version.timestamp, me]
                self.clock.note_stamp(version.timestamp)
            else:
                self.clock.hlc.observe(ts)
                self.clock.note_stamp(ts)
                write.wires[index] = [key, value, ts, writer]
            write.replicas[index] = natural
            write.acks[index] = []
            write.waiting[index] = len(natural)
            for target in natural:
                by_target.setdefault(target, []).append(index)
        wires = write.wires
        local = by_target.pop(me, None)
        if local and by_target:
            # the peers' writes leave with this cycle's effects; ours is made in the next
            # cycle, so all the replicas write at the same time
            self._defer_own_work(batch, "MPUT",
                                 lambda t: self._write_own_copies(write, local, t))
        elif local:
            effects += self._write_own_copies(write, local, now)
        for target, indexes in by_target.items():
            effects += self.ctx.calls.call(
                target, MsgType.REPLICA_WRITE,
                {"records": [wires[i] for i in indexes], "cond": True},
                lambda node, reply, t, ix=indexes: self._many_written(
                    write, node, ix, *batch_write_outcome(reply, len(ix)), t), now)
        return effects

    def _write_own_copies(self, write: _MultiWrite, indexes: list[int],
                          now: float) -> list[Effect]:
        """Our copies of an MPUT's records, written whether or not the batch has been
        answered meanwhile (the peers' acks may have made its quorums). If our store fails,
        we count as a replica that failed: the peers' writes have left, so each key's
        quorum decides (and no hint is kept in a store that is failing)."""
        wires = write.wires
        me = self.ctx.node_id
        try:
            answers = self.ctx.store.write_if_newer([wires[i] for i in indexes])
        except StorageError as exc:
            self.ctx.stats["own_writes_failed"] += len(indexes)
            self.ctx.log.error("own_write_failed", keys=len(indexes), error=str(exc))
            return self._many_written(write, me, indexes, False, {}, now, keep_hints=False)
        newer = {position: held for position, held in enumerate(answers) if held is not None}
        taken = [index for position, index in enumerate(indexes) if position not in newer]
        if taken:
            self.ctx.own_acks.add(self.ctx.ticks, lambda t: self._revoke_own_copies(
                write, taken, t))
        return self._many_written(write, me, indexes, True, newer, now)

    def _revoke_own_copies(self, write: _MultiWrite, indexes: list[int],
                           now: float) -> list[Effect]:
        """Our copies of these MPUT keys were not committed after all: they no longer count
        (a key answered already in this cycle is answered again, with the quorum left)."""
        me = self.ctx.node_id
        effects: list[Effect] = []
        results = write.batch.results
        for index in indexes:
            acks = write.acks[index]
            if me not in acks:
                continue
            acks.remove(me)
            if write.batch.closed:
                continue
            if results[index] is not None and "error" not in results[index]:
                results[index] = None   # filled this cycle: not sent yet
                write.batch.pending += 1
            effects += self._settle_multi_write(write, index)
        return effects

    def _many_written(self, write: _MultiWrite, node_id: str, indexes: list[int], ok: bool,
                       newer: dict[int, list], now: float,
                       keep_hints: bool = True) -> list[Effect]:
        """A replica's answer to the records at ``indexes``: ``ok`` with the positions it
        refused in ``newer`` (position -> the newer version it holds), or failed."""
        effects: list[Effect] = []
        waiting, acks = write.waiting, write.acks
        for position, index in enumerate(indexes):
            waiting[index] -= 1
            refused = newer.get(position)
            if refused is not None:
                held = write.newer.get(index)
                if held is None or refused > held:
                    write.newer[index] = refused
                write.refused[index] = write.refused.get(index, 0) + 1
            elif ok:
                acks[index].append(node_id)
            elif keep_hints:  # kept as a hint here, as a single write's coordinator does
                self.hints.keep([Hint(0, node_id, record_from_wire(write.wires[index]),
                                       int(now * 1000))])
            effects += self._settle_multi_write(write, index)
        return effects

    def _settle_multi_write(self, write: _MultiWrite, index: int) -> list[Effect]:
        """Answer one MPUT key once its quorum is made, or can no longer be."""
        if write.batch.results[index] is not None:
            return []
        acks = write.acks[index]
        if len(acks) >= write.quorum:
            wire = write.wires[index]
            body = self.coordinator.put_body([wire[2], wire[3]], acks, write.replicas[index])
            return self._fill_result(write.batch, index, body)
        refused = write.refused.get(index, 0)
        if refused and not acks and write.waiting[index] and \
                refused == len(write.replicas[index]) - write.waiting[index]:
            return []   # refused so far: the others may refuse too (applied nowhere)
        if len(acks) + write.waiting[index] < write.quorum:
            failure = self.coordinator.write_failure(
                write.items[index][0], write.quorum, acks, [], write.newer.get(index),
                all_refused=write.refused.get(index, 0) == len(write.replicas[index]))
            return self._fill_result(write.batch, index, error_entry(failure))
        return []

    def _read_preference(self, node_id: str) -> tuple[bool, str]:
        return node_id != self.ctx.node_id, node_id

    def _single(self, batch: _Batch, index: int, request: Message,
                now: float) -> list[Effect]:
        """One key of a batch through the single-key path; its reply fills its result."""
        self.ctx.stats["batch_keys_single_path"] += 1
        slot = Slot(lambda reply, only_reads: self._deliver(batch, index, reply, only_reads))
        try:
            validate(message_to_wire(request))  # each key and value as if sent alone
            return self._single_key[request.type](slot, request, now)
        except ZringError as exc:
            return answer(slot, error(0, exc))

    def _deliver(self, batch: _Batch, index: int, reply: Message,
                 only_reads: bool) -> list[Effect]:
        """A key's answer from the single-key path fills its result."""
        if not only_reads and reply.type == MsgType.OK:
            batch.writes = True
        body = reply.body if reply.type == MsgType.OK else error_entry(error_from_code(
            reply.body.get("code", "error"), reply.body.get("message", ""),
            reply.body.get("details")))
        return self._fill_result(batch, index, body)

    def _fill_result(self, batch: _Batch, index: int, body: dict) -> list[Effect]:
        if batch.closed or batch.results[index] is not None:
            return []
        batch.results[index] = body
        batch.pending -= 1
        return [] if batch.pending else self._finish_batch(batch)

    def _finish_batch(self, batch: _Batch) -> list[Effect]:
        """Every key answered: one reply with all the results."""
        self._close_batch(batch)
        # values dominate a result's size: encode to measure only when they come near
        bound = _RESULT_SIZE_BOUND * len(batch.results) + sum(
            encoded_bound(r.get("value")) for r in batch.results)
        if bound > BATCH_MAX_BYTES and (size := encoded_size(batch.results)) > BATCH_MAX_BYTES:
            # the reply could not be delivered: say so instead
            return [Reply(batch.route, error(batch.request_id, InvalidRequest(
                f"the reply to this batch would take about {size} bytes: send fewer keys "
                "per batch")))]
        return [Reply(batch.route, Message(MsgType.OK, batch.request_id,
                                           {"results": batch.results}),
                      only_reads=not batch.writes)]

    def _close_batch(self, batch: _Batch) -> None:
        if not batch.closed:
            batch.closed = True
            self.open_batches -= 1
            self.open_keys -= len(batch.results)

    def _run_batch(self, route, message: Message, count: int,
                   start: Callable[[_Batch, list[Effect]], list[Effect]]) -> list[Effect]:
        """Open a client batch of ``count`` keys and ``start`` it; if starting fails, the
        batch is closed (answered with the error; late key replies are dropped)."""
        batch, effects = self._open_batch(route, message, count)
        if batch is None:
            return effects
        try:
            return start(batch, effects)
        except BaseException:
            self._close_batch(batch)
            raise

    def _open_batch(self, route, message: Message, count: int):
        if count > MAX_BATCH_KEYS:
            raise InvalidRequest(f"a batch holds at most {MAX_BATCH_KEYS} keys, not {count}")
        self.ctx.check_serving()
        if not count:
            return None, [Reply(route, Message(MsgType.OK, message.request_id,
                                               {"results": []}))]
        self.open_batches += 1
        self.open_keys += count
        return _Batch(route, message.request_id, [None] * count, count,
                          writes=message.type == MsgType.MPUT), []


def encoded_bound(value: bytes | str | None) -> int:
    """At least a value's encoded size (a str's UTF-8 takes up to 4 bytes a character)."""
    if value is None:
        return 0
    return len(value) if value.__class__ is bytes else 4 * len(value)

