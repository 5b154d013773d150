"""The node's logic as one sans-IO state machine.

    effects = node.handle_frame(route, frame, now)      # a request on the ROUTER
    effects = node.handle_reply(address, frame, now)    # a peer's reply on a DEALER
    effects = node.handle_gossip(frame, now)            # a gossip message on the SUB
    effects = node.tick(now)                            # timers
    deadline = node.next_deadline()

``now`` is wall-clock seconds (it also feeds the hybrid logical clock). The node never waits:
a request it forwards is an entry in ``_calls`` keyed by request id, completed by the reply or
by its deadline, so a slow peer delays only the requests that need that peer.
"""

from __future__ import annotations

import heapq
import itertools
from array import array
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack
import structlog

from zring.config import NodeConfig
from zring.core import repair
from zring.core.batching import (
    BATCH_MAX_BYTES,
    BATCHABLE,
    MAX_BATCH_KEYS,
    BatchReply,
    Slot,
    encoded_size,
)
from zring.core.clocks import ClockOffsets, ClockVerdict
from zring.core.effects import Effect, Publish, Reply, Send, Shutdown, Subscribe, Unsubscribe
from zring.core.streaming import Interval, RangePull, RecordPush, subtract_intervals
from zring.errors import (
    ClockSkew,
    Forbidden,
    InvalidRequest,
    MembershipConflict,
    NotMember,
    ProtocolError,
    StorageError,
    Unavailable,
    VersionConflict,
    ZringError,
    error_from_code,
)
from zring.failure import Liveness, PhiAccrualDetector
from zring.hashing import key_position
from zring.membership import (
    MAX_MEMBERS,
    MAX_RING_TOKENS,
    MAX_WEIGHT,
    MIN_WEIGHT,
    Member,
    MemberStatus,
    MemberTable,
)
from zring.protocol import (
    CLIENT_TYPES,
    Message,
    MsgType,
    decode,
    message_to_wire,
    permitted,
    record_from_wire,
    record_to_wire,
    validate,
)
from zring.ring import HashRing, RingDiff, ring_changes
from zring.storage.base import Hint, Record, Store, record_size
from zring.versions import (
    LOGICAL_BITS,
    HybridClock,
    Version,
    seconds_ahead,
    timestamp_bound,
)

__all__ = ["NodeCore"]

log = structlog.get_logger("zring.node")

_FULL_RANGE = (0, (1 << 64) - 1)
ReplyFn = Callable[[str, Message | None, float], list]


@dataclass(slots=True)
class _Call:
    """A request this node sent to a peer and still waits on."""

    node_id: str
    deadline: float
    on_reply: ReplyFn


@dataclass(slots=True)
class _Quorum:
    """A client write or read this node coordinates."""

    route: tuple[bytes, ...]
    request_id: int
    kind: MsgType
    key: str
    needed: int
    counted: list[str]                      # nodes whose answers count towards the quorum
    record: Record | None = None            # the write, for PUT/DELETE
    replicas: list[str] = field(default_factory=list)  # the key's preference list
    # for writes during a ring change: the preference lists of every ring some node may be
    # routing by (current, previous, future); the write needs ``needed`` acks in each
    sets: list[list[str]] = field(default_factory=list)
    hinted_for: dict[str, str] = field(default_factory=dict)  # stand-in -> replica it covers
    acks: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    replies: dict[str, Record | None] = field(default_factory=dict)
    answered: bool = False
    spares: list[str] = field(default_factory=list)  # reads: live replicas not asked yet
    newer: list | None = None   # writes: the newest version a refusing replica holds
    refused: int = 0            # writes: replicas that refused it for a newer version
    # reads whose replicas disagreed: the newest record, written back to a write quorum
    # (replicas known to hold it) before the answer, so no later read returns an older one
    newest: Record | None = None
    holders: set[str] = field(default_factory=set)
    writing_back: int = 0       # write-backs not answered yet
    wrote_own: bool = False     # our own copy was written back


# a bound on a batch result's encoded size besides its value (flags, version, node ids)
_RESULT_SIZE_BOUND = 1024


@dataclass(slots=True)
class _MultiRead:
    """An MGET's keys read in one pass per replica (index -> replies so far)."""

    batch: BatchReply
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

    batch: BatchReply
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


@dataclass(slots=True)
class _Drop:
    """Ranges this node no longer replicates since ``ring``: deleted
    page by page once every member routes by that ring (a read by a member still on the old
    ring may come here until then)."""

    ring: HashRing
    intervals: list[tuple[int, int]]
    settled_at: float | None = None
    records: int = 0


@dataclass(slots=True)
class _StatsJob:
    """Counting the records and bytes in a list of intervals, a slice per loop cycle."""

    intervals: list[tuple[int, int]]
    on_done: Callable[[int, int, float], list]
    index: int = 0
    records: int = 0
    size: int = 0


@dataclass(slots=True)
class _Admin:
    """A fan-out admin request (rebalance, repair) waiting on every node."""

    route: tuple[bytes, ...]
    request_id: int
    operation: str
    waiting: set[str]
    failed: list[str] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    on_done: Callable[[Message, float], list] | None = None


class NodeCore:
    def __init__(self, config: NodeConfig, store: Store, now: float) -> None:
        self.config = config
        self.store = store
        # never behind what the last run issued or saw (its ceiling is saved ahead of use)
        self._clock_saved_until = self._saved_clock_ceiling()
        self.clock = HybridClock(self._clock_saved_until)
        self._stamped = 0   # the greatest timestamp of a record we stored or stamped
        # how far ahead of it the saved ceiling is kept: half the maximum offset
        self._clock_lease = int(config.max_clock_offset_s * 500) << LOGICAL_BITS
        # the ceiling saved in the current cycle: (ticks finished then, the one before it)
        self._clock_saving: tuple[int, int] | None = None
        # after a failed commit, bookkeeping writes (clock ceiling, member table) wait until
        # then: each would make its cycle's commit fail too, reads' replies included
        self._meta_retry_at = 0.0
        self._offsets = ClockOffsets(config.max_clock_offset_s)
        self._clock_ok = True                   # our clock's last verdict, as logged
        self._verdict: ClockVerdict | None = None   # kept for writes until samples change
        self._next_clock_check_at = now
        detector = PhiAccrualDetector(
            expected_interval_s=config.gossip_interval_s, suspect_phi=config.phi_suspect,
            down_phi=config.phi_down, min_std_s=config.fd_min_std_s,
            acceptable_pause_s=config.fd_acceptable_pause_s)
        self.members = MemberTable(self._load_own_member(now), detector,
                                   max_ring_weight=MAX_RING_TOKENS / config.vnodes)
        self._load_members(now)
        self.ring = HashRing(self.members.ring_weights(), vnodes=config.vnodes)
        self.members.update_own(ring=self.ring.fingerprint())
        self._ids = itertools.count(1)
        self._calls: dict[int, _Call] = {}
        self._call_deadlines: list[tuple[float, int]] = []
        self._quorums: dict[int, _Quorum] = {}
        self._admins: dict[int, _Admin] = {}
        self._subscribed: set[str] = set()
        self._seed_contacted = False
        self._next_gossip_at = now
        self._last_gossip_at = now
        self._next_seed_contact_at = now
        self._confirmed_by: set[str] = set()   # members whose gossip shows our current record
        self._announced_at = now
        self._join_pull: RangePull | None = None
        self._join_ring_fingerprint = 0
        self._join_intervals: list[Interval] = []   # what the join pull plans to fetch
        self._join_plan_key: list = []
        self._takeovers: list[RangePull] = []
        self._push: RecordPush | None = None
        self._push_kind = ""
        self._leave_fingerprint = 0
        self._push_reply: tuple[tuple[bytes, ...], int] | None = None  # who awaits a rebalance
        self._future: HashRing | None = None  # the ring once joins/leaves complete (cached)
        # the ring before the last change, until every live member routes by the new one
        # (writes keep a quorum in both meanwhile)
        self._previous_ring: HashRing | None = None
        self._settled_at: float | None = now      # when every member last agreed with us
        self._drops: list[_Drop] = []             # ranges handed over, deleted once settled
        self._ready_at = now + 2 * config.gossip_interval_s  # see _is_ready
        self._ready = False
        self._formed = self._load_formed()
        self._members_unsaved = False
        self._members_saved_at_tick = -1
        self._next_forming_log_at = now
        # requests held until ready: (route, frame, arrived at, request id)
        self._deferred: list[tuple[tuple[bytes, ...], bytes, float, int]] = []
        # our own writes of this loop cycle, each with what undoes its acknowledgement
        # should the cycle's commit fail: (ticks finished when made, revoke)
        self._own_acks: list[tuple[int, Callable[[float], list[Effect]]]] = []
        # a batch's own reads and writes, done one loop cycle later, once what it asked of
        # peers has left (both stores work at once): (ticks finished when queued, batch,
        # its request type, the work)
        self._own_work: list[tuple[int, BatchReply, str,
                                   Callable[[float], list[Effect]]]] = []
        self._ticks = 0          # ticks finished: one per loop cycle, at its end
        self._open_batches = 0   # client batches (MGET/MPUT) with keys still unanswered
        self._open_batch_keys = 0   # their keys: they count towards max_pending_requests
        self._stats_jobs: list[_StatsJob] = []
        self._transfer_totals: tuple[int, int] = (-1, -1)  # keys, bytes of our transfer
        self._saved_records = -1                  # a transfer's progress last saved at
        self._left_at: float | None = None
        self._wipe: list[Interval] = []           # slices of our store left to delete
        self._liveness: dict[str, Liveness] = {}      # last liveness logged per member
        self._next_hint_replay_at = now
        self._hints_in_flight: set[str] = set()       # targets with a delivery under way
        self._last_tick = now
        self._tree_jobs: list[tuple[repair.TreeBuilder, Callable[[float], list]]] = []
        self._repairs: dict[str, repair.RepairSession] = {}   # ours, by peer
        self._repair_waiters: list[tuple[tuple[bytes, ...], int, set[str], dict]] = []
        self._next_repair_at = now + config.repair_interval_s if config.repair_interval_s \
            else float("inf")
        self._repair_turn = 0
        self._next_gc_at = now + config.tombstone_gc_interval_s
        self.stats: dict[str, int] = defaultdict(int)
        self.log = log.bind(node_id=config.node_id)

    # ------------------------------------------------------------------ state on disk

    def _saved_members(self) -> list[Member]:
        saved = self.store.get_meta("members")
        if not saved:
            return []
        try:
            return [Member.from_wire(w) for w in msgpack.unpackb(saved, raw=False)]
        except Exception as exc:  # msgpack raises several types; the blob is damaged
            raise StorageError(f"the member table saved in the store is damaged ({exc})",
                               reason="damaged") from None

    def _load_own_member(self, now: float) -> Member:
        config = self.config
        own_address_is_seed = config.address in config.seeds
        heartbeat = int(now * 1000)  # restarts resume above any heartbeat peers saw before
        for member in self._saved_members():
            if member.node_id == config.node_id:
                return Member(config.node_id, config.address, config.gossip_address,
                              member.status, member.generation + 1, heartbeat,
                              config.weight, streamed=member.streamed)
        status = MemberStatus.NORMAL if own_address_is_seed else MemberStatus.JOINING
        return Member(config.node_id, config.address, config.gossip_address, status, 1,
                      heartbeat, config.weight)

    def _load_members(self, now: float) -> None:
        others = [m for m in self._saved_members() if m.node_id != self.config.node_id]
        self.members.merge(others, now)

    def _save_members(self) -> None:
        self.store.set_meta("members", msgpack.packb(self.members.to_wire(), use_bin_type=True))
        self._members_unsaved = False
        self._members_saved_at_tick = self._ticks

    def _save_changed_members(self, now: float) -> None:
        """The member table as changed this cycle, saved once (a store that fails leaves
        it to a later tick: the ring has moved on regardless)."""
        if self._members_unsaved and now >= self._meta_retry_at:
            self._save_members()

    def _saved_clock_ceiling(self) -> int:
        saved = self.store.get_meta("clock")
        return int.from_bytes(saved, "big") if saved and len(saved) == 8 else 0

    def _note_stamp(self, timestamp: int) -> None:
        """A record with this timestamp is written in this cycle (see ``_save_clock``)."""
        if timestamp > self._stamped:
            self._stamped = timestamp

    def _save_clock(self, now: float) -> None:
        """Keep a ceiling on disk a little ahead of every timestamp we stamped or stored, so
        a restarted node's hybrid clock starts above them (it never goes back); saved by the
        cycle that wrote them, in one commit with them (a cycle that only read writes
        nothing, so it never fails on a full disk). The lease is half the maximum offset: a
        restart's first timestamps are never refused as being from the future. (From the
        records, not the wall clock: a wall clock that ran ahead and was fixed leaves no
        ceiling in the future.)"""
        lease = self._clock_lease
        if self._stamped + lease // 2 < self._clock_saved_until:
            return
        ceiling = max(self._stamped, self.clock.last) + lease
        self._clock_saving = (self._ticks, self._clock_saved_until)
        self.store.set_meta("clock", ceiling.to_bytes(8, "big"))
        self._clock_saved_until = ceiling

    def _load_formed(self) -> bool:
        """Whether the cluster this node founds with its seeds has formed: every seed met.
        A seed started fresh does not coordinate until then: writes taken while each seed
        still had a ring of its own would sit on nodes the full ring does not give them to.
        A node that joins (its address is no seed) streams its ranges instead, and a node
        restarted with every seed on record (or from before "formed" was saved) formed
        before."""
        config = self.config
        if config.address not in config.seeds or self.store.get_meta("formed"):
            return True
        return not self._seeds_missing()   # restarted with every seed on record

    def _seeds_missing(self) -> list[str]:
        """Seeds we have not met yet (met: a member that owns ranges, or did and left)."""
        met = {m.address for m in self.members.all() if m.status != MemberStatus.JOINING}
        return [seed for seed in self.config.seeds
                if seed != self.config.address and seed not in met]

    def _check_formed(self, now: float) -> None:
        if self._formed:
            return
        missing = self._seeds_missing()
        if missing:
            if now >= self._next_forming_log_at:
                self._next_forming_log_at = now + 5.0
                self.log.info("cluster_forming", waiting_for_seeds=missing)
            return
        self._formed = True
        self.store.set_meta("formed", b"1")
        self.log.info("cluster_formed", seeds=len(self.config.seeds))

    # ------------------------------------------------------------------ entry points

    def start(self, now: float) -> list[Effect]:
        """Effects to run once the sockets are bound."""
        effects = self._sync_subscriptions()
        self._save_members()
        effects += self._contact_seeds(now)
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
            self.stats["bad_frames"] += 1
            self.log.warning("frame_rejected", error=str(exc))
            request_id = exc.details.get("request_id")
            if request_id is None:
                request_id = 0
            return [Reply(route, _error(request_id, exc))]
        if user_id is not None and not permitted(user_id, message.type):
            self.stats["forbidden"] += 1
            self.log.warning("request_forbidden", user=user_id, type=message.type.name)
            return [Reply(route, _error(message.request_id, Forbidden(
                f"the key of {user_id} does not allow {message.type.name}")))]
        if message.type in _QUORUM_TYPES and not self._is_ready(now):
            if len(self._deferred) >= self.config.max_pending_requests:
                self.stats["overloaded"] += 1
                return [Reply(route, _error(message.request_id, Unavailable(
                    f"{self.config.node_id} is starting and holds "
                    f"{len(self._deferred)} requests; retry later")))]
            # held, not refused: answered once gossip brought us up to date (or the cluster
            # formed), or refused after request_timeout_s
            self._deferred.append((route, frame, now, message.request_id))
            return []
        return self._fill_batches(self._dispatch(route, message, now))

    def refuse_multipart(self, identity: bytes, frames: int) -> list[Effect]:
        """A ROUTER message of too many parts: its sender gets a protocol error (request
        id 0: which part would hold the request is anyone's guess)."""
        self.stats["bad_frames"] += 1
        self.log.warning("frame_rejected", error="too many parts", frames=frames)
        return [Reply((identity,), _error(0, ProtocolError(
            f"a request is one frame (after an optional empty delimiter), not {frames - 1}")))]

    def _dispatch(self, route, message: Message, now: float) -> list[Effect]:
        handler = self._handlers.get(message.type)
        if handler is None:
            self.stats["bad_frames"] += 1
            return [Reply(route, _error(message.request_id, ProtocolError(
                f"{message.type.name} is not a request")))]
        adds = _batch_size(message)
        if (message.type in _QUORUM_TYPES
                and adds <= MAX_BATCH_KEYS  # bigger: refused as invalid by the handler
                and len(self._quorums) + self._open_batch_keys + adds
                > self.config.max_pending_requests):
            self.stats["overloaded"] += 1
            return [Reply(route, _error(message.request_id, Unavailable(
                f"{self.config.node_id} is coordinating {len(self._quorums)} requests and "
                f"{self._open_batch_keys} keys of batches; retry later")))]
        try:
            return handler(self, route, message, now)
        except Exception as exc:
            return [Reply(route, _error(message.request_id,
                                        self._failure(exc, message.type.name)))]

    def _failure(self, exc: Exception, request_type: str) -> ZringError:
        """The error a client gets for ``exc`` (call it in the ``except``): a ZringError as
        it is; anything else is a bug or an input no check foresaw, logged and counted, and
        the node keeps serving."""
        if isinstance(exc, ZringError):
            return exc
        self.stats["handler_errors"] += 1
        self.log.exception("request_failed", type=request_type)
        return ZringError(f"{self.config.node_id} failed on {request_type}: "
                          f"{type(exc).__name__}")

    # ------------------------------------------------------------------ batches

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
                self.stats["bad_frames"] += 1
                request_id = exc.details.get("request_id") or 0
                replies.append(message_to_wire(_error(request_id, exc)))
                continue
            if inner.type not in BATCHABLE:
                replies.append(message_to_wire(_error(inner.request_id, ProtocolError(
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

    def _on_mget(self, route, message: Message, now: float) -> list[Effect]:
        """Many reads at once: each replica asked once for all its keys (one local lookup
        pass, one REPLICA_READ_MANY per peer); records stay wire lists throughout. A key
        whose replicas fail falls back to the single-key path (stand-bys, its own error)."""
        keys = message.body["keys"]
        raw_n, raw_r = message.body.get("n"), message.body.get("r")
        n, quorum = self._quorum_args(message.body, "r", self.config.read_quorum)
        return self._run_batch(route, message, len(keys), lambda batch, effects: (
            self._start_mget(batch, effects, keys, raw_n, raw_r, n, quorum, now)))

    def _start_mget(self, batch: BatchReply, effects: list[Effect], keys: list, raw_n,
                    raw_r, n: int, quorum: int, now: float) -> list[Effect]:
        me = self.config.node_id
        read = _MultiRead(batch, quorum, keys, raw_n, raw_r)
        by_target: dict[str, list[int]] = {}
        is_up, ring = self.members.is_up, self.ring
        # every node holds every key (no more nodes than replicas): one list for all keys
        everywhere = ring.get_nodes_at(0, n) if len(ring) <= n else None
        asked_for: dict[tuple, list[str] | None] = {}   # preference list -> who is asked
        direct: list[int] = []    # R=1 keys we replicate: answered from our copy, no replies
        for index, key in enumerate(keys):
            if key.__class__ is not str or self._key_too_long(key):
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
            effects += self._call(target, MsgType.REPLICA_READ_MANY,
                                  {"keys": [keys[i] for i in indexes]},
                                  lambda node, reply, t, ix=indexes: self._on_read_many(
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
        me = self.config.node_id
        for index, wire in zip(indexes, self.store.get_wire_many(
                [read.keys[i] for i in indexes]), strict=True):
            read.replies[index][me] = wire
            effects += self._multi_read_done(read, index, now)
        return effects

    def _defer_own_work(self, batch: BatchReply, request_type: str,
                        work: Callable[[float], list[Effect]]) -> None:
        """Run ``work`` in the next loop cycle's tick, after this cycle's sends have left."""
        self._own_work.append((self._ticks, batch, request_type, work))

    def _run_own_work(self, now: float, queued_before: int) -> list[Effect]:
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
                effects += self._fail_batch(batch, self._failure(exc, request_type))
        return effects

    def _fail_batch(self, batch: BatchReply, exc: ZringError) -> list[Effect]:
        """A batch that cannot go on: one error reply (late key replies are dropped)."""
        if batch.closed:
            return []
        self._close_batch(batch)
        return [Reply(batch.route, _error(batch.request_id, exc))]

    def _answer_from_own_copies(self, read: _MultiRead, indexes: list[int]) -> list[Effect]:
        """R=1 keys this node replicates: each answer is its own copy, as for a single GET
        (we are one of the key's replicas, so no ring hint)."""
        me, batch = self.config.node_id, read.batch
        results = batch.results
        wires = self.store.get_wire_many([read.keys[i] for i in indexes])
        for index, wire in zip(indexes, wires, strict=True):
            results[index] = _wire_read_body(wire, [me])
        batch.pending -= len(indexes)
        return [] if batch.pending else self._finish_batch(batch)

    def _on_read_many(self, read: _MultiRead, node_id: str, indexes: list[int],
                      reply: Message | None, now: float) -> list[Effect]:
        wires = reply.body.get("records") if reply is not None and \
            reply.type == MsgType.OK else None
        if not (isinstance(wires, list) and len(wires) == len(indexes)
                and all(w is None or _is_read_wire(w, read.keys[i])
                        for w, i in zip(wires, indexes, strict=True))):
            wires = None
        effects: list[Effect] = []
        results = read.batch.results
        # a clock from the future is refused (ours off: it cannot tell)
        bound = timestamp_bound(now, self.config.max_clock_offset_s) if self._clock_ok \
            else 1 << 64
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
                    self.stats["future_timestamps_refused"] += 1
                    del read.replies[index]
                    effects += self._single(read.batch, index, read.request(index), now)
                    continue
                self.clock.observe(wire[2])
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
               for w in wires[1:]) or (first is not None and not self._sticks(
                   key_position(first[0]), len(read.replicas[index]), replies)):
            # the replicas disagree (or agree only in one ring of a change): the single-key
            # path writes the newest back to a write quorum before it answers (rare: a
            # write in flight or one that partly failed)
            del read.replies[index]
            return self._single(read.batch, index, read.request(index), now)
        body = self._with_ring_hint(_wire_read_body(first, list(replies)),
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
        n, quorum = self._quorum_args(message.body, "w", self.config.write_quorum)
        legacy = any(len(item) == 2 for item in items)
        bound = self._check_clock_for_writes(now, legacy) if items else 0
        return self._run_batch(route, message, len(items), lambda batch, effects: (
            self._start_mput(_MultiWrite(batch, quorum, items, raw_n, raw_w, writer), effects,
                             n, bound, now)))

    def _start_mput(self, write: _MultiWrite, effects: list[Effect], n: int, bound: int,
                    now: float) -> list[Effect]:
        me = self.config.node_id
        batch, quorum = write.batch, write.quorum
        by_target: dict[str, list[int]] = {}
        ring, is_up = self.ring, self.members.is_up
        # no ring change under way: each key's one write set is its preference list
        steady = not self._previous_ring and not self._future_ring()
        all_up: dict[tuple, bool] = {}   # preference list -> every replica is up
        max_value, clock_ms = self.config.max_value_bytes, int(now * 1000)
        writer = write.writer
        client_writer = writer.__class__ is str and 0 < len(writer) <= 256
        for index, item in enumerate(write.items):
            key, value = item[0], item[1]
            if key.__class__ is not str or value.__class__ not in (bytes, str) or \
                    self._key_too_long(key) or len(value) > max_value:
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
                sets = self._write_sets(key_position(key), n)
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
                version = self.clock.version(clock_ms, me)
                if version.timestamp > bound:
                    effects += self._single(batch, index, write.request(index), now)
                    continue
                write.wires[index] = [key, value, version.timestamp, me]
                self._note_stamp(version.timestamp)
            else:
                self.clock.observe(ts)
                self._note_stamp(ts)
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
            effects += self._call(target, MsgType.REPLICA_WRITE,
                                  {"records": [wires[i] for i in indexes], "cond": True},
                                  lambda node, reply, t, ix=indexes: self._on_write_many(
                                      write, node, ix, *_batch_write_outcome(reply, len(ix)),
                                      t), now)
        return effects

    def _write_own_copies(self, write: _MultiWrite, indexes: list[int],
                          now: float) -> list[Effect]:
        """Our copies of an MPUT's records, written whether or not the batch has been
        answered meanwhile (the peers' acks may have made its quorums). If our store fails,
        we count as a replica that failed: the peers' writes have left, so each key's
        quorum decides (and no hint is kept in a store that is failing)."""
        wires = write.wires
        me = self.config.node_id
        try:
            answers = self.store.write_if_newer([wires[i] for i in indexes])
        except StorageError as exc:
            self.stats["own_writes_failed"] += len(indexes)
            self.log.error("own_write_failed", keys=len(indexes), error=str(exc))
            return self._on_write_many(write, me, indexes, False, {}, now, keep_hints=False)
        newer = {position: held for position, held in enumerate(answers) if held is not None}
        taken = [index for position, index in enumerate(indexes) if position not in newer]
        if taken:
            self._own_acks.append((self._ticks, lambda t: self._revoke_own_copies(
                write, taken, t)))
        return self._on_write_many(write, me, indexes, True, newer, now)

    def _revoke_own_copies(self, write: _MultiWrite, indexes: list[int],
                           now: float) -> list[Effect]:
        """Our copies of these MPUT keys were not committed after all: they no longer count
        (a key answered already in this cycle is answered again, with the quorum left)."""
        me = self.config.node_id
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

    def _on_write_many(self, write: _MultiWrite, node_id: str, indexes: list[int], ok: bool,
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
                self._keep_hints([Hint(0, node_id, record_from_wire(write.wires[index]),
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
            body = self._put_body([wire[2], wire[3]], acks, write.replicas[index])
            return self._fill_result(write.batch, index, body)
        refused = write.refused.get(index, 0)
        if refused and not acks and write.waiting[index] and \
                refused == len(write.replicas[index]) - write.waiting[index]:
            return []   # refused so far: the others may refuse too (applied nowhere)
        if len(acks) + write.waiting[index] < write.quorum:
            failure = self._write_failure(
                write.items[index][0], write.quorum, acks, [], write.newer.get(index),
                all_refused=write.refused.get(index, 0) == len(write.replicas[index]))
            return self._fill_result(write.batch, index, _error_entry(failure))
        return []

    def _get_body(self, value, version: list | None, served_by: list[str],
                  replicas: list[str]) -> dict:
        """A read's answer (a GET's, or one key's of an MGET): the newest value and version
        (``value`` None with a version: a tombstone, not found)."""
        return self._with_ring_hint(_read_body(value, version, served_by), replicas)

    def _put_body(self, version: list, acks: list[str], replicas: list[str]) -> dict:
        """A write's answer (a PUT's or DELETE's, or one key's of an MPUT)."""
        return self._with_ring_hint({"version": version, "stored_on": list(acks),
                                     "replicated_to": list(replicas)}, replicas)

    def _with_ring_hint(self, body: dict, replicas: list[str]) -> dict:
        if self.config.node_id not in replicas:
            body["ring"] = self.ring.fingerprint()  # a token-aware client's ring is stale
        return body

    def _read_preference(self, node_id: str) -> tuple[bool, str]:
        return node_id != self.config.node_id, node_id

    def _key_too_long(self, key: str) -> bool:
        """Over max_key_bytes in UTF-8 (a key of up to a quarter of it is never encoded)."""
        limit = self.config.max_key_bytes
        return len(key) * 4 > limit and len(key.encode("utf-8", "surrogatepass")) > limit

    def _single(self, batch: BatchReply, index: int, request: Message,
                now: float) -> list[Effect]:
        """One key of a batch through the single-key path; its reply fills its result."""
        slot = Slot(batch, index)
        try:
            validate(message_to_wire(request))  # each key and value as if sent alone
            return self._handlers[request.type](self, slot, request, now)
        except ZringError as exc:
            return [Reply(slot, _error(0, exc))]

    def _fill_result(self, batch: BatchReply, index: int, body: dict) -> list[Effect]:
        if batch.closed or batch.results[index] is not None:
            return []
        batch.results[index] = body
        batch.pending -= 1
        return [] if batch.pending else self._finish_batch(batch)

    def _finish_batch(self, batch: BatchReply) -> list[Effect]:
        """Every key answered: one reply with all the results."""
        self._close_batch(batch)
        # values dominate a result's size: encode to measure only when they come near
        bound = _RESULT_SIZE_BOUND * len(batch.results) + sum(
            _encoded_bound(r.get("value")) for r in batch.results)
        if bound > BATCH_MAX_BYTES and (size := encoded_size(batch.results)) > BATCH_MAX_BYTES:
            # the reply could not be delivered: say so instead
            return [Reply(batch.route, _error(batch.request_id, InvalidRequest(
                f"the reply to this batch would take about {size} bytes: send fewer keys "
                "per batch")))]
        return [Reply(batch.route, Message(MsgType.OK, batch.request_id,
                                           {"results": batch.results}),
                      only_reads=not batch.writes)]

    def _close_batch(self, batch: BatchReply) -> None:
        if not batch.closed:
            batch.closed = True
            self._open_batches -= 1
            self._open_batch_keys -= len(batch.results)

    def _run_batch(self, route, message: Message, count: int,
                   start: Callable[[BatchReply, list[Effect]], list[Effect]]) -> list[Effect]:
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
        self._check_serving()
        if not count:
            return None, [Reply(route, Message(MsgType.OK, message.request_id,
                                               {"results": []}))]
        self._open_batches += 1
        self._open_batch_keys += count
        return BatchReply(route, message.request_id, [None] * count, count,
                          writes=message.type == MsgType.MPUT), []

    def _fill_batches(self, effects: list[Effect]) -> list[Effect]:
        """Replies to the keys of client batches fill their result lists; a batch whose
        every key has answered becomes one reply."""
        if not any(e.__class__ is Reply and e.route.__class__ is Slot for e in effects):
            return effects
        out: list[Effect] = []
        for effect in effects:
            if effect.__class__ is not Reply or effect.route.__class__ is not Slot:
                out.append(effect)
                continue
            slot, reply = effect.route, effect.message
            if not effect.only_reads and reply.type == MsgType.OK:
                slot.batch.writes = True
            body = reply.body if reply.type == MsgType.OK else _error_entry(
                error_from_code(reply.body.get("code", "error"), reply.body.get("message", ""),
                                reply.body.get("details")))
            out += self._fill_result(slot.batch, slot.index, body)
        return out

    def _is_ready(self, now: float) -> bool:
        """A node (re)started with peers coordinates reads and writes only once it heard
        their gossip (or after two gossip intervals): its saved ring may predate a change
        made while it was down, and routing by it could miss the new replicas. A seed
        started fresh waits until it has met every seed (``_load_formed``)."""
        if not self._formed:
            return False
        if not self._ready and (now >= self._ready_at or not self.members.peers()):
            self._ready = True
        return self._ready

    def _release_deferred(self, now: float) -> list[Effect]:
        if not self._deferred:
            return []
        if not self._is_ready(now):
            return self._expire_deferred(now)
        deferred, self._deferred = self._deferred, []
        effects: list[Effect] = []
        for route, frame, _, _ in deferred:   # permitted before they were held
            effects += self.handle_frame(route, frame, now)
        return effects

    def _expire_deferred(self, now: float) -> list[Effect]:
        """Held requests older than request_timeout_s are refused (their client gave up or
        will): a node can wait for a missing seed for as long as it takes."""
        cutoff = now - self.config.request_timeout_s
        if self._deferred[0][2] > cutoff:
            return []
        missing = self._seeds_missing() if not self._formed else []
        why = (f"the cluster is forming: {self.config.node_id} has not met seeds "
               f"{', '.join(missing)} yet" if missing else
               f"{self.config.node_id} is starting and has not heard its peers yet")
        effects: list[Effect] = []
        while self._deferred and self._deferred[0][2] <= cutoff:
            route, _, _, request_id = self._deferred.pop(0)
            self.stats["deferred_expired"] += 1
            effects.append(Reply(route, _error(request_id, Unavailable(f"{why}; retry later"))))
        return effects

    def handle_reply(self, address: str, frame: bytes, now: float) -> list[Effect]:
        """A peer answered one of our requests."""
        try:
            message = decode(frame)
        except ProtocolError as exc:
            self.stats["bad_replies"] += 1
            self.log.warning("reply_rejected", peer=address, error=str(exc))
            return []
        if message.type == MsgType.BATCH:
            effects = []
            for wire in message.body["messages"]:
                try:
                    inner = validate(wire)
                except ProtocolError as exc:
                    self.stats["bad_replies"] += 1
                    self.log.warning("reply_rejected", peer=address, error=str(exc))
                    continue
                effects += self._complete_call(address, inner, now)
        else:
            effects = self._complete_call(address, message, now)
        return self._fill_batches(effects + self._pump_streams(now))

    def _complete_call(self, address: str, message: Message, now: float) -> list[Effect]:
        call = self._calls.pop(message.request_id, None)
        if call is None:
            return []  # late or unknown: its deadline already answered it
        if message.type not in (MsgType.OK, MsgType.ERROR):
            message = None
        try:
            return call.on_reply(call.node_id, message, now)
        except Exception:  # a peer's reply of a shape no check foresaw: drop it, keep serving
            self.stats["bad_replies"] += 1
            self.log.exception("reply_failed", peer=address)
            return []

    def handle_gossip(self, frame: bytes, now: float) -> list[Effect]:
        return self._fill_batches(self._handle_gossip(frame, now))

    def _handle_gossip(self, frame: bytes, now: float) -> list[Effect]:
        try:
            message = decode(frame)
            if message.type != MsgType.GOSSIP:
                raise ProtocolError("not a gossip message")
            records = [Member.from_wire(w) for w in message.body["members"]]
        except ProtocolError as exc:
            self.stats["bad_gossip"] += 1
            self.log.warning("gossip_rejected", error=str(exc))
            return []
        self.stats["gossip_accepted"] += 1
        sender = message.body["sender"]
        if sender in self.members:
            self.members.heard_from(sender, now)
        if not self._ready and sender != self.config.node_id:
            self._ready_at = now  # up to date: release any held requests after this merge
        own = self.members.own
        if any(r.node_id == own.node_id and r.generation >= own.generation for r in records):
            self._confirmed_by.add(sender)
        try:
            return self._merge(records, now) + self._release_deferred(now)
        except Exception:  # never let one gossip message take the node down
            self.stats["bad_gossip"] += 1
            self.log.exception("gossip_failed", sender=sender)
            return []

    def tick(self, now: float) -> list[Effect]:
        return self._fill_batches(self._tick(now))

    def finish_own_work(self, now: float) -> list[Effect]:
        """Before the node stops: the own reads and writes still queued, at once."""
        return self._fill_batches(self._run_own_work(now, self._ticks + 1))

    def _tick(self, now: float) -> list[Effect]:
        if now < self._last_tick - self.config.gossip_interval_s:
            self._clock_stepped_back(now)
        self._last_tick = now
        if self._own_acks:   # those of earlier cycles are committed
            self._own_acks = [entry for entry in self._own_acks if entry[0] >= self._ticks]
        # what earlier cycles queued (work queued from here on waits for the next tick)
        effects: list[Effect] = self._run_own_work(now, self._ticks) if self._own_work else []
        while self._call_deadlines and self._call_deadlines[0][0] <= now:
            _, request_id = heapq.heappop(self._call_deadlines)
            call = self._calls.pop(request_id, None)
            if call is not None:
                self.stats["peer_timeouts"] += 1
                try:
                    effects += call.on_reply(call.node_id, None, now)
                except Exception:  # e.g. a hint that could not be stored: keep serving
                    self.stats["handler_errors"] += 1
                    self.log.exception("timeout_handling_failed", peer=call.node_id)
        effects += self._check_liveness(now)
        for due, step in self._housekeeping(now):
            if due:
                effects += self._guarded(step, now)
        self._ticks += 1
        return effects

    def _housekeeping(self, now: float):
        """The timers' work of one tick, in order: (due now, step)."""
        return (
            (now >= self._next_hint_replay_at, self._replay_hints),
            (now >= self._next_gossip_at, self._gossip),
            (now >= self._next_seed_contact_at, self._contact_seeds),
            (now >= self._next_clock_check_at, self._check_clocks),
            (not self._formed, self._check_formed),
            (True, self._save_clock),
            (True, self._advance_join),
            (True, self._advance_leave),
            (True, self._pump_streams),
            (True, self._step_trees),
            (True, self._step_stats),
            (True, self._check_settled),
            (True, self._release_deferred),
            (now >= self._next_repair_at, self._background_repair),
            (now >= self._next_gc_at, self._collect_tombstones),
            (True, self._save_changed_members),   # last: whatever changed them this tick
        )

    def _guarded(self, step: Callable[[float], list[Effect] | None], now: float) -> list[Effect]:
        """One housekeeping step; if it fails (the store failing, say), the others still
        run and the node keeps serving: the step is tried again on a later tick."""
        try:
            return step(now) or []
        except Exception as exc:
            name = step.__name__.lstrip("_")
            self.stats["housekeeping_errors"] += 1
            if isinstance(exc, StorageError):
                self.log.error("housekeeping_failed", step=name, error=str(exc))
            else:
                self.log.exception("housekeeping_failed", step=name)
            return []

    def commit_failed(self, effects: list[Effect], exc: Exception, now: float) -> list[Effect]:
        """The loop cycle's group commit failed (a full disk, say): nothing it wrote is
        stored, so none of its replies may say otherwise. Each becomes a storage error (a
        peer counts it as a failed replica; a client sees the request fail), our own writes
        of the cycle stop counting towards their quorums, requests to peers still leave,
        and transfers resume from what was committed."""
        self.stats["commits_failed"] += 1
        self.log.error("commit_failed", error=str(exc), effects=len(effects))
        failure = StorageError(f"{self.config.node_id} could not commit to its store: {exc}")
        cycle = self._ticks - 1   # the tick that ended the cycle counted itself
        revoked = [revoke for made, revoke in self._own_acks if made >= cycle]
        self._own_acks = []
        for revoke in revoked:
            effects = effects + revoke(now)
        out: list[Effect] = []
        for effect in effects:
            if effect.__class__ is not Reply or effect.only_reads:
                out.append(effect)
            elif effect.message.type == MsgType.BATCH:
                out.append(Reply(effect.route, Message(MsgType.BATCH, 0, {"messages": [
                    message_to_wire(_error(wire[1], failure))
                    for wire in effect.message.body["messages"]]})))
            elif effect.message.type == MsgType.ERROR:
                out.append(effect)
            else:
                out.append(Reply(effect.route, _error(effect.message.request_id, failure)))
        self._restart_transfers()
        if self._clock_saving is not None and self._clock_saving[0] >= cycle:
            self._clock_saved_until = self._clock_saving[1]   # that ceiling is not on disk
            # nor is what this cycle stamped: no ceiling is owed for it
            self._stamped = min(self._stamped,
                                max(0, self._clock_saved_until - self._clock_lease))
        self._clock_saving = None
        if self._members_saved_at_tick >= cycle:
            self._members_unsaved = True   # that save is not on disk
            self._meta_retry_at = now + 1.0   # nor retried in every cycle while it fails
        return self._fill_batches(out)

    def _restart_transfers(self) -> None:
        """After a failed commit: pulls start again from their last committed progress (a
        join from its saved cursor, a takeover from the start: applying a record twice is
        harmless under last writer wins)."""
        if self._join_pull is not None:
            self._join_pull.cancelled = True
            self._join_pull = None
            self._join_intervals = []
            self._saved_records = -1
        self._takeovers = [self._new_pull(pull.name, pull.groups) for pull in self._takeovers]

    def next_deadline(self) -> float:
        times = [self._next_gossip_at, self._next_hint_replay_at, self._next_clock_check_at]
        if self._deferred:
            if self._formed:   # unformed: nothing but a seed's gossip makes it ready
                times.append(self._ready_at)
            times.append(self._deferred[0][2] + self.config.request_timeout_s)
        detector = self.members.detector
        for member in self.members.peers():
            change_at = detector.next_change_at(member.node_id, self._last_tick)
            if change_at is not None:
                times.append(change_at)
        deadlines, calls = self._call_deadlines, self._calls
        # calls already answered leave their deadline in the heap: drop those from its top,
        # or the loop would wake for each of them request_timeout_s after a burst
        while deadlines and deadlines[0][1] not in calls:
            heapq.heappop(deadlines)
        if deadlines:
            times.append(deadlines[0][0])
        if self._tree_jobs or self._stats_jobs or self._wipe or self._own_work:
            times.append(self._last_tick)  # keep hashing or counting: the next slice at once
        if self._drops and self._settled_at is not None and \
                not self._change_under_way(self._last_tick):
            settled_at = self._drops[0].settled_at
            times.append(self._last_tick if settled_at is None
                         else max(self._last_tick, settled_at + self.config.request_timeout_s))
        times += [self._next_repair_at, self._next_gc_at]
        if self._needs_seed_contact():
            times.append(self._next_seed_contact_at)
        for stream in self._streams():
            retry = stream.next_retry_at()
            if retry is not None:
                times.append(retry)
        return min(times)

    # ------------------------------------------------------------------ peer calls

    def _call(self, node_id: str, msg_type: MsgType, body: dict, on_reply: ReplyFn,
              now: float, timeout_s: float | None = None) -> list[Effect]:
        member = self.members.get(node_id)
        if member is None:
            return on_reply(node_id, None, now)
        return self._call_address(member.address, node_id, msg_type, body, on_reply, now,
                                  timeout_s)

    def _call_address(self, address: str, node_id: str, msg_type: MsgType, body: dict,
                      on_reply: ReplyFn, now: float,
                      timeout_s: float | None = None) -> list[Effect]:
        request_id = next(self._ids)
        deadline = now + (timeout_s or self.config.request_timeout_s)
        self._calls[request_id] = _Call(node_id, deadline, on_reply)
        heapq.heappush(self._call_deadlines, (deadline, request_id))
        return [Send(address, Message(msg_type, request_id, body))]

    def _stream_call(self, now: float):
        def call(node_id: str, msg_type: MsgType, body: dict, on_reply: ReplyFn) -> list:
            return self._call(node_id, msg_type, body, on_reply, now)
        return call

    # ------------------------------------------------------------------ client: data

    def _on_put(self, route, message: Message, now: float) -> list[Effect]:
        self._check_serving()
        body = message.body
        key = self._check_key(body["key"])
        value = body["value"]
        if len(value) > self.config.max_value_bytes:
            raise InvalidRequest(f"value of {len(value)} bytes exceeds the limit of "
                                 f"{self.config.max_value_bytes}")
        return self._coordinate_write(route, message, key, value, now)

    def _on_delete(self, route, message: Message, now: float) -> list[Effect]:
        self._check_serving()
        key = self._check_key(message.body["key"])
        return self._coordinate_write(route, message, key, None, now)

    def _coordinate_write(self, route, message: Message, key: str, value, now: float):
        n, quorum = self._quorum_args(message.body, "w", self.config.write_quorum)
        position = key_position(key)
        sets = self._write_sets(position, n)
        natural = sets[0]
        if len(natural) < quorum:
            raise Unavailable(f"the ring has {len(natural)} nodes for this key, "
                              f"fewer than w={quorum}")
        body = message.body
        legacy = body.get("ts") is None
        bound = self._check_clock_for_writes(now, legacy)
        version = self._write_version(body.get("ts"), body.get("writer"), now, bound)
        record = Record(key, value, version, position)
        targets = list(dict.fromkeys(x for replicas in sets for x in replicas))
        live = [x for x in targets if self.members.is_up(x, now)]
        down = [x for x in targets if x not in live]
        holders, local_hints = self._hint_holders(position, n, down, targets, now)
        # Strict quorum: only replicas count towards W. A stand-in holding a hint for a down
        # replica gets the write too (hinted handoff), but its ack does not count: with
        # sloppy quorums (Dynamo's) a read of R real replicas can miss a write acknowledged
        # by stand-ins, which the deterministic simulation showed under partitions.
        counted = live
        op = _Quorum(route, message.request_id, message.type, key, quorum, counted, record,
                     replicas=targets, hinted_for=holders, sets=sets)
        op_id = next(self._ids)
        self._quorums[op_id] = op
        effects: list[Effect] = []
        wire = [record_to_wire(record)]
        if local_hints:
            self._keep_hints([Hint(0, target, record, int(now * 1000))
                              for target in local_hints])
        for target in live:
            if target == self.config.node_id:
                effects += self._write_own(op_id, record, now)
            else:
                effects += self._call(target, MsgType.REPLICA_WRITE,
                                      {"records": wire, "cond": True},
                                      lambda node, reply, t: self._on_write_ack(
                                          op_id, node, *_write_outcome(reply), t), now)
        for holder, target in holders.items():
            if holder == self.config.node_id:
                self._keep_hints([Hint(0, target, record, int(now * 1000))])
                effects += self._on_write_ack(op_id, holder, True, None, now)
            else:
                effects += self._call(holder, MsgType.HINT_WRITE,
                                      {"target": target, "records": wire},
                                      lambda node, reply, t: self._on_write_ack(
                                          op_id, node, reply is not None
                                          and reply.type == MsgType.OK, None, t), now)
        if not op.counted:
            effects += self._on_write_ack(op_id, "", False, None, now)  # nobody to ask
        return effects

    def _check_clock_for_writes(self, now: float, legacy: bool) -> int:
        """Refuse to coordinate writes while our clock is off (measured against our
        peers'); returns the greatest timestamp a write may carry. ``legacy``: the write
        has no client timestamp, so ours stamps it: only with a clock checked already."""
        verdict = self._verdict
        if verdict is None:   # new samples or a clock check since: judged again
            verdict = self._verdict = self._clock_verdict(now)
        if not verdict.ok:
            self.stats["writes_refused_clock"] += 1
            raise ClockSkew(verdict.describe(self.config.node_id,
                                             self.config.max_clock_offset_s),
                            offset_s=round(verdict.offset_s, 3),
                            node=self.config.node_id)   # ask another coordinator
        if legacy and verdict.measured == 0 and self._up_peers(now):
            raise ClockSkew(f"{self.config.node_id} has not measured its clock against its "
                            "peers' yet; retry in a moment", node=self.config.node_id)
        return timestamp_bound(now, self.config.max_clock_offset_s)

    def _write_version(self, ts, writer, now: float, bound: int) -> Version:
        """A write's version: the client's timestamp and writer id, checked (not from the
        future: our clock plus the maximum offset), or our hybrid clock's."""
        if ts is None:
            version = self.clock.version(int(now * 1000), self.config.node_id)
            if version.timestamp > bound:   # our hybrid clock ran ahead before a restart
                raise ClockSkew(
                    f"{self.config.node_id}'s hybrid clock is "
                    f"{seconds_ahead(version.timestamp, now):.3f} s ahead of its wall clock; "
                    "send writes with a client timestamp, or wait for the wall clock",
                    offset_s=round(seconds_ahead(version.timestamp, now), 3))
            self._note_stamp(version.timestamp)
            return version
        if type(ts) is not int or not 0 <= ts < 1 << 63 or writer.__class__ is not str \
                or not 0 < len(writer) <= 256:
            raise InvalidRequest("a write's ts must be an int in [0, 2**63) with a writer id "
                                 "of 1 to 256 characters")
        if ts > bound:
            self.stats["timestamps_refused"] += 1
            ahead = seconds_ahead(ts, now)
            raise ClockSkew(f"the write's timestamp is {ahead:.3f} s ahead of "
                            f"{self.config.node_id}'s clock (max_clock_offset_s "
                            f"{self.config.max_clock_offset_s:g}): is the client's clock "
                            "synchronized (NTP)?", offset_s=round(ahead, 3))
        self.clock.observe(ts)
        self._note_stamp(ts)
        return Version(ts, writer)

    def _write_own(self, op_id: int, record: Record, now: float) -> list[Effect]:
        """Our replica of a write we coordinate: taken unless we hold a newer version. If
        our store fails, we count as a replica that failed (no hint kept in it)."""
        me = self.config.node_id
        try:
            newer = self.store.write_if_newer([record_to_wire(record)])[0]
        except StorageError as exc:
            self.stats["own_writes_failed"] += 1
            self.log.error("own_write_failed", keys=1, error=str(exc))
            return self._on_write_ack(op_id, me, False, None, now, keep_hint=False)
        if newer is not None:
            return self._on_write_ack(op_id, me, False, newer, now)
        self._own_acks.append((self._ticks, lambda t: self._revoke_own_write(op_id, t)))
        return self._on_write_ack(op_id, me, True, None, now)

    def _revoke_own_write(self, op_id: int, now: float) -> list[Effect]:
        """Our write of ``op_id`` was not committed after all: it no longer counts."""
        op = self._quorums.get(op_id)
        me = self.config.node_id
        if op is None or me not in op.acks:
            return []
        op.acks.remove(me)
        op.failed.append(me)
        return self._answer_write(op_id, op)

    def _keep_hints(self, hints: list[Hint]) -> None:
        """Store hints for replicas that are down; a store that fails only costs the hint
        (repair brings the replica up to date)."""
        try:
            self.store.add_hints(hints)
        except StorageError as exc:
            self.stats["hints_lost"] += len(hints)
            self.log.error("hint_not_stored", count=len(hints), error=str(exc))
            return
        self.stats["hints_stored"] += len(hints)

    def _write_sets(self, position: int, n: int) -> list[list[str]]:
        """The key's preference list in each ring a coordinator may be using right now.

        While a join or leave streams (the future ring) and until every member routes by the
        new ring (the previous one), a write must reach a quorum in each: then a read by any
        coordinator, on either ring, meets it (joint quorums, as in Raft's joint consensus;
        Cassandra adds pending nodes to the write's block-for)."""
        sets = [self.ring.get_nodes_at(position, n)]
        for other in (self._previous_ring, self._future_ring()):
            if other is not None and len(other):
                # a member that left refuses writes; what it held was handed over already
                replicas = [x for x in other.get_nodes_at(position, n)
                            if x in self.members
                            and self.members[x].status != MemberStatus.LEFT]
                if replicas and replicas not in sets:
                    sets.append(replicas)
        return sets

    def _hint_missed_write(self, op: _Quorum, node_id: str, now: float) -> None:
        """A replica (or its stand-in) did not acknowledge in time: keep the write as a hint
        here, as Cassandra's coordinator does, so a replica that died before the detector
        noticed still gets it once it is back."""
        target = op.hinted_for.get(node_id, node_id)
        if target in op.replicas and target != self.config.node_id:
            self._keep_hints([Hint(0, target, op.record, int(now * 1000))])

    def _hint_holders(self, position: int, n: int, down: list[str], targets: list[str],
                      now: float):
        """For each down replica, the next live node past the preference list that will hold
        its write as a hint; with no such node, we hold the hint ourselves (uncounted). A
        node that is itself a target never stands in: its one ack must count once."""
        if not down:
            return {}, []
        spares = [x for x in self.ring.get_nodes_at(position, len(self.ring))[n:]
                  if x not in targets and self.members.is_up(x, now)]
        holders: dict[str, str] = {}
        local: list[str] = []
        for target in down:
            heard = self.members.last_heard(target)
            if heard is not None and now - heard > self.config.hint_window_s:
                self.stats["hints_skipped_window"] += 1
                continue  # down past the hint window: repair brings it back
            if spares:
                holders[spares.pop(0)] = target
            else:
                local.append(target)
        return holders, local

    def _on_write_ack(self, op_id: int, node_id: str, ok: bool, newer: list | None,
                      now: float, keep_hint: bool = True) -> list[Effect]:
        """A replica's answer to a write: ``ok``, or failed (``newer``: it refused, holding
        that newer version; otherwise it failed or was silent, and we keep a hint)."""
        op = self._quorums.get(op_id)
        if op is None:
            return []
        if node_id in op.counted and node_id not in op.acks and node_id not in op.failed:
            (op.acks if ok else op.failed).append(node_id)
            if newer is not None:
                op.refused += 1
                if op.newer is None or newer > op.newer:
                    op.newer = newer
            elif not ok and keep_hint:
                self._hint_missed_write(op, node_id, now)
        return self._answer_write(op_id, op)

    def _answer_write(self, op_id: int, op: _Quorum) -> list[Effect]:
        effects: list[Effect] = []
        if not op.answered:
            acked, possible = self._write_quorum_state(op)
            if acked:
                op.answered = True
                body = self._put_body(list(op.record.version), op.acks, op.sets[0])
                effects.append(Reply(op.route, Message(MsgType.OK, op.request_id, body)))
            elif not possible and op.refused == len(op.failed) and not op.acks and \
                    len(op.failed) < len(op.counted):
                pass   # refused so far: the others may refuse too (then it was applied nowhere)
            elif not possible:
                op.answered = True
                effects.append(Reply(op.route, _error(op.request_id, self._write_failure(
                    op.key, op.needed, op.acks, op.failed, op.newer, len(op.sets),
                    all_refused=op.refused == len(op.counted)))))
        if len(op.acks) + len(op.failed) >= len(op.counted):
            self._quorums.pop(op_id, None)
        return effects

    def _write_failure(self, key: str, needed: int, acks: list[str], failed: list[str],
                       newer: list | None, sets: int = 1,
                       all_refused: bool = False) -> ZringError:
        """Why a write could not be acknowledged: replicas refused it, holding a newer
        version, or too few answered. ``all_refused``: every replica asked refused it, so
        it was applied nowhere (a client may then stamp it again and resend it as new)."""
        if newer is not None:
            self.stats["writes_refused_newer"] += 1
            where = ("no replica took it" if all_refused else
                     f"it may have been applied on {', '.join(acks) or 'a replica'} and "
                     "superseded")
            return VersionConflict(
                f"replicas of {key!r} hold a newer version {newer} than this write's, from a "
                f"concurrent write or a clock ahead of this client's: {where}; put again "
                "to write over it", held=list(newer), acked=list(acks),
                all_refused=all_refused)
        self.stats["writes_unavailable"] += 1
        during = (f" in each of the {sets} replica sets of a membership change"
                  if sets > 1 else "")
        return Unavailable(
            f"write could not reach w={needed} replicas{during} (acked by "
            f"{', '.join(acks) or 'none'}; {', '.join(failed)} failed); it may still be "
            "applied", acked=list(acks), failed=list(failed))

    @staticmethod
    def _write_quorum_state(op: _Quorum) -> tuple[bool, bool]:
        """(every replica set has its quorum of acks, every set can still get it)."""
        if len(op.sets) == 1 and not op.hinted_for:  # the common case: no change under way
            return (len(op.acks) >= op.needed,
                    len(op.counted) - len(op.failed) >= op.needed)
        cover = op.hinted_for
        acked = {cover.get(x, x) for x in op.acks}
        open_ = {cover.get(x, x) for x in op.counted if x not in op.failed}
        done = possible = True
        for replicas in op.sets:
            needed = min(op.needed, len(replicas))
            if sum(1 for x in replicas if x in acked) < needed:
                done = False
            if sum(1 for x in replicas if x in open_) < needed:
                possible = False
        return done, possible

    def _on_get(self, route, message: Message, now: float) -> list[Effect]:
        self._check_serving()
        key = self._check_key(message.body["key"])
        n, quorum = self._quorum_args(message.body, "r", self.config.read_quorum)
        position = key_position(key)
        natural = self.ring.get_nodes_at(position, n)
        live = [x for x in natural if self.members.is_up(x, now)]
        if len(live) < quorum:
            down = [x for x in natural if x not in live]
            raise Unavailable(f"{len(live)} of the key's {len(natural)} replicas are up "
                              f"({', '.join(down) or 'too few nodes'} down), fewer than "
                              f"r={quorum}")
        # Ask only r replicas, ourselves first (no hop); the others stand by and are asked
        # as soon as one of those fails, as Cassandra reads only the replicas it needs.
        me = self.config.node_id
        if quorum == 1 and me in live:  # our own copy is the answer: no quorum to track
            # (we are one of the key's replicas: no ring hint)
            body = _wire_read_body(self.store.get_wire(key), [me])
            return [Reply(route, Message(MsgType.OK, message.request_id, body),
                          only_reads=True)]
        if me in live:
            live.remove(me)
            live.insert(0, me)
        op = _Quorum(route, message.request_id, MsgType.GET, key, quorum, live[:quorum],
                     replicas=natural, spares=live[quorum:])
        op_id = next(self._ids)
        self._quorums[op_id] = op
        effects: list[Effect] = []
        for target in live[:quorum]:
            effects += self._read_from(op_id, op, target, now)
        return effects

    def _read_from(self, op_id: int, op: _Quorum, target: str, now: float) -> list[Effect]:
        if target == self.config.node_id:
            try:
                record = self.store.get(op.key)
            except StorageError as exc:   # we count as a replica that failed
                self.log.error("own_read_failed", error=str(exc))
                return self._on_read_reply(op_id, target, False, None, now)
            return self._on_read_reply(op_id, target, True, record, now)
        return self._call(target, MsgType.REPLICA_READ, {"key": op.key},
                          lambda node, reply, t: self._on_remote_read(op_id, node, reply, t),
                          now)

    def _on_remote_read(self, op_id: int, node_id: str, reply: Message | None, now: float):
        if reply is None or reply.type != MsgType.OK:
            return self._on_read_reply(op_id, node_id, False, None, now)
        wire = reply.body.get("record")
        try:
            record = None if wire is None else record_from_wire(wire)
            if record is not None and self._clock_ok:   # ours off: it cannot tell
                self._check_peer_timestamp(record.version.timestamp, now)
        except (ProtocolError, ClockSkew):
            return self._on_read_reply(op_id, node_id, False, None, now)
        if record is not None:
            self.clock.observe(record.version.timestamp)
        return self._on_read_reply(op_id, node_id, True, record, now)

    def _on_read_reply(self, op_id: int, node_id: str, ok: bool, record: Record | None,
                       now: float) -> list[Effect]:
        op = self._quorums.get(op_id)
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
                if op.answered or op.newest is not None or op_id not in self._quorums:
                    return effects
        if len(op.replies) >= op.needed:
            newest = _newest(op.replies.values())
            if newest is not None and (
                    any(r is None or r.version != newest.version for r in op.replies.values())
                    or not self._sticks(newest.position, len(op.replicas), op.replies)):
                return effects + self._write_back(op_id, op, newest, now)
            return effects + self._answer_read(op_id, op, newest)
        if len(op.counted) - len(op.failed) < op.needed:
            op.answered = True
            del self._quorums[op_id]
            self.stats["reads_unavailable"] += 1
            effects.append(Reply(op.route, _error(op.request_id, Unavailable(
                f"read reached {len(op.replies)} of r={op.needed} replicas "
                f"({', '.join(op.failed)} failed)"))))
        return effects

    def _sticks(self, position: int, n: int, holders) -> bool:
        """Replicas that agree on a value hold it in a write quorum of every ring a later
        read may use: always when no ring change is under way (R replicas of the one ring
        are a quorum); during one, they must be in each ring's preference list too, or a
        read by the other ring could miss it."""
        if self._previous_ring is None and self._future_ring() is None:
            return True
        return _quorum_in_each(self._write_sets(position, n), set(holders),
                               self.config.write_quorum)

    def _answer_read(self, op_id: int, op: _Quorum, newest: Record | None) -> list[Effect]:
        op.answered = True
        self._quorums.pop(op_id, None)
        body = self._get_body(None if newest is None else newest.value,
                              None if newest is None else list(newest.version),
                              list(op.replies), op.replicas)
        # counting our own write-back, it stands only if that is committed
        return [Reply(op.route, Message(MsgType.OK, op.request_id, body),
                      only_reads=not op.wrote_own)]

    def _write_back(self, op_id: int, op: _Quorum, newest: Record, now: float) -> list[Effect]:
        """The replicas that answered disagree: write the newest back until a write quorum
        of the key's replicas holds it, then answer (Cassandra's blocking read repair; the
        read phase of an ABD register). A later read, meeting that quorum, cannot return
        an older value than this one did."""
        op.newest = newest
        op.holders = {node for node, record in op.replies.items()
                      if record is not None and record.version == newest.version}
        # during a ring change, a write quorum in each ring some coordinator may read by
        op.sets = self._write_sets(newest.position, len(op.replicas))
        needed = self.config.write_quorum
        me = self.config.node_id
        targets = [x for x in dict.fromkeys(x for replicas in op.sets for x in replicas)
                   if x not in op.holders and (x == me or self.members.is_up(x, now))]
        if not _quorum_in_each(op.sets, op.holders | set(targets), needed):
            return self._write_back_failed(op_id, op, needed)
        self.stats["read_repairs"] += len(targets)
        op.writing_back = len(targets)
        wire = [record_to_wire(newest)]
        effects: list[Effect] = []
        for target in targets:
            if target == me:
                try:
                    self.store.put(newest)
                except StorageError as exc:
                    self.log.error("own_write_failed", keys=1, error=str(exc))
                    effects += self._on_written_back(op_id, target, False, now)
                    continue
                op.wrote_own = True
                self._own_acks.append((self._ticks, lambda t: self._revoke_own_write_back(
                    op_id, t)))
                effects += self._on_written_back(op_id, target, True, now)
            else:
                effects += self._call(target, MsgType.REPLICA_WRITE, {"records": wire},
                                      lambda node, reply, t: self._on_written_back(
                                          op_id, node, reply is not None
                                          and reply.type == MsgType.OK, t), now)
        return effects

    def _on_written_back(self, op_id: int, node_id: str, ok: bool, now: float):
        op = self._quorums.get(op_id)
        if op is None or op.answered:
            return []
        op.writing_back -= 1
        if ok:
            op.holders.add(node_id)
        needed = self.config.write_quorum
        if _quorum_in_each(op.sets, op.holders, needed):
            return self._answer_read(op_id, op, op.newest)
        if op.writing_back <= 0:
            return self._write_back_failed(op_id, op, needed)
        return []

    def _revoke_own_write_back(self, op_id: int, now: float) -> list[Effect]:
        """Our write-back copy was not committed: we do not hold the newest after all."""
        op = self._quorums.get(op_id)
        if op is None or op.answered:
            return []
        op.holders.discard(self.config.node_id)
        if op.writing_back <= 0:
            return self._write_back_failed(op_id, op, self.config.write_quorum)
        return []

    def _write_back_failed(self, op_id: int, op: _Quorum, needed: int) -> list[Effect]:
        op.answered = True
        self._quorums.pop(op_id, None)
        self.stats["reads_unavailable"] += 1
        return [Reply(op.route, _error(op.request_id, Unavailable(
            f"the replicas of {op.key!r} disagree and the newest version could not be "
            f"written back to w={needed} of them (held by {', '.join(sorted(op.holders))})")))]

    def _check_serving(self) -> None:
        """A node that left (or was removed) holds no replicas: it must not pretend to."""
        if self.members.own.status == MemberStatus.LEFT:
            raise NotMember(f"{self.config.node_id} has left the cluster")

    def _check_key(self, key: str) -> str:
        if self._key_too_long(key):
            size = len(key.encode("utf-8", "surrogatepass"))
            raise InvalidRequest(f"key of {size} bytes exceeds the limit of "
                                 f"{self.config.max_key_bytes}")
        return key

    def _quorum_args(self, body: dict, quorum_name: str, default_quorum: int):
        n = body.get("n") or self.config.replicas
        quorum = body.get(quorum_name) or min(default_quorum, n)
        if not 1 <= quorum <= n:
            raise InvalidRequest(f"{quorum_name}={quorum} must be between 1 and n={n}")
        if n > 64:
            raise InvalidRequest(f"n={n} exceeds 64 replicas")
        return n, quorum

    def _future_ring(self) -> HashRing | None:
        joining = self.members.with_status(MemberStatus.JOINING)
        leaving = self.members.with_status(MemberStatus.LEAVING)
        if not joining and not leaving:
            return None
        if self._future is None:
            future = self.ring.copy()
            for member in joining:
                future.add_node(member.node_id, member.weight)
            for member in leaving:
                if member.node_id in future:
                    future.remove_node(member.node_id)
            self._future = future
        return self._future

    # ------------------------------------------------------------------ peer: data

    def _on_replica_write(self, route, message: Message, now: float) -> list[Effect]:
        """Records from a peer. A client write's (``cond``) is taken only where we hold no
        newer version; the reply names the others. Other records (read repair, hints,
        repair) keep the newer of the two, as every copy of a key does."""
        self._check_serving()
        items = message.body["records"]
        self._check_record_sizes(items)
        newest = max((item[2] for item in items if type(item[2]) is int), default=None)
        if newest is not None:
            self._check_peer_timestamp(newest, now)
        if message.body.get("cond"):
            answers = self.store.write_if_newer(items)  # checks each record's fields
            refused = [[index, *held] for index, held in enumerate(answers) if held is not None]
            body = {"received": len(items) - len(refused)}
            if refused:
                body["newer"] = refused
                self.stats["replica_writes_refused_newer"] += len(refused)
        else:
            received, _ = self.store.put_wire(items)  # checks each record's fields
            body = {"received": received}
        if newest is not None:
            self.clock.observe(newest)
            self._note_stamp(newest)
        return [Reply(route, Message(MsgType.OK, message.request_id, body))]

    def _check_peer_timestamp(self, timestamp: int, now: float) -> None:
        """A timestamp beyond our clock plus the maximum offset comes from a clock that is
        off (the sender's, or ours): refused and counted, never stored or observed (it would
        carry our hybrid clock, and every write after it, into the future)."""
        if timestamp > timestamp_bound(now, self.config.max_clock_offset_s):
            self.stats["future_timestamps_refused"] += 1
            ahead = seconds_ahead(timestamp, now)
            self.log.warning("future_timestamp_refused", seconds_ahead=round(ahead, 3))
            raise ClockSkew(f"a record's timestamp is {ahead:.3f} s ahead of "
                            f"{self.config.node_id}'s clock (max_clock_offset_s "
                            f"{self.config.max_clock_offset_s:g})", offset_s=round(ahead, 3))

    def _check_record_sizes(self, items: list) -> None:
        max_value = self.config.max_value_bytes
        for item in items:
            if item.__class__ is not list or len(item) != 4:
                raise ProtocolError("a record must be [key, value, timestamp, writer]")
            key, value = item[0], item[1]
            if (key.__class__ is str and self._key_too_long(key)) or (
                    value is not None and hasattr(value, "__len__")
                    and len(value) > max_value):
                raise InvalidRequest("record exceeds the key or value size limit")

    def _records_from_peer(self, items: list, now: float) -> list[Record]:
        records = []
        for item in items:
            record = record_from_wire(item)
            if len(record.key.encode("utf-8", "surrogatepass")) > self.config.max_key_bytes or (
                    record.value is not None
                    and len(record.value) > self.config.max_value_bytes):
                raise InvalidRequest("record exceeds the key or value size limit")
            records.append(record)
        if records:
            newest = max(r.version.timestamp for r in records)
            self._check_peer_timestamp(newest, now)
            self.clock.observe(newest)
            self._note_stamp(newest)
        return records

    def _on_replica_read(self, route, message: Message, now: float) -> list[Effect]:
        self._check_serving()
        record = self.store.get(message.body["key"])
        body = {"record": None if record is None else record_to_wire(record)}
        return [Reply(route, Message(MsgType.OK, message.request_id, body), only_reads=True)]

    def _on_replica_read_many(self, route, message: Message, now: float) -> list[Effect]:
        self._check_serving()
        keys = message.body["keys"]
        if len(keys) > MAX_BATCH_KEYS or any(k.__class__ is not str for k in keys):
            raise ProtocolError(f"keys must be at most {MAX_BATCH_KEYS} strings")
        wires = self.store.get_wire_many(keys)
        if encoded_size(wires) > BATCH_MAX_BYTES:  # the coordinator reads these one by one
            raise InvalidRequest("these records are too large for one reply")
        return [Reply(route, Message(MsgType.OK, message.request_id, {"records": wires}),
                      only_reads=True)]

    def _on_hint_write(self, route, message: Message, now: float) -> list[Effect]:
        target = message.body["target"]
        records = self._records_from_peer(message.body["records"], now)
        stored = self.store.add_hints(Hint(0, target, record, int(now * 1000))
                                      for record in records)
        self.stats["hints_stored"] += stored
        return [Reply(route, Message(MsgType.OK, message.request_id, {"stored": stored}))]

    def _on_range_pull(self, route, message: Message, now: float) -> list[Effect]:
        """A page of our records in the given intervals, after a cursor position."""
        self._check_serving()  # a node that left is wiping its store: its pages are partial
        body = message.body
        limit = min(max(body["limit"], 1), self.config.stream_batch_records)
        records, more, last = self._scan_intervals(body["intervals"], body.get("after"), limit,
                                                   None)
        reply = {"records": [record_to_wire(r) for r in records], "more": more, "last": last}
        return [Reply(route, Message(MsgType.OK, message.request_id, reply), only_reads=True)]

    def _scan_intervals(self, intervals: list, after: int | None, limit: int, keep):
        """Up to ``limit`` scanned records (those ``keep`` accepts) in sorted ``intervals``
        after position ``after``; returns (records, more, last position scanned)."""
        if len(intervals) > 65_536:
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
            page = self.store.scan_range(low, high, after=after, limit=limit - scanned)
            for index, record in enumerate(page):
                scanned += 1
                last = record.position
                if keep is None or keep(record.position):
                    records.append(record)
                    size += record_size(record)
                following = page[index + 1] if index + 1 < len(page) else None
                if size >= self.config.stream_batch_bytes and (
                        following is None or following.position != record.position):
                    more = True
                    break
            if more or scanned >= limit:
                more = True
                break
        return records, more, last

    # ------------------------------------------------------------------ client: cluster

    def _on_ping(self, route, message: Message, now: float) -> list[Effect]:
        body = {"node_id": self.config.node_id, "status": self.members.own.status.name.lower()}
        return [Reply(route, Message(MsgType.OK, message.request_id, body), only_reads=True)]

    def _on_stats(self, route, message: Message, now: float) -> list[Effect]:
        """This node's counters (rejected frames, refused connections, forbidden requests,
        dropped sends...), each since the node started; what its store holds, exact; and
        its clock's verdict."""
        counters = dict(self.stats)
        counters["member_records_refused"] = self.members.records_refused
        body = {"node_id": self.config.node_id, "counters": counters,
                **self._own_figures(now)}
        return [Reply(route, Message(MsgType.OK, message.request_id, body), only_reads=True)]

    def _own_figures(self, now: float) -> dict:
        held = self.store.stats()
        verdict = self._clock_verdict(now)
        return {"store": {"keys": held.keys, "tombstones": held.tombstones,
                          "bytes": held.bytes, "hints": held.hints},
                "clock": {"ok": verdict.ok, "offset_s": round(verdict.offset_s, 4),
                          "peers_measured": verdict.measured}}

    def _on_ring_state(self, route, message: Message, now: float) -> list[Effect]:
        body = {
            "vnodes": self.config.vnodes,
            "replicas": self.config.replicas,
            "write_quorum": self.config.write_quorum,
            "read_quorum": self.config.read_quorum,
            "fingerprint": self.ring.fingerprint(),
            "nodes": [{"node_id": m.node_id, "weight": m.weight, "address": m.address}
                      for m in self.members.all() if m.in_ring],
            "members": self._member_rows(now, {self.config.node_id: self._own_figures(now)}),
        }
        return [Reply(route, Message(MsgType.OK, message.request_id, body), only_reads=True)]

    def _on_cluster_status(self, route, message: Message, now: float) -> list[Effect]:
        """Every member's row; the figures of each live member (keys, bytes, hints, clock)
        asked of it now, so they are exact when asked (a member that does not answer in
        time shows what it last gossiped)."""
        figures = {self.config.node_id: self._own_figures(now)}
        peers = self._up_peers(now)

        def answer(t: float) -> list[Effect]:
            body = {"node_id": self.config.node_id, "members": self._member_rows(t, figures),
                    "fingerprint": self.ring.fingerprint()}
            return [Reply(route, Message(MsgType.OK, message.request_id, body), only_reads=True)]
        if not peers:
            return answer(now)
        waiting = set(peers)

        def on_stats(node: str, reply: Message | None, t: float) -> list[Effect]:
            waiting.discard(node)
            found = _figures_of(reply)
            if found is not None:
                figures[node] = found
            return [] if waiting else answer(t)
        effects: list[Effect] = []
        for peer in peers:
            effects += self._call(peer, MsgType.STATS, {}, on_stats, now,
                                  timeout_s=min(self.config.request_timeout_s, 1.0))
        return effects

    def _member_rows(self, now: float, figures: dict[str, dict]) -> list[dict]:
        """Each member as status shows it; ``figures``: what members answered just now
        (``_own_figures``); the others' come from their gossip."""
        rows = []
        shares = self.ring.primary_shares()
        for member in self.members.all():
            own = member.node_id == self.config.node_id
            asked = figures.get(member.node_id)
            row = {
                "node_id": member.node_id, "address": member.address,
                "gossip_address": member.gossip_address,
                "status": member.status.name.lower(),
                "liveness": self.members.liveness(member.node_id, now).value,
                "keys_count": member.keys, "hints": member.hints, "bytes": member.bytes,
                "figures": "gossip",
                "ownership": shares.get(member.node_id, 0.0),
                "weight": member.weight,
                "ring_version": self.ring.fingerprint() if own else member.ring,
                "transfer": list(self._transfer() if own else member.transfer),
            }
            if asked is not None:
                held, clock = asked["store"], asked["clock"]
                row.update(keys_count=held["keys"], hints=held["hints"], bytes=held["bytes"],
                           figures="exact", clock_ok=clock["ok"],
                           clock_offset_s=clock["offset_s"])
            else:
                sample = self._offsets.sample(member.node_id, now)
                if sample is not None:   # its clock as we measured it (ours is the zero)
                    row["clock_offset_s"] = round(sample.offset_s, 4)
            rows.append(row)
        return rows

    def _on_local_keys(self, route, message: Message, now: float) -> list[Effect]:
        limit = message.body.get("limit")
        keys = []
        for key in self.store.keys():
            if limit is not None and len(keys) >= limit:
                break
            keys.append(key)
        body = {"node_id": self.config.node_id, "keys": keys}
        return [Reply(route, Message(MsgType.OK, message.request_id, body), only_reads=True)]

    def _on_add_node(self, route, message: Message, now: float) -> list[Effect]:
        node_id, address = message.body["node_id"], message.body["address"]
        member = self.members.get(node_id)
        if member is not None and member.status in (MemberStatus.NORMAL, MemberStatus.JOINING):
            body = {"node_id": node_id, "status": member.status.name.lower()}
            return [Reply(route, Message(MsgType.OK, message.request_id, body))]
        self._check_no_change_in_progress(node_id, now)

        def on_admitted(node: str, reply: Message | None, t: float) -> list[Effect]:
            if reply is None:
                return [Reply(route, _error(message.request_id, Unavailable(
                    f"no answer from {node_id} at {address}; is it running?")))]
            if reply.type == MsgType.ERROR:
                return [Reply(route, reply_as(reply, message.request_id))]
            return [Reply(route, Message(MsgType.OK, message.request_id,
                                         {"node_id": node_id, "status": "joining"}))]
        return self._call_address(address, node_id, MsgType.ADMIT,
                                  {"seed": self.config.address}, on_admitted, now)

    def _on_remove_node(self, route, message: Message, now: float) -> list[Effect]:
        node_id = message.body["node_id"]
        graceful = message.body.get("graceful", True)
        member = self.members.get(node_id)
        if member is None or member.status == MemberStatus.LEFT:
            raise NotMember(f"{node_id} is not a member of the cluster")
        if not graceful:
            return self._on_force_remove(route, Message(MsgType.FORCE_REMOVE,
                                                        message.request_id,
                                                        {"node_id": node_id}), now)
        if member.status == MemberStatus.LEAVING:
            return [Reply(route, Message(MsgType.OK, message.request_id,
                                         {"node_id": node_id, "status": "leaving"}))]
        self._check_no_change_in_progress(node_id, now)
        if node_id == self.config.node_id:
            return self._on_leave(route, message, now)

        def on_leaving(node: str, reply: Message | None, t: float) -> list[Effect]:
            if reply is None:
                return [Reply(route, _error(message.request_id, Unavailable(
                    f"{node_id} did not answer; to remove a dead node use graceful=False")))]
            return [Reply(route, reply_as(reply, message.request_id))]
        return self._call(node_id, MsgType.LEAVE, {}, on_leaving, now)

    def _check_no_change_in_progress(self, node_id: str, now: float) -> None:
        """One membership change at a time: two overlapping ones would stream against a
        ring that is about to change again."""
        busy = [m.node_id for m in self.members.all()
                if m.status in (MemberStatus.JOINING, MemberStatus.LEAVING)
                and m.node_id != node_id
                and self.members.is_up(m.node_id, now)]
        if busy:
            raise MembershipConflict(f"a membership change is in progress ({', '.join(busy)}); "
                                     "retry when it completes")

    def _on_force_remove(self, route, message: Message, now: float) -> list[Effect]:
        node_id = message.body["node_id"]
        if node_id == self.config.node_id:
            raise InvalidRequest("a node cannot force-remove itself; remove it from another "
                                 "node, or remove it gracefully")
        member = self.members.get(node_id)
        if member is None:
            raise NotMember(f"{node_id} is not a member of the cluster")
        if member.status != MemberStatus.LEFT:
            self.members.set_status(node_id, MemberStatus.LEFT, streamed=False)
            self.log.info("member_removed", member=node_id, graceful=False)
            effects = self._after_membership_change(now) + self._gossip(now)
        else:
            effects = []
        return effects + [Reply(route, Message(MsgType.OK, message.request_id,
                                               {"node_id": node_id, "status": "left"}))]

    def _on_rebalance(self, route, message: Message, now: float) -> list[Effect]:
        """Every node hands over what it no longer replicates (and drops it once the owners
        confirmed); then every pair of replicas repairs, streaming only what one lacks."""
        self._check_ring_settled(now)
        targets = [m.node_id for m in self.members.all() if m.in_ring]

        def after_handover(reply: Message, t: float) -> list[Effect]:
            if reply.type != MsgType.OK:
                return [Reply(route, reply)]
            handed = reply.body

            def after_repair(repaired: Message, t2: float) -> list[Effect]:
                if repaired.type == MsgType.OK:
                    repaired = Message(MsgType.OK, repaired.request_id,
                                       {**handed, **repaired.body})
                return [Reply(route, repaired)]
            live = [m.node_id for m in self.members.all()
                    if m.in_ring and self.members.is_up(m.node_id, t)]
            return self._fan_out(route, message, "repair", MsgType.REPAIR_LOCAL, live, t,
                                 on_done=after_repair)
        return self._fan_out(route, message, "rebalance", MsgType.REBALANCE_LOCAL, targets,
                             now, on_done=after_handover)

    def _fan_out(self, route, message: Message, operation: str, msg_type: MsgType,
                 targets: list[str], now: float, on_done=None) -> list[Effect]:
        """Ask every target to run ``operation``; once all did, answer with their summed
        counts (or hand that answer to ``on_done(reply, now)``)."""
        admin_id = next(self._ids)
        self._admins[admin_id] = _Admin(route, message.request_id, operation, set(targets),
                                        on_done=on_done)
        effects: list[Effect] = []
        for node_id in targets:
            effects += self._call(node_id, msg_type, {},
                                  lambda node, reply, t: self._on_fan_out_reply(
                                      admin_id, node, reply, t), now,
                                  timeout_s=self.config.repair_timeout_s)
        if not targets:
            self._admins.pop(admin_id)
            answer = Message(MsgType.OK, message.request_id, {})
            effects += on_done(answer, now) if on_done else [Reply(route, answer)]
        return effects

    def _on_fan_out_reply(self, admin_id: int, node_id: str, reply: Message | None,
                          now: float):
        admin = self._admins.get(admin_id)
        if admin is None:
            return []
        admin.waiting.discard(node_id)
        if reply is None or reply.type != MsgType.OK:
            admin.failed.append(node_id)
        else:
            for name, value in reply.body.items():
                if type(value) is int:
                    admin.totals[name] += value
        if admin.waiting:
            return []
        del self._admins[admin_id]
        if admin.failed:
            answer = _error(admin.request_id, Unavailable(
                f"{admin.operation} did not complete on {', '.join(sorted(admin.failed))}"))
        else:
            answer = Message(MsgType.OK, admin.request_id, dict(admin.totals))
        if admin.on_done is not None:
            return admin.on_done(answer, now)
        return [Reply(admin.route, answer)]

    # ------------------------------------------------------------------ peer: cluster

    def _on_join(self, route, message: Message, now: float) -> list[Effect]:
        member = Member.from_wire(message.body["member"])
        if self.members.full_for(member):
            raise Unavailable(f"the cluster is full: at most {MAX_MEMBERS} members and "
                              f"{MAX_RING_TOKENS} ring tokens ({self.config.vnodes} per unit "
                              "of weight)")
        known = self.members.get(member.node_id)
        if known is not None and known.address != member.address and known.status not in (
                MemberStatus.LEFT,) and self.members.is_up(member.node_id, now):
            raise InvalidRequest(f"node id {member.node_id} is already used by "
                                 f"{known.address}")
        self.members.heard_from(member.node_id, now)
        effects = self._merge([member], now)
        body = {"members": self.members.to_wire()}
        return effects + [Reply(route, Message(MsgType.OK, message.request_id, body))]

    def _on_admit(self, route, message: Message, now: float) -> list[Effect]:
        own = self.members.own
        if own.status == MemberStatus.LEFT:
            self.store.delete_range(*_FULL_RANGE)  # a returning node starts empty
            self._wipe = []
            self.members.set_status(own.node_id, MemberStatus.JOINING, streamed=False)
            self._save_members()
            self._confirmed_by.clear()
            self._left_at = None
        if message.body["seed"] not in self.config.seeds:
            self.config.seeds.append(message.body["seed"])
        self._next_seed_contact_at = now
        self._seed_contacted = False
        body = {"node_id": own.node_id, "status": self.members.own.status.name.lower()}
        return [Reply(route, Message(MsgType.OK, message.request_id, body))] + \
            self._contact_seeds(now)

    def _on_leave(self, route, message: Message, now: float) -> list[Effect]:
        own = self.members.own
        if own.status == MemberStatus.NORMAL:
            if len(self.ring) <= 1:
                raise InvalidRequest("the last node of a cluster cannot leave it")
            self.members.set_status(own.node_id, MemberStatus.LEAVING)
            self._confirmed_by.clear()
            self._announced_at = now
            self.log.info("member_leaving", member=own.node_id)
            effects = self._after_membership_change(now) + self._gossip(now)
        elif own.status == MemberStatus.LEAVING:
            effects = []
        else:
            raise InvalidRequest(f"{own.node_id} is {own.status.name.lower()}; only a "
                                 "normal member can leave")
        return effects + [Reply(route, Message(MsgType.OK, message.request_id,
                                               {"node_id": own.node_id, "status": "leaving"}))]

    def _on_rebalance_local(self, route, message: Message, now: float) -> list[Effect]:
        """Hand every record we hold but no longer replicate to the nodes that do; delete
        it once each of them acknowledged storing it (or a newer version)."""
        if self._push is not None and not self._push.done:
            raise InvalidRequest(f"a {self._push_kind} is already running on this node")
        self._check_ring_settled(now)
        n = self.config.replicas
        own_id = self.config.node_id
        ring = self.ring

        def route_record(record: Record) -> list[str]:
            replicas = ring.get_nodes_at(record.position, n)
            return [] if own_id in replicas else replicas

        def misplaced(record: Record) -> bool:
            return own_id not in ring.get_nodes_at(record.position, n)

        self._push = RecordPush("rebalance", self.store, route_record, misplaced,
                                self.config.stream_batch_records, self.config.join_retry_s,
                                self.config.stream_batch_bytes)
        self._push_kind = "rebalance"
        self._push_reply = (route, message.request_id)
        self.log.info("rebalance_started")
        return self._pump_streams(now)

    def _cancel_rebalance(self) -> list[Effect]:
        """A rebalance routes by the ring it started with: once that ring is gone, stop it
        (an owner it waits on may have been removed) and say so."""
        if self._push is None or self._push_kind != "rebalance":
            return []
        self._push.cancelled = True
        self._push = None
        self.log.warning("rebalance_cancelled", reason="ring changed")
        if self._push_reply is None:
            return []
        (route, request_id), self._push_reply = self._push_reply, None
        return [Reply(route, _error(request_id, MembershipConflict(
            "the ring changed during the rebalance; run it again")))]

    def _check_ring_settled(self, now: float) -> None:
        changing = [m.node_id for m in self.members.all()
                    if m.status in (MemberStatus.JOINING, MemberStatus.LEAVING)
                    and self.members.is_up(m.node_id, now)]
        if changing or self._previous_ring is not None:
            what = (f"{', '.join(changing)} joining or leaving" if changing
                    else "members still switching to the new ring")
            raise MembershipConflict(f"a membership change is in progress ({what}); retry "
                                     "when it completes")

    # ------------------------------------------------------------------ membership

    def _merge(self, records: list[Member], now: float) -> list[Effect]:
        refused_before = self.members.records_refused
        changed = self.members.merge(records, now)
        if self.members.records_refused > refused_before:
            self.log.warning("member_records_refused",
                             count=self.members.records_refused - refused_before,
                             reason="member, ring or generation cap")
        if not changed:
            return self._sync_subscriptions()
        # news about membership travels on at once (rate-limited), not at our next beat: a
        # joiner waits for every owner to echo it, and a change settles once all switched
        self._next_gossip_at = min(self._next_gossip_at,
                                   self._last_gossip_at + _GOSSIP_ON_CHANGE_GAP_S)
        return self._after_membership_change(now)

    def _after_membership_change(self, now: float) -> list[Effect]:
        """Rebuild the ring from the member table; act on what moved."""
        self._members_unsaved = True   # saved by the tick that ends this cycle
        self._future = None
        effects = self._sync_subscriptions()
        new_weights = self.members.ring_weights()
        if new_weights == self.ring.weights:
            return effects
        old_ring = self.ring
        new_ring = HashRing(new_weights, vnodes=self.config.vnodes)
        self.ring = new_ring
        self._previous_ring = old_ring if len(old_ring) else None  # empty: nobody routed by it
        self._settled_at = None
        self.members.update_own(ring=new_ring.fingerprint())
        self.log.info("ring_changed", nodes=new_ring.nodes, fingerprint=new_ring.fingerprint())
        effects += self._cancel_rebalance()
        own = self.members.own
        if own.status == MemberStatus.LEFT:
            return effects
        if own.node_id not in old_ring and own.node_id in new_ring and own.streamed:
            return effects  # we joined by streaming; nothing more to move here
        return effects + self._move_ranges(old_ring, new_ring, now)

    def _move_ranges(self, old_ring: HashRing, new_ring: HashRing, now: float):
        """Schedule dropping the ranges a streamed joiner (or gainer) took over; pull ranges
        we gained some other way (a member force-removed: no one handed its data over)."""
        own_id = self.config.node_id
        joined = {n for n in new_ring.nodes if n not in old_ring and self.members[n].streamed}
        handed_off = {n for n in old_ring.nodes if n not in new_ring
                      and self.members[n].status == MemberStatus.LEFT
                      and self.members[n].streamed}
        diff = RingDiff(old_ring, new_ring, self.config.replicas)
        drop = diff.handed_over(own_id, joined) if joined else []
        sources = [n for n in old_ring.nodes if n != own_id and n in self.members
                   and self.members[n].status != MemberStatus.LEFT]
        pulls = diff.gained_from(own_id, sources, unless_lost_by=handed_off)
        if drop:
            self._add_drop(new_ring, drop)
            self.log.info("ranges_to_drop", ranges=len(drop))
        if pulls:
            pull = self._new_pull("takeover", [(source, (), intervals)
                                               for source, intervals in pulls.items()])
            self._takeovers.append(pull)
            self.log.info("takeover_started", sources=sorted(pulls),
                          intervals=sum(map(len, pulls.values())))
            return pull.pump(self._stream_call(now), now)
        return []

    def _new_pull(self, name: str, groups: list, resume: dict | None = None) -> RangePull:
        config = self.config
        return RangePull(name, self.store, groups, config.stream_intervals_per_pull,
                         config.stream_batch_records, config.stream_pulls_in_flight,
                         config.join_retry_s, resume)

    def _settled(self, now: float) -> bool:
        """Every member not gone routes by our ring (its gossip says so). Down members
        count too: one merely cut off from us still serves clients by the ring it knows,
        so until it is back (or removed) writes keep a quorum in both rings and nothing
        handed over is dropped (the simulation found stale reads otherwise)."""
        fingerprint = self.ring.fingerprint()
        return all(m.ring == fingerprint for m in self.members.peers())

    def _check_settled(self, now: float) -> list[Effect]:
        if self._settled_at is None and self._settled(now):
            self._settled_at = now
            if self._previous_ring is not None:
                self._previous_ring = None
                self.log.info("ring_settled", fingerprint=self.ring.fingerprint())
        return self._run_drops(now)

    def _add_drop(self, ring: HashRing, intervals: list[Interval]) -> None:
        """Queue ranges to drop once every member routes by ``ring``. A drop still queued is
        narrowed to what ``ring`` leaves us and joins this one: one ring is held, however
        often membership changes before the cluster settles."""
        records = 0
        for older in self._drops:
            intervals = intervals + self._not_regained(older.intervals, older.ring, ring)[0]
            records += older.records
        self._drops = [_Drop(ring, _merge_intervals(intervals), records=records)]

    def _not_regained(self, intervals: list[Interval], since: HashRing,
                      ring: HashRing) -> tuple[list[Interval], list[Interval]]:
        """``intervals`` (ours to drop since ``since``) less what ``ring`` gives us back, and
        what it gives back."""
        if since.fingerprint() == ring.fingerprint():
            return intervals, []
        regained = [i for change in ring_changes(since, ring, self.config.replicas,
                                                 gained_by=self.config.node_id)
                    for i in change.intervals()]
        return subtract_intervals(intervals, regained), regained

    def _run_drops(self, now: float, max_records: int = 5_000) -> list[Effect]:
        """Delete handed-over ranges a slice at a time (a delete of 250k rows in one go would
        stall the loop past the failure detector's patience)."""
        if not self._drops or self._settled_at is None or self._change_under_way(now):
            return []  # while a join or leave streams, what we gain back must stay
        drop = self._drops[0]
        if drop.ring.fingerprint() != self.ring.fingerprint():
            # The ring moved on before we dropped: keep whatever it gave back to us.
            drop.intervals, regained = self._not_regained(drop.intervals, drop.ring, self.ring)
            drop.ring = self.ring
            drop.settled_at = None
            self.log.info("drop_narrowed", ranges_regained=len(regained))
        if drop.settled_at is None:
            drop.settled_at = now
        if now - drop.settled_at < self.config.request_timeout_s:
            return []  # requests sent by a member just before it switched rings: let them end
        deleted = 0
        while drop.intervals and deleted < max_records:
            low, high = drop.intervals.pop()
            deleted += self.store.delete_range(low, high)
        drop.records += deleted
        if not drop.intervals:
            self._drops.pop(0)
            self.log.info("ranges_dropped", records=drop.records)
        return []

    def _sync_subscriptions(self) -> list[Effect]:
        wanted = {m.gossip_address for m in self.members.peers()}
        effects: list[Effect] = [Subscribe(a) for a in sorted(wanted - self._subscribed)]
        effects += [Unsubscribe(a) for a in sorted(self._subscribed - wanted)]
        self._subscribed = wanted
        return effects

    def _gossip(self, now: float) -> list[Effect]:
        self._next_gossip_at = now + self.config.gossip_interval_s
        self._last_gossip_at = now
        own = self.members.own
        try:
            held = self.store.stats()
            figures = {"keys": held.keys, "hints": held.hints, "bytes": held.bytes}
        except StorageError:   # the heartbeat goes out regardless, with the last figures
            figures = {}
        self.members.update_own(heartbeat=own.heartbeat + 1, ring=self.ring.fingerprint(),
                                transfer=self._transfer(), **figures)
        body = {"sender": self.config.node_id, "members": self.members.to_wire()}
        return [Publish(Message(MsgType.GOSSIP, 0, body))]

    def _needs_seed_contact(self) -> bool:
        own = self.members.own
        if own.status == MemberStatus.LEFT:
            return False
        known = {m.address for m in self.members.all()}
        return any(seed not in known for seed in self.config.seeds) or (
            own.status == MemberStatus.JOINING and not self._seed_contacted)

    def _contact_seeds(self, now: float) -> list[Effect]:
        """Introduce ourselves to every seed we have not met (and, joining, to any seed)."""
        self._next_seed_contact_at = now + self.config.join_retry_s
        if not self._needs_seed_contact():
            return []
        known = {m.address for m in self.members.all()}
        effects: list[Effect] = []
        body = {"member": self.members.own.to_wire()}
        for seed in self.config.seeds:
            if seed == self.config.address:
                continue
            if seed in known and self._seed_contacted:
                continue
            effects += self._call_address(seed, seed, MsgType.JOIN, body, self._on_seed_reply,
                                          now)
        return effects

    def _on_seed_reply(self, seed: str, reply: Message | None, now: float) -> list[Effect]:
        if reply is None:
            return []
        if reply.type != MsgType.OK:
            self.log.warning("join_refused", seed=seed, error=reply.body.get("message"))
            return []
        try:
            records = [Member.from_wire(w) for w in reply.body.get("members", [])]
        except ProtocolError:
            return []
        if not self._seed_contacted:
            self._seed_contacted = True
            self._announced_at = now
        for record in records:
            if record.address == seed:
                self.members.heard_from(record.node_id, now)
        return self._merge(records, now)

    # ------------------------------------------------------------------ join and leave

    def _everyone_confirmed(self, now: float) -> bool:
        """All live owners have gossiped our current record back: they route accordingly."""
        if now - self._announced_at > self.config.join_settle_timeout_s:
            return True
        for member in self.members.all():
            if member.node_id == self.config.node_id or not member.in_ring:
                continue
            if member.node_id not in self._confirmed_by and self.members.is_up(
                    member.node_id, now):
                return False
        return True

    def _change_under_way(self, now: float) -> bool:
        """A live member is joining or leaving (a crashed joiner that nobody removed does
        not hold drops back forever)."""
        return any(self.members.is_up(m.node_id, now) for m in self.members.all()
                   if m.status in (MemberStatus.JOINING, MemberStatus.LEAVING))

    def _my_turn(self, now: float) -> bool:
        """Membership changes stream one at a time, in node id order: each plans against
        the ring the previous one left, so "the node a joiner displaces" is still right
        when it completes. (Two joiners planning against the same ring could both take a
        range from the same old replica while another old replica, holding a write the
        first lacks, drops it.) A member that is down does not hold the others up."""
        own_id = self.config.node_id
        return not any(m.node_id < own_id and self.members.is_up(m.node_id, now)
                       for m in self.members.all()
                       if m.status in (MemberStatus.JOINING, MemberStatus.LEAVING))

    def _advance_join(self, now: float) -> list[Effect]:
        own = self.members.own
        if own.status != MemberStatus.JOINING or not self._seed_contacted:
            return []
        if not self.ring.nodes:
            return []  # nobody to join yet
        if self._join_pull is None:
            if not self._everyone_confirmed(now) or not self._my_turn(now):
                return []
            return self._start_join_pull(now)
        if not self._my_turn(now):
            self.log.info("join_waiting", reason="an earlier membership change goes first")
            self._join_pull.cancelled = True
            self._join_pull = None
            return []
        if self.ring.fingerprint() != self._join_ring_fingerprint:
            self.log.info("join_restarted", reason="ring changed while streaming")
            self._join_pull.cancelled = True
            self.store.set_meta("join_progress", b"")
            return self._start_join_pull(now)
        for source in self._join_pull.pending_sources():
            if not self.members.is_up(source, now) and self._join_pull.failing(source):
                moved = self._join_pull.reroute(source)
                if moved:
                    self.log.warning("join_source_down", source=source, chunks=moved,
                                     pulling_from="the range's other replicas")
        if not self._join_pull.done:
            return []
        pull = self._join_pull
        self._join_pull = None
        self._join_intervals = []
        self.store.set_meta("join_progress", b"")
        self.members.set_status(own.node_id, MemberStatus.NORMAL, streamed=True, transfer=())
        self.log.info("member_joined", records=pull.records_received,
                      bytes=pull.bytes_received)
        return self._after_membership_change(now) + self._gossip(now)

    def _start_join_pull(self, now: float) -> list[Effect]:
        """Stream each gained range from the one node it displaces (Cassandra's consistent
        range movement): the joiner then holds exactly what that replica held, so every
        quorum of the old replicas is one of the new. Should that node be down, its ranges
        come from all the range's other old replicas instead (any one may lack a write)."""
        own = self.members.own
        future = self.ring.copy()
        future.add_node(own.node_id, own.weight)
        groups: dict[tuple[str, tuple[str, ...]], list[Interval]] = defaultdict(list)
        for change in ring_changes(self.ring, future, self.config.replicas,
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
        fingerprint = self.ring.fingerprint()
        # chunks are numbered within this plan: resume only the same ring, weight and chunking
        plan_key = [fingerprint, own.weight, self.config.stream_intervals_per_pull]
        resume = self._saved_progress("join_progress", plan_key)
        planned = sorted(i for intervals in groups.values() for i in intervals)
        if self._join_intervals:
            # A restarted plan: what the old one pulled (or got as pending writes) outside
            # the new one is no longer ours; it goes once the join is done and settled.
            stray = subtract_intervals(self._join_intervals, planned)
            if stray:
                self._add_drop(future, stray)
        self._join_intervals = planned
        self._join_ring_fingerprint = fingerprint
        self._join_plan_key = plan_key
        self._join_pull = self._new_pull(
            "join", [(source, others, intervals)
                     for (source, others), intervals in groups.items()], resume)
        self._transfer_totals = (-1, -1)
        sources = sorted({source for source, _ in groups})
        self.log.info("join_resumed" if resume else "join_streaming", sources=sources,
                      intervals=sum(map(len, groups.values())),
                      chunks=self._join_pull.chunks, chunks_done=self._join_pull.resumed,
                      records_done=self._join_pull.records_received)
        effects = self._join_pull.pump(self._stream_call(now), now)
        return effects + self._count_transfer(
            {source: intervals for (source, _), intervals in groups.items()}, now)

    def _count_own_records(self, now: float) -> list[Effect]:
        """Totals for a leave's progress: everything we hold is handed over."""
        def on_done(records: int, size: int, t: float) -> list[Effect]:
            if self._push is not None and self._push_kind == "leave":
                self._transfer_totals = (records, size)
            return []
        self._stats_jobs.append(_StatsJob(_ring_slices(64), on_done))  # a slice per step
        return []

    def _on_plan(self, route, message: Message, now: float) -> list[Effect]:
        """``zring plan add|remove NODE``: what the change would move, computed from the
        ring and exact per-range counts asked of the nodes; nothing moves."""
        body = message.body
        action, node_id = body["action"], body["node_id"]
        n = self.config.replicas
        current = self.ring
        future = current.copy()
        member = self.members.get(node_id)
        if action == "add":
            if node_id in current:
                raise InvalidRequest(f"{node_id} is already in the ring")
            weight = body.get("weight") or (member.weight if member else 1.0)
            if not MIN_WEIGHT <= weight <= MAX_WEIGHT:
                raise InvalidRequest(f"weight must be between {MIN_WEIGHT} and {MAX_WEIGHT}")
            future.add_node(node_id, float(weight))
        elif action == "remove":
            if node_id not in current:
                raise NotMember(f"{node_id} is not in the ring")
            if len(current) <= 1:
                raise InvalidRequest("the last node of a cluster cannot leave it")
            future.remove_node(node_id)
        else:
            raise InvalidRequest(f"plan action must be add or remove, not {action!r}")
        # (sender, receiver) -> intervals, exactly as the join or leave would stream them
        flows: dict[tuple[str, str], list[Interval]] = defaultdict(list)
        for change in ring_changes(current, future, n):
            if action == "add" and node_id in change.gained:
                displaced = [x for x in change.lost if x != node_id]
                for source in displaced[:1] or change.old_nodes:
                    flows[(source, node_id)] += change.intervals()
            elif action == "remove" and node_id in change.lost:
                for gainer in change.gained:
                    flows[(node_id, gainer)] += change.intervals()
        holders = sorted(set(current.nodes))
        if not holders:
            raise Unavailable("the ring is empty: nothing to plan")
        counts: dict = {}
        asked = len(flows) + len(holders)
        effects: list[Effect] = []

        def on_stats(key, reply: Message | None, t: float) -> list[Effect]:
            if key in counts:
                return []
            counts[key] = _stats_figures(reply)
            if len(counts) < asked:
                return []
            missing = sorted({k[1] if k[0] == "held" else k[1][0]
                              for k, v in counts.items() if v is None})
            if missing:
                return [Reply(route, _error(message.request_id, Unavailable(
                    f"no range counts from {', '.join(missing)}; plan again when they are up")))]
            return [Reply(route, Message(MsgType.OK, message.request_id, _plan_body(
                action, node_id, n, holders, future.nodes, counts, flows)))]

        whole = _ring_slices(64)
        for holder in holders:
            effects += self._stats_call(holder, whole, ("held", holder), on_stats, now)
        for flow, intervals in flows.items():
            effects += self._stats_call(flow[0], [list(i) for i in sorted(intervals)],
                                        ("flow", flow), on_stats, now)
        return effects

    def _stats_call(self, node_id: str, intervals: list, key, on_stats, now: float):
        if node_id == self.config.node_id:
            self._stats_jobs.append(_StatsJob(
                [tuple(i) for i in intervals],
                lambda records, size, t: on_stats(key, Message(
                    MsgType.OK, 0, {"records": records, "bytes": size}), t)))
            return []
        return self._call(node_id, MsgType.RANGE_STATS, {"intervals": intervals},
                          lambda node, reply, t: on_stats(key, reply, t), now,
                          timeout_s=self.config.repair_timeout_s)

    def _on_range_stats(self, route, message: Message, now: float) -> list[Effect]:
        """How many records and bytes we hold in the intervals: counted a slice per loop
        cycle, answered when done (a plan or a transfer's totals)."""
        intervals = message.body["intervals"]
        if len(intervals) > 1_000_000 or not all(
                isinstance(i, list) and len(i) == 2
                and all(type(v) is int and 0 <= v < 1 << 64 for v in i) for i in intervals):
            raise InvalidRequest("intervals must be at most 1,000,000 [low, high] pairs")

        def on_done(records: int, size: int, t: float) -> list[Effect]:
            return [Reply(route, Message(MsgType.OK, message.request_id,
                                         {"records": records, "bytes": size}))]
        self._stats_jobs.append(_StatsJob([tuple(i) for i in intervals], on_done))
        return []

    def _step_stats(self, now: float, max_intervals: int = 2000,
                    max_records: int = 20_000) -> list[Effect]:
        """Count a slice of the oldest stats job."""
        if not self._stats_jobs:
            return []
        job = self._stats_jobs[0]
        counted = 0
        end = min(job.index + max_intervals, len(job.intervals))
        while job.index < end and counted < max_records:
            records, size = self.store.range_stats(*job.intervals[job.index])
            job.records += records
            job.size += size
            counted += records
            job.index += 1
        if job.index < len(job.intervals):
            return []
        self._stats_jobs.pop(0)
        return job.on_done(job.records, job.size, now)

    def _saved_progress(self, name: str, plan_key: list) -> dict | None:
        """A transfer's progress saved before a crash, if it was for this same plan."""
        saved = self.store.get_meta(name)
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
        pull, push = self._join_pull, self._push
        if pull is not None and not pull.done and pull.records_received != self._saved_records:
            self._saved_records = pull.records_received
            self._save_progress("join_progress", {"plan": self._join_plan_key,
                                                  **pull.progress()})
        elif (push is not None and self._push_kind == "leave" and not push.done
              and push.records_done != self._saved_records):
            self._saved_records = push.records_done
            self._save_progress("leave_progress", {"plan": [self._leave_fingerprint],
                                                   **push.progress()})

    def _save_progress(self, name: str, progress: dict) -> None:
        """Saved in the same transaction (the loop cycle's group commit) as the records the
        progress counts, so a crash never leaves one ahead of the other."""
        self.store.set_meta(name, msgpack.packb(progress, use_bin_type=True))

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
            figures = _stats_figures(reply)
            if figures is None:
                return []  # a malformed answer: the totals stay unknown (-1)
            counts[node] = figures
            if len(counts) == len(sources):
                self._transfer_totals = (sum(c[0] for c in counts.values()),
                                         sum(c[1] for c in counts.values()))
            return []

        for source, intervals in sources.items():
            effects += self._call(source, MsgType.RANGE_STATS,
                                  {"intervals": [list(i) for i in sorted(intervals)]},
                                  on_stats, now, timeout_s=self.config.repair_timeout_s)
        return effects

    def _advance_leave(self, now: float) -> list[Effect]:
        own = self.members.own
        if own.status == MemberStatus.LEFT:
            self._step_wipe()
            if self._left_at is not None and now - self._left_at >= self.config.left_linger_s \
                    and not self._wipe:
                self._left_at = None
                return [Shutdown("left the cluster")]
            return []
        if own.status != MemberStatus.LEAVING:
            return []
        if self._push is not None and self._push_kind == "leave" and not self._my_turn(now):
            self.log.info("leave_waiting", reason="an earlier membership change goes first")
            self._push.cancelled = True
            self._push = None
            return []
        if self._push is None or self._push_kind != "leave":
            if self._push is not None and not self._push.done:
                return []  # let a running rebalance finish first
            if not self._everyone_confirmed(now) or not self._my_turn(now):
                return []
            current = self.ring
            future = current.copy()
            future.remove_node(own.node_id)
            n = self.config.replicas

            # who gains each range we replicate, looked up by position (a bisect per record
            # instead of two preference lists)
            moves = sorted((low, high, list(change.gained))
                           for change in ring_changes(current, future, n)
                           if own.node_id in change.lost for low, high in change.intervals())
            lows = [low for low, _, _ in moves]

            def gainers(record: Record) -> list[str]:
                index = bisect_right(lows, record.position) - 1
                if index >= 0 and record.position <= moves[index][1]:
                    return moves[index][2]
                return []  # a range we do not replicate: nobody gains it from us

            resume = self._saved_progress("leave_progress", [current.fingerprint()])
            self._push = RecordPush("leave", self.store, gainers, lambda record: False,
                                    self.config.stream_batch_records, self.config.join_retry_s,
                                    self.config.stream_batch_bytes, resume,
                                    pages_in_flight=self.config.stream_pulls_in_flight * 2)
            self._leave_fingerprint = current.fingerprint()
            self._push_kind = "leave"
            self._transfer_totals = (-1, -1)
            self.log.info("leave_resumed" if resume else "leave_streaming",
                          records_done=self._push.records_done)
            return self._pump_streams(now) + self._count_own_records(now)
        if self.ring.fingerprint() != self._leave_fingerprint:
            # A gainer joined, left or was removed meanwhile: hand over again to the owners
            # of the new ring (records already sent are harmless duplicates).
            self.log.info("leave_restarted", reason="ring changed while streaming")
            self._push.cancelled = True
            self._push = None
            self.store.set_meta("leave_progress", b"")
            return self._advance_leave(now)
        if not self._push.done:
            return []
        sent = self._push.records_sent
        self._push = None
        self.store.set_meta("leave_progress", b"")
        self.members.set_status(own.node_id, MemberStatus.LEFT, streamed=True, transfer=())
        self._left_at = now
        self.log.info("member_left", records_sent=sent)
        effects = self._after_membership_change(now) + self._gossip(now)
        # everything we held was handed over: deleted a slice per loop cycle (one delete of
        # 750k rows would hold back the LEFT gossip, sent after this cycle, for seconds)
        self._wipe = _ring_slices(1024)
        return effects

    def _step_wipe(self, max_records: int = 20_000) -> None:
        deleted = 0
        while self._wipe and deleted < max_records:
            deleted += self.store.delete_range(*self._wipe.pop())

    # ------------------------------------------------------------------ clocks

    def _up_peers(self, now: float) -> list[str]:
        return [m.node_id for m in self.members.peers()
                if m.status != MemberStatus.LEFT and self.members.is_up(m.node_id, now)]

    def _clock_stepped_back(self, now: float) -> None:
        """The wall clock was stepped back (NTP fixing a clock that ran ahead): timers set
        by the old reading would hold the node silent for as long as the step (peers would
        take it for dead), so each keeps the time it had left instead."""
        step = self._last_tick - now
        self.log.warning("clock_stepped_back", seconds=round(step, 3))
        for name in ("_next_gossip_at", "_next_seed_contact_at", "_next_hint_replay_at",
                     "_next_clock_check_at", "_next_gc_at", "_next_repair_at"):
            setattr(self, name, getattr(self, name) - step)
        self._call_deadlines = [(deadline - step, request_id)
                                for deadline, request_id in self._call_deadlines]
        heapq.heapify(self._call_deadlines)

    def _clock_verdict(self, now: float) -> ClockVerdict:
        return self._offsets.verdict(self._up_peers(now), now)

    def clock_checked(self, now: float) -> bool:
        """Our clock is measured against every live peer's and within the maximum offset."""
        verdict = self._clock_verdict(now)
        return verdict.ok and verdict.measured == len(self._up_peers(now))

    def _check_clocks(self, now: float) -> list[Effect]:
        """Ask every live peer for its clock (CockroachDB measures offsets on its RPC
        heartbeats the same way), and say so when ours is off, or fixed."""
        self._next_clock_check_at = now + self.config.clock_check_interval_s
        self._verdict = None   # liveness and sample ages moved on
        effects: list[Effect] = []
        for peer in self._up_peers(now):
            effects += self._call(peer, MsgType.CLOCK, {},
                                  lambda node, reply, t, sent=now: self._on_clock_reply(
                                      node, reply, sent, t), now)
        verdict = self._clock_verdict(now)
        if verdict.ok != self._clock_ok:
            self._clock_ok = verdict.ok
            if verdict.ok:
                self.log.info("clock_offset_ok", offset_s=round(verdict.offset_s, 3),
                              peers_measured=verdict.measured)
            else:
                self.log.error("clock_offset_exceeded", offset_s=round(verdict.offset_s, 3),
                               max_clock_offset_s=self.config.max_clock_offset_s,
                               peers_measured=verdict.measured, peers_far=verdict.far,
                               action="not coordinating writes until the clock is fixed")
        return effects

    def _on_clock_reply(self, node_id: str, reply: Message | None, sent: float,
                        now: float) -> list[Effect]:
        peer_clock = reply.body.get("now") if reply is not None and \
            reply.type == MsgType.OK else None
        if type(peer_clock) in (int, float) and peer_clock == peer_clock:  # not NaN
            self._offsets.record(node_id, sent, now, float(peer_clock))
            self._verdict = None
        return []

    def _on_clock(self, route, message: Message, now: float) -> list[Effect]:
        return [Reply(route, Message(MsgType.OK, message.request_id, {"now": now}),
                      only_reads=True)]

    # ------------------------------------------------------------------ failures

    def _check_liveness(self, now: float) -> list[Effect]:
        """Log each member's liveness changes; a member back up gets its hints promptly."""
        for member in self.members.peers():
            liveness = self.members.liveness(member.node_id, now)
            previous = self._liveness.get(member.node_id)
            if liveness == previous:
                continue
            self._liveness[member.node_id] = liveness
            if previous is None and liveness == Liveness.UP:
                continue
            self.log.info(f"member_{_LIVENESS_EVENT[liveness]}", member=member.node_id,
                          phi=round(min(self.members.detector.phi(member.node_id, now), 99), 1))
            if liveness == Liveness.UP:
                self._next_hint_replay_at = now
        return []

    def _replay_hints(self, now: float) -> list[Effect]:
        """Deliver held hints to members that are up again (or, for members that left, to
        the key's current replicas); drop hints older than the hint window."""
        self._next_hint_replay_at = now + self.config.hint_replay_interval_s
        counts = self.store.hint_counts()   # kept by the store: no count over the hints
        if not counts:
            return []
        expired = self.store.expire_hints(int((now - self.config.hint_window_s) * 1000))
        if expired:
            self.stats["hints_expired"] += expired
            self.log.warning("hints_expired", count=expired)
            counts = self.store.hint_counts()
        effects: list[Effect] = []
        for target in counts:
            if target in self._hints_in_flight:
                continue
            member = self.members.get(target)
            gone = member is None or member.status == MemberStatus.LEFT
            if gone or self.members.liveness(target, now) == Liveness.UP:
                effects += self._deliver_hints(target, gone, now)
        return effects

    def _deliver_hints(self, target: str, gone: bool, now: float) -> list[Effect]:
        hints = _within_bytes(self.store.hints_for(target, limit=self.config.hint_batch_records),
                              self.config.stream_batch_bytes, lambda h: record_size(h.record))
        if not hints:
            self._hints_in_flight.discard(target)
            return []
        self._hints_in_flight.add(target)
        # A member that left gets nothing: its hints go to the keys' current replicas.
        destinations: dict[str, list[Record]] = defaultdict(list)
        for hint in hints:
            owners = (self.ring.get_nodes_at(hint.record.position, self.config.replicas)
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
                self._hints_in_flight.discard(target)
                return []
            self.store.delete_hints(h.hint_id for h in hints)
            self.stats["hints_delivered"] += len(hints)
            self.log.info("hints_delivered", target=target, count=len(hints), rerouted=gone)
            self._hints_in_flight.discard(target)
            self._next_hint_replay_at = t  # the next batch on the next tick
            return []

        effects: list[Effect] = []
        for owner, records in destinations.items():
            if owner == self.config.node_id:
                self.store.put_many(records)
                effects += on_ack(owner, Message(MsgType.OK, 0, {}), now)
            else:
                effects += self._call(owner, MsgType.REPLICA_WRITE,
                                      {"records": [record_to_wire(r) for r in records]},
                                      on_ack, now)
        return effects

    # ------------------------------------------------------------------ anti-entropy

    def _on_repair(self, route, message: Message, now: float) -> list[Effect]:
        """``zring repair``: every node repairs with each peer after it in id order, so each
        pair of replicas is compared once."""
        targets = [m.node_id for m in self.members.all()
                   if m.in_ring and self.members.is_up(m.node_id, now)]
        return self._fan_out(route, message, "repair", MsgType.REPAIR_LOCAL, targets, now)

    def _on_repair_local(self, route, message: Message, now: float) -> list[Effect]:
        peers = [m.node_id for m in self.members.all()
                 if m.in_ring and m.node_id > self.config.node_id
                 and self.members.is_up(m.node_id, now)]
        effects: list[Effect] = []
        waiting: set[str] = set()
        for peer in peers:
            if peer not in self._repairs:
                effects += self._start_repair(peer, now)
            if peer in self._repairs:
                waiting.add(peer)
        summary: dict[str, int] = defaultdict(int)
        self._repair_waiters.append((route, message.request_id, waiting, summary))
        return effects + self._answer_repair_waiters()

    def _start_repair(self, peer: str, now: float) -> list[Effect]:
        own = self.config.node_id
        belongs = repair.shared(self.ring, self.config.replicas, own, peer)
        tree = repair.TreeBuilder(self.store, belongs, self.config.repair_page_records)
        session = repair.RepairSession(peer, self.ring.fingerprint(), tree, now)
        self._repairs[peer] = session
        self._tree_jobs.append((tree, lambda t: self._repair_progress(session, t)))
        self.log.info("repair_started", peer=peer)

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

        return self._call(peer, MsgType.REPAIR_TREE,
                          {"peer": own, "fingerprint": session.ring_fingerprint}, on_tree, now,
                          timeout_s=self.config.repair_timeout_s)

    def _repair_progress(self, session: repair.RepairSession, now: float) -> list[Effect]:
        if session.phase != "hashing" or not session.tree.done or session.peer_leaves is None:
            return []
        if self.ring.fingerprint() != session.ring_fingerprint:
            return self._repair_failed(session, "the ring changed during repair", now)
        if session.peer_root == session.tree.root():
            session.segments = []
            return self._repair_finished(session, now)
        session.segments = repair.differing_segments(session.tree.leaves, session.peer_leaves)
        session.phase = "comparing"
        intervals = repair.segment_intervals(session.segments)
        belongs = repair.shared(self.ring, self.config.replicas, self.config.node_id,
                                session.peer)
        session.ours = repair.VersionCollector(self.store, intervals, belongs,
                                               self.config.repair_page_records)
        self._tree_jobs.append((session.ours, lambda t: self._repair_exchange(session, t)))
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

        body = {"peer": self.config.node_id, "intervals": [list(i) for i in intervals],
                "after": after, "limit": self.config.repair_page_records}
        return self._call(session.peer, MsgType.REPAIR_DIGESTS, body, on_page, now,
                          timeout_s=self.config.repair_timeout_s)

    def _repair_exchange(self, session: repair.RepairSession, now: float) -> list[Effect]:
        """Both version lists known: fetch what the peer has newer, send what we have newer."""
        if session.phase != "comparing" or not session.theirs_done or not session.ours.done:
            return []
        session.phase = "exchanging"
        fetch, send = repair.keys_to_exchange(session.ours.versions, session.theirs)
        batch = self.config.hint_batch_records
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
                self.store.put_many(records)
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
            return self._call(session.peer, MsgType.REPAIR_FETCH, {"keys": keys}, on_reply,
                              now, timeout_s=self.config.repair_timeout_s)
        while send_batches:
            fetching = False
            keys = send_batches.pop()
            records = _within_bytes([r for r in map(self.store.get, keys) if r is not None],
                                    self.config.stream_batch_bytes, record_size)
            sent = {r.key for r in records}
            if len(sent) < len(keys):  # the rest goes in a later batch
                send_batches.append([k for k in keys if k not in sent])
            if not records:
                continue
            session.records_pushed += len(records)
            session.bytes_exchanged += sum(record_size(r) for r in records)
            return self._call(session.peer, MsgType.REPLICA_WRITE,
                              {"records": [record_to_wire(r) for r in records]}, on_reply,
                              now, timeout_s=self.config.repair_timeout_s)
        return self._repair_finished(session, now)

    def _repair_finished(self, session: repair.RepairSession, now: float) -> list[Effect]:
        session.phase = "done"
        self._repairs.pop(session.peer, None)
        self.stats["repairs"] += 1
        self.log.info("repair_done", peer=session.peer, records_hashed=session.tree.records,
                      segments_differing=len(session.segments or ()),
                      records_pulled=session.records_pulled,
                      records_pushed=session.records_pushed,
                      bytes=session.bytes_exchanged, seconds=round(now - session.started_at, 3))
        for _, _, waiting, summary in self._repair_waiters:
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
        self._repairs.pop(session.peer, None)
        self._tree_jobs = [(job, cb) for job, cb in self._tree_jobs
                           if job is not session.tree and job is not session.ours]
        self.stats["repairs_failed"] += 1
        self.log.warning("repair_failed", peer=session.peer, error=error)
        for _, _, waiting, summary in self._repair_waiters:
            if session.peer in waiting:
                summary["sessions_failed"] += 1
        return self._answer_repair_waiters(done=session.peer)

    def _answer_repair_waiters(self, done: str | None = None) -> list[Effect]:
        effects: list[Effect] = []
        for waiter in list(self._repair_waiters):
            route, request_id, waiting, summary = waiter
            waiting.discard(done)
            if waiting:
                continue
            self._repair_waiters.remove(waiter)
            if summary.get("sessions_failed"):
                effects.append(Reply(route, _error(request_id, Unavailable(
                    f"{summary['sessions_failed']} repair sessions of "
                    f"{self.config.node_id} failed; see its log"))))
            else:
                effects.append(Reply(route, Message(MsgType.OK, request_id, dict(summary))))
        return effects

    def _on_repair_tree(self, route, message: Message, now: float) -> list[Effect]:
        peer = message.body["peer"]
        if message.body["fingerprint"] != self.ring.fingerprint():
            raise InvalidRequest("our rings differ; repair once membership has converged")
        belongs = repair.shared(self.ring, self.config.replicas, peer, self.config.node_id)
        tree = repair.TreeBuilder(self.store, belongs, self.config.repair_page_records)

        def send_tree(now: float) -> list[Effect]:
            body = {"root": tree.root(), "leaves": tree.leaves.tobytes(),
                    "records": tree.records}
            return [Reply(route, Message(MsgType.OK, message.request_id, body),
                          only_reads=True)]
        self._tree_jobs.append((tree, send_tree))
        return []

    def _on_repair_digests(self, route, message: Message, now: float) -> list[Effect]:
        """A page of (key, version) for our records under the given intervals that we share
        with the asking peer."""
        keep = repair.shared(self.ring, self.config.replicas, message.body["peer"],
                             self.config.node_id)
        records, more, last = self._scan_intervals(
            message.body["intervals"], message.body.get("after"),
            min(max(message.body["limit"], 1), 10 * self.config.stream_batch_records), keep)
        digests = [[r.key, r.version.timestamp, r.version.node_id] for r in records]
        body = {"digests": digests, "more": more, "last": last}
        return [Reply(route, Message(MsgType.OK, message.request_id, body), only_reads=True)]

    def _on_repair_fetch(self, route, message: Message, now: float) -> list[Effect]:
        keys = message.body["keys"]
        if len(keys) > 10_000 or not all(isinstance(k, str) for k in keys):
            raise InvalidRequest("keys must be at most 10,000 strings")
        found = [r for r in map(self.store.get, keys) if r is not None]
        records = _within_bytes(found, self.config.stream_batch_bytes, record_size)
        served = {r.key for r in records}
        body = {"records": [record_to_wire(r) for r in records],
                "unserved": [r.key for r in found if r.key not in served]}
        return [Reply(route, Message(MsgType.OK, message.request_id, body), only_reads=True)]

    def _step_trees(self, now: float) -> list[Effect]:
        """Hash one page for the oldest tree under construction."""
        if not self._tree_jobs:
            return []
        tree, on_done = self._tree_jobs[0]
        tree.step()
        if not tree.done:
            return []
        self._tree_jobs.pop(0)
        return on_done(now)

    def _background_repair(self, now: float) -> list[Effect]:
        """One repair session at a time with the next peer in turn (configurable pace)."""
        self._next_repair_at = now + self.config.repair_interval_s
        peers = [m.node_id for m in self.members.all() if m.in_ring
                 and m.node_id != self.config.node_id and self.members.is_up(m.node_id, now)]
        if not peers or self._repairs or self.members.own.status != MemberStatus.NORMAL:
            return []
        self._repair_turn += 1
        return self._start_repair(peers[self._repair_turn % len(peers)], now)

    def _collect_tombstones(self, now: float) -> None:
        """Forget tombstones older than the grace period. A replica that missed a delete
        must be repaired within the grace period, or the deleted value could come back."""
        self._next_gc_at = now + self.config.tombstone_gc_interval_s
        cutoff_ms = int((now - self.config.tombstone_grace_s) * 1000)
        purged = self.store.purge_tombstones(max(0, cutoff_ms) << LOGICAL_BITS)
        if purged:
            self.stats["tombstones_purged"] += purged
            self.log.info("tombstones_purged", count=purged)

    # ------------------------------------------------------------------ streams

    def _streams(self) -> list:
        streams: list = list(self._takeovers)
        if self._join_pull is not None:
            streams.append(self._join_pull)
        if self._push is not None:
            streams.append(self._push)
        return streams

    def _transfer(self) -> tuple:
        """Our join or leave transfer as gossiped: (kind, keys done, keys total, bytes done,
        bytes total), totals -1 until counted."""
        keys_total, bytes_total = self._transfer_totals
        if self._join_pull is not None:
            pull = self._join_pull
            return ("join", pull.records_received, keys_total, pull.bytes_received, bytes_total)
        if self._push is not None and self._push_kind == "leave":
            push = self._push
            return ("leave", push.records_done, keys_total, push.bytes_done, bytes_total)
        return ()

    def _pump_streams(self, now: float) -> list[Effect]:
        call = self._stream_call(now)
        effects: list[Effect] = []
        for stream in self._streams():
            effects += stream.pump(call, now)
        self._save_transfer_progress()
        for pull in self._takeovers:
            for source in pull.pending_sources():
                member = self.members.get(source)
                if member is None or member.status == MemberStatus.LEFT:
                    pull.drop_source(source)  # removed: the other old replicas cover it
        finished = [t for t in self._takeovers if t.done]
        for pull in finished:
            self._takeovers.remove(pull)
            self.log.info("takeover_done", records=pull.records_received)
        if self._push is not None and self._push_kind == "rebalance" and self._push.done:
            push, self._push = self._push, None
            self.log.info("rebalance_done", sent=push.records_sent,
                          dropped=push.records_dropped)
            if self._push_reply is not None:
                route, request_id = self._push_reply
                self._push_reply = None
                effects.append(Reply(route, Message(MsgType.OK, request_id, {
                    "sent": push.records_sent, "dropped": push.records_dropped})))
        return effects

    _handlers: dict = {}


NodeCore._handlers = {
    MsgType.PUT: NodeCore._on_put,
    MsgType.GET: NodeCore._on_get,
    MsgType.DELETE: NodeCore._on_delete,
    MsgType.RING_STATE: NodeCore._on_ring_state,
    MsgType.CLUSTER_STATUS: NodeCore._on_cluster_status,
    MsgType.LOCAL_KEYS: NodeCore._on_local_keys,
    MsgType.ADD_NODE: NodeCore._on_add_node,
    MsgType.REMOVE_NODE: NodeCore._on_remove_node,
    MsgType.REBALANCE: NodeCore._on_rebalance,
    MsgType.PING: NodeCore._on_ping,
    MsgType.STATS: NodeCore._on_stats,
    MsgType.REPLICA_WRITE: NodeCore._on_replica_write,
    MsgType.REPLICA_READ: NodeCore._on_replica_read,
    MsgType.JOIN: NodeCore._on_join,
    MsgType.RANGE_PULL: NodeCore._on_range_pull,
    MsgType.ADMIT: NodeCore._on_admit,
    MsgType.LEAVE: NodeCore._on_leave,
    MsgType.REBALANCE_LOCAL: NodeCore._on_rebalance_local,
    MsgType.FORCE_REMOVE: NodeCore._on_force_remove,
    MsgType.HINT_WRITE: NodeCore._on_hint_write,
    MsgType.REPAIR: NodeCore._on_repair,
    MsgType.REPAIR_LOCAL: NodeCore._on_repair_local,
    MsgType.REPAIR_TREE: NodeCore._on_repair_tree,
    MsgType.REPAIR_DIGESTS: NodeCore._on_repair_digests,
    MsgType.REPAIR_FETCH: NodeCore._on_repair_fetch,
    MsgType.RANGE_STATS: NodeCore._on_range_stats,
    MsgType.PLAN: NodeCore._on_plan,
    MsgType.MGET: NodeCore._on_mget,
    MsgType.MPUT: NodeCore._on_mput,
    MsgType.BATCH: NodeCore._on_batch,
    MsgType.REPLICA_READ_MANY: NodeCore._on_replica_read_many,
    MsgType.CLOCK: NodeCore._on_clock,
}
assert CLIENT_TYPES <= NodeCore._handlers.keys()


_QUORUM_TYPES = frozenset({MsgType.PUT, MsgType.GET, MsgType.DELETE, MsgType.MGET,
                           MsgType.MPUT})
_GOSSIP_ON_CHANGE_GAP_S = 0.05  # at most this often when gossiping news ahead of the beat
_LIVENESS_EVENT = {Liveness.UP: "up", Liveness.SUSPECT: "suspected", Liveness.DOWN: "down"}


def _quorum_in_each(sets: list[list[str]], holders: set[str], needed: int) -> bool:
    """``holders`` make a quorum of ``needed`` (at most the set's size) in every set."""
    return all(sum(1 for x in replicas if x in holders) >= min(needed, len(replicas))
               for replicas in sets)


def _write_outcome(reply: Message | None) -> tuple[bool, list | None]:
    """(taken, the newer version it was refused for) from a replica's answer to one
    record of a client write."""
    if reply is None or reply.type != MsgType.OK:
        return False, None
    newer = reply.body.get("newer")
    if not newer:
        return True, None
    refusal = newer[0]
    if not _is_refusal(refusal):
        return False, None
    return False, [refusal[1], refusal[2]]


def _batch_write_outcome(reply: Message | None, count: int) -> tuple[bool, dict[int, list]]:
    """(answered, position -> newer version held) from a replica's answer to ``count``
    records of client writes."""
    if reply is None or reply.type != MsgType.OK:
        return False, {}
    refused: dict[int, list] = {}
    for item in reply.body.get("newer") or ():
        if not _is_refusal(item) or not 0 <= item[0] < count:
            return False, {}
        refused[item[0]] = [item[1], item[2]]
    return True, refused


def _figures_of(reply: Message | None) -> dict | None:
    """A member's store and clock figures from its STATS answer; None unless well formed."""
    if reply is None or reply.type != MsgType.OK:
        return None
    held, clock = reply.body.get("store"), reply.body.get("clock")
    if not (isinstance(held, dict) and isinstance(clock, dict)
            and all(type(held.get(k)) is int for k in ("keys", "hints", "bytes"))
            and type(clock.get("ok")) is bool
            and type(clock.get("offset_s")) in (int, float)):
        return None
    return {"store": held, "clock": clock}


def _is_refusal(item: object) -> bool:
    """``[index, timestamp, writer]``: a replica refused the record at ``index``."""
    return (item.__class__ is list and len(item) == 3 and type(item[0]) is int
            and type(item[1]) is int and 0 <= item[1] < 1 << 63 and item[2].__class__ is str)


def _merge_intervals(intervals: list[Interval]) -> list[Interval]:
    """Sorted, with overlapping or touching inclusive intervals joined."""
    merged: list[Interval] = []
    for low, high in sorted(intervals):
        if merged and low <= merged[-1][1] + 1:
            if high > merged[-1][1]:
                merged[-1] = (merged[-1][0], high)
        else:
            merged.append((low, high))
    return merged


def _error_entry(exc: ZringError) -> dict:
    """One key's error in a batch's results (a conflict's held version, and whether every
    replica refused it, with it)."""
    entry = {"error": exc.code, "message": exc.message or str(exc)}
    for name in ("held", "all_refused"):
        if name in exc.details:
            entry[name] = exc.details[name]
    return entry


def _error(request_id: int, exc: ZringError) -> Message:
    body = {"code": exc.code, "message": exc.message or str(exc)}
    if exc.details:
        body["details"] = {k: v for k, v in exc.details.items() if k != "request_id"}
    return Message(MsgType.ERROR, request_id, body)


def reply_as(reply: Message, request_id: int) -> Message:
    """A peer's reply relayed to our own requester."""
    return Message(reply.type, request_id, reply.body)


def _within_bytes(items: list, budget: int, size_of) -> list:
    """The longest prefix of ``items`` within ``budget`` bytes (at least one item), so no
    message outgrows the frame limit whatever the values' sizes."""
    total = 0
    for index, item in enumerate(items):
        total += size_of(item)
        if total > budget and index > 0:
            return items[:index]
    return items


def _ring_slices(count: int) -> list[Interval]:
    """The whole ring as ``count`` (a power of two) equal position intervals, for work done
    a slice per loop cycle."""
    width = (1 << 64) // count
    return [(i * width, (i + 1) * width - 1) for i in range(count)]


def _plan_body(action: str, node_id: str, n: int, holders: list[str], after: list[str],
               counts: dict, flows: dict) -> dict:
    """The figures of ``zring plan``: per node what it holds, sends and receives, and the
    balance (peak/mean records per node) before and after."""
    nodes = sorted(set(holders) | set(after))
    rows = {x: {"node_id": x, "records_before": 0, "bytes_before": 0, "send_records": 0,
                "send_bytes": 0, "receive_records": 0, "receive_bytes": 0} for x in nodes}
    for holder in holders:
        records, size = counts[("held", holder)]
        rows[holder]["records_before"] = records
        rows[holder]["bytes_before"] = size
    for (sender, receiver) in flows:
        records, size = counts[("flow", (sender, receiver))]
        rows[sender]["send_records"] += records
        rows[sender]["send_bytes"] += size
        rows[receiver]["receive_records"] += records
        rows[receiver]["receive_bytes"] += size
    for row in rows.values():
        # a sender drops what it hands over (a leaving node, everything)
        gone = row["node_id"] not in after
        row["records_after"] = 0 if gone else (row["records_before"] - row["send_records"]
                                               + row["receive_records"])
        row["bytes_after"] = 0 if gone else (row["bytes_before"] - row["send_bytes"]
                                             + row["receive_bytes"])
    moved = sum(r["receive_records"] for r in rows.values())
    total = sum(rows[x]["records_before"] for x in holders)
    optimal = total / len(after) if action == "add" else rows[node_id]["records_before"]
    return {"action": action, "node_id": node_id, "replicas": n,
            "nodes": [rows[x] for x in nodes],
            "balance_before": _peak_to_mean([rows[x]["records_before"] for x in holders]),
            "balance_after": _peak_to_mean([rows[x]["records_after"] for x in after]),
            "moved_records": moved,
            "moved_bytes": sum(r["receive_bytes"] for r in rows.values()),
            "optimal_records": round(optimal)}


def _stats_figures(reply: Message | None) -> tuple[int, int] | None:
    """(records, bytes) from a RANGE_STATS answer; None unless both are sane ints."""
    if reply is None or reply.type != MsgType.OK:
        return None
    records, size = reply.body.get("records"), reply.body.get("bytes")
    if type(records) is not int or type(size) is not int or not (
            0 <= records < 1 << 62 and 0 <= size < 1 << 62):
        return None
    return records, size


def _peak_to_mean(values: list[int]) -> float:
    mean = sum(values) / len(values) if values else 0
    return round(max(values) / mean, 4) if mean else 1.0


def _batch_size(message: Message) -> int:
    """Keys a request adds to the node's pending operations (a batch: one per key)."""
    if message.type == MsgType.MGET:
        return len(message.body["keys"])
    if message.type == MsgType.MPUT:
        return len(message.body["items"])
    return 1


def _read_body(value, version: list | None, served_by: list[str]) -> dict:
    """A read's answer without the ring hint (``value`` None with a version: a tombstone)."""
    found = version is not None and value is not None
    return {"found": found, "value": value if found else None, "version": version,
            "served_by": served_by}


def _wire_read_body(wire: list | None, served_by: list[str]) -> dict:
    """``_read_body`` of a wire record ``[key, value, timestamp, writer]`` (None: unseen)."""
    if wire is None:
        return _read_body(None, None, served_by)
    return _read_body(wire[1], [wire[2], wire[3]], served_by)


def _encoded_bound(value: bytes | str | None) -> int:
    """At least a value's encoded size (a str's UTF-8 takes up to 4 bytes a character)."""
    if value is None:
        return 0
    return len(value) if value.__class__ is bytes else 4 * len(value)


def _is_read_wire(wire: object, key: str) -> bool:
    """A peer's answer for ``key`` in a batch read: ``[key, value, timestamp, writer]``."""
    return (wire.__class__ is list and len(wire) == 4 and wire[0] == key
            and (wire[1] is None or wire[1].__class__ in (bytes, str))
            and wire[2].__class__ is int and 0 <= wire[2] < 1 << 64
            and wire[3].__class__ is str)


def _newest(records) -> Record | None:
    newest = None
    for record in records:
        if record is not None and (newest is None or record.version > newest.version):
            newest = record
    return newest

