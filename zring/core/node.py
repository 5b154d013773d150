"""The node's logic as one sans-IO state machine, composed of parts (one concern each).

    effects = node.handle_frame(route, frame, now)      # a request on the ROUTER
    effects = node.handle_reply(address, frame, now)    # a peer's reply on a DEALER
    effects = node.handle_gossip(frame, now)            # a gossip message on the SUB
    effects = node.tick(now)                            # timers
    deadline = node.next_deadline()

``now`` is wall-clock seconds (it also feeds the hybrid logical clock). The node never waits:
a request it forwards is a pending call (``calls.py``), completed by the reply or by its
deadline, so a slow peer delays only the requests that need that peer.

This class only composes: it builds the parts, merges their handler tables, admits requests
(readiness, overload), unwraps peer batches, fans out ``tick`` and ``next_deadline``, and
alone reacts to a change of the member table, once per entry point.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from zring.config import NodeConfig
from zring.core.admin import Admin
from zring.core.admission import QUORUM_TYPES, Admission
from zring.core.antientropy import AntiEntropy
from zring.core.batching import BATCH_MAX_BYTES, BATCHABLE, MAX_BATCH_KEYS, encoded_size
from zring.core.clocks import NodeClock
from zring.core.context import Handler, NodeContext, Part
from zring.core.coordinator import Coordinator
from zring.core.drops import Drops
from zring.core.effects import Effect, Reply, error
from zring.core.gossip import Gossip, load_member_table
from zring.core.handoff import Handoff
from zring.core.hints import Hints
from zring.core.multikey import MultiKey
from zring.core.plan import Plan
from zring.core.replica import Replica
from zring.core.status import Status
from zring.core.topology import Topology
from zring.errors import Forbidden, InvalidRequest, ProtocolError, StorageError
from zring.log import FailureStreak
from zring.membership import MemberStatus
from zring.protocol import (
    CLIENT_TYPES,
    Message,
    MsgType,
    decode,
    message_to_wire,
    permitted,
    validate,
)
from zring.ring import HashRing
from zring.storage.base import Store

__all__ = ["NodeCore"]

log = structlog.get_logger("zring.node")

class NodeCore:
    def __init__(self, config: NodeConfig, store: Store, now: float) -> None:
        self.config = config
        self.store = store
        self.log = log.bind(node_id=config.node_id)
        # a store refusing every commit (a full disk) fails each loop cycle: logged once,
        # then a count every few seconds, then its recovery
        self.commit_failures = FailureStreak(self.log, "commit")
        self.members = load_member_table(config, store, now)
        ctx = self.ctx = NodeContext(config, store, self.members, self.log)
        self.clock_part = NodeClock(ctx, now)
        self.topology = Topology(ctx, now)
        self.hints = Hints(ctx, self.topology, now)
        self.gossip = Gossip(ctx, now, lambda: self.topology.ring.fingerprint(),
                             lambda: self.handoff.transfer(), self.hints.replay_soon)
        self.coordinator = Coordinator(ctx, self.topology, self.hints, self.clock_part)
        self.multikey = MultiKey(ctx, self.topology, self.coordinator, self.hints,
                                 self.clock_part)
        self.replica = Replica(ctx, self.clock_part, self.topology,
                               lambda now: self.admission.ready(now))
        self.drops = Drops(ctx, self.topology)
        self.plan = Plan(ctx, self.topology)
        self.antientropy = AntiEntropy(ctx, self.topology, self.replica, now)
        self.handoff = Handoff(ctx, self.topology, self.gossip, self.drops, self.plan)
        self.admin = Admin(ctx, self.topology, self.handoff)
        self.status = Status(ctx, self.topology, self.clock_part, self.handoff)
        # in the order their timers' work runs in a tick
        self._parts: tuple[Part, ...] = (
            self.multikey, self.gossip, self.hints, self.clock_part, self.handoff,
            self.antientropy, self.plan, self.topology, self.drops, self.coordinator,
            self.replica, self.admin, self.status)
        self.handlers: dict[MsgType, Handler] = {MsgType.BATCH: self._on_batch}
        for part in self._parts:
            overlap = self.handlers.keys() & part.handlers.keys()
            assert not overlap, f"{type(part).__name__} handles {overlap} again"
            self.handlers.update(part.handlers)
        assert CLIENT_TYPES <= self.handlers.keys()
        self._members_version = self.members.version
        self.admission = Admission(ctx, self.gossip, now)
        self._last_tick = now

    # ------------------------------------------------------------------ probes

    @property
    def stats(self) -> dict[str, int]:
        """The node's counters, each since it started."""
        return self.ctx.stats

    @property
    def ring(self) -> HashRing:
        return self.topology.ring

    @property
    def clock(self):
        """The hybrid logical clock that stamps writes without a client timestamp."""
        return self.clock_part.hlc

    def count(self, counter: str, amount: int = 1) -> None:
        """The shell counts what only it sees (dropped sends, refused connections)."""
        self.ctx.stats[counter] += amount

    def clock_checked(self, now: float) -> bool:
        """Our clock is measured against every live peer's and within the maximum offset."""
        return self.clock_part.clock_checked(now)

    def ready(self, now: float) -> bool:
        """Coordinating reads and writes (see ``Admission.ready``)."""
        return self.admission.ready(now)

    @property
    def settled(self) -> bool:
        """Every member routes by our ring (no previous ring is kept for writes)."""
        return self.topology.previous is None

    def pending(self) -> dict[str, int]:
        """What the node is in the middle of: for tests and operators."""
        return {"operations": len(self.coordinator.ops), "calls": len(self.ctx.calls),
                "batches": self.multikey.open_batches, "batch_keys": self.multikey.open_keys,
                "own_work": self.multikey.own_work_queued(), "deferred": len(self.admission)}

    # ------------------------------------------------------------------ entry points

    def start(self, now: float) -> list[Effect]:
        """Effects to run once the sockets are bound."""
        effects = self.gossip.start(now)
        self.log.info("node_started", status=self.members.own.status.name,
                      members=len(self.members.all()))
        return effects

    def handle_frame(self, route: tuple[bytes, ...], frame: bytes, now: float,
                     user_id: str | None = None) -> list[Effect]:
        """A request from a client or a peer arrived on the ROUTER. ``user_id``: with
        security on, the sender's ``"role:name"`` from the ZAP handler (None: security off)."""
        try:
            message = decode(frame)
        except ProtocolError as exc:
            self.ctx.stats["bad_frames"] += 1
            self.log.warning("frame_rejected", error=str(exc))
            return [Reply(route, error(exc.details.get("request_id") or 0, exc))]
        if user_id is not None and not permitted(user_id, message.type):
            self.ctx.stats["forbidden"] += 1
            self.log.warning("request_forbidden", user=user_id, type=message.type.name)
            return [Reply(route, error(message.request_id, Forbidden(
                f"the key of {user_id} does not allow {message.type.name}")))]
        if message.type in QUORUM_TYPES and not self.admission.ready(now):
            return self.admission.hold(route, frame, now, message.request_id)
        return self._reacting(lambda: self._dispatch(route, message, now), now)

    def refuse_multipart(self, identity: bytes, frames: int) -> list[Effect]:
        """A ROUTER message of too many parts: its sender gets a protocol error (request
        id 0: which part would hold the request is anyone's guess)."""
        self.ctx.stats["bad_frames"] += 1
        self.log.warning("frame_rejected", error="too many parts", frames=frames)
        return [Reply((identity,), error(0, ProtocolError(
            f"a request is one frame (after an optional empty delimiter), not {frames - 1}")))]

    def handle_reply(self, address: str, frame: bytes, now: float) -> list[Effect]:
        """A peer answered one of our requests."""
        try:
            message = decode(frame)
        except ProtocolError as exc:
            self.ctx.stats["bad_replies"] += 1
            self.log.warning("reply_rejected", peer=address, error=str(exc))
            return []
        replies = [message]
        if message.type == MsgType.BATCH:
            replies = []
            for wire in message.body["messages"]:
                try:
                    replies.append(validate(wire))
                except ProtocolError as exc:
                    self.ctx.stats["bad_replies"] += 1
                    self.log.warning("reply_rejected", peer=address, error=str(exc))
        return self._reacting(lambda: self._complete_calls(address, replies, now), now)

    def handle_gossip(self, frame: bytes, now: float) -> list[Effect]:
        sender: str | None = None

        def receive() -> list[Effect]:
            nonlocal sender
            sender, effects = self.gossip.receive(frame, now)
            return effects
        try:
            effects = self._reacting(receive, now)
        except Exception:  # never let one gossip message take the node down
            self.ctx.stats["bad_gossip"] += 1
            self.log.exception("gossip_failed", sender=sender)
            return []
        if sender is not None and sender != self.config.node_id:
            self.admission.heard_peer(now)
        return effects + self.admission.release(now, self.handle_frame)

    def tick(self, now: float) -> list[Effect]:
        if now < self._last_tick - self.config.gossip_interval_s:
            self._clock_stepped_back(now)
        self._last_tick = now
        ctx = self.ctx
        ctx.own_acks.committed_before(ctx.ticks)   # earlier cycles' writes are on disk
        failures = self.commit_failures
        if failures.since is not None and now - failures.last_at >= 1.0:
            failures.recovered(failures.last_at)   # a second without a failed commit
        effects = self._guarded(self.multikey, now)   # first: what earlier cycles queued
        effects += self._reacting(lambda: ctx.calls.expire(now), now)
        members = self.members
        # each part as _guarded runs it, inline: the loop runs every cycle, and a closure and
        # two calls per part were most of an idle tick's 7 us
        for part in self._parts[1:]:
            own_status = members.own.status
            try:
                done = part.tick(now)
                if done:
                    effects += done
                if members.version != self._members_version:
                    effects += self._members_changed(own_status, now)
            except Exception as exc:
                self._housekeeping_failed(type(part).__name__, exc)
        effects += self.admission.release(now, self.handle_frame)
        effects += self._guarded(self.gossip.save_changed_members, now)  # changed this tick
        ctx.ticks += 1
        return effects

    def finish_own_work(self, now: float) -> list[Effect]:
        """Before the node stops: the own reads and writes still queued, at once."""
        return self.multikey.run_own_work(now, self.ctx.ticks + 1)

    def commit_failed(self, effects: list[Effect], exc: Exception, now: float) -> list[Effect]:
        """The loop cycle's group commit failed (a full disk, say): nothing it wrote is
        stored, so none of its replies may say otherwise. Each becomes a storage error (a
        peer counts it as a failed replica; a client sees the request fail), our own writes
        of the cycle stop counting towards their quorums, requests to peers still leave,
        and each part forgets what the cycle wrote."""
        ctx = self.ctx
        ctx.stats["commits_failed"] += 1
        self.commit_failures.failed(now, error=str(exc), effects=len(effects))
        failure = StorageError(f"{self.config.node_id} could not commit to its store: {exc}")
        cycle = ctx.ticks - 1   # the tick that ended the cycle counted itself
        effects = effects + ctx.own_acks.revoke_from(cycle, now)
        out: list[Effect] = []
        for effect in effects:
            if effect.__class__ is not Reply or effect.only_reads \
                    or effect.message.type == MsgType.ERROR:
                out.append(effect)
            elif effect.message.type == MsgType.BATCH:
                out.append(Reply(effect.route, Message(MsgType.BATCH, 0, {"messages": [
                    message_to_wire(error(wire[1], failure))
                    for wire in effect.message.body["messages"]]})))
            else:
                out.append(Reply(effect.route, error(effect.message.request_id, failure)))
        for part in self._parts:
            part.commit_failed(cycle, now)
        return out

    def next_deadline(self) -> float:
        now = self._last_tick
        soonest = self.ctx.calls.next_deadline()
        for part in self._parts:
            due = part.next_deadline(now)
            if due is not None and (soonest is None or due < soonest):
                soonest = due
        held_until = self.admission.next_deadline()
        if held_until is not None and (soonest is None or held_until < soonest):
            soonest = held_until
        return soonest

    # ------------------------------------------------------------------ membership

    def _reacting(self, entry: Callable[[], list[Effect]], now: float) -> list[Effect]:
        """Run an entry point; if it changed the member table, react once."""
        own_status = self.members.own.status
        effects = entry()
        if self.members.version != self._members_version:
            effects += self._members_changed(own_status, now)
        return effects

    def _members_changed(self, own_status_before: MemberStatus, now: float) -> list[Effect]:
        """Rebuild the ring from the member table and act on what moved; our own status
        changed (joined, leaving, left): tell the cluster at once."""
        self._members_version = self.members.version
        old_ring = self.topology.members_changed()
        effects = self.gossip.members_changed(now)
        if old_ring is not None:
            effects += self.handoff.ring_changed(old_ring, self.topology.ring, now)
        if self.members.own.status != own_status_before:
            effects += self.gossip.beat(now)
        return effects

    # ------------------------------------------------------------------ admission

    def _dispatch(self, route, message: Message, now: float) -> list[Effect]:
        handler = self.handlers.get(message.type)
        if handler is None:
            self.ctx.stats["bad_frames"] += 1
            return [Reply(route, error(message.request_id, ProtocolError(
                f"{message.type.name} is not a request")))]
        if message.type in QUORUM_TYPES:
            refused = self.admission.overloaded(route, message, len(self.coordinator.ops),
                                                self.multikey.open_keys)
            if refused is not None:
                return refused
        try:
            return handler(route, message, now)
        except Exception as exc:
            return [Reply(route, error(message.request_id,
                                       self.ctx.failure(exc, message.type.name)))]

    def _on_batch(self, route, message: Message, now: float) -> list[Effect]:
        """Several peer requests in one frame: one BATCH reply with each one's answer."""
        wires = message.body["messages"]
        if len(wires) > MAX_BATCH_KEYS:
            raise InvalidRequest(f"a batch holds at most {MAX_BATCH_KEYS} messages")
        replies: list[list] = []
        replies_size = 0
        only_reads = True   # a frame of read answers stands should the commit fail
        effects: list[Effect] = []
        for wire in wires:
            if replies_size > BATCH_MAX_BYTES:  # answer in several frames, each deliverable
                effects.append(Reply(route, Message(MsgType.BATCH, 0, {"messages": replies}),
                                     only_reads))
                replies, replies_size, only_reads = [], 0, True
            try:
                inner = validate(wire)
            except ProtocolError as exc:
                self.ctx.stats["bad_frames"] += 1
                replies.append(message_to_wire(error(exc.details.get("request_id") or 0, exc)))
                continue
            if inner.type not in BATCHABLE:
                replies.append(message_to_wire(error(inner.request_id, ProtocolError(
                    f"{inner.type.name} cannot travel in a batch"))))
                continue
            for effect in self._dispatch(route, inner, now):
                if effect.__class__ is Reply and effect.route is route:
                    replies.append(message_to_wire(effect.message))
                    replies_size += encoded_size(effect.message.body)
                    only_reads = only_reads and (effect.only_reads
                                                 or effect.message.type == MsgType.ERROR)
                else:
                    effects.append(effect)
        effects.append(Reply(route, Message(MsgType.BATCH, 0, {"messages": replies}),
                             only_reads))
        return effects

    def _complete_calls(self, address: str, replies: list[Message],
                        now: float) -> list[Effect]:
        effects: list[Effect] = []
        for reply in replies:
            try:
                effects += self.ctx.calls.complete(reply, now) or []
            except Exception:  # a peer's reply of a shape no check foresaw: drop it
                self.ctx.stats["bad_replies"] += 1
                self.log.exception("reply_failed", peer=address)
        return effects

    # ------------------------------------------------------------------ timers

    def _guarded(self, step: Part | Callable[[float], list[Effect]],
                 now: float) -> list[Effect]:
        """One part's timers' work; if it fails (the store failing, say), the others still
        run and the node keeps serving: it is tried again on a later tick."""
        run = step.tick if isinstance(step, Part) else step
        try:
            return self._reacting(lambda: run(now) or [], now)
        except Exception as exc:
            self._housekeeping_failed(
                type(step).__name__ if isinstance(step, Part) else step.__name__, exc)
            return []

    def _housekeeping_failed(self, name: str, exc: Exception) -> None:
        """Call it in the ``except``: a part's timers failed; it is tried again later."""
        self.ctx.stats["housekeeping_errors"] += 1
        if isinstance(exc, StorageError):
            self.log.error("housekeeping_failed", step=name, error=str(exc))
        else:
            self.log.exception("housekeeping_failed", step=name)

    def _clock_stepped_back(self, now: float) -> None:
        """The wall clock was stepped back (NTP fixing a clock that ran ahead): timers set
        by the old reading would hold the node silent for as long as the step (peers would
        take it for dead), so each keeps the time it had left instead."""
        step = self._last_tick - now
        self.log.warning("clock_stepped_back", seconds=round(step, 3))
        self.ctx.calls.shift(step)
        for part in self._parts:
            part.shift_timers(step)

