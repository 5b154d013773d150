"""Membership by gossip: heartbeats on PUB/SUB, seeds, JOIN, the member table on disk, the
cluster forming from its seeds, and liveness as the failure detector sees it."""

from __future__ import annotations

from collections.abc import Callable

import msgpack

from zring.config import NodeConfig
from zring.core.context import NodeContext, Part
from zring.core.effects import Effect, Publish, Subscribe, Unsubscribe, ok
from zring.errors import InvalidRequest, ProtocolError, StorageError, Unavailable
from zring.failure import Liveness, PhiAccrualDetector
from zring.membership import MAX_MEMBERS, MAX_RING_TOKENS, Member, MemberStatus, MemberTable
from zring.protocol import Message, MsgType, decode
from zring.storage.base import Store

__all__ = ["Gossip", "load_member_table"]

_GOSSIP_ON_CHANGE_GAP_S = 0.05  # at most this often when gossiping news ahead of the beat
_FORMING_LOG_INTERVAL_S = 5.0   # a seed waiting for the others says so this often
_LIVENESS_EVENT = {Liveness.UP: "up", Liveness.SUSPECT: "suspected", Liveness.DOWN: "down"}


def _saved_members(store: Store) -> list[Member]:
    saved = store.get_meta("members")
    if not saved:
        return []
    try:
        return [Member.from_wire(w) for w in msgpack.unpackb(saved, raw=False)]
    except Exception as exc:  # msgpack raises several types; the blob is damaged
        raise StorageError(f"the member table saved in the store is damaged ({exc})",
                           reason="damaged") from None


def load_member_table(config: NodeConfig, store: Store, now: float) -> MemberTable:
    """The member table as saved, with our own record a generation on (a restart) or new."""
    detector = PhiAccrualDetector(
        expected_interval_s=config.gossip_interval_s, suspect_phi=config.phi_suspect,
        down_phi=config.phi_down, min_std_s=config.fd_min_std_s,
        acceptable_pause_s=config.fd_acceptable_pause_s)
    saved = _saved_members(store)
    heartbeat = int(now * 1000)  # restarts resume above any heartbeat peers saw before
    own = None
    for member in saved:
        if member.node_id == config.node_id:
            own = Member(config.node_id, config.address, config.gossip_address,
                         member.status, member.generation + 1, heartbeat, config.weight,
                         streamed=member.streamed)
    if own is None:
        status = (MemberStatus.NORMAL if config.address in config.seeds
                  else MemberStatus.JOINING)
        own = Member(config.node_id, config.address, config.gossip_address, status, 1,
                     heartbeat, config.weight)
    members = MemberTable(own, detector, max_ring_weight=MAX_RING_TOKENS / config.vnodes)
    members.merge([m for m in saved if m.node_id != config.node_id], now)
    return members


class Gossip(Part):
    def __init__(self, ctx: NodeContext, now: float, ring_fingerprint: Callable[[], int],
                 transfer: Callable[[], tuple], on_member_up: Callable[[float], None]) -> None:
        self.ctx = ctx
        self._ring_fingerprint = ring_fingerprint   # of the ring we route by
        self._transfer = transfer                   # our join or leave's progress
        self._on_member_up = on_member_up
        self._subscribed: set[str] = set()
        self.seed_contacted = False
        self._next_beat_at = now
        self._last_beat_at = now
        self._next_seed_contact_at = now
        self._confirmed_by: set[str] = set()   # members whose gossip shows our current record
        self._announced_at = now
        self._liveness: dict[str, Liveness] = {}      # last liveness logged per member
        self._members_unsaved = False
        self._members_saved_at_tick = -1
        # after a failed commit, saving the member table waits until then: each save would
        # make its cycle's commit fail too, reads' replies included
        self._save_retry_at = 0.0
        self.formed = self._load_formed()
        self._next_forming_log_at = now
        self.handlers = {MsgType.JOIN: self._on_join}

    def start(self, now: float) -> list[Effect]:
        effects = self.sync_subscriptions()
        self._save_members()
        return effects + self._contact_seeds(now)

    # ------------------------------------------------------------------ timers

    def tick(self, now: float) -> list[Effect]:
        self._log_liveness(now)
        effects = self.beat(now) if now >= self._next_beat_at else []
        if now >= self._next_seed_contact_at:
            effects += self._contact_seeds(now)
        if not self.formed:
            self._check_formed(now)
        return effects

    def next_deadline(self, now: float) -> float | None:
        times = [self._next_beat_at]
        if self._needs_seed_contact():
            times.append(self._next_seed_contact_at)
        detector = self.ctx.members.detector
        for member in self.ctx.members.peers():
            change_at = detector.next_change_at(member.node_id, now)
            if change_at is not None:
                times.append(change_at)
        return min(times)

    def shift_timers(self, step: float) -> None:
        self._next_beat_at -= step
        self._next_seed_contact_at -= step

    def commit_failed(self, cycle: int, now: float) -> None:
        if self._members_saved_at_tick >= cycle:
            self._members_unsaved = True   # that save is not on disk
            self._save_retry_at = now + 1.0   # nor retried in every cycle while it fails

    # ------------------------------------------------------------------ heartbeats

    def beat(self, now: float) -> list[Effect]:
        """Publish our member table now (our heartbeat, figures and ring with it)."""
        ctx = self.ctx
        self._next_beat_at = now + ctx.config.gossip_interval_s
        self._last_beat_at = now
        own = ctx.members.own
        try:
            held = ctx.store.stats()
            figures = {"keys": held.keys, "hints": held.hints, "bytes": held.bytes}
        except StorageError:   # the heartbeat goes out regardless, with the last figures
            figures = {}
        ctx.members.update_own(heartbeat=own.heartbeat + 1, ring=self._ring_fingerprint(),
                               transfer=self._transfer(), **figures)
        body = {"sender": ctx.node_id, "members": ctx.members.to_wire()}
        return [Publish(Message(MsgType.GOSSIP, 0, body))]

    def members_changed(self, now: float) -> list[Effect]:
        """The member table changed: it is saved by the tick that ends this cycle, and the
        news travels on at once (rate-limited), not at our next beat: a joiner waits for
        every owner to echo it, and a change settles once all switched."""
        self._members_unsaved = True
        self._next_beat_at = min(self._next_beat_at,
                                 self._last_beat_at + _GOSSIP_ON_CHANGE_GAP_S)
        return self.sync_subscriptions()

    def sync_subscriptions(self) -> list[Effect]:
        wanted = {m.gossip_address for m in self.ctx.members.peers()}
        effects: list[Effect] = [Subscribe(a) for a in sorted(wanted - self._subscribed)]
        effects += [Unsubscribe(a) for a in sorted(self._subscribed - wanted)]
        self._subscribed = wanted
        return effects

    def receive(self, frame: bytes, now: float) -> tuple[str | None, list[Effect]]:
        """A gossip message: (its sender, effects); sender None when it was refused."""
        ctx = self.ctx
        try:
            message = decode(frame)
            if message.type != MsgType.GOSSIP:
                raise ProtocolError("not a gossip message")
            records = [Member.from_wire(w) for w in message.body["members"]]
        except ProtocolError as exc:
            ctx.stats["bad_gossip"] += 1
            ctx.log.warning("gossip_rejected", error=str(exc))
            return None, []
        ctx.stats["gossip_accepted"] += 1
        sender = message.body["sender"]
        if sender in ctx.members:
            ctx.members.heard_from(sender, now)
        own = ctx.members.own
        if any(r.node_id == own.node_id and r.generation >= own.generation for r in records):
            self._confirmed_by.add(sender)
        return sender, self.merge(records, now)

    def merge(self, records: list[Member], now: float) -> list[Effect]:
        members = self.ctx.members
        refused_before = members.records_refused
        members.merge(records, now)
        if members.records_refused > refused_before:
            self.ctx.log.warning("member_records_refused",
                                 count=members.records_refused - refused_before,
                                 reason="member, ring or generation cap")
        return self.sync_subscriptions()

    def _log_liveness(self, now: float) -> None:
        """Log each member's liveness changes; a member back up gets its hints promptly."""
        members = self.ctx.members
        for member in members.peers():
            liveness = members.liveness(member.node_id, now)
            previous = self._liveness.get(member.node_id)
            if liveness == previous:
                continue
            self._liveness[member.node_id] = liveness
            if previous is None and liveness == Liveness.UP:
                continue
            self.ctx.log.info(f"member_{_LIVENESS_EVENT[liveness]}", member=member.node_id,
                              phi=round(min(members.detector.phi(member.node_id, now), 99), 1))
            if liveness == Liveness.UP:
                self._on_member_up(now)

    # ------------------------------------------------------------------ joining

    def announce(self, now: float) -> None:
        """Our record changed (we leave, or join again): wait for every owner's echo."""
        self._confirmed_by.clear()
        self._announced_at = now

    def everyone_confirmed(self, now: float) -> bool:
        """All live owners have gossiped our current record back: they route accordingly."""
        ctx = self.ctx
        if now - self._announced_at > ctx.config.join_settle_timeout_s:
            return True
        for member in ctx.members.all():
            if member.node_id == ctx.node_id or not member.in_ring:
                continue
            if member.node_id not in self._confirmed_by and ctx.members.is_up(
                    member.node_id, now):
                return False
        return True

    def rejoin(self, seed: str, now: float) -> list[Effect]:
        """ADMIT: an operator adds us through ``seed``: introduce ourselves to it now."""
        self._save_members()
        self._confirmed_by.clear()
        if seed not in self.ctx.config.seeds:
            self.ctx.config.seeds.append(seed)
        self._next_seed_contact_at = now
        self.seed_contacted = False
        return self._contact_seeds(now)

    def _needs_seed_contact(self) -> bool:
        members = self.ctx.members
        own = members.own
        if own.status == MemberStatus.LEFT:
            return False
        known = {m.address for m in members.all()}
        return any(seed not in known for seed in self.ctx.config.seeds) or (
            own.status == MemberStatus.JOINING and not self.seed_contacted)

    def _contact_seeds(self, now: float) -> list[Effect]:
        """Introduce ourselves to every seed we have not met (and, joining, to any seed)."""
        ctx = self.ctx
        self._next_seed_contact_at = now + ctx.config.join_retry_s
        if not self._needs_seed_contact():
            return []
        known = {m.address for m in ctx.members.all()}
        effects: list[Effect] = []
        body = {"member": ctx.members.own.to_wire()}
        for seed in ctx.config.seeds:
            if seed == ctx.config.address:
                continue
            if seed in known and self.seed_contacted:
                continue
            effects += ctx.calls.call_address(seed, seed, MsgType.JOIN, body,
                                              self._seed_answered, now)
        return effects

    def _seed_answered(self, seed: str, reply: Message | None, now: float) -> list[Effect]:
        if reply is None:
            return []
        if reply.type != MsgType.OK:
            self.ctx.log.warning("join_refused", seed=seed, error=reply.body.get("message"))
            return []
        try:
            records = [Member.from_wire(w) for w in reply.body.get("members", [])]
        except ProtocolError:
            return []
        if not self.seed_contacted:
            self.seed_contacted = True
            self._announced_at = now
        for record in records:
            if record.address == seed:
                self.ctx.members.heard_from(record.node_id, now)
        return self.merge(records, now)

    def _on_join(self, route, message: Message, now: float) -> list[Effect]:
        ctx = self.ctx
        members = ctx.members
        member = Member.from_wire(message.body["member"])
        if members.full_for(member):
            raise Unavailable(f"the cluster is full: at most {MAX_MEMBERS} members and "
                              f"{MAX_RING_TOKENS} ring tokens ({ctx.config.vnodes} per unit "
                              "of weight)")
        known = members.get(member.node_id)
        if known is not None and known.address != member.address and known.status not in (
                MemberStatus.LEFT,) and members.is_up(member.node_id, now):
            raise InvalidRequest(f"node id {member.node_id} is already used by "
                                 f"{known.address}")
        members.heard_from(member.node_id, now)
        effects = self.merge([member], now)
        return effects + [ok(route, message.request_id, {"members": members.to_wire()})]

    # ------------------------------------------------------------------ on disk

    def _save_members(self) -> None:
        self.ctx.store.set_meta("members", msgpack.packb(self.ctx.members.to_wire(),
                                                         use_bin_type=True))
        self._members_unsaved = False
        self._members_saved_at_tick = self.ctx.ticks

    def save_changed_members(self, now: float) -> list[Effect]:
        """The member table as changed this cycle, saved once (a store that fails leaves
        it to a later tick: the ring has moved on regardless)."""
        if self._members_unsaved and now >= self._save_retry_at:
            self._save_members()
        return []

    # ------------------------------------------------------------------ forming

    def _load_formed(self) -> bool:
        """Whether the cluster this node founds with its seeds has formed: every seed met.
        A seed started fresh does not coordinate until then: writes taken while each seed
        still had a ring of its own would sit on nodes the full ring does not give them to.
        A node that joins (its address is no seed) streams its ranges instead, and a node
        restarted with every seed on record (or from before "formed" was saved) formed
        before."""
        config = self.ctx.config
        if config.address not in config.seeds or self.ctx.store.get_meta("formed"):
            return True
        return not self.seeds_missing()   # restarted with every seed on record

    def seeds_missing(self) -> list[str]:
        """Seeds we have not met yet (met: a member that owns ranges, or did and left)."""
        config = self.ctx.config
        met = {m.address for m in self.ctx.members.all() if m.status != MemberStatus.JOINING}
        return [seed for seed in config.seeds if seed != config.address and seed not in met]

    def _check_formed(self, now: float) -> None:
        missing = self.seeds_missing()
        if missing:
            if now >= self._next_forming_log_at:
                self._next_forming_log_at = now + _FORMING_LOG_INTERVAL_S
                self.ctx.log.info("cluster_forming", waiting_for_seeds=missing)
            return
        self.formed = True
        self.ctx.store.set_meta("formed", b"1")
        self.ctx.log.info("cluster_formed", seeds=len(self.ctx.config.seeds))
