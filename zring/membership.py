"""The member table: who is in the cluster, in what state, and who was heard lately (pure).

Ownership follows ``status``, which changes only by explicit events (join, leave, remove);
liveness (``up``/``down``, from heartbeats) changes routing only. Every node gossips its whole
table; ``merge`` keeps, per member, the record with the higher ``generation`` (bumped on each
status change), and on a tie the higher heartbeat. Stale records are dropped quietly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from enum import IntEnum
from typing import Any

from zring.errors import ProtocolError
from zring.failure import Liveness, PhiAccrualDetector

__all__ = ["MAX_MEMBERS", "MAX_RING_TOKENS", "MAX_WEIGHT", "MIN_WEIGHT", "Member",
           "MemberStatus", "MemberTable"]

MIN_WEIGHT = 0.01   # a member's share of the ring, relative to weight 1: finite and sane,
MAX_WEIGHT = 100.0  # so no gossiped record can make a ring unbuildable
# Members in one table, those that left included: forged or runaway gossip cannot grow a
# node's table, ring and failure detector without bound (Cassandra's rings stay far below).
MAX_MEMBERS = 1024
# Tokens in the ring (its members' weights times vnodes per unit of weight): each costs ~40
# bytes and the ring is rebuilt on every change (0.3 s at 2**20 tokens here, 1.2 s at 3.3M),
# so forged members of weight 100 could otherwise ask for billions. A node holds several
# rings at once (current, previous, future): ~50 MiB each at 2**20 tokens. 2**19: 32
# members of weight 1 at the default 16,384 vnodes (more members: fewer --vnodes).
MAX_RING_TOKENS = 1 << 19
# Generations adopted from others stay below this: each status change adds one, and a bumped
# record must still be valid on the wire (< 2**63), which legitimate histories never near.
MAX_ADOPTED_GENERATION = 1 << 62
MAX_NODE_ID_CHARS = 256
MAX_ADDRESS_CHARS = 1024


class MemberStatus(IntEnum):
    """Rank orders conflicting records of one generation: the later stage wins."""

    JOINING = 1    # announced; streaming its ranges; receives writes for them (pending)
    NORMAL = 2     # owns its ranges
    LEAVING = 3    # still owns its ranges while it hands them over
    LEFT = 4       # gone: owns nothing


@dataclass(frozen=True, slots=True)
class Member:
    node_id: str
    address: str             # ROUTER endpoint
    gossip_address: str      # PUB endpoint
    status: MemberStatus
    generation: int          # bumped by whoever changes status; newer generation wins
    heartbeat: int           # bumped only by the member itself
    weight: float = 1.0
    keys: int = 0            # live keys it holds, as it last reported
    hints: int = 0           # hints it holds for other members, as it last reported
    bytes: int = 0           # bytes of keys and values it holds, as it last reported
    streamed: bool = False   # joined by streaming its ranges (old replicas may then drop them)
    ring: int = 0            # fingerprint of the ring it routes by (its ring version)
    # the range transfer it runs, if any: (kind, keys_done, keys_total, bytes_done,
    # bytes_total), a total being -1 until known
    transfer: tuple = ()

    @property
    def in_ring(self) -> bool:
        return self.status in (MemberStatus.NORMAL, MemberStatus.LEAVING)

    def to_wire(self) -> dict[str, Any]:
        wire = asdict(self)
        wire["status"] = int(self.status)
        wire["transfer"] = list(self.transfer)
        return wire

    @classmethod
    def from_wire(cls, wire: object) -> Member:
        if not isinstance(wire, dict):
            raise ProtocolError("a member record must be a map")
        try:
            member = cls(
                node_id=wire["node_id"], address=wire["address"],
                gossip_address=wire["gossip_address"], status=MemberStatus(wire["status"]),
                generation=wire["generation"], heartbeat=wire["heartbeat"],
                weight=wire.get("weight", 1.0), keys=wire.get("keys", 0),
                hints=wire.get("hints", 0), bytes=wire.get("bytes", 0),
                streamed=wire.get("streamed", False),
                ring=wire.get("ring", 0), transfer=_transfer(wire.get("transfer", ())))
        except (KeyError, ValueError, TypeError) as exc:
            raise ProtocolError(f"bad member record: {exc}") from None
        if not (isinstance(member.node_id, str)
                and 0 < len(member.node_id) <= MAX_NODE_ID_CHARS
                and isinstance(member.address, str) and isinstance(member.gossip_address, str)
                and len(member.address) <= MAX_ADDRESS_CHARS
                and len(member.gossip_address) <= MAX_ADDRESS_CHARS
                and type(member.generation) is int and type(member.heartbeat) is int
                and type(member.keys) is int and type(member.hints) is int
                and type(member.bytes) is int and 0 <= member.bytes < 1 << 63
                and type(member.streamed) is bool
                and type(member.ring) is int and 0 <= member.ring < 1 << 64
                and type(member.weight) in (int, float)
                and MIN_WEIGHT <= member.weight <= MAX_WEIGHT
                and 0 <= member.generation < 1 << 63 and 0 <= member.heartbeat < 1 << 63):
            raise ProtocolError(f"bad member record for {wire.get('node_id')!r}")
        return member

    def newer_than(self, other: Member) -> bool:
        return ((self.generation, self.status, self.heartbeat)
                > (other.generation, other.status, other.heartbeat))


def _transfer(wire: object) -> tuple:
    if not wire:
        return ()
    if (not isinstance(wire, (list, tuple)) or len(wire) != 5 or not isinstance(wire[0], str)
            or len(wire[0]) > 32
            or any(type(v) is not int or not -1 <= v < 1 << 63 for v in wire[1:])):
        raise ProtocolError("a transfer must be [kind, keys_done, keys_total, bytes_done, "
                            "bytes_total]")
    return tuple(wire)


class MemberTable:
    """Every known member's newest record, and how alive each seems (failure detector)."""

    def __init__(self, own: Member, detector: PhiAccrualDetector,
                 max_ring_weight: float = float("inf")) -> None:
        self.own_id = own.node_id
        self.max_ring_weight = max_ring_weight   # members' weights in the ring, summed
        self._members: dict[str, Member] = {own.node_id: own}
        self.detector = detector
        self._sorted: tuple[Member, ...] | None = None   # all(), cached until a change
        self._peers: tuple[Member, ...] | None = None
        # refused: past MAX_MEMBERS, past max_ring_weight, or of a generation too high
        self.records_refused = 0
        # counts changes of a status, generation, address or weight (not heartbeats): what
        # the node reacts to, once per event, by comparing it before and after
        self.version = 0

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._members

    def full_for(self, record: Member) -> bool:
        """Would ``record`` exceed MAX_MEMBERS (if new) or max_ring_weight?"""
        current = self._members.get(record.node_id)
        if current is None and len(self._members) >= MAX_MEMBERS:
            return True
        return self._ring_weight_with(record, current) > self.max_ring_weight

    def _ring_weight_with(self, record: Member, current: Member | None) -> float:
        """The total weight of members in the ring or joining it (the future ring holds
        them all) once ``record`` replaces ``current``."""
        def claims(member: Member) -> bool:
            return member.status != MemberStatus.LEFT
        if current is not None and claims(current) == claims(record) and (
                current.weight == record.weight):
            return 0.0   # no change in the rings: never refused
        total = sum(m.weight for m in self._members.values() if claims(m))
        if current is not None and claims(current):
            total -= current.weight
        return total + (record.weight if claims(record) else 0.0)

    def __getitem__(self, node_id: str) -> Member:
        return self._members[node_id]

    def get(self, node_id: str) -> Member | None:
        return self._members.get(node_id)

    @property
    def own(self) -> Member:
        return self._members[self.own_id]

    def all(self) -> list[Member]:
        if self._sorted is None:
            self._sorted = tuple(sorted(self._members.values(), key=lambda m: m.node_id))
        return list(self._sorted)

    def peers(self) -> list[Member]:
        """Other members that are not gone."""
        if self._peers is None:
            self._peers = tuple(m for m in self.all() if m.node_id != self.own_id
                                and m.status != MemberStatus.LEFT)
        return list(self._peers)

    def _changed(self) -> None:
        self._sorted = self._peers = None

    def ring_weights(self) -> dict[str, float]:
        """Members that own ranges, with their weights."""
        return {m.node_id: m.weight for m in self._members.values() if m.in_ring}

    def with_status(self, status: MemberStatus) -> list[Member]:
        return [m for m in self.all() if m.status == status]

    def update_own(self, **changes: Any) -> Member:
        own = replace(self.own, **changes)
        self._members[self.own_id] = own
        self._changed()
        return own

    def set_status(self, node_id: str, status: MemberStatus, **changes: Any) -> Member:
        """Change a member's status, bumping its generation so the change wins everywhere."""
        member = self._members[node_id]
        member = replace(member, status=status, generation=member.generation + 1, **changes)
        self._members[node_id] = member
        self._changed()
        self.version += 1
        return member

    def merge(self, records: list[Member], now: float) -> bool:
        """Adopt newer records; True when a status, generation or address changed."""
        changed = False
        for record in records:
            if record.generation >= MAX_ADOPTED_GENERATION:
                self.records_refused += 1
                continue
            current = self._members.get(record.node_id)
            if record.node_id == self.own_id:
                # Only we may advance our heartbeat; someone else's newer generation for us
                # (a forced removal) is adopted, keeping our own heartbeat counting.
                if current is not None and (record.generation, record.status) > (
                        current.generation, current.status):
                    self._members[self.own_id] = replace(record, heartbeat=current.heartbeat)
                    self._changed()
                    changed = True
                continue
            if current is None or record.newer_than(current):
                if (current is None and len(self._members) >= MAX_MEMBERS) or (
                        record.status != MemberStatus.LEFT
                        and self._ring_weight_with(record, current) > self.max_ring_weight):
                    self.records_refused += 1
                    continue
                if current is None or record.heartbeat > current.heartbeat:
                    self.detector.heartbeat(record.node_id, now)
                if current is None or (record.generation, record.status, record.address,
                                       record.gossip_address, record.weight) != (
                        current.generation, current.status, current.address,
                        current.gossip_address, current.weight):
                    changed = True
                self._members[record.node_id] = record
                self._changed()
        if changed:
            self.version += 1
        return changed

    def heard_from(self, node_id: str, now: float) -> None:
        """Direct evidence the member is alive (it answered us)."""
        if not self.detector.known(node_id):
            self.detector.heartbeat(node_id, now)

    def last_heard(self, node_id: str) -> float | None:
        return self.detector.last_heard(node_id)

    def liveness(self, node_id: str, now: float) -> Liveness:
        if node_id == self.own_id:
            return Liveness.UP
        return self.detector.liveness(node_id, now)

    def is_up(self, node_id: str, now: float) -> bool:
        """Not (yet) declared down: a suspect still gets requests."""
        return self.liveness(node_id, now) != Liveness.DOWN

    def to_wire(self) -> list[dict[str, Any]]:
        return [m.to_wire() for m in self.all()]
