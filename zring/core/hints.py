"""Hinted handoff: writes kept for replicas that were down or silent, delivered once they
are back (or, for members that left, to the keys' current replicas)."""

from __future__ import annotations

from collections import defaultdict

from zring.core.context import NodeContext, Part
from zring.core.effects import Effect
from zring.core.quorum import Quorum
from zring.core.topology import Topology
from zring.errors import StorageError
from zring.failure import Liveness
from zring.membership import MemberStatus
from zring.protocol import Message, MsgType, record_to_wire
from zring.storage.base import Hint, Record, record_size

__all__ = ["Hints", "within_bytes"]


class Hints(Part):
    def __init__(self, ctx: NodeContext, topology: Topology, now: float) -> None:
        self.ctx = ctx
        self.topology = topology
        self._next_replay_at = now
        self._in_flight: set[str] = set()       # targets with a delivery under way
        self.handlers = {}

    def tick(self, now: float) -> list[Effect]:
        return self._replay(now) if now >= self._next_replay_at else []

    def next_deadline(self, now: float) -> float | None:
        return self._next_replay_at

    def shift_timers(self, step: float) -> None:
        self._next_replay_at -= step

    def replay_soon(self, now: float) -> None:
        """A member is back up: its hints go out on the next tick."""
        self._next_replay_at = now

    def keep(self, hints: list[Hint]) -> None:
        """Store hints for replicas that are down; a store that fails only costs the hint
        (repair brings the replica up to date)."""
        try:
            self.ctx.store.add_hints(hints)
        except StorageError as exc:
            self.ctx.stats["hints_lost"] += len(hints)
            self.ctx.log.error("hint_not_stored", count=len(hints), error=str(exc))
            return
        self.ctx.stats["hints_stored"] += len(hints)

    def keep_missed_write(self, op: Quorum, node_id: str, now: float) -> None:
        """A replica (or its stand-in) did not acknowledge in time: keep the write as a hint
        here, as Cassandra's coordinator does, so a replica that died before the detector
        noticed still gets it once it is back."""
        target = op.hinted_for.get(node_id, node_id)
        if target in op.replicas and target != self.ctx.node_id:
            self.keep([Hint(0, target, op.record, int(now * 1000))])

    def holders(self, position: int, n: int, down: list[str], targets: list[str],
                      now: float):
        """For each down replica, the next live node past the preference list that will hold
        its write as a hint; with no such node, we hold the hint ourselves (uncounted). A
        node that is itself a target never stands in: its one ack must count once."""
        if not down:
            return {}, []
        spares = [x for x in self.topology.ring.get_nodes_at(position, len(self.topology.ring))[n:]
                  if x not in targets and self.ctx.members.is_up(x, now)]
        holders: dict[str, str] = {}
        local: list[str] = []
        for target in down:
            heard = self.ctx.members.last_heard(target)
            if heard is not None and now - heard > self.ctx.config.hint_window_s:
                self.ctx.stats["hints_skipped_window"] += 1
                continue  # down past the hint window: repair brings it back
            if spares:
                holders[spares.pop(0)] = target
            else:
                local.append(target)
        return holders, local

    def _replay(self, now: float) -> list[Effect]:
        """Deliver held hints to members that are up again (or, for members that left, to
        the key's current replicas); drop hints older than the hint window."""
        self._next_replay_at = now + self.ctx.config.hint_replay_interval_s
        counts = self.ctx.store.hint_counts()   # kept by the store: no count over the hints
        if not counts:
            return []
        expired = self.ctx.store.expire_hints(int((now - self.ctx.config.hint_window_s) * 1000))
        if expired:
            self.ctx.stats["hints_expired"] += expired
            self.ctx.log.warning("hints_expired", count=expired)
            counts = self.ctx.store.hint_counts()
        effects: list[Effect] = []
        for target in counts:
            if target in self._in_flight:
                continue
            member = self.ctx.members.get(target)
            gone = member is None or member.status == MemberStatus.LEFT
            if gone or self.ctx.members.liveness(target, now) == Liveness.UP:
                effects += self._deliver(target, gone, now)
        return effects

    def _deliver(self, target: str, gone: bool, now: float) -> list[Effect]:
        config = self.ctx.config
        hints = within_bytes(self.ctx.store.hints_for(target, limit=config.hint_batch_records),
                             config.stream_batch_bytes, lambda h: record_size(h.record))
        if not hints:
            self._in_flight.discard(target)
            return []
        self._in_flight.add(target)
        # A member that left gets nothing: its hints go to the keys' current replicas.
        destinations: dict[str, list[Record]] = defaultdict(list)
        for hint in hints:
            owners = (self.topology.ring.get_nodes_at(hint.record.position, config.replicas)
                      if gone else [target])
            for owner in owners:
                destinations[owner].append(hint.record)
        waiting = set(destinations)
        failed: list[str] = []

        def on_ack(node: str, reply: Message | None, t: float) -> list[Effect]:
            waiting.discard(node)
            if reply is None or reply.type != MsgType.OK:
                failed.append(node)
            if waiting:
                return []
            if failed:
                self._in_flight.discard(target)
                return []
            self.ctx.store.delete_hints(h.hint_id for h in hints)
            self.ctx.stats["hints_delivered"] += len(hints)
            self.ctx.log.info("hints_delivered", target=target, count=len(hints), rerouted=gone)
            self._in_flight.discard(target)
            self._next_replay_at = t  # the next batch on the next tick
            return []

        effects: list[Effect] = []
        for owner, records in destinations.items():
            if owner == self.ctx.node_id:
                self.ctx.store.put_many(records)
                effects += on_ack(owner, Message(MsgType.OK, 0, {}), now)
            else:
                effects += self.ctx.calls.call(owner, MsgType.REPLICA_WRITE,
                                               {"records": [record_to_wire(r) for r in records]},
                                               on_ack, now)
        return effects


def within_bytes(items: list, budget: int, size_of) -> list:
    """The longest prefix of ``items`` within ``budget`` bytes (at least one item), so no
    message outgrows the frame limit whatever the values' sizes."""
    total = 0
    for index, item in enumerate(items):
        total += size_of(item)
        if total > budget and index > 0:
            return items[:index]
    return items
