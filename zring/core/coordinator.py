"""Coordinating a client's PUT, DELETE and GET: the key's replicas asked, quorums counted,
hints kept for replicas that miss a write, and a read whose replicas disagree written back
to a write quorum before it is answered (blocking read repair)."""

from __future__ import annotations

from zring.core.clocks import NodeClock
from zring.core.context import NodeContext, Part
from zring.core.effects import Effect, answer, error
from zring.core.hints import Hints
from zring.core.quorum import Quorum, quorum_in_each, write_outcome, write_quorum_state
from zring.core.topology import Topology
from zring.errors import (
    ClockSkew,
    InvalidRequest,
    ProtocolError,
    StorageError,
    Unavailable,
    VersionConflict,
    ZringError,
)
from zring.hashing import key_position
from zring.protocol import (
    Message,
    MsgType,
    newest_of,
    read_body,
    record_from_wire,
    record_to_wire,
    wire_read_body,
    write_body,
)
from zring.storage.base import Hint, Record
from zring.versions import Version, seconds_ahead

__all__ = ["Coordinator"]


class Coordinator(Part):
    def __init__(self, ctx: NodeContext, topology: Topology, hints: Hints,
                 clock: NodeClock) -> None:
        self.ctx = ctx
        self.topology = topology
        self.hints = hints
        self.clock = clock
        self.ops: dict[int, Quorum] = {}   # the reads and writes we coordinate, by op id
        self.handlers = {MsgType.PUT: self._on_put, MsgType.GET: self._on_get,
                         MsgType.DELETE: self._on_delete}

    def _on_put(self, route, message: Message, now: float) -> list[Effect]:
        self.ctx.check_serving()
        body = message.body
        key = self.ctx.check_key(body["key"])
        value = body["value"]
        if len(value) > self.ctx.config.max_value_bytes:
            raise InvalidRequest(f"value of {len(value)} bytes exceeds the limit of "
                                 f"{self.ctx.config.max_value_bytes}")
        return self._coordinate_write(route, message, key, value, now)

    def _on_delete(self, route, message: Message, now: float) -> list[Effect]:
        self.ctx.check_serving()
        key = self.ctx.check_key(message.body["key"])
        return self._coordinate_write(route, message, key, None, now)

    def _coordinate_write(self, route, message: Message, key: str, value, now: float):
        n, quorum = self.ctx.quorum_args(message.body, "w", self.ctx.config.write_quorum)
        position = key_position(key)
        sets = self.topology.write_sets(position, n)
        natural = sets[0]
        if len(natural) < quorum:
            raise Unavailable(f"the ring has {len(natural)} nodes for this key, "
                              f"fewer than w={quorum}")
        body = message.body
        legacy = body.get("ts") is None
        bound = self.clock.check_for_writes(now, legacy)
        version = self._write_version(body.get("ts"), body.get("writer"), now, bound)
        record = Record(key, value, version, position)
        targets = list(dict.fromkeys(x for replicas in sets for x in replicas))
        live = [x for x in targets if self.ctx.members.is_up(x, now)]
        down = [x for x in targets if x not in live]
        holders, local_hints = self.hints.holders(position, n, down, targets, now)
        # Strict quorum: only replicas count towards W. A stand-in holding a hint for a down
        # replica gets the write too (hinted handoff), but its ack does not count: with
        # sloppy quorums (Dynamo's) a read of R real replicas can miss a write acknowledged
        # by stand-ins, which the deterministic simulation showed under partitions.
        counted = live
        op = Quorum(route, message.request_id, message.type, key, quorum, counted, record,
                     replicas=targets, hinted_for=holders, sets=sets)
        op_id = self.ctx.calls.next_id()
        self.ops[op_id] = op
        effects: list[Effect] = []
        wire = [record_to_wire(record)]
        if local_hints:
            self.hints.keep([Hint(0, target, record, int(now * 1000))
                              for target in local_hints])
        for target in live:
            if target == self.ctx.node_id:
                effects += self._write_own(op_id, record, now)
            else:
                effects += self.ctx.calls.call(target, MsgType.REPLICA_WRITE,
                                               {"records": wire, "cond": True},
                                               lambda node, reply, t: self._write_answered(
                                                   op_id, node, *write_outcome(reply), t), now)
        for holder, target in holders.items():
            if holder == self.ctx.node_id:
                self.hints.keep([Hint(0, target, record, int(now * 1000))])
                effects += self._write_answered(op_id, holder, True, None, now)
            else:
                effects += self.ctx.calls.call(holder, MsgType.HINT_WRITE,
                                               {"target": target, "records": wire},
                                               lambda node, reply, t: self._write_answered(
                                                   op_id, node, reply is not None
                                                   and reply.type == MsgType.OK, None, t), now)
        if not op.counted:
            effects += self._write_answered(op_id, "", False, None, now)  # nobody to ask
        return effects

    def _write_version(self, ts, writer, now: float, bound: int) -> Version:
        """A write's version: the client's timestamp and writer id, checked (not from the
        future: our clock plus the maximum offset), or our hybrid clock's."""
        if ts is None:
            version = self.clock.hlc.version(int(now * 1000), self.ctx.node_id)
            if version.timestamp > bound:   # our hybrid clock ran ahead before a restart
                raise ClockSkew(
                    f"{self.ctx.node_id}'s hybrid clock is "
                    f"{seconds_ahead(version.timestamp, now):.3f} s ahead of its wall clock; "
                    "send writes with a client timestamp, or wait for the wall clock",
                    offset_s=round(seconds_ahead(version.timestamp, now), 3))
            self.clock.note_stamp(version.timestamp)
            return version
        if type(ts) is not int or not 0 <= ts < 1 << 63 or writer.__class__ is not str \
                or not 0 < len(writer) <= 256:
            raise InvalidRequest("a write's ts must be an int in [0, 2**63) with a writer id "
                                 "of 1 to 256 characters")
        if ts > bound:
            self.ctx.stats["timestamps_refused"] += 1
            ahead = seconds_ahead(ts, now)
            raise ClockSkew(f"the write's timestamp is {ahead:.3f} s ahead of "
                            f"{self.ctx.node_id}'s clock (max_clock_offset_s "
                            f"{self.ctx.config.max_clock_offset_s:g}): is the client's clock "
                            "synchronized (NTP)?", offset_s=round(ahead, 3))
        self.clock.hlc.observe(ts)
        self.clock.note_stamp(ts)
        return Version(ts, writer)

    def _write_own(self, op_id: int, record: Record, now: float) -> list[Effect]:
        """Our replica of a write we coordinate: taken unless we hold a newer version. If
        our store fails, we count as a replica that failed (no hint kept in it)."""
        me = self.ctx.node_id
        try:
            newer = self.ctx.store.write_if_newer([record_to_wire(record)])[0]
        except StorageError as exc:
            self.ctx.stats["own_writes_failed"] += 1
            self.ctx.log.error("own_write_failed", keys=1, error=str(exc))
            return self._write_answered(op_id, me, False, None, now, keep_hint=False)
        if newer is not None:
            return self._write_answered(op_id, me, False, newer, now)
        self.ctx.own_acks.add(self.ctx.ticks, lambda t: self._revoke_own_write(op_id, t))
        return self._write_answered(op_id, me, True, None, now)

    def _revoke_own_write(self, op_id: int, now: float) -> list[Effect]:
        """Our write of ``op_id`` was not committed after all: it no longer counts."""
        op = self.ops.get(op_id)
        me = self.ctx.node_id
        if op is None or me not in op.acks:
            return []
        op.acks.remove(me)
        op.failed.append(me)
        return self._answer_write(op_id, op)

    def _write_answered(self, op_id: int, node_id: str, ok: bool, newer: list | None,
                      now: float, keep_hint: bool = True) -> list[Effect]:
        """A replica's answer to a write: ``ok``, or failed (``newer``: it refused, holding
        that newer version; otherwise it failed or was silent, and we keep a hint)."""
        op = self.ops.get(op_id)
        if op is None:
            return []
        if node_id in op.counted and node_id not in op.acks and node_id not in op.failed:
            (op.acks if ok else op.failed).append(node_id)
            if newer is not None:
                op.refused += 1
                if op.newer is None or newer > op.newer:
                    op.newer = newer
            elif not ok and keep_hint:
                self.hints.keep_missed_write(op, node_id, now)
        return self._answer_write(op_id, op)

    def _answer_write(self, op_id: int, op: Quorum) -> list[Effect]:
        effects: list[Effect] = []
        if not op.answered:
            acked, possible = write_quorum_state(op)
            if acked:
                op.answered = True
                body = self.put_body(list(op.record.version), op.acks, op.sets[0])
                effects += answer(op.route, Message(MsgType.OK, op.request_id, body))
            elif not possible and op.refused == len(op.failed) and not op.acks and \
                    len(op.failed) < len(op.counted):
                pass   # refused so far: the others may refuse too (then it was applied nowhere)
            elif not possible:
                op.answered = True
                effects += answer(op.route, error(op.request_id, self.write_failure(
                    op.key, op.needed, op.acks, op.failed, op.newer, len(op.sets),
                    all_refused=op.refused == len(op.counted))))
        if len(op.acks) + len(op.failed) >= len(op.counted):
            self.ops.pop(op_id, None)
        return effects

    def write_failure(self, key: str, needed: int, acks: list[str], failed: list[str],
                       newer: list | None, sets: int = 1,
                       all_refused: bool = False) -> ZringError:
        """Why a write could not be acknowledged: replicas refused it, holding a newer
        version, or too few answered. ``all_refused``: every replica asked refused it, so
        it was applied nowhere (a client may then stamp it again and resend it as new)."""
        if newer is not None:
            self.ctx.stats["writes_refused_newer"] += 1
            where = ("no replica took it" if all_refused else
                     f"it may have been applied on {', '.join(acks) or 'a replica'} and "
                     "superseded")
            return VersionConflict(
                f"replicas of {key!r} hold a newer version {newer} than this write's, from a "
                f"concurrent write or a clock ahead of this client's: {where}; put again "
                "to write over it", held=list(newer), acked=list(acks),
                all_refused=all_refused)
        self.ctx.stats["writes_unavailable"] += 1
        during = (f" in each of the {sets} replica sets of a membership change"
                  if sets > 1 else "")
        return Unavailable(
            f"write could not reach w={needed} replicas{during} (acked by "
            f"{', '.join(acks) or 'none'}; {', '.join(failed)} failed); it may still be "
            "applied", acked=list(acks), failed=list(failed))

    def _on_get(self, route, message: Message, now: float) -> list[Effect]:
        self.ctx.check_serving()
        key = self.ctx.check_key(message.body["key"])
        n, quorum = self.ctx.quorum_args(message.body, "r", self.ctx.config.read_quorum)
        position = key_position(key)
        natural = self.topology.ring.get_nodes_at(position, n)
        live = [x for x in natural if self.ctx.members.is_up(x, now)]
        if len(live) < quorum:
            down = [x for x in natural if x not in live]
            raise Unavailable(f"{len(live)} of the key's {len(natural)} replicas are up "
                              f"({', '.join(down) or 'too few nodes'} down), fewer than "
                              f"r={quorum}")
        # Ask only r replicas, ourselves first (no hop); the others stand by and are asked
        # as soon as one of those fails, as Cassandra reads only the replicas it needs.
        me = self.ctx.node_id
        if quorum == 1 and me in live:  # our own copy is the answer: no quorum to track
            # (we are one of the key's replicas: no ring hint)
            body = wire_read_body(self.ctx.store.get_wire(key), [me])
            return answer(route, Message(MsgType.OK, message.request_id, body), True)
        if me in live:
            live.remove(me)
            live.insert(0, me)
        op = Quorum(route, message.request_id, MsgType.GET, key, quorum, live[:quorum],
                     replicas=natural, spares=live[quorum:])
        op_id = self.ctx.calls.next_id()
        self.ops[op_id] = op
        effects: list[Effect] = []
        for target in live[:quorum]:
            effects += self._read_from(op_id, op, target, now)
        return effects

    def _read_from(self, op_id: int, op: Quorum, target: str, now: float) -> list[Effect]:
        if target == self.ctx.node_id:
            try:
                record = self.ctx.store.get(op.key)
            except StorageError as exc:   # we count as a replica that failed
                self.ctx.log.error("own_read_failed", error=str(exc))
                return self._read_answered(op_id, target, False, None, now)
            return self._read_answered(op_id, target, True, record, now)
        return self.ctx.calls.call(
            target, MsgType.REPLICA_READ, {"key": op.key},
            lambda node, reply, t: self._remote_read_answered(op_id, node, reply, t), now)

    def _remote_read_answered(self, op_id: int, node_id: str, reply: Message | None, now: float):
        if reply is None or reply.type != MsgType.OK:
            return self._read_answered(op_id, node_id, False, None, now)
        wire = reply.body.get("record")
        try:
            record = None if wire is None else record_from_wire(wire)
            if record is not None and self.clock.ok:   # ours off: it cannot tell
                self.clock.check_peer_timestamp(record.version.timestamp, now)
        except (ProtocolError, ClockSkew):
            return self._read_answered(op_id, node_id, False, None, now)
        if record is not None:
            self.clock.hlc.observe(record.version.timestamp)
        return self._read_answered(op_id, node_id, True, record, now)

    def _read_answered(self, op_id: int, node_id: str, ok: bool, record: Record | None,
                       now: float) -> list[Effect]:
        op = self.ops.get(op_id)
        if op is None or op.answered or op.newest is not None:
            return []   # answered, or writing back: late replies change nothing
        effects: list[Effect] = []
        if ok:
            op.replies[node_id] = record
        else:
            op.failed.append(node_id)
            if op.spares:  # a stand-by replica takes its place
                spare = op.spares.pop(0)
                op.counted.append(spare)
                effects += self._read_from(op_id, op, spare, now)
                if op.answered or op.newest is not None or op_id not in self.ops:
                    return effects
        if len(op.replies) >= op.needed:
            newest = newest_of(op.replies.values())
            if newest is not None and (
                    any(r is None or r.version != newest.version for r in op.replies.values())
                    or not self.topology.sticks(newest.position, len(op.replicas), op.replies)):
                return effects + self._write_back(op_id, op, newest, now)
            return effects + self._answer_read(op_id, op, newest)
        if len(op.counted) - len(op.failed) < op.needed:
            op.answered = True
            del self.ops[op_id]
            self.ctx.stats["reads_unavailable"] += 1
            effects += answer(op.route, error(op.request_id, Unavailable(
                f"read reached {len(op.replies)} of r={op.needed} replicas "
                f"({', '.join(op.failed)} failed)")))
        return effects

    def _answer_read(self, op_id: int, op: Quorum, newest: Record | None) -> list[Effect]:
        op.answered = True
        self.ops.pop(op_id, None)
        body = self.get_body(None if newest is None else newest.value,
                              None if newest is None else list(newest.version),
                              list(op.replies), op.replicas)
        # counting our own write-back, it stands only if that is committed
        return answer(op.route, Message(MsgType.OK, op.request_id, body), not op.wrote_own)

    def _write_back(self, op_id: int, op: Quorum, newest: Record, now: float) -> list[Effect]:
        """The replicas that answered disagree: write the newest back until a write quorum
        of the key's replicas holds it, then answer (Cassandra's blocking read repair; the
        read phase of an ABD register). A later read, meeting that quorum, cannot return
        an older value than this one did."""
        op.newest = newest
        op.holders = {node for node, record in op.replies.items()
                      if record is not None and record.version == newest.version}
        # during a ring change, a write quorum in each ring some coordinator may read by
        op.sets = self.topology.write_sets(newest.position, len(op.replicas))
        needed = self.ctx.config.write_quorum
        me = self.ctx.node_id
        targets = [x for x in dict.fromkeys(x for replicas in op.sets for x in replicas)
                   if x not in op.holders and (x == me or self.ctx.members.is_up(x, now))]
        if not quorum_in_each(op.sets, op.holders | set(targets), needed):
            return self._write_back_failed(op_id, op, needed)
        self.ctx.stats["read_repairs"] += len(targets)
        op.writing_back = len(targets)
        wire = [record_to_wire(newest)]
        effects: list[Effect] = []
        for target in targets:
            if target == me:
                try:
                    self.ctx.store.put(newest)
                except StorageError as exc:
                    self.ctx.log.error("own_write_failed", keys=1, error=str(exc))
                    effects += self._written_back(op_id, target, False, now)
                    continue
                op.wrote_own = True
                self.ctx.own_acks.add(self.ctx.ticks, lambda t: self._revoke_own_write_back(
                    op_id, t))
                effects += self._written_back(op_id, target, True, now)
            else:
                effects += self.ctx.calls.call(target, MsgType.REPLICA_WRITE, {"records": wire},
                                               lambda node, reply, t: self._written_back(
                                                   op_id, node, reply is not None
                                                   and reply.type == MsgType.OK, t), now)
        return effects

    def _written_back(self, op_id: int, node_id: str, ok: bool, now: float):
        op = self.ops.get(op_id)
        if op is None or op.answered:
            return []
        op.writing_back -= 1
        if ok:
            op.holders.add(node_id)
        needed = self.ctx.config.write_quorum
        if quorum_in_each(op.sets, op.holders, needed):
            return self._answer_read(op_id, op, op.newest)
        if op.writing_back <= 0:
            return self._write_back_failed(op_id, op, needed)
        return []

    def _revoke_own_write_back(self, op_id: int, now: float) -> list[Effect]:
        """Our write-back copy was not committed: we do not hold the newest after all."""
        op = self.ops.get(op_id)
        if op is None or op.answered:
            return []
        op.holders.discard(self.ctx.node_id)
        if op.writing_back <= 0:
            return self._write_back_failed(op_id, op, self.ctx.config.write_quorum)
        return []

    def _write_back_failed(self, op_id: int, op: Quorum, needed: int) -> list[Effect]:
        op.answered = True
        self.ops.pop(op_id, None)
        self.ctx.stats["reads_unavailable"] += 1
        return answer(op.route, error(op.request_id, Unavailable(
            f"the replicas of {op.key!r} disagree and the newest version could not be "
            f"written back to w={needed} of them (held by {', '.join(sorted(op.holders))})")))

    def get_body(self, value, version: list | None, served_by: list[str],
                  replicas: list[str]) -> dict:
        """A read's answer (a GET's, or one key's of an MGET): the newest value and version
        (``value`` None with a version: a tombstone, not found)."""
        return self.with_ring_hint(read_body(value, version, served_by), replicas)

    def put_body(self, version: list, acks: list[str], replicas: list[str]) -> dict:
        """A write's answer (a PUT's or DELETE's, or one key's of an MPUT)."""
        return self.with_ring_hint(write_body(version, acks, replicas), replicas)

    def with_ring_hint(self, body: dict, replicas: list[str]) -> dict:
        if self.ctx.node_id not in replicas:
            body["ring"] = self.topology.ring.fingerprint()  # a token-aware client's ring is stale
        return body
