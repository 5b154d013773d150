"""What a client returns, and how a reply becomes a body or an error.

An ERROR reply raises the matching :mod:`zring.errors` exception (its details kept); a batch
raises its first per-key error, after every key has answered, with the key and its index
among the details, whichever client sent it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from zring.errors import ProtocolError, error_from_code
from zring.protocol import Message, MsgType
from zring.versions import Version

if TYPE_CHECKING:
    from zring.ring import HashRing

__all__ = ["ClusterStatus", "DeleteResult", "GetResult", "MemberInfo", "MembershipResult",
           "PutResult", "RingNode", "RingState", "Transfer", "WriteResult", "batch_results",
           "unwrap"]


def _version(wire: Any) -> Version | None:
    return None if wire is None else Version(wire[0], wire[1])


@dataclass(frozen=True, slots=True)
class WriteResult:
    success: bool
    stored_on: tuple[str, ...]       # replicas that acknowledged before the reply (>= w)
    replicated_to: tuple[str, ...]   # the key's preference list (the write went to all)
    version: Version | None          # (HLC timestamp, coordinator): last writer wins

    @classmethod
    def from_body(cls, body: dict) -> Self:
        return cls(True, tuple(body.get("stored_on", ())), tuple(body.get("replicated_to", ())),
                   _version(body.get("version")))


@dataclass(frozen=True, slots=True)
class PutResult(WriteResult):
    """A value written."""


@dataclass(frozen=True, slots=True)
class DeleteResult(WriteResult):
    """A tombstone written (``version`` is the tombstone's)."""


@dataclass(frozen=True, slots=True)
class GetResult:
    value: bytes | str | None        # as stored; None when not found
    found: bool
    served_by: tuple[str, ...]       # replicas whose answers made the quorum
    version: Version | None          # the newest version seen (a tombstone's when deleted)

    @classmethod
    def from_body(cls, body: dict) -> GetResult:
        return cls(body.get("value"), bool(body.get("found")), tuple(body.get("served_by", ())),
                   _version(body.get("version")))


@dataclass(frozen=True, slots=True)
class Transfer:
    """A join or leave streaming ranges, as the member last reported it."""

    kind: str                # "join" or "leave"
    keys_done: int
    keys_total: int          # -1 until counted
    bytes_done: int
    bytes_total: int         # -1 until counted

    @classmethod
    def from_wire(cls, wire: object) -> Transfer | None:
        if not isinstance(wire, (list, tuple)) or len(wire) != 5:
            return None
        return cls(*wire)


@dataclass(frozen=True, slots=True)
class MemberInfo:
    node_id: str
    address: str             # ROUTER endpoint
    status: str              # joining / normal / leaving / left  (ownership)
    liveness: str            # up / suspect / down  (as the answering node's detector sees it)
    keys_count: int          # live keys the member last reported
    ownership: float         # share of the ring it owns as first replica (0..1)
    weight: float
    gossip_address: str = ""
    hints: int = 0           # writes it holds for members that were down
    ring_version: int = 0    # fingerprint of the ring it routes by
    transfer: Transfer | None = None  # the join or leave it is streaming, if any
    bytes: int = 0           # of the keys and values it holds
    # "exact": keys_count, hints and bytes as the member answered just now; "gossip": as it
    # last reported (it did not answer in time)
    figures: str = "gossip"
    # its wall clock minus the answering node's peers' (seconds; None: not measured), and
    # whether it is within max_clock_offset_s (a node past it coordinates no writes)
    clock_offset_s: float | None = None
    clock_ok: bool | None = None

    @classmethod
    def from_row(cls, row: dict) -> MemberInfo:
        return cls(row["node_id"], row["address"], row["status"], row["liveness"],
                   row.get("keys_count", 0), row.get("ownership", 0.0), row.get("weight", 1.0),
                   row.get("gossip_address", ""), row.get("hints", 0),
                   row.get("ring_version", 0), Transfer.from_wire(row.get("transfer")),
                   row.get("bytes", 0), row.get("figures", "gossip"),
                   row.get("clock_offset_s"), row.get("clock_ok"))


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    members: tuple[MemberInfo, ...]
    answered_by: str = ""    # the node that answered (its view of the cluster)
    fingerprint: int = 0     # that node's ring fingerprint

    @classmethod
    def from_body(cls, body: dict) -> ClusterStatus:
        return cls(tuple(MemberInfo.from_row(r) for r in body.get("members", ())),
                   body.get("node_id", ""), body.get("fingerprint", 0))

    def member(self, node_id: str) -> MemberInfo | None:
        return next((m for m in self.members if m.node_id == node_id), None)


@dataclass(frozen=True, slots=True)
class RingNode:
    node_id: str
    weight: float
    address: str


@dataclass(frozen=True, slots=True)
class RingState:
    vnodes: int
    replicas: int                    # N
    write_quorum: int                # W
    read_quorum: int                 # R
    fingerprint: int
    nodes: tuple[RingNode, ...]      # members that own ranges (normal, leaving)
    members: tuple[MemberInfo, ...]  # every known member

    @classmethod
    def from_body(cls, body: dict) -> RingState:
        return cls(body["vnodes"], body["replicas"], body["write_quorum"], body["read_quorum"],
                   body["fingerprint"],
                   tuple(RingNode(n["node_id"], n["weight"], n["address"])
                         for n in body.get("nodes", ())),
                   tuple(MemberInfo.from_row(r) for r in body.get("members", ())))

    def hash_ring(self) -> HashRing:
        """The ring these nodes form (as every node builds it)."""
        from zring.ring import HashRing  # numpy: only clients that route pay for it
        return HashRing({n.node_id: n.weight for n in self.nodes}, vnodes=self.vnodes)


@dataclass(frozen=True, slots=True)
class MembershipResult:
    node_id: str
    status: str   # after add_node / remove_node: the reply's, or the awaited status


def unwrap(reply: Message, request_type: MsgType) -> dict:
    """The body of an OK reply; an ERROR reply raised as its exception."""
    body = reply.body
    if reply.type == MsgType.OK:
        return body
    if reply.type == MsgType.ERROR:
        details = body.get("details")
        details = ({k: v for k, v in details.items() if isinstance(k, str) and k != "message"}
                   if isinstance(details, dict) else None)
        raise error_from_code(body["code"], body["message"], details)
    raise ProtocolError(f"unexpected {reply.type.name} reply to {request_type.name}")


def batch_results(entries: list, keys: Sequence[str], from_body: Callable[[dict], Any]) -> list:
    """Per-key reply entries -> results; the first per-key error entry is raised, its
    details the entry's own (``held``, ``all_refused``...) with ``key`` and ``index``."""
    results, first_error = [], None
    for index, (key, entry) in enumerate(zip(keys, entries, strict=True)):
        if not isinstance(entry, dict):
            raise ProtocolError(f"batch result {index} is not a map")
        if "error" in entry:
            if first_error is None:
                details = {k: v for k, v in entry.items()
                           if isinstance(k, str) and k not in ("error", "message")}
                first_error = error_from_code(str(entry["error"]),
                                              str(entry.get("message", "")),
                                              details | {"key": key, "index": index})
            results.append(None)
        else:
            results.append(from_body(entry))
    if first_error is not None:
        raise first_error
    return results
