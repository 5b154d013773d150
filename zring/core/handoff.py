"""Moving ranges when membership changes: a joiner pulls what it gains (from the nodes it
displaces), a leaver pushes everything to who gains it, a node takes over what a removed
member held, and ``zring rebalance`` pushes what a node no longer replicates. One slot each
for the join, the leave and the rebalance; progress saved with the records it counts."""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict

import msgpack

from zring.core.context import FULL_RANGE, NodeContext, Part
from zring.core.drops import Drops
from zring.core.effects import Effect, Reply, Shutdown, error, ok
from zring.core.gossip import Gossip
from zring.core.plan import Plan, ring_slices, stats_figures
from zring.core.streaming import Interval, RangePull, RecordPush, subtract_intervals
from zring.core.topology import Topology
from zring.errors import InvalidRequest, MembershipConflict
from zring.membership import MemberStatus
from zring.protocol import Message, MsgType
from zring.ring import HashRing, RingDiff, ring_changes
from zring.storage.base import Record

__all__ = ["Handoff"]


class Handoff(Part):
    def __init__(self, ctx: NodeContext, topology: Topology, gossip: Gossip, drops: Drops,
                 plan: Plan) -> None:
        self.ctx = ctx
        self.topology = topology
        self.gossip = gossip
        self.drops = drops
        self.plan = plan
        self._join: RangePull | None = None
        self._join_ring_fingerprint = 0
        self._join_intervals: list[Interval] = []   # what the join pull plans to fetch
        self._join_plan_key: list = []
        self._takeovers: list[RangePull] = []
        self._leave: RecordPush | None = None
        self._leave_fingerprint = 0
        self._rebalance: RecordPush | None = None
        self._rebalance_reply: tuple[tuple[bytes, ...], int] | None = None  # who awaits it
        self._transfer_totals: tuple[int, int] = (-1, -1)  # keys, bytes of our transfer
        self._saved_records = -1                  # a transfer's progress last saved at
        self._left_at: float | None = None
        self._wipe: list[Interval] = []           # slices of our store left to delete
        self.handlers = {
            MsgType.ADMIT: self._on_admit,
            MsgType.LEAVE: self.on_leave,
            MsgType.REBALANCE_LOCAL: self._on_rebalance_local,
        }

    # ------------------------------------------------------------------ the part's shape

    def tick(self, now: float) -> list[Effect]:
        effects = self._advance_join(now)
        effects += self._advance_leave(now)
        for stream in self._streams():   # retries whose time came
            effects += stream.pump(now)
        for pull in self._takeovers:
            for source in pull.pending_sources():
                member = self.ctx.members.get(source)
                if member is None or member.status == MemberStatus.LEFT:
                    pull.drop_source(source)  # removed: the other old replicas cover it
        return effects + self._after_stream_reply(now)

    def next_deadline(self, now: float) -> float | None:
        if self._wipe:
            return now   # keep deleting: the next slice at once
        times = [t for t in (s.next_retry_at() for s in self._streams()) if t is not None]
        return min(times) if times else None

    def commit_failed(self, cycle: int, now: float) -> None:
        """Pulls start again from their last committed progress (a join from its saved
        cursor, a takeover from the start: applying a record twice is harmless under last
        writer wins)."""
        if self._join is not None:
            self._join.cancelled = True
            self._join = None
            self._join_intervals = []
            self._saved_records = -1
        self._takeovers = [self._new_pull(pull.name, pull.groups) for pull in self._takeovers]

    @property
    def join(self) -> RangePull | None:
        """Our join's pull while it streams (a probe: read it, do not drive it)."""
        return self._join

    def transfer(self) -> tuple:
        """Our join or leave transfer as gossiped: (kind, keys done, keys total, bytes done,
        bytes total), totals -1 until counted."""
        keys_total, bytes_total = self._transfer_totals
        if self._join is not None:
            pull = self._join
            return ("join", pull.records_received, keys_total, pull.bytes_received, bytes_total)
        if self._leave is not None:
            push = self._leave
            return ("leave", push.records_done, keys_total, push.bytes_done, bytes_total)
        return ()

    def ring_changed(self, old_ring: HashRing, new_ring: HashRing, now: float) -> list[Effect]:
        """The ring changed: a rebalance stops; ranges handed over are dropped once settled
        and ranges gained without a handover are pulled."""
        effects = self._cancel_rebalance()
        own = self.ctx.members.own
        if own.status == MemberStatus.LEFT:
            return effects
        if own.node_id not in old_ring and own.node_id in new_ring and own.streamed:
            return effects  # we joined by streaming; nothing more to move here
        return effects + self._move_ranges(old_ring, new_ring, now)

    # ------------------------------------------------------------------ streams

    def _streams(self) -> list:
        return [s for s in (*self._takeovers, self._join, self._leave, self._rebalance)
                if s is not None]

    def _call(self, node_id: str, msg_type: MsgType, body: dict, on_reply, now: float):
        """A stream's request: its reply also saves progress and finishes what is done."""
        def on_stream_reply(node: str, reply: Message | None, t: float) -> list[Effect]:
            return on_reply(node, reply, t) + self._after_stream_reply(t)
        return self.ctx.calls.call(node_id, msg_type, body, on_stream_reply, now)

    def _after_stream_reply(self, now: float) -> list[Effect]:
        self._save_transfer_progress()
        for pull in [t for t in self._takeovers if t.done]:
            self._takeovers.remove(pull)
            self.ctx.log.info("takeover_done", records=pull.records_received)
        push = self._rebalance
        if push is None or not push.done:
            return []
        self._rebalance = None
        self.ctx.log.info("rebalance_done", sent=push.records_sent, dropped=push.records_dropped)
        if self._rebalance_reply is None:
            return []
        (route, request_id), self._rebalance_reply = self._rebalance_reply, None
        return [ok(route, request_id, {"sent": push.records_sent,
                                       "dropped": push.records_dropped})]

    # ------------------------------------------------------------------ joining

    def _on_admit(self, route, message: Message, now: float) -> list[Effect]:
        """An operator adds us (``zring add``): a node that left joins again, empty."""
        members = self.ctx.members
        own = members.own
        if own.status == MemberStatus.LEFT:
            self.ctx.store.delete_range(*FULL_RANGE)  # a returning node starts empty
            self._wipe = []
            members.set_status(own.node_id, MemberStatus.JOINING, streamed=False)
            self._left_at = None
        body = {"node_id": own.node_id, "status": members.own.status.name.lower()}
        return [ok(route, message.request_id, body)] + self.gossip.rejoin(
            message.body["seed"], now)

    def _move_ranges(self, old_ring: HashRing, new_ring: HashRing, now: float):
        """Schedule dropping the ranges a streamed joiner (or gainer) took over; pull ranges
        we gained some other way (a member force-removed: no one handed its data over)."""
        own_id = self.ctx.node_id
        members = self.ctx.members
        joined = {n for n in new_ring.nodes if n not in old_ring and members[n].streamed}
        handed_off = {n for n in old_ring.nodes if n not in new_ring
                      and self.ctx.members[n].status == MemberStatus.LEFT
                      and self.ctx.members[n].streamed}
        diff = RingDiff(old_ring, new_ring, self.ctx.config.replicas)
        drop = diff.handed_over(own_id, joined) if joined else []
        sources = [n for n in old_ring.nodes if n != own_id and n in self.ctx.members
                   and self.ctx.members[n].status != MemberStatus.LEFT]
        pulls = diff.gained_from(own_id, sources, unless_lost_by=handed_off)
        if drop:
            self.drops.add(new_ring, drop)
            self.ctx.log.info("ranges_to_drop", ranges=len(drop))
        if pulls:
            pull = self._new_pull("takeover", [(source, (), intervals)
                                               for source, intervals in pulls.items()])
            self._takeovers.append(pull)
            self.ctx.log.info("takeover_started", sources=sorted(pulls),
                              intervals=sum(map(len, pulls.values())))
            return pull.pump(now)
        return []

    def _new_pull(self, name: str, groups: list, resume: dict | None = None) -> RangePull:
        config = self.ctx.config
        return RangePull(name, self.ctx.store, groups, config.stream_intervals_per_pull,
                         config.stream_batch_records, config.stream_pulls_in_flight,
                         config.join_retry_s, resume, call=self._call)

    def _advance_join(self, now: float) -> list[Effect]:
        own = self.ctx.members.own
        if own.status != MemberStatus.JOINING or not self.gossip.seed_contacted:
            return []
        if not self.topology.ring.nodes:
            return []  # nobody to join yet
        if self._join is None:
            if not self.gossip.everyone_confirmed(now) or not self.topology.my_turn(now):
                return []
            return self._start_join_pull(now)
        if not self.topology.my_turn(now):
            self.ctx.log.info("join_waiting", reason="an earlier membership change goes first")
            self._join.cancelled = True
            self._join = None
            return []
        if self.topology.ring.fingerprint() != self._join_ring_fingerprint:
            self.ctx.log.info("join_restarted", reason="ring changed while streaming")
            self._join.cancelled = True
            self.ctx.store.set_meta("join_progress", b"")
            return self._start_join_pull(now)
        for source in self._join.pending_sources():
            if not self.ctx.members.is_up(source, now) and self._join.failing(source):
                moved = self._join.reroute(source)
                if moved:
                    self.ctx.log.warning("join_source_down", source=source, chunks=moved,
                                         pulling_from="the range's other replicas")
        if not self._join.done:
            return []
        pull = self._join
        self._join = None
        self._join_intervals = []
        self.ctx.store.set_meta("join_progress", b"")
        self.ctx.members.set_status(own.node_id, MemberStatus.NORMAL, streamed=True,
                                    transfer=())
        self.ctx.log.info("member_joined", records=pull.records_received,
                          bytes=pull.bytes_received)
        return []

    def _start_join_pull(self, now: float) -> list[Effect]:
        """Stream each gained range from the one node it displaces (Cassandra's consistent
        range movement): the joiner then holds exactly what that replica held, so every
        quorum of the old replicas is one of the new. Should that node be down, its ranges
        come from all the range's other old replicas instead (any one may lack a write)."""
        own = self.ctx.members.own
        future = self.topology.ring.copy()
        future.add_node(own.node_id, own.weight)
        groups: dict[tuple[str, tuple[str, ...]], list[Interval]] = defaultdict(list)
        for change in ring_changes(self.topology.ring, future, self.ctx.config.replicas,
                                   gained_by=own.node_id):
            displaced = [x for x in change.lost if x != own.node_id]
            if displaced:
                source = displaced[0]
                others = tuple(sorted(x for x in change.old_nodes if x != source))
            else:  # fewer old replicas than N: nobody is displaced; take from them all
                for source in change.old_nodes:
                    groups[(source, ())] += change.intervals()
                continue
            groups[(source, others)] += change.intervals()
        fingerprint = self.topology.ring.fingerprint()
        # chunks are numbered within this plan: resume only the same ring, weight and chunking
        plan_key = [fingerprint, own.weight, self.ctx.config.stream_intervals_per_pull]
        resume = self._saved_progress("join_progress", plan_key)
        planned = sorted(i for intervals in groups.values() for i in intervals)
        if self._join_intervals:
            # A restarted plan: what the old one pulled (or got as pending writes) outside
            # the new one is no longer ours; it goes once the join is done and settled.
            stray = subtract_intervals(self._join_intervals, planned)
            if stray:
                self.drops.add(future, stray)
        self._join_intervals = planned
        self._join_ring_fingerprint = fingerprint
        self._join_plan_key = plan_key
        self._join = self._new_pull(
            "join", [(source, others, intervals)
                     for (source, others), intervals in groups.items()], resume)
        self._transfer_totals = (-1, -1)
        sources = sorted({source for source, _ in groups})
        self.ctx.log.info("join_resumed" if resume else "join_streaming", sources=sources,
                          intervals=sum(map(len, groups.values())),
                          chunks=self._join.chunks, chunks_done=self._join.resumed,
                          records_done=self._join.records_received)
        effects = self._join.pump(now)
        return effects + self._count_transfer(
            {source: intervals for (source, _), intervals in groups.items()}, now)

    def _saved_progress(self, name: str, plan_key: list) -> dict | None:
        """A transfer's progress saved before a crash, if it was for this same plan."""
        saved = self.ctx.store.get_meta(name)
        if not saved:
            return None
        try:
            progress = msgpack.unpackb(saved, raw=False, strict_map_key=False)
        except Exception:  # msgpack raises several types; an unreadable one is just ignored
            return None
        if not isinstance(progress, dict) or progress.get("plan") != plan_key:
            return None
        return progress

    def _save_transfer_progress(self) -> None:
        pull, push = self._join, self._leave
        if pull is not None and not pull.done and pull.records_received != self._saved_records:
            self._saved_records = pull.records_received
            self._save_progress("join_progress", {"plan": self._join_plan_key,
                                                  **pull.progress()})
        elif (push is not None and not push.done
              and push.records_done != self._saved_records):
            self._saved_records = push.records_done
            self._save_progress("leave_progress", {"plan": [self._leave_fingerprint],
                                                   **push.progress()})

    def _save_progress(self, name: str, progress: dict) -> None:
        """Saved in the same transaction (the loop cycle's group commit) as the records the
        progress counts, so a crash never leaves one ahead of the other."""
        self.ctx.store.set_meta(name, msgpack.packb(progress, use_bin_type=True))

    def _count_transfer(self, sources: dict[str, list[Interval]], now: float) -> list[Effect]:
        """Ask each source how many records and bytes its intervals hold, for the totals of
        the progress figures (the pull does not wait for the answer)."""
        fingerprint = self._join_ring_fingerprint
        counts: dict[str, tuple[int, int]] = {}
        effects: list[Effect] = []

        def on_stats(node: str, reply: Message | None, t: float) -> list[Effect]:
            if self._join_ring_fingerprint != fingerprint or reply is None \
                    or reply.type != MsgType.OK:
                return []
            figures = stats_figures(reply)
            if figures is None:
                return []  # a malformed answer: the totals stay unknown (-1)
            counts[node] = figures
            if len(counts) == len(sources):
                self._transfer_totals = (sum(c[0] for c in counts.values()),
                                         sum(c[1] for c in counts.values()))
            return []

        for source, intervals in sources.items():
            effects += self.ctx.calls.call(source, MsgType.RANGE_STATS,
                                           {"intervals": [list(i) for i in sorted(intervals)]},
                                           on_stats, now,
                                           timeout_s=self.ctx.config.repair_timeout_s)
        return effects

    # ------------------------------------------------------------------ leaving

    def on_leave(self, route, message: Message, now: float) -> list[Effect]:
        own = self.ctx.members.own
        if own.status == MemberStatus.NORMAL:
            if len(self.topology.ring) <= 1:
                raise InvalidRequest("the last node of a cluster cannot leave it")
            self.ctx.members.set_status(own.node_id, MemberStatus.LEAVING)
            self.gossip.announce(now)
            self.ctx.log.info("member_leaving", member=own.node_id)
        elif own.status != MemberStatus.LEAVING:
            raise InvalidRequest(f"{own.node_id} is {own.status.name.lower()}; only a "
                                 "normal member can leave")
        return [ok(route, message.request_id, {"node_id": own.node_id, "status": "leaving"})]

    def _advance_leave(self, now: float) -> list[Effect]:
        own = self.ctx.members.own
        if own.status == MemberStatus.LEFT:
            self._step_wipe()
            if self._left_at is not None and not self._wipe and \
                    now - self._left_at >= self.ctx.config.left_linger_s:
                self._left_at = None
                return [Shutdown("left the cluster")]
            return []
        if own.status != MemberStatus.LEAVING:
            return []
        if self._leave is not None and not self.topology.my_turn(now):
            self.ctx.log.info("leave_waiting", reason="an earlier membership change goes first")
            self._leave.cancelled = True
            self._leave = None
            return []
        if self._leave is None:
            if self._rebalance is not None:
                return []  # let a running rebalance finish first
            if not self.gossip.everyone_confirmed(now) or not self.topology.my_turn(now):
                return []
            return self._start_leave(now)
        if self.topology.ring.fingerprint() != self._leave_fingerprint:
            # A gainer joined, left or was removed meanwhile: hand over again to the owners
            # of the new ring (records already sent are harmless duplicates).
            self.ctx.log.info("leave_restarted", reason="ring changed while streaming")
            self._leave.cancelled = True
            self._leave = None
            self.ctx.store.set_meta("leave_progress", b"")
            return self._advance_leave(now)
        if not self._leave.done:
            return []
        sent = self._leave.records_sent
        self._leave = None
        self.ctx.store.set_meta("leave_progress", b"")
        self.ctx.members.set_status(own.node_id, MemberStatus.LEFT, streamed=True, transfer=())
        self._left_at = now
        self.ctx.log.info("member_left", records_sent=sent)
        # everything we held was handed over: deleted a slice per loop cycle (one delete of
        # 750k rows would hold back the LEFT gossip, sent after this cycle, for seconds)
        self._wipe = ring_slices(1024)
        return []

    def _start_leave(self, now: float) -> list[Effect]:
        config = self.ctx.config
        own_id = self.ctx.node_id
        current = self.topology.ring
        future = current.copy()
        future.remove_node(own_id)
        # who gains each range we replicate, looked up by position (a bisect per record
        # instead of two preference lists)
        moves = sorted((low, high, list(change.gained))
                       for change in ring_changes(current, future, config.replicas)
                       if own_id in change.lost for low, high in change.intervals())
        lows = [low for low, _, _ in moves]

        def gainers(record: Record) -> list[str]:
            index = bisect_right(lows, record.position) - 1
            if index >= 0 and record.position <= moves[index][1]:
                return moves[index][2]
            return []  # a range we do not replicate: nobody gains it from us

        resume = self._saved_progress("leave_progress", [current.fingerprint()])
        self._leave = RecordPush("leave", self.ctx.store, gainers, lambda record: False,
                                 config.stream_batch_records, config.join_retry_s,
                                 config.stream_batch_bytes, resume,
                                 pages_in_flight=config.stream_pulls_in_flight * 2,
                                 call=self._call)
        self._leave_fingerprint = current.fingerprint()
        self._transfer_totals = (-1, -1)
        self.ctx.log.info("leave_resumed" if resume else "leave_streaming",
                          records_done=self._leave.records_done)
        leave = self._leave

        def on_counted(records: int, size: int, t: float) -> list[Effect]:
            if self._leave is leave:   # totals for the progress: everything we hold
                self._transfer_totals = (records, size)
            return []
        self.plan.count(ring_slices(64), on_counted)  # a slice per step
        return self._leave.pump(now)

    def _step_wipe(self) -> None:
        deleted = 0
        while self._wipe and deleted < self.ctx.config.slice_records:
            deleted += self.ctx.store.delete_range(*self._wipe.pop())

    # ------------------------------------------------------------------ rebalancing

    def _on_rebalance_local(self, route, message: Message, now: float) -> list[Effect]:
        """Hand every record we hold but no longer replicate to the nodes that do; delete
        it once each of them acknowledged storing it (or a newer version)."""
        running = "rebalance" if self._rebalance is not None else \
            "leave" if self._leave is not None and not self._leave.done else None
        if running:
            raise InvalidRequest(f"a {running} is already running on this node")
        self.topology.check_settled(now)
        config = self.ctx.config
        n = config.replicas
        own_id = self.ctx.node_id
        ring = self.topology.ring

        def route_record(record: Record) -> list[str]:
            replicas = ring.get_nodes_at(record.position, n)
            return [] if own_id in replicas else replicas

        def misplaced(record: Record) -> bool:
            return own_id not in ring.get_nodes_at(record.position, n)

        self._rebalance = RecordPush("rebalance", self.ctx.store, route_record, misplaced,
                                     config.stream_batch_records, config.join_retry_s,
                                     config.stream_batch_bytes, call=self._call)
        self._rebalance_reply = (route, message.request_id)
        self.ctx.log.info("rebalance_started")
        return self._rebalance.pump(now) + self._after_stream_reply(now)

    def _cancel_rebalance(self) -> list[Effect]:
        """A rebalance routes by the ring it started with: once that ring is gone, stop it
        (an owner it waits on may have been removed) and say so."""
        if self._rebalance is None:
            return []
        self._rebalance.cancelled = True
        self._rebalance = None
        self.ctx.log.warning("rebalance_cancelled", reason="ring changed")
        if self._rebalance_reply is None:
            return []
        (route, request_id), self._rebalance_reply = self._rebalance_reply, None
        return [Reply(route, error(request_id, MembershipConflict(
            "the ring changed during the rebalance; run it again")))]
