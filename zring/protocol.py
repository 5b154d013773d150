"""Wire messages: one msgpack frame ``[type, request_id, body]`` (pure: no sockets).

Every frame, from a client or a peer, is decoded here with hard limits and checked against
its type's schema before any handler sees it, so a handler only ever gets well-typed fields.
Message type numbers are append-only: never renumber or reuse one.

Replies carry the request id of the request they answer: ``OK`` with a body, or ``ERROR``
with ``{"code", "message"}`` (codes are those of :mod:`zring.errors`). Gossip is published
with request id 0 and gets no reply.

Records travel as ``[key, value, timestamp, writer]`` (value ``None`` = tombstone); the
receiver recomputes the position from the key rather than trusting the sender.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import msgpack

from zring.errors import ProtocolError
from zring.storage.base import Record, record_from_wire, record_to_wire

__all__ = ["MsgType", "Message", "cut", "encode", "decode", "validate", "message_to_wire",
           "record_to_wire", "record_from_wire", "MAX_FRAME_BYTES", "CLIENT_TYPES",
           "PEER_TYPES", "ADMIN_TYPES", "permitted", "read_body", "wire_read_body",
           "is_read_wire", "newest_of", "write_body"]

MAX_FRAME_BYTES = 64 * 1024 * 1024  # also the sockets' MAXMSGSIZE
_MAX_INT = (1 << 64) - 1


class MsgType(IntEnum):
    # replies
    OK = 1
    ERROR = 2
    # client requests (any node coordinates them)
    PUT = 10
    GET = 11
    DELETE = 12
    RING_STATE = 13
    CLUSTER_STATUS = 14
    LOCAL_KEYS = 15
    ADD_NODE = 16
    REMOVE_NODE = 17
    REBALANCE = 18
    PING = 19
    REPAIR = 20
    PLAN = 21
    MGET = 22
    MPUT = 23
    STATS = 24
    # a token-aware client coordinating its own quorum: one replica's copy of one key
    DIRECT_WRITE = 25
    DIRECT_READ = 26
    DIRECT_READ_MANY = 27
    DIRECT_WRITE_MANY = 28
    # node-to-node requests
    REPLICA_WRITE = 40
    REPLICA_READ = 41
    JOIN = 42
    RANGE_PULL = 43
    ADMIT = 44
    LEAVE = 45
    REBALANCE_LOCAL = 46
    FORCE_REMOVE = 47
    HINT_WRITE = 48
    REPAIR_LOCAL = 49
    REPAIR_TREE = 50
    # 51 is retired (a whole-segment sync, replaced by key-level digests): never reuse it
    REPAIR_DIGESTS = 52
    REPAIR_FETCH = 53
    RANGE_STATS = 54
    BATCH = 55          # several peer requests (or their replies) in one frame
    REPLICA_READ_MANY = 56
    CLOCK = 57          # a peer's wall clock, for the clock offset check
    # published on the gossip PUB socket
    GOSSIP = 60


_TYPES = {int(t): t for t in MsgType}

CLIENT_TYPES = frozenset({MsgType.PUT, MsgType.GET, MsgType.DELETE, MsgType.RING_STATE,
                          MsgType.CLUSTER_STATUS, MsgType.LOCAL_KEYS, MsgType.ADD_NODE,
                          MsgType.REMOVE_NODE, MsgType.REBALANCE, MsgType.PING,
                          MsgType.REPAIR, MsgType.PLAN, MsgType.MGET, MsgType.MPUT,
                          MsgType.STATS, MsgType.DIRECT_WRITE, MsgType.DIRECT_READ,
                          MsgType.DIRECT_READ_MANY, MsgType.DIRECT_WRITE_MANY})
PEER_TYPES = frozenset({MsgType.REPLICA_WRITE, MsgType.REPLICA_READ, MsgType.JOIN,
                        MsgType.RANGE_PULL, MsgType.ADMIT, MsgType.LEAVE,
                        MsgType.REBALANCE_LOCAL, MsgType.FORCE_REMOVE, MsgType.HINT_WRITE,
                        MsgType.REPAIR_LOCAL, MsgType.REPAIR_TREE, MsgType.REPAIR_DIGESTS,
                        MsgType.REPAIR_FETCH, MsgType.RANGE_STATS, MsgType.BATCH,
                        MsgType.REPLICA_READ_MANY, MsgType.CLOCK})

# With security on, what each role (the ZAP handler's "role:name" User-Id) may send: the
# cluster-changing requests need an admin key, peer requests a node key.
ADMIN_TYPES = frozenset({MsgType.ADD_NODE, MsgType.REMOVE_NODE, MsgType.REBALANCE,
                         MsgType.REPAIR, MsgType.PLAN})
_ROLE_TYPES = {
    "client": CLIENT_TYPES - ADMIN_TYPES,
    "admin": CLIENT_TYPES,
    "node": (CLIENT_TYPES - ADMIN_TYPES) | PEER_TYPES,
}


def permitted(user_id: str, msg_type: MsgType) -> bool:
    """May the holder of ``user_id`` (``"role:name"``) send a message of this type?"""
    role, _, _ = user_id.partition(":")
    return msg_type in _ROLE_TYPES.get(role, ())


@dataclass(slots=True)
class Message:
    type: MsgType
    request_id: int
    body: dict[str, Any] = field(default_factory=dict)


# Field schemas: name -> (accepted types, required). Unknown fields are ignored (a newer
# peer may send more); a known field of the wrong type is a ProtocolError.
_OPT_INT = (int, type(None))
_OPT_STR = (str, type(None))
_VALUE = (bytes, str)
_SCHEMAS: dict[MsgType, dict[str, tuple[tuple[type, ...], bool]]] = {
    MsgType.OK: {},
    MsgType.ERROR: {"code": ((str,), True), "message": ((str,), True)},
    # a write's version: the client's timestamp (its hybrid clock, fixed for every resend of
    # the write) and its writer id; without them the coordinator's clock stamps it
    MsgType.PUT: {"key": ((str,), True), "value": (_VALUE, True), "n": (_OPT_INT, False),
                  "w": (_OPT_INT, False), "ts": (_OPT_INT, False), "writer": (_OPT_STR, False)},
    MsgType.GET: {"key": ((str,), True), "n": (_OPT_INT, False), "r": (_OPT_INT, False)},
    MsgType.DELETE: {"key": ((str,), True), "n": (_OPT_INT, False), "w": (_OPT_INT, False),
                     "ts": (_OPT_INT, False), "writer": (_OPT_STR, False)},
    # "ring": the fingerprint of the ring the client routes by, "n" its preference list's
    # length: the replica takes it only if it is one of them on that ring, settled.
    # "cond" False: a read's write-back (no refusal; the newer copy stays)
    MsgType.DIRECT_WRITE: {"key": ((str,), True), "value": ((bytes, str, type(None)), True),
                           "ts": ((int,), True), "writer": ((str,), True),
                           "ring": ((int,), True), "n": ((int,), True),
                           "cond": ((bool,), False)},
    MsgType.DIRECT_READ: {"key": ((str,), True), "ring": ((int,), True), "n": ((int,), True)},
    MsgType.DIRECT_READ_MANY: {"keys": ((list,), True), "ring": ((int,), True),
                               "n": ((int,), True)},
    # items [key, value, ts], all the writer's; the reply lists the refused as an MPUT's
    # replica write does: "newer": [[index, ts, writer], ...]
    MsgType.DIRECT_WRITE_MANY: {"items": ((list,), True), "writer": ((str,), True),
                                "ring": ((int,), True), "n": ((int,), True)},
    MsgType.RING_STATE: {},
    MsgType.CLUSTER_STATUS: {},
    MsgType.LOCAL_KEYS: {"limit": (_OPT_INT, False)},
    MsgType.ADD_NODE: {"node_id": ((str,), True), "address": ((str,), True)},
    MsgType.REMOVE_NODE: {"node_id": ((str,), True), "graceful": ((bool,), False)},
    MsgType.REBALANCE: {},
    MsgType.PING: {},
    MsgType.STATS: {},
    # "cond": a client write, taken only where no newer version is held (the reply lists
    # the others' positions and newer versions as "newer": [[index, ts, writer], ...])
    MsgType.REPLICA_WRITE: {"records": ((list,), True), "cond": ((bool,), False)},
    MsgType.REPLICA_READ: {"key": ((str,), True)},
    MsgType.JOIN: {"member": ((dict,), True)},
    MsgType.RANGE_PULL: {"intervals": ((list,), True), "after": (_OPT_INT, False),
                         "limit": ((int,), True)},
    MsgType.ADMIT: {"seed": ((str,), True)},
    MsgType.LEAVE: {},
    MsgType.REBALANCE_LOCAL: {},
    MsgType.FORCE_REMOVE: {"node_id": ((str,), True)},
    MsgType.HINT_WRITE: {"target": ((str,), True), "records": ((list,), True)},
    MsgType.REPAIR: {},
    MsgType.REPAIR_LOCAL: {},
    MsgType.REPAIR_TREE: {"peer": ((str,), True), "fingerprint": ((int,), True)},
    MsgType.REPAIR_DIGESTS: {"peer": ((str,), True), "intervals": ((list,), True),
                             "after": (_OPT_INT, False), "limit": ((int,), True)},
    MsgType.REPAIR_FETCH: {"keys": ((list,), True)},
    MsgType.PLAN: {"action": ((str,), True), "node_id": ((str,), True),
                   "weight": ((int, float, type(None)), False)},
    MsgType.RANGE_STATS: {"intervals": ((list,), True)},
    MsgType.GOSSIP: {"sender": ((str,), True), "members": ((list,), True)},
    # batches: {"results": [...]} replies, one entry per key in order (a GET or PUT reply's
    # body, or {"error": code, "message": ...} for that key alone)
    MsgType.MGET: {"keys": ((list,), True), "n": (_OPT_INT, False), "r": (_OPT_INT, False)},
    # items [key, value] or [key, value, ts] (ts as a PUT's, with the batch's writer)
    MsgType.MPUT: {"items": ((list,), True), "n": (_OPT_INT, False), "w": (_OPT_INT, False),
                   "writer": (_OPT_STR, False)},
    MsgType.BATCH: {"messages": ((list,), True)},
    MsgType.REPLICA_READ_MANY: {"keys": ((list,), True)},
    MsgType.CLOCK: {},
}


def message_to_wire(message: Message) -> list:
    return [int(message.type), message.request_id, message.body]


_packers = threading.local()   # a Packer per thread: packb makes one per call (~0.4 us)


def encode(message: Message) -> bytes:
    try:
        pack = _packers.pack
    except AttributeError:
        pack = _packers.pack = msgpack.Packer(use_bin_type=True).pack
    return pack([int(message.type), message.request_id, message.body])


def decode(frame: bytes, bounded: bool = True) -> Message:
    """Decode and validate one frame; any defect raises ProtocolError. ``bounded=False``
    (a client reading its cluster's replies): no item or object caps, so a node's
    answer of three million keys still arrives."""
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        # msgpack bounds every declared length by the frame's own size, and its C unpacker
        # refuses nesting deeper than its stack; both fail here rather than allocate. A
        # large frame is also counted as it unpacks: each byte can become an object of ~60
        # bytes (an empty list), so 8 MiB of b"\x90" would otherwise take 580 MiB.
        if not bounded:
            raw = msgpack.unpackb(frame, raw=False, strict_map_key=True)
        elif len(frame) <= _UNCOUNTED_FRAME_BYTES:
            raw = msgpack.unpackb(frame, raw=False, strict_map_key=True, **_LIMITS)
        else:
            count = _ObjectBudget(_MAX_OBJECTS)
            raw = msgpack.unpackb(frame, raw=False, strict_map_key=True, **_LIMITS,
                                  list_hook=count, object_hook=count)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"undecodable frame: {type(exc).__name__}: {exc}") from None
    return validate(raw)


# Frames up to this size unpack at full speed (at most ~20 MiB of objects); larger ones
# count their arrays' and maps' items against _MAX_OBJECTS.
_UNCOUNTED_FRAME_BYTES = 256 * 1024
_MAX_ITEMS = 2_000_000          # in one array or map (a 1000-key MGET has 1000)
_MAX_OBJECTS = 2_000_000        # items of all arrays and maps in one frame: ~130 MiB at most
_LIMITS = {"max_ext_len": 0, "max_array_len": _MAX_ITEMS, "max_map_len": _MAX_ITEMS}


class _ObjectBudget:
    """msgpack's list and object hook: counts the items of each array and map unpacked."""

    __slots__ = ("left",)

    def __init__(self, limit: int) -> None:
        self.left = limit

    def __call__(self, container):
        self.left -= len(container) + 1
        if self.left < 0:
            raise ProtocolError(f"frame holds more than {_MAX_OBJECTS} objects")
        return container


def validate(raw: object) -> Message:
    """Check an unpacked ``[type, request_id, body]`` (a frame, or one message of a BATCH)
    against its type's schema; any defect raises ProtocolError."""
    if not isinstance(raw, list) or len(raw) != 3:
        raise ProtocolError("a frame must be [type, request_id, body]")
    type_number, request_id, body = raw
    if type(type_number) is not int:
        raise ProtocolError("message type must be an int")
    msg_type = _TYPES.get(type_number)   # a dict lookup: MsgType(n) costs a microsecond
    if msg_type is None:
        raise ProtocolError(f"unknown message type {type_number}", request_id=request_id
                            if _is_request_id(request_id) else None)
    if not _is_request_id(request_id):
        raise ProtocolError("request id must be an int in [0, 2**64)")
    if not isinstance(body, dict):
        raise ProtocolError(f"{msg_type.name} body must be a map", request_id=request_id)
    for name, (types, required) in _SCHEMAS[msg_type].items():
        if name not in body:
            if required:
                raise ProtocolError(f"{msg_type.name} needs field {name!r}",
                                    request_id=request_id)
            continue
        value = body[name]
        # bool is an int subclass: only accept it where bool is named
        if not isinstance(value, types) or (type(value) is bool and bool not in types):
            raise ProtocolError(f"{msg_type.name} field {name!r} has the wrong type "
                                f"({type(value).__name__})", request_id=request_id)
        if type(value) is int and not 0 <= value <= _MAX_INT:
            raise ProtocolError(f"{msg_type.name} field {name!r} is out of range",
                                request_id=request_id)
    return Message(msg_type, request_id, body)


def _is_request_id(value: object) -> bool:
    return type(value) is int and 0 <= value <= _MAX_INT


def cut(items: list, size_of: Callable[[Any], int], max_count: int,
        max_bytes: int) -> list[list]:
    """``items`` in runs of at most ``max_count`` and about ``max_bytes`` by ``size_of``
    (one item bigger than that travels alone). Used for every batch, client and node."""
    runs: list[list] = [[]]
    size = 0
    for item in items:
        item_size = size_of(item)
        if runs[-1] and (len(runs[-1]) >= max_count or size + item_size > max_bytes):
            runs.append([])
            size = 0
        runs[-1].append(item)
        size += item_size
    return runs if runs[-1] else []


# ---------------------------------------------------------------- reads' and writes' answers


def write_body(version: list, acks: list[str], replicas: list[str]) -> dict:
    """A write's answer without the ring hint (a PUT's or DELETE's, or one key's of an
    MPUT): its version, the replicas that stored it, and the key's preference list."""
    return {"version": version, "stored_on": list(acks), "replicated_to": list(replicas)}


def read_body(value, version: list | None, served_by: list[str]) -> dict:
    """A read's answer without the ring hint (``value`` None with a version: a tombstone)."""
    found = version is not None and value is not None
    return {"found": found, "value": value if found else None, "version": version,
            "served_by": served_by}


def wire_read_body(wire: list | None, served_by: list[str]) -> dict:
    """``read_body`` of a wire record ``[key, value, timestamp, writer]`` (None: unseen)."""
    if wire is None:
        return read_body(None, None, served_by)
    return read_body(wire[1], [wire[2], wire[3]], served_by)


def is_read_wire(wire: object, key: str) -> bool:
    """A peer's answer for ``key`` in a batch read: ``[key, value, timestamp, writer]``."""
    return (wire.__class__ is list and len(wire) == 4 and wire[0] == key
            and (wire[1] is None or wire[1].__class__ in (bytes, str))
            and wire[2].__class__ is int and 0 <= wire[2] < 1 << 64
            and wire[3].__class__ is str)


def newest_of(records) -> Record | None:
    """The record of the greatest version among ``records`` (None entries: unseen)."""
    newest = None
    for record in records:
        if record is not None and (newest is None or record.version > newest.version):
            newest = record
    return newest
