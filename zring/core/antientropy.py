"""Anti-entropy: replicas compared by Merkle trees of the ranges they share, and only the
keys whose versions differ exchanged; in the background, one peer at a time; and
tombstones forgotten once past the grace period."""

from __future__ import annotations

from array import array
from collections import defaultdict
from collections.abc import Callable

from zring.core import repair
from zring.core.batching import MAX_BATCH_KEYS
from zring.core.context import NodeContext, Part
from zring.core.effects import Effect, Reply, error
from zring.core.hints import within_bytes
from zring.core.replica import Replica
from zring.core.topology import Topology
from zring.errors import InvalidRequest, ProtocolError, Unavailable
from zring.membership import MemberStatus
from zring.protocol import Message, MsgType, record_from_wire, record_to_wire
from zring.storage.base import record_size
from zring.versions import LOGICAL_BITS, Version

__all__ = ["AntiEntropy"]


class AntiEntropy(Part):
    def __init__(self, ctx: NodeContext, topology: Topology, replica: Replica,
                 now: float) -> None:
        self.ctx = ctx
        self.topology = topology
        self.replica = replica
        config = ctx.config
        # trees and version lists being built, a page per loop cycle: (job, then)
        self._jobs: list[tuple[repair.TreeBuilder | repair.VersionCollector,
                               Callable[[float], list[Effect]]]] = []
        self._sessions: dict[str, repair.RepairSession] = {}   # ours, by peer
        # REPAIR_LOCAL requests waiting on sessions: (route, request id, peers, summary)
        self._waiters: list[tuple[tuple[bytes, ...], int, set[str], dict]] = []
        self._next_repair_at = now + config.repair_interval_s if config.repair_interval_s \
            else float("inf")
        self._repair_turn = 0
        self._next_gc_at = now + config.tombstone_gc_interval_s
        self.handlers = {
            MsgType.REPAIR_LOCAL: self._on_repair_local,
            MsgType.REPAIR_TREE: self._on_repair_tree,
            MsgType.REPAIR_DIGESTS: self._on_repair_digests,
            MsgType.REPAIR_FETCH: self._on_repair_fetch,
        }

    def tick(self, now: float) -> list[Effect]:
        effects = self._step(now)
        if now >= self._next_repair_at:
            effects += self._repair_next_peer(now)
        if now >= self._next_gc_at:
            self._collect_tombstones(now)
        return effects

    def next_deadline(self, now: float) -> float | None:
        if self._jobs:
            return now   # keep hashing: the next page at once
        return min(self._next_repair_at, self._next_gc_at)

    def shift_timers(self, step: float) -> None:
        self._next_repair_at -= step
        self._next_gc_at -= step

    def _on_repair_local(self, route, message: Message, now: float) -> list[Effect]:
        peers = [m.node_id for m in self.ctx.members.all()
                 if m.in_ring and m.node_id > self.ctx.node_id
                 and self.ctx.members.is_up(m.node_id, now)]
        effects: list[Effect] = []
        waiting: set[str] = set()
        for peer in peers:
            if peer not in self._sessions:
                effects += self._start_repair(peer, now)
            if peer in self._sessions:
                waiting.add(peer)
        summary: dict[str, int] = defaultdict(int)
        self._waiters.append((route, message.request_id, waiting, summary))
        return effects + self._answer_repair_waiters()

    def _start_repair(self, peer: str, now: float) -> list[Effect]:
        own = self.ctx.node_id
        belongs = repair.shared(self.topology.ring, self.ctx.config.replicas, own, peer)
        tree = repair.TreeBuilder(self.ctx.store, belongs, self.ctx.config.repair_page_records)
        session = repair.RepairSession(peer, self.topology.ring.fingerprint(), tree, now)
        self._sessions[peer] = session
        self._jobs.append((tree, lambda t: self._repair_progress(session, t)))
        self.ctx.log.info("repair_started", peer=peer)

        def on_tree(node: str, reply: Message | None, t: float) -> list[Effect]:
            if reply is None or reply.type != MsgType.OK:
                return self._repair_failed(session, "no tree from the peer" if reply is None
                                           else reply.body.get("message", "error"), t)
            leaves = reply.body.get("leaves")
            if not isinstance(leaves, bytes) or len(leaves) != 8 * repair.SEGMENTS:
                return self._repair_failed(session, "malformed tree from the peer", t)
            session.peer_leaves = array("Q", leaves)
            session.peer_root = reply.body.get("root")
            session.bytes_exchanged += len(leaves)
            return self._repair_progress(session, t)

        return self.ctx.calls.call(
            peer, MsgType.REPAIR_TREE, {"peer": own, "fingerprint": session.ring_fingerprint},
            on_tree, now, timeout_s=self.ctx.config.repair_timeout_s)

    def _repair_progress(self, session: repair.RepairSession, now: float) -> list[Effect]:
        if session.phase != "hashing" or not session.tree.done or session.peer_leaves is None:
            return []
        if self.topology.ring.fingerprint() != session.ring_fingerprint:
            return self._repair_failed(session, "the ring changed during repair", now)
        if session.peer_root == session.tree.root():
            session.segments = []
            return self._repair_finished(session, now)
        session.segments = repair.differing_segments(session.tree.leaves, session.peer_leaves)
        session.phase = "comparing"
        intervals = repair.segment_intervals(session.segments)
        belongs = repair.shared(self.topology.ring, self.ctx.config.replicas, self.ctx.node_id,
                                session.peer)
        session.ours = repair.VersionCollector(self.ctx.store, intervals, belongs,
                                               self.ctx.config.repair_page_records)
        self._jobs.append((session.ours, lambda t: self._repair_exchange(session, t)))
        return self._ask_versions(session, intervals, None, now)

    def _ask_versions(self, session: repair.RepairSession, intervals: list, after: int | None,
                      now: float) -> list[Effect]:
        """Page through the peer's versions of its keys under the differing leaves."""
        def on_page(node: str, reply: Message | None, t: float) -> list[Effect]:
            if reply is None or reply.type != MsgType.OK:
                return self._repair_failed(session, "no versions from the peer", t)
            for item in reply.body.get("digests", []):
                if (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                        and type(item[1]) is int and isinstance(item[2], str)):
                    session.theirs[item[0]] = Version(item[1], item[2])
                    session.bytes_exchanged += len(item[0]) + 8 + len(item[2])
            last = reply.body.get("last")
            if reply.body.get("more") and type(last) is int:
                return self._ask_versions(session, intervals, last, t)
            session.theirs_done = True
            return self._repair_exchange(session, t)

        body = {"peer": self.ctx.node_id, "intervals": [list(i) for i in intervals],
                "after": after, "limit": self.ctx.config.repair_page_records}
        return self.ctx.calls.call(session.peer, MsgType.REPAIR_DIGESTS, body, on_page, now,
                                   timeout_s=self.ctx.config.repair_timeout_s)

    def _repair_exchange(self, session: repair.RepairSession, now: float) -> list[Effect]:
        """Both version lists known: fetch what the peer has newer, send what we have newer."""
        if session.phase != "comparing" or not session.theirs_done or not session.ours.done:
            return []
        session.phase = "exchanging"
        fetch, send = repair.keys_to_exchange(session.ours.versions, session.theirs)
        batch = self.ctx.config.hint_batch_records
        fetch_batches = [fetch[i:i + batch] for i in range(0, len(fetch), batch)]
        send_batches = [send[i:i + batch] for i in range(0, len(send), batch)]
        return self._repair_next_batch(session, fetch_batches, send_batches, now)

    def _repair_next_batch(self, session: repair.RepairSession, fetch_batches: list,
                           send_batches: list, now: float) -> list[Effect]:
        def on_reply(node: str, reply: Message | None, t: float) -> list[Effect]:
            if reply is None or reply.type != MsgType.OK:
                return self._repair_failed(session, "a repair batch was not answered", t)
            if fetching:
                try:
                    records = [record_from_wire(r) for r in reply.body.get("records", [])]
                except ProtocolError:
                    return self._repair_failed(session, "malformed records from the peer", t)
                self.ctx.store.put_many(records)
                session.records_pulled += len(records)
                session.bytes_exchanged += sum(record_size(r) for r in records)
                unserved = reply.body.get("unserved")
                if isinstance(unserved, list) and unserved:  # past the reply's byte budget
                    fetch_batches.append([k for k in unserved if isinstance(k, str)])
            return self._repair_next_batch(session, fetch_batches, send_batches, t)

        if fetch_batches:
            fetching = True
            keys = fetch_batches.pop()
            session.bytes_exchanged += sum(len(k) for k in keys)
            return self.ctx.calls.call(session.peer, MsgType.REPAIR_FETCH, {"keys": keys}, on_reply,
                                       now, timeout_s=self.ctx.config.repair_timeout_s)
        while send_batches:
            fetching = False
            keys = send_batches.pop()
            records = within_bytes([r for r in map(self.ctx.store.get, keys) if r is not None],
                                    self.ctx.config.stream_batch_bytes, record_size)
            sent = {r.key for r in records}
            if len(sent) < len(keys):  # the rest goes in a later batch
                send_batches.append([k for k in keys if k not in sent])
            if not records:
                continue
            session.records_pushed += len(records)
            session.bytes_exchanged += sum(record_size(r) for r in records)
            return self.ctx.calls.call(session.peer, MsgType.REPLICA_WRITE,
                                       {"records": [record_to_wire(r) for r in records]}, on_reply,
                                       now, timeout_s=self.ctx.config.repair_timeout_s)
        return self._repair_finished(session, now)

    def _repair_finished(self, session: repair.RepairSession, now: float) -> list[Effect]:
        session.phase = "done"
        self._sessions.pop(session.peer, None)
        self.ctx.stats["repairs"] += 1
        self.ctx.log.info("repair_done", peer=session.peer, records_hashed=session.tree.records,
                          segments_differing=len(session.segments or ()),
                          records_pulled=session.records_pulled,
                          records_pushed=session.records_pushed,
                          bytes=session.bytes_exchanged, seconds=round(now - session.started_at, 3))
        for _, _, waiting, summary in self._waiters:
            if session.peer in waiting:
                summary["segments_differing"] += len(session.segments or ())
                summary["records_pulled"] += session.records_pulled
                summary["records_pushed"] += session.records_pushed
                summary["bytes_exchanged"] += session.bytes_exchanged
                summary["records_hashed"] += session.tree.records
                summary["sessions"] += 1
        return self._answer_repair_waiters(done=session.peer)

    def _repair_failed(self, session: repair.RepairSession, error: str, now: float):
        session.phase = "failed"
        session.error = error
        self._sessions.pop(session.peer, None)
        self._jobs = [(job, cb) for job, cb in self._jobs
                           if job is not session.tree and job is not session.ours]
        self.ctx.stats["repairs_failed"] += 1
        self.ctx.log.warning("repair_failed", peer=session.peer, error=error)
        for _, _, waiting, summary in self._waiters:
            if session.peer in waiting:
                summary["sessions_failed"] += 1
        return self._answer_repair_waiters(done=session.peer)

    def _answer_repair_waiters(self, done: str | None = None) -> list[Effect]:
        effects: list[Effect] = []
        for waiter in list(self._waiters):
            route, request_id, waiting, summary = waiter
            waiting.discard(done)
            if waiting:
                continue
            self._waiters.remove(waiter)
            if summary.get("sessions_failed"):
                effects.append(Reply(route, error(request_id, Unavailable(
                    f"{summary['sessions_failed']} repair sessions of "
                    f"{self.ctx.node_id} failed; see its log"))))
            else:
                effects.append(Reply(route, Message(MsgType.OK, request_id, dict(summary))))
        return effects

    def _on_repair_tree(self, route, message: Message, now: float) -> list[Effect]:
        peer = message.body["peer"]
        if message.body["fingerprint"] != self.topology.ring.fingerprint():
            raise InvalidRequest("our rings differ; repair once membership has converged")
        belongs = repair.shared(self.topology.ring, self.ctx.config.replicas, peer,
                                self.ctx.node_id)
        tree = repair.TreeBuilder(self.ctx.store, belongs, self.ctx.config.repair_page_records)

        def send_tree(now: float) -> list[Effect]:
            body = {"root": tree.root(), "leaves": tree.leaves.tobytes(),
                    "records": tree.records}
            return [Reply(route, Message(MsgType.OK, message.request_id, body),
                          only_reads=True)]
        self._jobs.append((tree, send_tree))
        return []

    def _on_repair_digests(self, route, message: Message, now: float) -> list[Effect]:
        """A page of (key, version) for our records under the given intervals that we share
        with the asking peer."""
        keep = repair.shared(self.topology.ring, self.ctx.config.replicas, message.body["peer"],
                             self.ctx.node_id)
        records, more, last = self.replica.scan_intervals(
            message.body["intervals"], message.body.get("after"),
            min(max(message.body["limit"], 1), 10 * self.ctx.config.stream_batch_records), keep)
        digests = [[r.key, r.version.timestamp, r.version.node_id] for r in records]
        body = {"digests": digests, "more": more, "last": last}
        return [Reply(route, Message(MsgType.OK, message.request_id, body), only_reads=True)]

    def _on_repair_fetch(self, route, message: Message, now: float) -> list[Effect]:
        keys = message.body["keys"]
        if len(keys) > MAX_BATCH_KEYS or not all(isinstance(k, str) for k in keys):
            raise InvalidRequest(f"keys must be at most {MAX_BATCH_KEYS} strings")
        found = [r for r in map(self.ctx.store.get, keys) if r is not None]
        records = within_bytes(found, self.ctx.config.stream_batch_bytes, record_size)
        served = {r.key for r in records}
        body = {"records": [record_to_wire(r) for r in records],
                "unserved": [r.key for r in found if r.key not in served]}
        return [Reply(route, Message(MsgType.OK, message.request_id, body), only_reads=True)]

    def _step(self, now: float) -> list[Effect]:
        """Hash one page for the oldest tree under construction."""
        if not self._jobs:
            return []
        tree, on_done = self._jobs[0]
        tree.step()
        if not tree.done:
            return []
        self._jobs.pop(0)
        return on_done(now)

    def _repair_next_peer(self, now: float) -> list[Effect]:
        """One repair session at a time with the next peer in turn (configurable pace)."""
        self._next_repair_at = now + self.ctx.config.repair_interval_s
        peers = [m.node_id for m in self.ctx.members.all() if m.in_ring
                 and m.node_id != self.ctx.node_id and self.ctx.members.is_up(m.node_id, now)]
        if not peers or self._sessions or self.ctx.members.own.status != MemberStatus.NORMAL:
            return []
        self._repair_turn += 1
        return self._start_repair(peers[self._repair_turn % len(peers)], now)

    def _collect_tombstones(self, now: float) -> None:
        """Forget tombstones older than the grace period. A replica that missed a delete
        must be repaired within the grace period, or the deleted value could come back."""
        self._next_gc_at = now + self.ctx.config.tombstone_gc_interval_s
        cutoff_ms = int((now - self.ctx.config.tombstone_grace_s) * 1000)
        purged = self.ctx.store.purge_tombstones(max(0, cutoff_ms) << LOGICAL_BITS)
        if purged:
            self.ctx.stats["tombstones_purged"] += purged
            self.ctx.log.info("tombstones_purged", count=purged)
