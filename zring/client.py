"""Client: talk to a zring cluster through any of its nodes (Lazy Pirate over a DEALER).

    with Client(["tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002"]) as client:
        client.put("user:1", b"alice")
        client.get("user:1").value          # b"alice"

Any node coordinates any request, so the client keeps one DEALER connected to one seed at a
time. Every request waits at most ``timeout`` seconds for its reply (a poll, never a blocking
recv); on silence the socket is closed with LINGER 0 (dropping the unsent request and any late
reply), the next seed is connected, and the request is resent, up to ``retries`` more times
with a short backoff. Then :class:`~zring.errors.Timeout` is raised. An ERROR reply raises the
matching :mod:`zring.errors` exception at once: the cluster answered, so retrying elsewhere
would not help (a write that was refused with ``Unavailable`` may still have been applied on
some replicas, as the message says).

Replies are matched by request id; a stray reply to an earlier request is ignored.

Token-aware routing (``token_aware=True``, the default): the client learns the ring from any
node (RING_STATE) and sends each key's request straight to a live replica of the key, so the
coordinator reads or writes locally and nothing takes an extra hop. It keeps the ring current
by subscribing to the nodes' gossip (a member that routes by another ring marks ours stale)
and by the hint a node adds to a reply when it was not a replica of the key. The seeds are
the fallback when the ring is unknown or every replica is silent.

A client is not thread-safe (neither is a ZeroMQ socket): use one per thread.
"""

from __future__ import annotations

import itertools
import os
import random
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import zmq

from zring.core.batching import cut
from zring.errors import (
    ClockSkew,
    InvalidRequest,
    NotMember,
    ProtocolError,
    Timeout,
    Unavailable,
    VersionConflict,
    ZringError,
    error_from_code,
)
from zring.protocol import MAX_FRAME_BYTES, Message, MsgType, decode, encode
from zring.security import ClientKeys
from zring.versions import HybridClock, Version

if TYPE_CHECKING:
    from zring.ring import HashRing

__all__ = [
    "DEFAULT_SEEDS", "Client", "ClusterStatus", "DeleteResult", "GetResult", "MemberInfo",
    "MembershipResult", "PutResult", "RingNode", "RingState", "ClientKeys", "parse_seeds",
    "seeds_from_env", "new_dealer",
]

DEFAULT_SEEDS: tuple[str, ...] = ("tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002",
                                  "tcp://127.0.0.1:7003")
SEEDS_ENV = "ZRING_SEEDS"

_BACKOFF_BASE_S = 0.05     # sleep before retry k: base * 2**k, capped
_BACKOFF_MAX_S = 1.0
_WAIT_POLL_S = 0.1         # add_node / remove_node: pause between status polls
_AVOID_S = 3.0             # a silent endpoint is tried last for this long
_GOSSIP_SILENCE_S = 3.0    # a node whose gossip we have not heard this long is tried last
_RING_REFRESH_GAP_S = 0.5  # refetch a stale ring at most this often
_GOSSIP_CHECK_S = 0.02     # read arrived gossip before a request at most this often
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)   # plain ints: IntFlag math is slower
_RCVTIMEO = int(zmq.RCVTIMEO)
_BATCH_CHUNK = 1000        # keys per MGET/MPUT frame
_BATCH_BYTES = 8 << 20     # and about this much of their keys and values
_CONFLICT_RETRIES = 5      # a write refused for a newer version: resent with a later stamp


# ------------------------------------------------------------------ seeds


def parse_seeds(seeds: str | Iterable[str]) -> list[str]:
    """``"tcp://a:1, b:2"`` or a list -> endpoints; ``host:port`` gets ``tcp://``."""
    items = seeds.split(",") if isinstance(seeds, str) else list(seeds)
    endpoints = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidRequest(f"a seed must be a str endpoint, got {item!r}")
        item = item.strip()
        if item:
            endpoints.append(item if "://" in item else f"tcp://{item}")
    return endpoints


def seeds_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """Seeds from ``$ZRING_SEEDS``, else the local cluster (127.0.0.1:7001..7003)."""
    value = (os.environ if environ is None else environ).get(SEEDS_ENV, "")
    return parse_seeds(value) or list(DEFAULT_SEEDS)


# ------------------------------------------------------------------ results


def _version(wire: Any) -> Version | None:
    return None if wire is None else Version(wire[0], wire[1])


@dataclass(frozen=True, slots=True)
class PutResult:
    success: bool
    stored_on: tuple[str, ...]       # replicas that acknowledged before the reply (>= w)
    replicated_to: tuple[str, ...]   # the key's preference list (the write went to all)
    version: Version | None          # (HLC timestamp, coordinator): last writer wins

    @classmethod
    def from_body(cls, body: dict) -> PutResult:
        return cls(True, tuple(body.get("stored_on", ())), tuple(body.get("replicated_to", ())),
                   _version(body.get("version")))


@dataclass(frozen=True, slots=True)
class DeleteResult:
    success: bool
    stored_on: tuple[str, ...]       # replicas that stored the tombstone before the reply
    replicated_to: tuple[str, ...]
    version: Version | None          # the tombstone's version

    @classmethod
    def from_body(cls, body: dict) -> DeleteResult:
        return cls(True, tuple(body.get("stored_on", ())), tuple(body.get("replicated_to", ())),
                   _version(body.get("version")))


@dataclass(frozen=True, slots=True)
class GetResult:
    value: bytes | str | None        # as stored; None when not found
    found: bool
    served_by: tuple[str, ...]       # replicas whose answers made the quorum
    version: Version | None          # the newest version seen (a tombstone's when deleted)

    @classmethod
    def from_body(cls, body: dict) -> GetResult:
        version = body.get("version")
        return cls(body.get("value"), bool(body.get("found")), tuple(body.get("served_by", ())),
                   None if version is None else Version(version[0], version[1]))


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


# ------------------------------------------------------------------ write stamps


class WriteStamps:
    """A client's write versions (Cassandra's client-side timestamps): a hybrid clock on
    the client's wall clock, kept ahead of every version the client saw, and a writer id
    unique to the client. A write is stamped once and resent with the same stamp whatever
    the retries, so a copy of it applied late can never win over a later write.

    A write refused for a newer version held is stamped again above it and resent only if
    it is sure to have been applied nowhere: every replica refused it, and no copy of it
    went unanswered. Otherwise it may have taken effect (and been superseded), and a second
    effect later would be seen as the value coming back: the caller gets VersionConflict."""

    def __init__(self, writer: str | None = None) -> None:
        self.clock = HybridClock()
        self.writer = writer or f"client-{secrets.token_hex(6)}"

    def next(self) -> int:
        return self.clock.now(int(time.time() * 1000))

    def observe(self, timestamp: object) -> None:
        if type(timestamp) is int and 0 <= timestamp < 1 << 63:
            self.clock.observe(timestamp)

    def observe_body(self, body: object) -> None:
        """A reply body's version (a read's or a write's)."""
        version = body.get("version") if isinstance(body, dict) else None
        if isinstance(version, list) and version:
            self.observe(version[0])

    def observe_conflict(self, held: object) -> None:
        if isinstance(held, list) and held:
            self.observe(held[0])

    def stamp_again(self, conflict: VersionConflict, attempt: int, unanswered: bool) -> bool:
        """A write refused for a newer version (``attempt`` counts its stamps from 0):
        stamp it again above that version and resend it? Only if it was applied nowhere
        (every replica refused it, no copy of it went unanswered) and tries remain."""
        self.observe_conflict(conflict.details.get("held"))
        return (attempt < _CONFLICT_RETRIES and not unanswered
                and bool(conflict.details.get("all_refused")))


def restampable(results: list, uncertain: set[int]) -> list[int]:
    """Indexes of batch results refused by every replica for a newer version held, whose
    writes never went unanswered (``uncertain``): safe to stamp again and resend."""
    return [index for index, result in enumerate(results)
            if isinstance(result, dict) and result.get("error") == VersionConflict.code
            and result.get("all_refused") and index not in uncertain]


# ------------------------------------------------------------------ argument checks


def _key(key: object) -> str:
    if not isinstance(key, str):
        raise InvalidRequest(f"key must be a str, got {type(key).__name__}")
    return key


def _value(value: object) -> bytes | str:
    if not isinstance(value, (bytes, str)):
        raise InvalidRequest(f"value must be bytes or str, got {type(value).__name__}")
    return value


def _count(value: object, name: str) -> int | None:
    if value is not None and (type(value) is not int):
        raise InvalidRequest(f"{name} must be an int or None, got {type(value).__name__}")
    return value


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a str, got {type(value).__name__}")
    return value


def _client_options(seeds: object, timeout: object, retries: object):
    """Checked (seeds, timeout, retries) of a Client or AsyncClient."""
    seeds = seeds_from_env() if seeds is None else parse_seeds(seeds)
    if not seeds:
        raise InvalidRequest("no seed endpoints given")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise InvalidRequest(f"timeout must be a positive number, got {timeout!r}")
    if type(retries) is not int or retries < 0:
        raise InvalidRequest(f"retries must be an int >= 0, got {retries!r}")
    return seeds, float(timeout), retries


# ------------------------------------------------------------------ client


class Client:
    """A connection to a zring cluster through its seed nodes.

    ``seeds``: ROUTER endpoints (a list or a comma-separated str; default ``$ZRING_SEEDS``,
    else 127.0.0.1:7001..7003). ``timeout``: seconds to wait for each reply. ``retries``:
    how many times a silent request is resent, each time to the next seed. ``keys``: for a
    cluster with security on, this client's CurveZMQ keys (``ClientKeys.load(key_file)``;
    None: a plain connection, which such a cluster refuses).
    """

    def __init__(self, seeds: str | Sequence[str] | None = None, timeout: float = 5.0,
                 retries: int = 3, *, token_aware: bool = True,
                 keys: ClientKeys | None = None) -> None:
        self.seeds, self.timeout, self.retries = _client_options(seeds, timeout, retries)
        self.keys = keys
        self._context = zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._seed_index = random.randrange(len(self.seeds))  # spread clients over seeds
        self._ids = itertools.count(random.getrandbits(32) + 1)
        self._ring: HashRing | None = None
        self._ring_fingerprint: int | None = None
        self.token_aware = token_aware
        self._router = _Router(self.keys)
        self._direct: dict[str, zmq.Socket] = {}   # endpoint -> DEALER, for routed requests
        self._stamps = WriteStamps()
        self._went_unanswered = False   # the last request was resent after a silence

    def __repr__(self) -> str:
        return f"Client(seeds={self.seeds!r}, timeout={self.timeout}, retries={self.retries})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the sockets (LINGER 0: nothing pending is kept). The client stays usable."""
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
        for sock in self._direct.values():
            sock.close(linger=0)
        self._direct.clear()
        self._router.close()

    # -------------------------------------------------------------- data

    def put(self, key: str, value: bytes | str, *, replicas: int | None = None,
            w: int | None = None) -> PutResult:
        """Write ``value``; succeeds once ``w`` of the ``replicas`` replicas stored it."""
        return PutResult.from_body(self._write(MsgType.PUT, {
            "key": _key(key), "value": _value(value), "n": _count(replicas, "replicas"),
            "w": _count(w, "w")}))

    def get(self, key: str, *, r: int | None = None, replicas: int | None = None) -> GetResult:
        """Read the newest value among ``r`` replicas (``found`` is False if there is none)."""
        body = self._execute_key(MsgType.GET, {
            "key": _key(key), "n": _count(replicas, "replicas"), "r": _count(r, "r")})
        self._stamps.observe_body(body)
        return GetResult.from_body(body)

    def mget(self, keys: Iterable[str], *, r: int | None = None) -> list[GetResult]:
        """Read many keys: one MGET per replica node (up to 1,000 keys a frame), all in
        flight at once. Results in key order; a key that failed raises its error."""
        keys = [_key(k) for k in keys]
        bodies = self._execute_batch(MsgType.MGET, keys, [{"key": k} for k in keys],
                                     lambda chunk: {"keys": [e["key"] for e in chunk],
                                                    "r": _count(r, "r")})
        _raise_first_error(bodies)
        for body in bodies:
            self._stamps.observe_body(body)
        return [GetResult.from_body(b) for b in bodies]

    def mput(self, items: Mapping[str, bytes | str] | Iterable[tuple[str, bytes | str]], *,
             w: int | None = None) -> list[PutResult]:
        """Write many keys as :meth:`mget` reads them; each key needs its own W acks.
        Results in item order; a key that failed raises its error (the others stand)."""
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        entries = [{"key": _key(k), "value": _value(v)} for k, v in pairs]
        w, stamps = _count(w, "w"), self._stamps

        def body(chunk: list[dict]) -> dict:
            return {"items": [[e["key"], e["value"], e["ts"]] for e in chunk], "w": w,
                    "writer": stamps.writer}
        for entry in entries:
            entry["ts"] = stamps.next()
        bodies = self._execute_batch(MsgType.MPUT, [e["key"] for e in entries], entries, body)
        for result in bodies:
            if isinstance(result, dict):
                stamps.observe_conflict(result.get("held"))
        for _ in range(_CONFLICT_RETRIES):
            uncertain = {i for i, entry in enumerate(entries) if entry.get("resent")}
            again = restampable(bodies, uncertain)
            if not again:
                break
            for index in again:   # applied nowhere: stamped again above what is held
                entries[index]["ts"] = stamps.next()
            retried = self._execute_batch(MsgType.MPUT, [entries[i]["key"] for i in again],
                                          [entries[i] for i in again], body)
            for index, result in zip(again, retried, strict=True):
                bodies[index] = result
                if isinstance(result, dict):
                    stamps.observe_conflict(result.get("held"))
        _raise_first_error(bodies)
        for result in bodies:
            stamps.observe_body(result)
        return [PutResult.from_body(b) for b in bodies]

    def delete(self, key: str, *, w: int | None = None,
               replicas: int | None = None) -> DeleteResult:
        """Write a tombstone for ``key`` (deleting a missing key succeeds too)."""
        return DeleteResult.from_body(self._write(MsgType.DELETE, {
            "key": _key(key), "n": _count(replicas, "replicas"), "w": _count(w, "w")}))

    def _write(self, msg_type: MsgType, body: dict) -> dict:
        """A PUT or DELETE, stamped once for all its resends. Refused for a newer version
        held, it is stamped again above it and resent only if no replica took it and no
        copy went unanswered (see WriteStamps); otherwise VersionConflict is raised."""
        stamps = self._stamps
        body["writer"] = stamps.writer
        for attempt in range(_CONFLICT_RETRIES + 1):
            body["ts"] = stamps.next()
            try:
                result = self._execute_key(msg_type, body)
            except VersionConflict as exc:
                if not stamps.stamp_again(exc, attempt, self._went_unanswered):
                    raise
                continue
            stamps.observe_body(result)
            return result
        raise AssertionError("unreachable")

    # -------------------------------------------------------------- ring and cluster

    def ring_state(self) -> RingState:
        return RingState.from_body(self._execute(MsgType.RING_STATE, {}))

    def cluster_status(self) -> ClusterStatus:
        return ClusterStatus.from_body(self._execute(MsgType.CLUSTER_STATUS, {}))

    def ping(self) -> dict:
        return self._execute(MsgType.PING, {})

    def node_stats(self, node_id: str) -> dict[str, int]:
        """``node_id``'s counters since it started: rejected frames, refused connections,
        forbidden requests, overloads, dropped sends..."""
        member, _ = self._member(_text(node_id, "node id"))
        return dict(self._execute_at(member.address, MsgType.STATS, {})["counters"])

    def get_node(self, key: str) -> str:
        """The node that owns ``key`` (its first replica), from the cluster's current ring."""
        return self.get_nodes(key, 1)[0]

    def get_nodes(self, key: str, count: int | None = None) -> list[str]:
        """The key's preference list: ``count`` (default: the cluster's N) distinct nodes."""
        key, count = _key(key), _count(count, "count")
        state = self.ring_state()
        nodes = self._ring_for(state).get_nodes(key, state.replicas if count is None else count)
        if not nodes:
            raise Unavailable("the ring has no nodes")
        return nodes

    def local_keys(self, node_id: str, *, limit: int | None = None) -> list[str]:
        """Keys stored on ``node_id`` itself (asked directly, not through a coordinator)."""
        member, _ = self._member(_text(node_id, "node id"))
        body = {"limit": _count(limit, "limit")}
        return list(self._execute_at(member.address, MsgType.LOCAL_KEYS, body)["keys"])

    # -------------------------------------------------------------- membership

    def plan(self, action: str, node_id: str, *, weight: float | None = None,
             timeout: float = 120) -> dict:
        """A dry run of ``add`` or ``remove`` of ``node_id``: per node the records and bytes
        it holds, would send and would receive, and the balance (peak/mean records per
        node) before and after. Nothing moves."""
        if action not in ("add", "remove"):
            raise InvalidRequest(f"plan action must be add or remove, not {action!r}")
        body = {"action": action, "node_id": _text(node_id, "node id")}
        if weight is not None:
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise InvalidRequest(f"weight must be a number, got {weight!r}")
            body["weight"] = weight
        return self._execute(MsgType.PLAN, body, timeout=timeout, retries=0)

    def add_node(self, node_id: str, address: str, *, wait: bool = True,
                 timeout: float = 120,
                 progress: Callable[[MemberInfo], None] | None = None) -> MembershipResult:
        """Admit the running node at ``address``; with ``wait``, return once it is normal
        (it has streamed its ranges) or raise Timeout after ``timeout`` seconds.
        ``progress`` is called with the joining member at each poll (its ``transfer``)."""
        deadline = time.monotonic() + timeout
        reply = self._execute(MsgType.ADD_NODE, {"node_id": _text(node_id, "node id"),
                                                 "address": _text(address, "address")})
        if not wait:
            return MembershipResult(reply.get("node_id", node_id), reply.get("status", ""))
        # the joiner itself first: its own status carries its transfer live (the others'
        # copy comes by gossip, up to a gossip interval late)
        endpoints = [address] + [s for s in self.seeds if s != address]
        return self._wait_for_status(node_id, "normal", deadline, endpoints, progress,
                                     subject=address)

    def remove_node(self, node_id: str, *, graceful: bool = True, wait: bool = True,
                    timeout: float = 120,
                    progress: Callable[[MemberInfo], None] | None = None) -> MembershipResult:
        """Decommission ``node_id``: gracefully (it hands its ranges over, then leaves) or,
        with ``graceful=False``, at once (for a dead node; its replicas are rebuilt by the
        others). With ``wait``, return once the other nodes see it as left."""
        deadline = time.monotonic() + timeout
        leaving, status = self._member(_text(node_id, "node id"))
        reply = self._execute(MsgType.REMOVE_NODE, {"node_id": node_id,
                                                    "graceful": bool(graceful)})
        if self._current_seed() == leaving.address:
            self._next_seed()  # it is about to exit: ask someone else from now on
        if not wait:
            return MembershipResult(reply.get("node_id", node_id), reply.get("status", ""))
        others = [s for s in self.seeds if s != leaving.address]
        others += [m.address for m in status.members
                   if m.node_id != node_id and m.status != "left" and m.address not in others]
        if progress is not None and graceful:
            others = [leaving.address, *others]  # live progress while it hands data over
        return self._wait_for_status(node_id, "left", deadline, others, progress,
                                     subject=leaving.address)

    def rebalance(self, timeout: float = 600) -> dict:
        """Move every record to the nodes that should hold it (all nodes, in parallel); sent
        once, never retried: it is a long operation."""
        return self._execute(MsgType.REBALANCE, {}, timeout=timeout, retries=0)

    def repair(self, timeout: float = 600) -> dict:
        """Anti-entropy now: every pair of replicas compares hash trees and exchanges the
        records that differ. Returns the summed figures (sessions, segments_differing,
        records_pulled, records_pushed, bytes_exchanged). Sent once, never retried."""
        return self._execute(MsgType.REPAIR, {}, timeout=timeout, retries=0)

    # -------------------------------------------------------------- helpers

    def _ring_for(self, state: RingState) -> HashRing:
        """The ring of ``state``, rebuilt only when its fingerprint changes."""
        if self._ring is None or self._ring_fingerprint != state.fingerprint:
            self._ring = state.hash_ring()
            self._ring_fingerprint = state.fingerprint
        return self._ring

    def _member(self, node_id: str) -> tuple[MemberInfo, ClusterStatus]:
        status = self.cluster_status()
        member = status.member(node_id)
        if member is None or member.status == "left":
            raise NotMember(f"{node_id} is not a member of the cluster")
        return member, status

    def _wait_for_status(self, node_id: str, wanted: str, deadline: float,
                         endpoints: list[str],
                         progress: Callable[[MemberInfo], None] | None = None,
                         subject: str | None = None) -> MembershipResult:
        """Poll the members at ``endpoints`` until one shows ``node_id`` as ``wanted``,
        staying with the first that answers (a silent or failing one is skipped until the
        deadline). ``subject``, the node's own endpoint, is polled for its live progress,
        but its own word is not enough that the others see it as ``wanted``."""
        if not endpoints:
            raise Unavailable(f"no other node to ask whether {node_id} is {wanted}")
        last_seen, last_error = "unknown", None
        index = 0
        while (remaining := deadline - time.monotonic()) > 0:
            endpoint = endpoints[index % len(endpoints)]
            try:
                body = self._execute_at(endpoint, MsgType.CLUSTER_STATUS, {},
                                        timeout=min(self.timeout, remaining))
            except (Timeout, Unavailable) as exc:
                last_error = exc
                index += 1
                continue
            member = ClusterStatus.from_body(body).member(node_id)
            last_seen = member.status if member else "unknown"
            if progress is not None and member is not None:
                progress(member)
            if last_seen == wanted:
                if endpoint != subject or len(endpoints) == 1:
                    return MembershipResult(node_id, wanted)
                index += 1  # confirm with another member at once
                continue
            time.sleep(max(0.0, min(_WAIT_POLL_S, deadline - time.monotonic())))
        detail = f" (last error: {last_error})" if last_seen == "unknown" and last_error else ""
        raise Timeout(f"{node_id} is still {last_seen}, not {wanted}, after waiting"
                      f"{detail}", node_id=node_id, status=last_seen)

    # -------------------------------------------------------------- token-aware routing

    @property
    def _routing(self) -> _Routing | None:
        return self._router.routing

    def _routing_now(self) -> _Routing | None:
        """The ring to route by: fetched on first use, refetched when gossip or a reply
        says ours is stale (at most every half second); None: use the seeds."""
        if not self.token_aware:
            return None
        router = self._router
        if router.wants_ring():
            for endpoint in router.ring_sources(self.seeds)[:3]:
                try:
                    state = RingState.from_body(self._execute_at(
                        endpoint, MsgType.RING_STATE, {}, timeout=min(self.timeout, 1.0)))
                except ZringError:  # this one is silent or failing: the next
                    router.silent(endpoint)
                    continue
                router.update(state)
                break
        return router.routing

    def _execute_key(self, msg_type: MsgType, body: dict) -> dict:
        """A single-key request, sent to a replica of the key: its owner first, then (Lazy
        Pirate) the order ``_Router.endpoints_for`` gives."""
        if not self.token_aware:
            return self._execute(msg_type, body)
        key = body["key"]
        self._routing_now()
        endpoints = None   # the whole order, worked out only if the owner is silent
        request = Message(msg_type, next(self._ids), body)
        frame = encode(request)
        tried: list[str] = []
        self._went_unanswered = False
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(_BACKOFF_BASE_S * 2 ** (attempt - 1), _BACKOFF_MAX_S))
                if endpoints is None:
                    endpoints = self._router.endpoints_for(
                        key, _seeds_from(self.seeds, self._seed_index))
                # worked out after the owner was marked silent: it starts past the owner
                endpoint = endpoints[(attempt - 1) % len(endpoints)]
            else:
                endpoint = self._router.owner_endpoint(key, self._current_seed())
            tried.append(endpoint)
            sock = self._direct_socket(endpoint)
            try:
                reply = self._exchange(sock, endpoint, request.request_id, frame, self.timeout)
            except BaseException:
                self._drop_direct(endpoint)  # its reply may still come: never read it
                raise
            if reply is not None:
                result = self._router.unwrap(endpoint, reply, msg_type,
                                             may_retry=attempt < self.retries)
                if result is not None:
                    return result
                continue
            self._went_unanswered = True
            self._drop_direct(endpoint)
            self._router.silent(endpoint)
        raise Timeout(f"no reply to {msg_type.name} within {self.timeout:g}s from "
                      f"{', '.join(dict.fromkeys(tried))} ({len(tried)} tries)")

    def _execute_batch(self, msg_type: MsgType, keys: list[str], entries: list[dict],
                       make_body: Callable[[list[dict]], dict]) -> list[dict]:
        """Group ``entries`` by the endpoint of their key, send every chunk at once, gather
        the per-key results in order; chunks whose endpoint stays silent are resent once
        through the seeds. The first per-key error is raised after all have answered."""
        self._routing_now()
        groups = self._router.group(keys, self._current_seed())
        chunks = [(endpoint, chunk) for endpoint, indexes in groups.items()
                  for chunk in _chunked(indexes, entries)]
        results: list[dict | None] = [None] * len(entries)
        pending: dict[int, tuple[str, list[int]]] = {}
        unsent: list[tuple[str, list[int]]] = []   # retried through the seeds below
        for endpoint, indexes in chunks:
            request_id = next(self._ids)
            frame = encode(Message(msg_type, request_id,
                                   make_body([entries[i] for i in indexes])))
            if not _send_within(self._direct_socket(endpoint), frame, self.timeout):
                unsent.append((endpoint, indexes))
                continue
            pending[request_id] = (endpoint, indexes)
        deadline = time.monotonic() + self.timeout
        polled = [(self._direct[endpoint], _POLLIN)
                  for endpoint in {endpoint for endpoint, _ in pending.values()}]
        while pending and (remaining := deadline - time.monotonic()) > 0:
            for sock, _ in zmq.zmq_poll(polled, int(remaining * 1000) + 1):
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    reply = decode(frames[-1], bounded=False)
                    chunk = pending.pop(reply.request_id, None)
                    if chunk is None:
                        continue  # a reply to an earlier request of ours
                    body = _unwrap(reply, msg_type)
                    for index, result in zip(chunk[1], body["results"], strict=True):
                        results[index] = result
        for endpoint, indexes in [*pending.values(), *unsent]:
            self._drop_direct(endpoint)
            self._router.silent(endpoint)
            for index in indexes:
                entries[index]["resent"] = True   # its fate before the resend is unknown
            body = self._execute(msg_type, make_body([entries[i] for i in indexes]))
            for index, result in zip(indexes, body["results"], strict=True):
                results[index] = result
        for result in results:
            if isinstance(result, dict) and "error" not in result:
                self._router.note_reply(result)
        return results

    def _direct_socket(self, endpoint: str) -> zmq.Socket:
        sock = self._direct.get(endpoint)
        if sock is None:
            sock = self._direct[endpoint] = self._new_socket(endpoint)
        return sock

    def _drop_direct(self, endpoint: str) -> None:
        sock = self._direct.pop(endpoint, None)
        if sock is not None:
            sock.close(linger=0)

    # -------------------------------------------------------------- transport

    def _execute(self, msg_type: MsgType, body: dict, timeout: float | None = None,
                 retries: int | None = None) -> dict:
        """Send one request through the seeds (Lazy Pirate); the OK body, or raise."""
        timeout = self.timeout if timeout is None else timeout
        retries = self.retries if retries is None else retries
        request = Message(msg_type, next(self._ids), body)
        frame = encode(request)
        tried: list[str] = []
        self._went_unanswered = False
        for attempt in range(retries + 1):
            if attempt:
                self._went_unanswered = True
                time.sleep(min(_BACKOFF_BASE_S * 2 ** (attempt - 1), _BACKOFF_MAX_S))
            endpoint = self._current_seed()
            tried.append(endpoint)
            reply = self._exchange(self._connected_socket(), endpoint, request.request_id,
                                   frame, timeout)
            if reply is not None:
                return _unwrap(reply, msg_type)
            self._close_seed_socket()  # silence: drop the request and any late reply with it
            self._next_seed()
        raise Timeout(f"no reply to {msg_type.name} within {timeout:g}s from "
                      f"{', '.join(dict.fromkeys(tried))} ({len(tried)} tries)")

    def _execute_at(self, endpoint: str, msg_type: MsgType, body: dict,
                    timeout: float | None = None) -> dict:
        """Send one request to one node, once, through a short-lived DEALER."""
        timeout = self.timeout if timeout is None else timeout
        request_id = next(self._ids)
        socket = self._new_socket(endpoint)
        try:
            reply = self._exchange(socket, endpoint, request_id,
                                   encode(Message(msg_type, request_id, body)), timeout)
        finally:
            socket.close(linger=0)
        if reply is None:
            raise Timeout(f"no reply to {msg_type.name} within {timeout:g}s from {endpoint}")
        return _unwrap(reply, msg_type)

    def _exchange(self, socket: zmq.Socket, endpoint: str, request_id: int, frame: bytes,
                  timeout: float) -> Message | None:
        """Send ``frame`` and wait up to ``timeout`` for the reply with ``request_id``;
        None on silence (including a send that could not be queued in time)."""
        deadline = time.monotonic() + timeout
        try:
            if not _send_within(socket, frame, timeout):
                return None
            while (remaining := deadline - time.monotonic()) > 0:
                # a blocking recv with a timeout: one wait on the socket's own signal, where
                # zmq_poll asks the socket for its events before and after waiting
                socket.setsockopt(_RCVTIMEO, int(remaining * 1000) + 1)
                frames = socket.recv_multipart()
                try:
                    reply = decode(frames[-1], bounded=False)
                except ProtocolError as exc:
                    raise ProtocolError(f"bad reply from {endpoint}: {exc}") from None
                if reply.request_id == request_id:
                    return reply
                # a reply to an earlier request of ours: ignore it
        except zmq.Again:
            return None
        except BaseException:
            if socket is self._socket:
                self._close_seed_socket()  # it may still be answered: never read that reply
            raise
        return None

    def _current_seed(self) -> str:
        return self.seeds[self._seed_index]

    def _next_seed(self) -> None:
        self._close_seed_socket()
        self._seed_index = (self._seed_index + 1) % len(self.seeds)

    def _close_seed_socket(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def _connected_socket(self) -> zmq.Socket:
        if self._socket is None:
            self._socket = self._new_socket(self._current_seed())
        return self._socket

    def _new_socket(self, endpoint: str) -> zmq.Socket:
        return new_dealer(self._context, endpoint, self.keys)


def new_dealer(context: zmq.Context, endpoint: str, keys: ClientKeys | None) -> zmq.Socket:
    """A client's DEALER to ``endpoint`` (Client's and AsyncClient's): LINGER 0,
    MAXMSGSIZE, bounded HWMs, CurveZMQ if ``keys``."""
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
    socket.setsockopt(zmq.SNDHWM, 1000)
    socket.setsockopt(zmq.RCVHWM, 1000)
    if keys is not None:
        keys.connect(socket)
    try:
        socket.connect(endpoint)
    except zmq.ZMQError as exc:
        socket.close(linger=0)
        raise InvalidRequest(f"bad endpoint {endpoint!r}: {exc}") from None
    return socket


def _send_within(socket: zmq.Socket, frame: bytes, timeout: float) -> bool:
    """Queue ``frame`` on ``socket``, waiting up to ``timeout`` for room in a full queue;
    False if it could not be queued."""
    try:
        socket.send(frame, zmq.NOBLOCK)
    except zmq.Again:
        if not socket.poll(timeout * 1000, zmq.POLLOUT):
            return False
        try:
            socket.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            return False
    return True


def _raise_first_error(results: list) -> None:
    """A batch's first per-key error, raised (after every key has answered)."""
    for result in results:
        if isinstance(result, dict) and "error" in result:
            details = {"held": result["held"]} if "held" in result else None
            raise error_from_code(result["error"], result.get("message", ""), details)


def _seeds_from(seeds: list[str], index: int) -> list[str]:
    """The seeds, the current one (``index``) first."""
    return seeds[index:] + seeds[:index]


def _chunked(indexes: list[int], entries: list[dict]) -> list[list[int]]:
    """Runs of at most _BATCH_CHUNK entries and about _BATCH_BYTES of keys and values."""
    if len(indexes) <= _BATCH_CHUNK and sum(
            len(entries[i]["key"]) + len(entries[i].get("value") or b"") + 16
            for i in indexes) <= _BATCH_BYTES:
        return [indexes]   # the usual batch: one run, without cutting key by key
    return cut(indexes, lambda i: len(entries[i]["key"]) + len(entries[i].get("value") or b"")
               + 16, _BATCH_CHUNK, _BATCH_BYTES)


class _Routing:
    """The ring a token-aware client routes by, with each node's endpoint."""

    __slots__ = ("ring", "fingerprint", "replicas", "addresses", "node_of", "preferred")

    def __init__(self, ring: HashRing, state: RingState) -> None:
        self.ring = ring
        self.fingerprint = state.fingerprint
        self.replicas = state.replicas
        self.addresses = {node.node_id: node.address for node in state.nodes}
        self.node_of = {address: node_id for node_id, address in self.addresses.items()}
        # each client prefers its own random order of nodes: batches spread over clients
        self.preferred = random.sample(list(self.addresses.values()), len(self.addresses))

    def endpoints(self, key: str) -> list[str]:
        return [self.addresses[n] for n in self.ring.get_nodes(key, self.replicas)
                if n in self.addresses]


class _Router:
    """Token-aware routing state, shared by Client and AsyncClient: the ring, whether it
    is stale, the nodes' gossip (a SUB socket drained without blocking before each
    request), and the endpoints that went silent lately. Fetching the ring is the
    client's (sync or async); everything else is here."""

    def __init__(self, keys: ClientKeys | None = None) -> None:
        self.keys = keys
        self.routing: _Routing | None = None
        self.stale = False
        self.fetched_at = -1e9
        self.avoid: dict[str, float] = {}   # endpoint -> monotonic time it is avoided until
        self._gossip: zmq.Socket | None = None
        self._gossip_endpoints: set[str] = set()
        # our own view of who is alive: when we last heard each node's gossip (it publishes
        # every 0.5 s), so a dead owner is skipped without first waiting out a timeout
        self._heard: dict[str, float] = {}
        self._listening_since: float | None = None
        self._gossip_read_at = -1e9

    def _avoided(self, endpoint: str, now: float) -> bool:
        if self.avoid.get(endpoint, 0.0) > now:
            return True
        since = self._listening_since
        if since is None or now - since < _GOSSIP_SILENCE_S or self.routing is None:
            return False
        node_id = self.routing.node_of.get(endpoint)
        return node_id is not None and now - self._heard.get(node_id, since) > \
            _GOSSIP_SILENCE_S

    def ring_sources(self, seeds: list[str]) -> list[str]:
        """Where to ask for the ring: known nodes that seem alive, then the seeds."""
        if self.routing is None:
            return seeds
        now = time.monotonic()
        known = [e for e in self.routing.addresses.values() if not self._avoided(e, now)]
        return known + [e for e in seeds if e not in known]

    def wants_ring(self) -> bool:
        """Drain gossip; True if the ring should be (re)fetched now (and note the try)."""
        now = time.monotonic()
        # nodes gossip every 0.5 s: asking the socket before each of thousands of requests a
        # second (two system calls) finds nothing new
        if now - self._gossip_read_at >= _GOSSIP_CHECK_S:
            self._gossip_read_at = now
            self.drain_gossip()
        if (self.routing is None or self.stale) and now - self.fetched_at >= _RING_REFRESH_GAP_S:
            self.fetched_at = now
            return True
        return False

    def update(self, state: RingState) -> None:
        if self.routing is None or self.routing.fingerprint != state.fingerprint:
            ring = state.hash_ring()
        else:
            ring = self.routing.ring
        self.routing = _Routing(ring, state)
        self.stale = False
        self._watch_gossip(state)

    def endpoints_for(self, key: str, seeds: list[str]) -> list[str]:
        """Where to send ``key``'s request, in order: its replicas (ones that went silent
        lately last), then the seeds."""
        if self.routing is None:
            return seeds
        replicas = self.routing.endpoints(key)
        now = time.monotonic()
        fresh = [e for e in replicas if not self._avoided(e, now)]
        ordered = fresh + [e for e in replicas if e not in fresh]
        return ordered + [e for e in seeds if e not in ordered]

    def batch_endpoint(self, key: str, seed: str) -> str:
        """Where a batch sends ``key``: when every node holds every key (no more nodes than
        replicas), all keys go to one node (this client's preferred live one: one request,
        fewer hops); otherwise to the key's owner."""
        routing = self.routing
        if routing is None:
            return seed
        if len(routing.addresses) <= routing.replicas:
            now = time.monotonic()
            for endpoint in routing.preferred:
                if not self._avoided(endpoint, now):
                    return endpoint
        return self.owner_endpoint(key, seed)

    def group(self, keys: list[str], seed: str) -> dict[str, list[int]]:
        """The indexes of ``keys`` grouped by ``batch_endpoint`` (worked out once per node
        rather than once per key)."""
        routing = self.routing
        if routing is None or len(routing.addresses) <= routing.replicas:
            return {self.batch_endpoint(keys[0], seed): list(range(len(keys)))} if keys else {}
        groups: dict[str, list[int]] = {}
        usable: dict[str, bool] = {}   # endpoint -> not avoided right now
        now = time.monotonic()
        get_node, addresses = routing.ring.get_node, routing.addresses
        for index, key in enumerate(keys):
            endpoint = addresses.get(get_node(key), seed)
            ok = usable.get(endpoint)
            if ok is None:
                ok = usable[endpoint] = not self._avoided(endpoint, now)
            if not ok:
                endpoint = self.endpoints_for(key, [seed])[0]  # its owner seems down
            groups.setdefault(endpoint, []).append(index)
        return groups

    def owner_endpoint(self, key: str, seed: str) -> str:
        """The endpoint of ``key``'s first replica (fast: batches group by it)."""
        routing = self.routing
        if routing is None:
            return seed
        endpoint = routing.addresses.get(routing.ring.get_node(key), seed)
        if self._avoided(endpoint, time.monotonic()):
            return self.endpoints_for(key, [seed])[0]  # its owner seems down
        return endpoint

    def note_reply(self, body: dict) -> None:
        """A node that was not a replica of the key says which ring it routes by."""
        ring = body.get("ring")
        if ring is not None and self.routing is not None and ring != self.routing.fingerprint:
            self.stale = True

    def unwrap(self, endpoint: str, reply: Message, msg_type: MsgType, *,
               may_retry: bool) -> dict | None:
        """The body of a routed request's reply (its ring hint noted); None: refused by a
        node that left (our ring is stale), so the caller asks the next endpoint."""
        try:
            result = _unwrap(reply, msg_type)
        except Unavailable:
            # a coordinator cut off from the key's replicas: ask another next time
            self.avoid_for_now(endpoint)
            raise
        except NotMember:
            self.silent(endpoint)
            if not may_retry:
                raise
            return None
        except ClockSkew as exc:
            if "node" not in exc.details or not may_retry:
                raise   # our own clock is ahead: no node will take the write
            self.avoid_for_now(endpoint)   # its clock is off: another replica coordinates
            return None
        self.note_reply(result)
        return result

    def avoid_for_now(self, endpoint: str) -> None:
        self.avoid[endpoint] = time.monotonic() + _AVOID_S

    def silent(self, endpoint: str) -> None:
        """No reply from ``endpoint``: try it last for a while; perhaps the ring moved on."""
        self.avoid_for_now(endpoint)
        self.stale = True

    def _watch_gossip(self, state: RingState) -> None:
        if self._gossip is None:
            self._gossip = zmq.Context.instance().socket(zmq.SUB)
            self._gossip.setsockopt(zmq.LINGER, 0)
            self._gossip.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
            self._gossip.setsockopt(zmq.RCVHWM, 100)
            self._gossip.setsockopt(zmq.SUBSCRIBE, b"")
            if self.keys is not None:
                self.keys.connect(self._gossip)
        for member in state.members:
            endpoint = member.gossip_address
            if endpoint and endpoint not in self._gossip_endpoints and member.status != "left":
                try:
                    self._gossip.connect(endpoint)
                    self._gossip_endpoints.add(endpoint)
                except zmq.ZMQError:
                    continue
        if self._listening_since is None:
            self._listening_since = time.monotonic()

    def drain_gossip(self, budget: int = 100) -> None:
        """Gossip that arrived since the last request: a sender routing by another ring
        means ours is stale (membership changed)."""
        if self._gossip is None or self.routing is None:
            return
        fingerprint = self.routing.fingerprint
        gossip = self._gossip
        for _ in range(budget):
            if not gossip.getsockopt(_EVENTS) & _POLLIN:
                return  # cheaper than a recv raising Again, before every request
            try:
                frame = gossip.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                message = decode(frame, bounded=False)
            except ProtocolError:
                continue
            if message.type != MsgType.GOSSIP:
                continue
            sender = message.body["sender"]
            self._heard[sender] = time.monotonic()
            for row in message.body["members"]:
                if isinstance(row, dict) and row.get("node_id") == sender and \
                        row.get("ring", fingerprint) != fingerprint:
                    self.stale = True

    def close(self) -> None:
        if self._gossip is not None:
            self._gossip.close(linger=0)
            self._gossip = None
            self._gossip_endpoints.clear()
            self._listening_since = None
            self.stale = True  # no more gossip: refetch (and resubscribe) on next use


def _unwrap(reply: Message, request_type: MsgType) -> dict:
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

