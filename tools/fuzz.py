#!/usr/bin/env python3
"""Throw malformed and random frames at a live zring node's ROUTER and gossip SUB.

    python tools/fuzz.py --frames 100000 --seed 1      # the long run: both targets, ~1-2 min
    python tools/fuzz.py --frames 20000 --target gossip # only the gossip SUB
    python tools/fuzz.py --max-weight 0.01 --no-fresh-ids   # forged members: small rings
    python tools/fuzz.py --replay DIR/suspects-hang-1.msgpack   # one frame at a time
    python tools/fuzz.py --atheris 200000   # in-process, coverage-guided (pip install atheris)

One node (``zring node --memory``, N=W=R=1, JSON logs in ``DIR/node.log``) runs on free
loopback ports. The fuzzer sends it, through a DEALER, ROUTER frames of these kinds:
random bytes, truncated messages, deeply nested msgpack, huge declared lengths (str32,
bin32, array32, map32... headers claiming up to 2**32-1 with a short body), every message
type with a wrong-typed, missing or extra field (``zring.protocol._SCHEMAS``), unknown
types, bad request ids and envelopes, 2-8 part messages and empty frames, valid messages
with absurd values (huge keys, values over the limit, quorums of 0 or 1000, a 100k-key
MGET, BATCHes of nested garbage, forged JOINs...), and frames of a few MiB.

For the gossip SUB the fuzzer plays a fake peer: it JOINs with a member record whose
gossip address is its own PUB, waits until the node subscribed (a published heartbeat
raises the node's ``gossip_accepted`` counter), then publishes GOSSIP messages whose
member records are malformed, stale records of the node itself, records of unknown node
ids with random statuses, weights and huge generations, plus the kinds above. Structured
frames come from hypothesis strategies (driven outside pytest, seeded by ``--seed``); by
default four times as many are plain seeded mutations of them (values swapped for odd ones,
bit flips, splices, truncations), for volume: hypothesis draws ~500 frames a second.

Only loopback is ever named: every endpoint in a forged record is one of a few free
loopback ports or the fuzzer's own sockets, or a string with no "://". A guard decodes
every frame as the node would and skips any that could make the node leave, remove
itself (a record of it with a higher generation is the real forced-removal protocol), or
forget the fake peer; skipped frames are counted.

Every ``--check-every`` frames: the node must answer a PING from a separate clean DEALER
within ``--ping-timeout`` (a miss is a hang), must have read the gossip published so far,
and its RSS is sampled (a watchdog thread also samples it every 25 ms and kills the node
past ``--rss-kill-mib``). Afterwards: PING, STATS, a published heartbeat still accepted,
the node's own gossip parseable by a peer, every forged member marked left, then a clean
zring.Client puts and gets fresh keys; peak RSS (VmHWM) within ``--rss-limit-mib``.
The frames sent since the last good check before a hang, a crash or a bound are saved to
``DIR/suspects-*.msgpack``; ``--replay`` resends such a file one frame at a time, a PING
after each, and names the frames the node choked on. Files go to ``--dir`` (default: a new
temporary directory, removed when the run passed). Exit status 1 if anything failed.

``--atheris`` fuzzes without sockets: libFuzzer (through atheris, if installed) feeds a
sans-IO NodeCore each input as a ROUTER frame or as gossip, seeded with hypothesis frames;
an exception escaping ``handle_frame``/``handle_gossip``/``tick``, or RSS past
``--rss-kill-mib``, is a crash, saved as ``DIR/crash-*``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import say  # noqa: E402 - tools/harness.py, found through the line above

from zring import Client
from zring import membership as zring_membership
from zring.errors import ProtocolError, Unavailable
from zring.localcluster import ROOT, free_ports, wait_for
from zring.membership import MAX_WEIGHT, MIN_WEIGHT, Member, MemberStatus
from zring.protocol import _SCHEMAS, MsgType, decode

TARGET_ID = "fuzz-target"
PEER_ID = "fuzz-peer"                      # the fake peer whose PUB the node subscribes to
FAKE_IDS = tuple(f"fz-{i}" for i in range(16))   # forged members, mostly from this pool
UNUSED_PORTS = 6                           # free loopback ports forged records may name
# strings a forged record may give as an endpoint: none is one (no "://"), so a connect fails
NOT_ENDPOINTS = ("", "not-an-endpoint", "127.0.0.1:1", "tcp:/127.0.0.1:9", "tcp//x",
                 "\x00", "e" * 300)
_MAX_GENERATION = (1 << 63) - 1            # the highest generation a member record may carry
# the highest a node adopts from others (records above are refused): our "left" records
# that clean up after the fuzz carry it, so no forged record can outrank them
_TOP_ADOPTED_GENERATION = getattr(zring_membership, "MAX_ADOPTED_GENERATION", 1 << 63) - 1
_MAX_NODE_ID_CHARS = getattr(zring_membership, "MAX_NODE_ID_CHARS", 256)
_MAX_ADDRESS_CHARS = getattr(zring_membership, "MAX_ADDRESS_CHARS", 1024)
_VALUE_LIMIT = 4 * 1024 * 1024             # the node's default --max-value-bytes
_MIB = 1024 * 1024
RSS_STEP_MIB = 24   # RSS up this much between two checks: the frames are kept for --replay


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


# ---------------------------------------------------------------------- context and guard

@dataclass(frozen=True)
class FuzzContext:
    """What the frame strategies and the guard need to know about the run."""

    target_id: str
    own_generation: int        # the node's record of itself: forged ones stay at or below
    own_status: int
    peer_id: str
    endpoints: tuple[str, ...]  # loopback endpoints a forged record may name
    fake_ids: tuple[str, ...] = FAKE_IDS
    max_weight: float = MAX_WEIGHT
    fresh_ids: bool = True      # forged records may name never-seen node ids too

    @property
    def addresses(self) -> tuple[str, ...]:
        return self.endpoints + NOT_ENDPOINTS


def unsafe_reason(parts: list[bytes], ctx: FuzzContext) -> str | None:
    """Why the node must not get this message (None: it may). A part that names no endpoint
    and neither protected id, and is no LEAVE (nor, with --max-weight or --no-fresh-ids, a
    member record), passes at once: msgpack strings are their UTF-8 bytes. Any other is
    decoded exactly as the node decodes a frame: what it rejects cannot hurt, what it
    accepts is walked."""
    narrowed = ctx.max_weight < MAX_WEIGHT or not ctx.fresh_ids   # records to look at too
    for part in parts:
        if (b"://" not in part and ctx.target_id.encode() not in part
                and ctx.peer_id.encode() not in part and not _may_be_leave(part)
                and not (narrowed and b"generation" in part)):
            continue
        try:
            message = decode(part)
        except ProtocolError:
            continue
        except Exception as exc:   # decode let something other than ProtocolError out
            return f"decode raised {type(exc).__name__}"   # guard: skip it, see the report
        if message.type == MsgType.LEAVE:
            return "a valid LEAVE"
        reason = _unsafe_value(message.body, ctx)
        if reason:
            return reason
    return None


def _may_be_leave(part: bytes) -> bool:
    """Could ``part`` be ``[LEAVE, ...]``? (its envelope and type read, not its body)"""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(part[:32])
    try:
        return unpacker.read_array_header() == 3 and unpacker.unpack() == MsgType.LEAVE
    except Exception:   # not even an envelope: the node cannot decode it either
        return False


def _unsafe_value(root: object, ctx: FuzzContext) -> str | None:
    stack = [root]
    while stack:   # iterative: a body may nest as deep as msgpack allows
        value = stack.pop()
        if isinstance(value, str):
            if "://" in value and value not in ctx.endpoints:
                return "an endpoint that is not ours"
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            node_id = value.get("node_id")
            if node_id == ctx.peer_id:
                return "a record or request about the fake peer"
            if node_id == ctx.target_id and not _stale_self_record(value, ctx):
                return "a record or request about the node that is not stale"
            if "generation" in value:   # a member record: within the run's options?
                weight = value.get("weight", 1.0)   # a record without one weighs 1
                if (ctx.max_weight < MAX_WEIGHT and isinstance(weight, (int, float))
                        and weight > ctx.max_weight):
                    return "a weight over --max-weight"
                if not ctx.fresh_ids and node_id not in (*ctx.fake_ids, ctx.target_id):
                    return "a new node id (--no-fresh-ids)"
            stack.extend(value.values())
    return None


def _stale_self_record(record: dict, ctx: FuzzContext) -> bool:
    generation, status = record.get("generation"), record.get("status")
    if type(generation) is not int:
        return False
    return generation < ctx.own_generation or (
        generation == ctx.own_generation and type(status) is int and status <= ctx.own_status)


# ---------------------------------------------------------------------- hypothesis strategies

_INTERESTING_INTS = (0, 1, -1, 2, 255, 256, 2**15, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
                     2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**31), -(2**63))
_INTS = st.one_of(st.integers(-(2**63), 2**64 - 1), st.sampled_from(_INTERESTING_INTS))
_FLOATS = st.floats(allow_nan=True, allow_infinity=True)
_TEXT = st.text(st.characters(codec="utf-8"), max_size=24)
_BYTES = st.binary(max_size=24)
_SCALARS = st.one_of(st.none(), st.booleans(), _INTS, _FLOATS, _TEXT, _BYTES)
_ANY = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_TEXT, inner, max_size=4)), max_leaves=8)
_REQUEST_IDS = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from((0, 1, 2**64 - 1)))
_QUORUMS = st.one_of(st.none(), st.integers(0, 5),
                     st.sampled_from((0, 1, 1000, 2**32, 2**63 - 1, 2**64 - 1)))
_KEYS = st.one_of(st.text(st.characters(codec="utf-8"), min_size=1, max_size=40),
                  st.just("k" * 4097))   # just past the node's default key limit

# what a wrong-typed field gets: a kind of value its schema does not accept
_VALUES_OF_KIND = {"none": st.none(), "bool": st.booleans(), "int": _INTS, "float": _FLOATS,
                   "str": _TEXT, "bytes": _BYTES, "list": st.lists(_SCALARS, max_size=3),
                   "map": st.dictionaries(_TEXT, _SCALARS, max_size=3)}
_KIND_OF_TYPE = {type(None): "none", bool: "bool", int: "int", float: "float", str: "str",
                 bytes: "bytes", list: "list", dict: "map"}


@functools.lru_cache
def wrong_value(types: tuple[type, ...]) -> st.SearchStrategy:
    # bool is an int subclass, yet a schema's int refuses it: it counts as a kind of its own
    accepted = {_KIND_OF_TYPE[t] for t in types}
    strategies = [s for kind, s in _VALUES_OF_KIND.items() if kind not in accepted]
    if "int" in accepted:   # out of range for an int field
        strategies.append(st.integers(-(2**63), -1))
    return st.one_of(strategies)


@functools.lru_cache
def _node_ids(ctx: FuzzContext) -> st.SearchStrategy[str]:
    protected = {ctx.target_id, ctx.peer_id}
    return st.one_of(st.sampled_from(ctx.fake_ids),
                     st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
                     .filter(lambda s: s not in protected))


def _record_wires() -> st.SearchStrategy:
    """A stored record on the wire, ``[key, value, timestamp, writer]``, or garbage."""
    valid = st.tuples(_KEYS, st.one_of(st.none(), _BYTES, _TEXT), _INTS, _TEXT).map(list)
    return st.one_of(valid, _ANY, st.lists(_SCALARS, max_size=6))


def _intervals() -> st.SearchStrategy:
    return st.lists(st.one_of(st.tuples(_INTS, _INTS).map(list), _ANY), max_size=4)


@functools.lru_cache
def field_values(ctx: FuzzContext) -> dict[str, st.SearchStrategy]:
    """A valid (right-typed) and loopback-safe value for each field name of the schemas."""
    ints = st.one_of(st.integers(0, 5), st.sampled_from((0, 1000, 2**63 - 1, 2**64 - 1)))
    return {
        "code": _TEXT, "message": _TEXT, "key": _KEYS,
        "value": st.one_of(_BYTES, _TEXT), "n": _QUORUMS, "w": _QUORUMS, "r": _QUORUMS,
        "limit": ints, "after": st.one_of(st.none(), ints), "fingerprint": ints,
        "node_id": _node_ids(ctx), "target": _node_ids(ctx), "peer": _node_ids(ctx),
        "sender": st.one_of(_node_ids(ctx), st.sampled_from((ctx.target_id, ctx.peer_id))),
        "address": st.sampled_from(ctx.addresses), "seed": st.sampled_from(ctx.addresses),
        "graceful": st.booleans(), "records": st.lists(_record_wires(), max_size=4),
        "intervals": _intervals(), "keys": st.lists(st.one_of(_KEYS, _SCALARS), max_size=8),
        "items": st.lists(st.one_of(st.tuples(_KEYS, _BYTES).map(list),
                                    st.tuples(_KEYS, _BYTES, _stamps_now()).map(list), _ANY),
                          max_size=6),
        "action": st.one_of(st.sampled_from(("add", "remove", "weight", "leave")), _TEXT),
        "weight": st.one_of(st.none(), _FLOATS, _INTS),
        "member": member_records(ctx), "members": st.lists(member_records(ctx), max_size=6),
        "messages": st.lists(st.one_of(_ANY, _batch_inner(ctx)), max_size=6),
        # write stamps: tiny (older than anything held), now-ish, or from the far future
        "ts": st.one_of(st.none(), ints, _stamps_now()), "writer": st.one_of(st.none(), _TEXT),
        "cond": st.booleans(),
        # a client-coordinated request's ring: a made-up fingerprint (refused) or any int
        "ring": ints,
    }


def _stamps_now() -> st.SearchStrategy[int]:
    """Hybrid-clock timestamps near this machine's clock (within the nodes' offset)."""
    return st.integers(-400, 400).map(lambda ms: (int(time.time() * 1000) + ms) << 16)


def _batch_inner(ctx: FuzzContext) -> st.SearchStrategy:
    """One message of a BATCH: a batchable request, a request that is not, or nesting."""
    return st.one_of(
        st.tuples(st.sampled_from((40, 41, 48, 56, 10, 55, 45, 999)), _REQUEST_IDS,
                  st.fixed_dictionaries({}, optional={
                      "key": _KEYS, "keys": st.lists(_SCALARS, max_size=4),
                      "records": st.lists(_record_wires(), max_size=3),
                      "target": _node_ids(ctx), "messages": st.lists(_ANY, max_size=3)}))
        .map(list),
        st.integers(1, 300).map(lambda depth: _nested_list(depth)))


def _nested_list(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@functools.lru_cache
def bodies(msg_type: MsgType, ctx: FuzzContext) -> st.SearchStrategy[dict]:
    """A body that fits ``msg_type``'s schema, optional fields present or not."""
    values = field_values(ctx)
    schema = _SCHEMAS[msg_type]
    required = {name: values[name] for name, (_, needed) in schema.items() if needed}
    optional = {name: values[name] for name, (_, needed) in schema.items() if not needed}
    return st.fixed_dictionaries(required, optional=optional)


_MEMBER_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "node_id": (str,), "address": (str,), "gossip_address": (str,), "status": (int,),
    "generation": (int,), "heartbeat": (int,), "weight": (int, float), "keys": (int,),
    "hints": (int,), "streamed": (bool,), "ring": (int,), "transfer": (list,)}
_REQUIRED_MEMBER_FIELDS = ("node_id", "address", "gossip_address", "status", "generation",
                           "heartbeat")
_OUT_OF_RANGE: dict[str, tuple] = {
    "node_id": ("", "n" * (_MAX_NODE_ID_CHARS + 1)),
    "address": ("a" * (_MAX_ADDRESS_CHARS + 1),),
    "gossip_address": ("g" * (_MAX_ADDRESS_CHARS + 1),),
    "status": (0, 5, -1, 2**63),
    "generation": (-1, 2**63, 2**64 - 1, -(2**63)),
    "heartbeat": (-1, 2**63, 2**64 - 1),
    "weight": (0, 0.0, 0.001, MIN_WEIGHT / 2, MAX_WEIGHT * 1.0001, 1e308, math.inf,
               -math.inf, math.nan, -1),
    "keys": (-(2**63),), "hints": (2**64 - 1,),
    "ring": (-1,), "streamed": (None,),
    "transfer": (["x"], ["k" * 33, 0, 0, 0, 0], ["k", -2, 0, 0, 0], ["k", 0, 0, 0, 2**63],
                 [1, 2, 3, 4, 5], ["k", 0, 0, 0, 0, 0]),
}


_GENERATIONS = (0, 1, 2, 3, 7, 2**31, 2**32, _TOP_ADOPTED_GENERATION,
                _TOP_ADOPTED_GENERATION + 1, _TOP_ADOPTED_GENERATION + 2, _MAX_GENERATION - 1,
                _MAX_GENERATION)
_RECORD_OPTIONALS = ("weight", "keys", "hints", "streamed", "ring", "transfer", "extra")
_TRANSFERS = ([], ["join", 0, -1, 0, -1], ["leave", 5, 10, 500, 1000],
              ["t" * 32, _MAX_GENERATION, _MAX_GENERATION, _MAX_GENERATION, _MAX_GENERATION])


@functools.lru_cache
def _record_fields(ctx: FuzzContext) -> st.SearchStrategy[tuple]:
    """A well-formed record's fields in few draws (each draw costs hypothesis ~0.1 ms):
    sampled interesting values, now and then any value of the range."""
    numbers = st.one_of(st.sampled_from(_GENERATIONS), st.integers(0, _MAX_GENERATION))
    weights = st.one_of(
        st.sampled_from(sorted({w for w in (MIN_WEIGHT, 0.5, 1, 2.0) if w <= ctx.max_weight}
                               | {ctx.max_weight})),
        st.floats(MIN_WEIGHT, ctx.max_weight))
    return st.tuples(
        st.sampled_from(ctx.fake_ids), st.sampled_from(ctx.addresses),
        st.sampled_from(ctx.addresses), st.sampled_from([int(s) for s in MemberStatus]),
        numbers, numbers, st.integers(0, 2 ** len(_RECORD_OPTIONALS) - 1), weights,
        st.sampled_from(_INTERESTING_INTS), st.sampled_from(_TRANSFERS),
        st.sampled_from((0, 1, 2**64 - 1)), st.booleans())


def _record(fields: tuple, ctx: FuzzContext) -> dict:
    (node_id, address, gossip_address, status, generation, heartbeat, present, weight,
     number, transfer, ring, streamed) = fields
    if ctx.max_weight < 1:
        present |= 1   # a record without a weight weighs 1: over the bound
    record = {"node_id": node_id, "address": address, "gossip_address": gossip_address,
              "status": status, "generation": generation, "heartbeat": heartbeat}
    optional = {"weight": weight, "keys": number, "hints": number, "streamed": streamed,
                "ring": ring, "transfer": list(transfer), "extra": number}
    for bit, name in enumerate(_RECORD_OPTIONALS):
        if present >> bit & 1:
            record[name] = optional[name]
    return record


@functools.lru_cache
def _fresh_ids(ctx: FuzzContext) -> st.SearchStrategy[str]:
    return st.text(st.characters(codec="utf-8"), min_size=1, max_size=_MAX_NODE_ID_CHARS
                   ).filter(lambda s: s not in (ctx.target_id, ctx.peer_id))


@st.composite
def member_records(draw, ctx: FuzzContext) -> object:
    """A member record for a forged GOSSIP or JOIN: well-formed about a fake or never-seen
    node id, a stale record of the node itself, malformed, or not a record at all."""
    kinds = ("fake",) * 5 + ("stale_self", "malformed", "malformed", "not_a_map")
    kind = draw(st.sampled_from(kinds + (("fresh",) if ctx.fresh_ids else ())))
    if kind == "not_a_map":
        return draw(_SCALARS)
    record = _record(draw(_record_fields(ctx)), ctx)
    if kind == "fresh":
        record["node_id"] = draw(_fresh_ids(ctx))
    elif kind == "stale_self":
        record["node_id"] = ctx.target_id
        record["generation"] = draw(st.integers(0, ctx.own_generation))
        if record["generation"] == ctx.own_generation:
            record["status"] = draw(st.integers(1, ctx.own_status))
    elif kind == "malformed":
        name = draw(st.sampled_from(sorted(_MEMBER_FIELD_TYPES)))
        defect = draw(st.sampled_from(("wrong_type", "out_of_range", "missing")))
        if defect == "missing" and name in _REQUIRED_MEMBER_FIELDS:
            record.pop(name, None)
        elif defect == "out_of_range":
            record[name] = draw(st.sampled_from(_OUT_OF_RANGE[name]))
        else:
            record[name] = draw(wrong_value(_MEMBER_FIELD_TYPES[name]))
    return record


@st.composite
def gossip_messages(draw, ctx: FuzzContext) -> list:
    """``[GOSSIP, 0, {"sender", "members"}]`` with forged member records."""
    count = draw(st.sampled_from((0, 1, 2, 3, 5, 8, 64, 400)))
    if count > 8:   # a long list: one drawn record repeated under other ids (drawing is slow)
        template = draw(member_records(ctx))
        if ctx.fresh_ids and draw(st.booleans()):
            base = draw(_fresh_ids(ctx))[:_MAX_NODE_ID_CHARS - 4]
            ids = [f"{base}-{i}" for i in range(count)]
        else:
            ids = [ctx.fake_ids[i % len(ctx.fake_ids)] for i in range(count)]
        members = [dict(template, node_id=node_id) if isinstance(template, dict) else template
                   for node_id in ids]
    else:
        members = draw(st.lists(member_records(ctx), min_size=count, max_size=count))
    body = {"sender": draw(field_values(ctx)["sender"]), "members": members}
    if draw(st.booleans()):
        body.update(draw(st.dictionaries(_TEXT, _SCALARS, max_size=2)))
    return [int(MsgType.GOSSIP), draw(st.sampled_from((0, 0, 1, 2**64 - 1))), body]


@st.composite
def valid_messages(draw, ctx: FuzzContext, types=None) -> list:
    """A well-typed ``[type, request_id, body]`` of any type but LEAVE."""
    types = types or [t for t in MsgType if t != MsgType.LEAVE]
    msg_type = draw(st.sampled_from(types))
    body = draw(bodies(msg_type, ctx))
    if draw(st.integers(0, 4)) == 0:   # unknown fields are ignored: a newer peer's
        body.update(draw(st.dictionaries(_TEXT, _SCALARS, max_size=3)))
    return [int(msg_type), draw(_REQUEST_IDS), body]


@st.composite
def wrong_typed_messages(draw, ctx: FuzzContext) -> list | dict | object:
    """Every message type with one defect: a field of the wrong type, a required field
    missing, a body that is no map, a type or request id that is not one, a bad envelope."""
    msg_type = draw(st.sampled_from(list(MsgType)))
    schema = _SCHEMAS[msg_type]
    body = draw(bodies(msg_type, ctx))
    rid = draw(_REQUEST_IDS)
    defects = ["body_not_map", "bad_type", "bad_request_id", "bad_envelope", "non_str_keys"]
    if schema:
        defects += ["wrong_field"] * 4
    if any(needed for _, needed in schema.values()):
        defects += ["missing_field"] * 2
    defect = draw(st.sampled_from(defects))
    wire_type: object = int(msg_type)
    if defect == "wrong_field":
        name = draw(st.sampled_from(sorted(schema)))
        body[name] = draw(wrong_value(schema[name][0]))
    elif defect == "missing_field":
        body.pop(draw(st.sampled_from(sorted(n for n, (_, r) in schema.items() if r))), None)
    elif defect == "body_not_map":
        return [wire_type, rid, draw(st.one_of(_SCALARS, st.lists(_SCALARS, max_size=3)))]
    elif defect == "bad_type":
        wire_type = draw(st.one_of(
            st.integers(-(2**63), 2**64 - 1).filter(lambda n: n not in set(MsgType)),
            st.sampled_from((0, 3, 51, 57, 59, 61, 255, -10, 2**64 - 1)),
            st.booleans(), _FLOATS, _TEXT, st.none()))
    elif defect == "bad_request_id":
        rid = draw(st.one_of(st.integers(-(2**63), -1), st.booleans(), _FLOATS, _TEXT,
                             st.none(), st.lists(_SCALARS, max_size=2)))
    elif defect == "non_str_keys":
        body = {draw(st.one_of(_INTS, _BYTES, st.booleans())): draw(_SCALARS), **body}
    else:   # bad_envelope
        return draw(st.sampled_from((
            [], [wire_type], [wire_type, rid], [wire_type, rid, body, None],
            {"type": wire_type, "request_id": rid, "body": body}, (wire_type, rid, body, 1))))
    return [wire_type, rid, body]


_BIG_FRAMES: dict[str, bytes] = {}


def _big_frame(name: str) -> bytes:
    """Absurdly large valid messages, packed once (packing 100k keys takes a while)."""
    if name not in _BIG_FRAMES:
        keys = [f"k{i}" for i in range(100_000)]
        builders = {
            "mget_100k": lambda: [22, 1, {"keys": keys}],
            "mget_10001": lambda: [22, 1, {"keys": keys[:10_001], "r": 1}],
            "mput_100k": lambda: [23, 1, {"items": [[k, b"v"] for k in keys]}],
            "read_many_100k": lambda: [56, 1, {"keys": keys}],
            "batch_10001": lambda: [55, 1, {"messages": [[41, i, {"key": k}] for i, k in
                                                         enumerate(keys[:10_001])]}],
            "put_over_limit": lambda: [10, 1, {"key": "fz-big", "value": b"v" * (
                _VALUE_LIMIT + 1)}],
            "replica_write_over_limit": lambda: [40, 1, {"records": [
                ["fz-big", b"v" * (_VALUE_LIMIT + 1), 1, "fz-0"]]}],
            "hint_write_10k": lambda: [48, 1, {"target": "fz-1", "records": [
                [k, b"v", 1, "fz-0"] for k in keys[:10_000]]}],
        }
        _BIG_FRAMES[name] = pack(builders[name]())
    return _BIG_FRAMES[name]


_BIG_FRAME_NAMES = ("mget_100k", "mget_10001", "mput_100k", "read_many_100k", "batch_10001",
                    "put_over_limit", "replica_write_over_limit", "hint_write_10k")


@st.composite
def absurd_messages(draw, ctx: FuzzContext) -> bytes:
    """Valid messages with absurd values, packed."""
    variant = draw(st.sampled_from((
        "big", "quorum", "quorum", "huge_key", "batch", "batch", "join", "members_op",
        "admin", "range", "replies_as_requests", "gossip_on_router")))
    rid = draw(_REQUEST_IDS)
    if variant == "big":
        return _big_frame(draw(st.sampled_from(_BIG_FRAME_NAMES)))
    if variant == "quorum":
        msg_type = draw(st.sampled_from((MsgType.PUT, MsgType.GET, MsgType.DELETE,
                                         MsgType.MGET, MsgType.MPUT)))
        body = draw(bodies(msg_type, ctx))
        for name in ("n", "w", "r"):
            if name in _SCHEMAS[msg_type]:
                body[name] = draw(st.sampled_from((0, 1, 1000, 2**32, 2**64 - 1)))
        return pack([int(msg_type), rid, body])
    if variant == "huge_key":
        key = "k" * draw(st.sampled_from((4097, 65_536, 1_000_000)))
        return pack(draw(st.sampled_from((
            [10, rid, {"key": key, "value": b"v"}], [11, rid, {"key": key}],
            [12, rid, {"key": key}], [41, rid, {"key": key}],
            [40, rid, {"records": [[key, b"v", 1, "fz-0"]]}]))))
    if variant == "batch":
        return pack([int(MsgType.BATCH), rid, {"messages": draw(st.lists(
            st.one_of(_batch_inner(ctx), wrong_typed_messages(ctx), _ANY), max_size=12))}])
    if variant == "join":
        return pack([int(MsgType.JOIN), rid, {"member": draw(member_records(ctx))}])
    if variant == "members_op":
        return pack(draw(valid_messages(ctx, [MsgType.ADD_NODE, MsgType.REMOVE_NODE,
                                              MsgType.FORCE_REMOVE, MsgType.ADMIT,
                                              MsgType.PLAN])))
    if variant == "admin":
        return pack(draw(valid_messages(ctx, [MsgType.REBALANCE, MsgType.REBALANCE_LOCAL,
                                              MsgType.REPAIR, MsgType.REPAIR_LOCAL,
                                              MsgType.LOCAL_KEYS, MsgType.RING_STATE,
                                              MsgType.CLUSTER_STATUS, MsgType.STATS])))
    if variant == "range":
        return pack(draw(valid_messages(ctx, [MsgType.RANGE_PULL, MsgType.REPAIR_DIGESTS,
                                              MsgType.REPAIR_FETCH, MsgType.REPAIR_TREE,
                                              MsgType.RANGE_STATS, MsgType.REPLICA_WRITE,
                                              MsgType.HINT_WRITE, MsgType.REPLICA_READ_MANY])))
    if variant == "replies_as_requests":
        return pack(draw(valid_messages(ctx, [MsgType.OK, MsgType.ERROR])))
    return pack(draw(gossip_messages(ctx)))


_LENGTH_HEADERS = (   # (first byte, bytes of the declared length) of msgpack's sized types
    (0xD9, 1), (0xDA, 2), (0xDB, 4), (0xC4, 1), (0xC5, 2), (0xC6, 4),
    (0xDC, 2), (0xDD, 4), (0xDE, 2), (0xDF, 4), (0xC7, 1), (0xC8, 2), (0xC9, 4))


@st.composite
def huge_length_frames(draw) -> bytes:
    """A sized msgpack header claiming far more than follows (up to 2**32-1), bare or as a
    field of an otherwise plausible message."""
    first, width = draw(st.sampled_from(_LENGTH_HEADERS))
    top = (1 << (8 * width)) - 1
    length = draw(st.one_of(st.sampled_from((top, top - 1, top // 2 + 1)), st.integers(0, top)))
    header = bytes([first]) + length.to_bytes(width, "big")
    if first in (0xC7, 0xC8, 0xC9):
        header += bytes([draw(st.integers(0, 255))])   # the ext type byte
    body = draw(st.binary(max_size=64))
    where = draw(st.sampled_from(("bare", "envelope", "field", "count")))
    if where == "bare":
        return header + body
    if where == "envelope":
        return b"\x93\x0b\x01" + header + body          # [GET, 1, <huge>]
    if where == "field":
        return b"\x93\x0a\x01\x82\xa3key" + header + body   # [PUT, 1, {"key": <huge>, ...
    return bytes([0xDD]) + length.to_bytes(4, "big") + b"\x0b\x01\x80"   # array32 envelope


_NESTING_UNITS = (b"\x91", b"\xdc\x00\x01", b"\xdd\x00\x00\x00\x01", b"\x81\xa1k",
                  b"\x81\xc0", b"\x92\xc0")


@st.composite
def nested_frames(draw) -> bytes:
    """Deep msgpack nesting, e.g. b"\\x91" * 100000 + b"\\xc0", bare or inside a message."""
    depth = draw(st.sampled_from((2, 100, 511, 512, 1023, 1024, 1025, 5000, 100_000)))
    unit = draw(st.sampled_from(_NESTING_UNITS))
    nested = unit * depth + b"\xc0"
    return draw(st.sampled_from((
        nested,
        b"\x93\x0a\x01\x82\xa3key" + nested + b"\xa5value\xc4\x01v",   # PUT key
        b"\x93\x37\x01\x81\xa8messages" + nested,                      # BATCH messages
        b"\x93\x3c\x00\x82\xa6sender\xa2fz\xa7members" + nested,        # GOSSIP members
        b"\x93\x13" + nested + b"\x80",                                # PING request id
    )))


def _truncated(messages: st.SearchStrategy) -> st.SearchStrategy[bytes]:
    return st.tuples(messages.map(pack), st.floats(0, 1, exclude_max=True)).map(
        lambda pair: pair[0][:int(len(pair[0]) * pair[1])])


def _multipart(ctx: FuzzContext) -> st.SearchStrategy[list[bytes]]:
    """Messages of 1-8 frames (the node takes 1-3 after the identity), empty frames too."""
    part = st.one_of(st.just(b""), st.binary(max_size=16),
                     st.just(pack([int(MsgType.PING), 7, {}])),
                     st.just(pack([int(MsgType.GOSSIP), 0, {"sender": "fz-0", "members": []}])))
    return st.sampled_from((1, 2, 3, 4, 5, 8)).flatmap(
        lambda n: st.lists(part, min_size=n, max_size=n))


def frame_strategies(ctx: FuzzContext) -> dict[str, st.SearchStrategy[list[bytes]]]:
    """Every kind of frame, as a strategy of message parts, by ``target/kind`` name."""
    def one(strategy: st.SearchStrategy[bytes]) -> st.SearchStrategy[list[bytes]]:
        return strategy.map(lambda frame: [frame])
    random_bytes = st.binary(max_size=300)
    any_message = st.one_of(valid_messages(ctx), gossip_messages(ctx))
    return {
        "router/random_bytes": one(random_bytes),
        "router/truncated": one(_truncated(any_message)),
        "router/nested": one(nested_frames()),
        "router/huge_length": one(huge_length_frames()),
        "router/wrong_types": one(wrong_typed_messages(ctx).map(pack)),
        "router/absurd_valid": one(absurd_messages(ctx)),
        "router/multipart": _multipart(ctx),
        "gossip/forged_members": one(gossip_messages(ctx).map(pack)),
        "gossip/wrong_types": one(wrong_typed_messages(ctx).map(pack)),
        "gossip/not_gossip": one(st.one_of(valid_messages(ctx).map(pack),
                                           absurd_messages(ctx))),
        "gossip/random_bytes": one(random_bytes),
        "gossip/truncated": one(_truncated(gossip_messages(ctx))),
        "gossip/nested": one(nested_frames()),
        "gossip/huge_length": one(huge_length_frames()),
        "gossip/multipart": _multipart(ctx),
    }


# frames of each kind in one hypothesis example (exact shares: hypothesis's own choice
# of a kind would favour the first)
_KIND_COUNTS = {"random_bytes": 1, "truncated": 2, "nested": 1, "huge_length": 2,
                "wrong_types": 4, "absurd_valid": 3, "multipart": 1, "forged_members": 6,
                "not_gossip": 1}


def batches(ctx: FuzzContext, targets: tuple[str, ...]) -> st.SearchStrategy:
    """``{target/kind: [parts, ...]}``: every kind's share of frames for one example."""
    strategies = frame_strategies(ctx)
    return st.fixed_dictionaries({
        name: st.lists(strategy, min_size=_KIND_COUNTS[name.split("/")[1]],
                       max_size=_KIND_COUNTS[name.split("/")[1]])
        for name, strategy in strategies.items() if name.split("/")[0] in targets})


# ---------------------------------------------------------------------- plain mutations

_INTERESTING_BYTES = (0x00, 0x7F, 0x80, 0x90, 0x91, 0xC0, 0xC1, 0xC4, 0xD9, 0xDB, 0xDC,
                      0xDD, 0xDF, 0xFF)
_INTERESTING_VALUES = (0, 1, -1, 2, 5, 1000, 2**31, 2**32 - 1, 2**53 + 1, 2**63 - 1, 2**63,
                       2**64 - 1, -(2**63), 0.0, -0.0, 0.001, 1e308, math.nan, math.inf,
                       -math.inf, "", "x" * 300, "k" * 5000, "\x00", "fz-0", "fz-1", b"",
                       b"\xff" * 8, None, True, False, [], {}, [[]], {"": None}, [0, 0, 0, 0])


class Mutator:
    """Seeded byte-level mutations of recent structured frames (cheap volume), random
    bytes, and now and then a frame of a few MiB."""

    def __init__(self, seed: int, max_big_mib: float, targets: tuple[str, ...]) -> None:
        self.rng = random.Random(seed)
        self.targets = targets
        self.corpus: deque[tuple[str, bytes]] = deque(maxlen=512)
        self.max_big = int(max_big_mib * _MIB)

    def remember(self, name: str, parts: list[bytes]) -> None:
        if len(parts) == 1 and len(parts[0]) <= 64 * 1024:
            self.corpus.append((name.split("/")[0], parts[0]))

    def mutated(self) -> tuple[str, list[bytes]]:
        rng = self.rng
        roll = rng.random()
        if not self.corpus or roll < 0.15:
            return (f"{rng.choice(self.targets)}/random_bytes",
                    [rng.randbytes(int(rng.expovariate(1 / 200)))])
        target, frame = rng.choice(self.corpus)
        if roll < 0.6:
            mutated = self._mutate_structure(frame)
            if mutated is not None:
                return f"{target}/mutated_values", [mutated]
        data = bytearray(frame)
        for _ in range(rng.randint(1, 4)):
            self._mutate_bytes(data)
        return f"{target}/mutated_bytes", [bytes(data)]

    def _mutate_bytes(self, data: bytearray) -> None:
        rng = self.rng
        how = rng.randrange(6)
        at = rng.randrange(len(data) + 1)
        if how == 0 and data:            # flip a bit
            data[at % len(data)] ^= 1 << rng.randrange(8)
        elif how == 1 and data:          # an interesting byte (a type marker, a boundary)
            data[at % len(data)] = rng.choice(_INTERESTING_BYTES)
        elif how == 2:                   # insert random bytes
            data[at:at] = rng.randbytes(rng.randint(1, 8))
        elif how == 3:                   # delete a range
            del data[at:at + rng.randint(1, 16)]
        elif how == 4:                   # truncate
            del data[at:]
        else:                            # splice in a piece of another frame
            other = rng.choice(self.corpus)[1]
            start = rng.randrange(len(other) + 1)
            data[at:] = other[start:start + rng.randint(1, 64)]

    def _mutate_structure(self, frame: bytes) -> bytes | None:
        """The frame decoded, 1-3 of its values replaced, deleted or copied, packed again:
        messages that stay well-formed msgpack, with the wrong thing in the right place."""
        rng = self.rng
        try:
            root = [msgpack.unpackb(frame, raw=False, strict_map_key=False)]
        except Exception:
            return None
        slots: list[tuple[list | dict, object]] = []   # (container, index or key)
        stack: list = [root]
        while stack and len(slots) < 4000:
            container = stack.pop()
            keys = range(len(container)) if isinstance(container, list) else list(container)
            for key in keys:
                slots.append((container, key))
                if isinstance(container[key], (list, dict)):
                    stack.append(container[key])
        for _ in range(rng.randint(1, 3)):
            container, key = rng.choice(slots)
            how = rng.randrange(4)
            try:
                if how == 0 and container is not root:    # drop it
                    del container[key]
                elif how == 1:                            # a value from elsewhere
                    other, other_key = rng.choice(slots)
                    container[key] = other[other_key]
                else:
                    container[key] = rng.choice(_INTERESTING_VALUES)
            except (IndexError, KeyError):
                pass   # an earlier change removed it
        try:
            return pack(root[0])
        except (ValueError, TypeError, OverflowError):   # a copy nested into itself
            return None

    def big(self) -> tuple[str, list[bytes]]:
        """A frame of 1 MiB up to ``max_big``: random, nil/empty-list floods, or a PUT."""
        rng = self.rng
        size = rng.randint(min(_MIB, self.max_big), self.max_big)
        target = rng.choice(self.targets)
        how = rng.randrange(5)
        if how == 0:
            frame = rng.randbytes(size)
        elif how == 1:    # millions of tiny objects: a list of empty lists
            frame = b"\xdd" + (size - 5).to_bytes(4, "big") + b"\x90" * (size - 5)
        elif how == 4:    # as many, in four lists each short enough for a per-list cap
            quarter = size // 4 - 5
            frame = b"\x94" + (b"\xdd" + quarter.to_bytes(4, "big") + b"\x90" * quarter) * 4
        elif how == 2:    # a value up to the limit or past it
            frame = pack([10, 1, {"key": f"big-{size}", "value": b"v" * size}])
        else:             # many empty maps in a valid envelope
            frame = b"\x93\x17\x01\x81\xa5items\xdd" + (size - 16).to_bytes(4, "big") + (
                b"\x80" * (size - 16))
        return f"{target}/big", [frame]


# ---------------------------------------------------------------------- the node under test

class TargetNode:
    """``zring node`` in a subprocess on free loopback ports, logging JSON to a file."""

    def __init__(self, workdir: Path, router_port: int, gossip_port: int,
                 log_level: str = "warning") -> None:
        self.address = f"tcp://127.0.0.1:{router_port}"
        self.gossip_address = f"tcp://127.0.0.1:{gossip_port}"
        self.log_path = workdir / "node.log"
        self.log_level = log_level
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "zring.cli", "node", "--id", TARGET_ID,
                   "--listen", self.address, "--gossip", self.gossip_address,
                   "--seeds", self.address, "--memory", "--replicas", "1",
                   "--write-quorum", "1", "--read-quorum", "1", "--log-format", "json",
                   "--log-level", self.log_level]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        with open(self.log_path, "ab") as log_file:
            # its own session: a ^C reaches the fuzzer only, which then stops the node itself
            self.process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env,
                                            start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def memory_mib(self) -> tuple[float, float] | None:
        """(VmRSS, VmHWM) in MiB, None once the process is gone."""
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        try:
            return (int(fields["VmRSS"].split()[0]) / 1024,
                    int(fields["VmHWM"].split()[0]) / 1024)
        except (KeyError, ValueError):
            return None   # a zombie has no memory lines

    def open_fds(self) -> int | None:
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            self.process.wait(timeout=5)


class MemoryWatch(threading.Thread):
    """Samples the node's RSS every 25 ms; past ``kill_mib`` it kills the node, so a
    runaway allocation cannot take the machine down with it."""

    def __init__(self, node: TargetNode, kill_mib: float) -> None:
        super().__init__(name="fuzz-memory-watch", daemon=True)
        self.node, self.kill_mib = node, kill_mib
        self.peak_mib = 0.0
        self.killed_at_mib: float | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.025):
            memory = self.node.memory_mib()
            if memory is None:
                continue
            self.peak_mib = max(self.peak_mib, memory[0], memory[1])
            if memory[0] > self.kill_mib and self.killed_at_mib is None:
                self.killed_at_mib = memory[0]
                self.node.kill()


# ---------------------------------------------------------------------- the fuzzer's sockets

def pending_frames(sock: zmq.Socket) -> Iterator[bytes]:
    """The last frame of each message ``sock`` holds now, without waiting for more."""
    while True:
        try:
            yield sock.recv_multipart(zmq.NOBLOCK)[-1]
        except zmq.Again:
            return


def _socket(context: zmq.Context, kind: int, hwm: int = 1000) -> zmq.Socket:
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    return sock


class Probe:
    """A clean DEALER for our own questions (PING, STATS, ...): never sent a fuzzed frame."""

    def __init__(self, context: zmq.Context, address: str) -> None:
        self.sock = _socket(context, zmq.DEALER)
        self.sock.connect(address)
        self.ids = iter(range(1, 1 << 62))

    def ask(self, msg_type: MsgType, body: dict, timeout_s: float):
        """The node's reply (a decoded Message), or None past ``timeout_s``."""
        request_id = next(self.ids)
        try:
            self.sock.send(pack([int(msg_type), request_id, body]), zmq.NOBLOCK)
        except zmq.Again:
            return None
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(max(1, int(left * 1000))):
                continue
            frame = self.sock.recv_multipart()[-1]
            try:
                reply = decode(frame)
            except ProtocolError:
                continue
            if reply.request_id == request_id:   # else: a late answer to an earlier question
                return reply
        return None

    def ping_s(self, timeout_s: float) -> float | None:
        started = time.monotonic()
        reply = self.ask(MsgType.PING, {}, timeout_s)
        return None if reply is None or reply.type != MsgType.OK else time.monotonic() - started

    def counters(self, timeout_s: float) -> dict[str, int] | None:
        reply = self.ask(MsgType.STATS, {}, timeout_s)
        if reply is None or reply.type != MsgType.OK:
            return None
        return dict(reply.body.get("counters", {}))

    def close(self) -> None:
        self.sock.close(linger=0)


class FakePeer:
    """A member the node believes in: its ROUTER (whatever the node asks it goes unanswered)
    and its PUB, to which the node's gossip SUB connects once it knows the record."""

    def __init__(self, context: zmq.Context, requests: Counter) -> None:
        self.requests = requests   # what the node asked the fake peer, by type
        self.router = _socket(context, zmq.ROUTER)
        self.pub = _socket(context, zmq.PUB, hwm=100_000)
        self.address = f"tcp://127.0.0.1:{self.router.bind_to_random_port('tcp://127.0.0.1')}"
        self.gossip_address = (
            f"tcp://127.0.0.1:{self.pub.bind_to_random_port('tcp://127.0.0.1')}")
        self.heartbeat = 0

    def record(self, status: MemberStatus = MemberStatus.JOINING,
               generation: int = 1) -> dict:
        # JOINING: the node subscribes to it, yet its ring (and so every key) stays the node's
        return Member(PEER_ID, self.address, self.gossip_address, status, generation,
                      self.heartbeat).to_wire()

    def beacon(self, members: list | None = None) -> None:
        """A well-formed gossip message from the fake peer (a heartbeat)."""
        self.heartbeat += 1
        body = {"sender": PEER_ID, "members": [self.record()] if members is None else members}
        self.pub.send(pack([int(MsgType.GOSSIP), 0, body]))

    def drain(self) -> None:
        for frame in pending_frames(self.router):
            name = "unknown"
            if len(frame) > 1 and frame[0] == 0x93 and frame[1] < 0x80:
                name = getattr(MsgType._value2member_map_.get(frame[1]), "name", str(frame[1]))
            self.requests[name] += 1

    def close(self) -> None:
        self.router.close(linger=0)
        self.pub.close(linger=0)


class GossipObserver:
    """A SUB on the node's PUB keeping only its latest gossip: peers must be able to parse
    what the node publishes, whatever it was fed."""

    def __init__(self, context: zmq.Context, gossip_address: str) -> None:
        self.sock = _socket(context, zmq.SUB, hwm=10)
        self.sock.setsockopt(zmq.CONFLATE, 1)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(gossip_address)

    def latest(self, timeout_s: float) -> bytes | None:
        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        frame = None
        while True:
            try:
                frame = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return frame

    def problem(self, timeout_s: float) -> str | None:
        """Why a peer would reject the node's latest gossip (None: it parses)."""
        frame = self.latest(timeout_s)
        if frame is None:
            return f"no gossip from the node within {timeout_s}s"
        try:
            message = decode(frame)
        except ProtocolError as exc:
            return f"a peer would reject the node's gossip: {exc}"
        for wire in message.body["members"]:
            try:
                Member.from_wire(wire)
            except ProtocolError as exc:
                return f"a peer would reject the node's gossip: {exc}: {_short(wire, 3)[:200]}"
        return None

    def close(self) -> None:
        self.sock.close(linger=0)


# ---------------------------------------------------------------------- options and report

@dataclass
class FuzzOptions:
    frames: int = 100_000
    seed: int = 1
    targets: tuple[str, ...] = ("router", "gossip")
    mutated_share: float = 0.8     # of all frames, plain mutations of structured ones
    big_every: int = 2500          # a frame of a few MiB every this many frames
    max_big_mib: float = 4.0
    check_every: int = 500
    ping_timeout_s: float = 5.0
    recover_timeout_s: float = 30.0   # after a hang: how long the node may take to answer
    # what the node's caps allow: its rings (at most 2**19 tokens each, a few held at once,
    # ~100 MiB), one frame unpacking (at most ~130 MiB while it lasts), and what valid PUTs
    # among the frames stored (the --memory store keeps it); about 60 MiB at start
    rss_limit_mib: float = 512.0
    rss_kill_mib: float = 1024.0
    max_seconds: float = 0.0       # stop fuzzing after this long (0: no limit), a failure
    max_weight: float = MAX_WEIGHT
    fresh_ids: bool = True
    workdir: Path | None = None
    log_level: str = "warning"
    quiet: bool = False


@dataclass
class FuzzReport:
    options: FuzzOptions
    sent: Counter = field(default_factory=Counter)        # by target
    kinds: Counter = field(default_factory=Counter)       # by target/kind
    skipped_unsafe: Counter = field(default_factory=Counter)   # by reason
    replies: Counter = field(default_factory=Counter)     # the node's replies to the fuzzer
    peer_requests: Counter = field(default_factory=Counter)   # the node's to the fake peer
    crashes: int = 0
    exit_code: int | None = None
    hangs: int = 0
    hang_notes: list[str] = field(default_factory=list)
    ping_max_s: float = 0.0
    peak_rss_mib: float = 0.0
    end_rss_mib: float | None = None
    rss_killed_at_mib: float | None = None
    open_fds: list[int] = field(default_factory=list)   # sampled at each check
    rss_steps: list[str] = field(default_factory=list)  # RSS up by RSS_STEP_MIB in one check
    started_at: float = field(default_factory=time.monotonic)
    fuzz_s: float = 0.0
    duration_s: float = 0.0
    post_checks: dict[str, str] = field(default_factory=dict)   # name -> "ok" or why not
    counters: dict[str, int] = field(default_factory=dict)
    node_errors: Counter = field(default_factory=Counter)   # logged exceptions, by kind
    gossip_problems: list[str] = field(default_factory=list)
    suspects: list[str] = field(default_factory=list)   # files of frames to replay
    stopped_early: str = ""
    workdir: Path | None = None

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    @property
    def failures(self) -> list[str]:
        found = []
        if self.crashes:
            found.append(f"the node exited ({self.exit_code})")
        if self.hangs:
            found.append(f"{self.hangs} hang(s)")
        if self.rss_killed_at_mib is not None or self.peak_rss_mib > self.options.rss_limit_mib:
            found.append(f"peak RSS {self.peak_rss_mib:.0f} MiB over the bound "
                         f"{self.options.rss_limit_mib:.0f} MiB")
        found += [f"post-check {name}: {result}" for name, result in self.post_checks.items()
                  if result != "ok"]
        if self.gossip_problems:
            found.append(f"node gossip unparseable: {self.gossip_problems[0]}")
        if self.stopped_early and not found:
            found.append(f"stopped early: {self.stopped_early}")
        return found

    def lines(self) -> list[str]:
        rate = self.total / self.fuzz_s if self.fuzz_s else 0.0
        out = [f"fuzz: {self.total} frames in {self.fuzz_s:.1f}s ({rate:.0f}/s), run "
               f"{self.duration_s:.1f}s, seed {self.options.seed}",
               "  sent: " + ", ".join(f"{t} {n}" for t, n in sorted(self.sent.items())),
               "  kinds: " + ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items()))]
        if self.skipped_unsafe:
            out.append("  skipped by the guard: " + ", ".join(
                f"{r} {n}" for r, n in self.skipped_unsafe.most_common()))
        out.append("  replies to the fuzzer: " + ", ".join(
            f"{k} {n}" for k, n in self.replies.most_common()))
        if self.peer_requests:
            out.append("  requests from the node to the fake peer: " + ", ".join(
                f"{k} {n}" for k, n in self.peer_requests.most_common()))
        out.append(f"  crashes {self.crashes}, hangs {self.hangs}, slowest ping "
                   f"{self.ping_max_s:.3f}s, peak RSS {self.peak_rss_mib:.0f} MiB "
                   f"(bound {self.options.rss_limit_mib:.0f}), at the end "
                   + (f"{self.end_rss_mib:.0f} MiB" if self.end_rss_mib is not None else "-"))
        if self.open_fds:
            out.append(f"  node's open fds: {self.open_fds[0]} at start, {max(self.open_fds)} "
                       f"at most, {self.open_fds[-1]} at the end")
        out += [f"  RSS step: {step}" for step in self.rss_steps]
        out += [f"  hang: {note}" for note in self.hang_notes]
        keep = ("bad_frames", "bad_gossip", "gossip_accepted", "handler_errors", "overloaded",
                "member_records_refused", "sends_dropped", "peer_timeouts", "bad_replies")
        out.append("  node counters: " + ", ".join(
            f"{k} {self.counters[k]}" for k in keep if k in self.counters))
        if self.node_errors:
            out.append("  exceptions the node logged (caught, counted, kept serving):")
            out += [f"    {n} x {what}" for what, n in self.node_errors.most_common(8)]
        out += [f"  node gossip: {p}" for p in self.gossip_problems[:3]]
        out.append("  post-checks: " + ", ".join(
            f"{name} {result}" for name, result in self.post_checks.items()))
        if self.stopped_early:
            out.append(f"  stopped early: {self.stopped_early}")
        out += [f"  suspects (replay with --replay): {path}" for path in self.suspects]
        out.append(f"  node log: {self.workdir / 'node.log'}" if self.workdir else
                   "  files: removed (the run passed)")
        failures = self.failures
        out.append("FAILED: " + "; ".join(failures) if failures else "PASSED")
        return out


def _gossip_read(counters: dict[str, int]) -> int:
    """Gossip frames the node has read: each is accepted or rejected (one whose merge then
    failed counts twice, which only errs on the safe side)."""
    return counters.get("gossip_accepted", 0) + counters.get("bad_gossip", 0)


class _StopFuzz(BaseException):
    """Ends the hypothesis-driven loop at once (a BaseException: hypothesis does not take it
    for a failing example to replay)."""


# ---------------------------------------------------------------------- the run

class FuzzRun:
    """The node, the fuzzer's sockets, and the frames sent so far."""

    def __init__(self, options: FuzzOptions, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.report = FuzzReport(options, workdir=workdir)
        # one call: every port distinct (the node's two, and those forged records name)
        router_port, gossip_port, *unused = free_ports(2 + UNUSED_PORTS)
        self.node = TargetNode(workdir, router_port, gossip_port, options.log_level)
        self.unused_endpoints = [f"tcp://127.0.0.1:{p}" for p in unused]
        self.context = zmq.Context()
        self.probe: Probe | None = None
        self.peer: FakePeer | None = None
        self.observer: GossipObserver | None = None
        self.fuzzer: zmq.Socket | None = None
        self.watch: MemoryWatch | None = None
        self.ctx: FuzzContext | None = None
        self.gossip_sent = 0
        self.last_rss_mib = 0.0
        self.over_bound = False   # RSS went past --rss-limit-mib (reported once)
        self.fuzz_started = time.monotonic()
        self.since_check: list[tuple[str, list[bytes]]] = []   # suspects if the next fails

    # -------------------------------------------------------------- setting up

    def start(self, extra_endpoints: tuple[str, ...] = ()) -> None:
        options = self.options
        self.node.start()
        self.watch = MemoryWatch(self.node, options.rss_kill_mib)
        self.watch.start()
        self.probe = Probe(self.context, self.node.address)
        wait_for(lambda: self._alive() and self.probe.ping_s(0.5) is not None, 30,
                 "the node to answer a PING")
        self.observer = GossipObserver(self.context, self.node.gossip_address)
        self.fuzzer = _socket(self.context, zmq.DEALER)
        self.fuzzer.setsockopt(zmq.SNDTIMEO, int(options.ping_timeout_s * 1000))
        self.fuzzer.connect(self.node.address)
        self.peer = FakePeer(self.context, self.report.peer_requests)
        reply = self.probe.ask(MsgType.JOIN, {"member": self.peer.record()}, 5)
        if reply is None or reply.type != MsgType.OK:
            raise RuntimeError(f"the node refused the fake peer's JOIN: {reply}")
        own = next(m for m in reply.body["members"] if m["node_id"] == TARGET_ID)
        endpoints = (*self.unused_endpoints, self.peer.address, self.peer.gossip_address,
                     *extra_endpoints)
        self.ctx = FuzzContext(TARGET_ID, own["generation"], own["status"], PEER_ID,
                               tuple(dict.fromkeys(endpoints)), max_weight=options.max_weight,
                               fresh_ids=options.fresh_ids)

        def subscribed() -> bool:   # the node's SUB reached our PUB: a heartbeat got through
            self.peer.beacon()
            self.gossip_sent += 1
            counters = self.probe.counters(1)
            return bool(counters and counters.get("gossip_accepted", 0) >= 1)
        wait_for(subscribed, 15, "the node to subscribe to the fake peer's PUB")
        # heartbeats published before the SUB connected were lost: count from what it read
        self.gossip_sent = _gossip_read(self.probe.counters(5) or {})
        self._sample_fds()
        self.last_rss_mib = (self.node.memory_mib() or (0.0,))[0]

    def _alive(self) -> bool:
        code = self.node.exit_code()
        killed = self.watch is not None and self.watch.killed_at_mib is not None
        if code is not None and not self.report.crashes and not killed:   # ours: no crash
            self.report.crashes = 1
            self.report.exit_code = code
        return code is None

    # -------------------------------------------------------------- sending

    def send(self, name: str, parts: list[bytes]) -> None:
        reason = unsafe_reason(parts, self.ctx)
        if reason:
            self.report.skipped_unsafe[reason] += 1
            return
        target = name.split("/")[0]
        try:
            if target == "router":
                self.fuzzer.send_multipart(parts)   # blocks past the HWM: up to SNDTIMEO
            else:
                self.peer.pub.send_multipart(parts)
                self.gossip_sent += 1
        except zmq.Again:
            self.since_check.append((name, parts))
            self._hang(f"the node took no {target} frame for {self.options.ping_timeout_s}s")
            return
        self.report.sent[target] += 1
        self.report.kinds[name] += 1
        self.since_check.append((name, parts))
        if len(self.since_check) >= self.options.check_every:
            self.check()

    def drain(self) -> None:
        """Read (and count) the node's replies to the fuzzer: unread they would pile up."""
        for frame in pending_frames(self.fuzzer):
            kind = frame[1] if len(frame) > 1 and frame[0] == 0x93 else -1
            self.report.replies[{1: "ok", 2: "error", 55: "batch"}.get(kind, "other")] += 1
        self.peer.drain()

    # -------------------------------------------------------------- checking

    def check(self) -> None:
        """Alive, answering, within memory, and reading the gossip we publish."""
        options, report = self.options, self.report
        if options.max_seconds and time.monotonic() - self.fuzz_started > options.max_seconds:
            raise _StopFuzz(f"out of time: {report.total} frames in {options.max_seconds}s")
        self.drain()
        if not self._alive():
            self._save_suspects("crash")
            raise _StopFuzz(f"the node exited with {report.exit_code}")
        latency = self.probe.ping_s(options.ping_timeout_s)
        if latency is None:
            self._hang(f"no PING answer within {options.ping_timeout_s}s")
            return
        report.ping_max_s = max(report.ping_max_s, latency)
        self._sample_fds()
        self._check_memory()
        self._note_growth()
        if "gossip" in options.targets and not self._gossip_caught_up(options.ping_timeout_s):
            self._hang(f"the node had not read the gossip sent within "
                       f"{options.ping_timeout_s}s")
            return
        if len(report.gossip_problems) < 3:
            problem = self.observer.problem(0) if self.observer.sock.poll(0) else None
            if problem and problem not in report.gossip_problems:
                report.gossip_problems.append(problem)
                self._save_suspects("gossip")
        self.since_check = []
        if not options.quiet and report.total // (options.check_every * 20) != (
                (report.total - options.check_every) // (options.check_every * 20)):
            say(f"  .. {report.total} frames, ping {latency * 1000:.0f} ms, "
                f"RSS {report.peak_rss_mib:.0f} MiB peak")

    def _gossip_caught_up(self, timeout_s: float, window: int | None = None) -> bool:
        """The node read all but ``window`` of the gossip frames we published."""
        window = self.options.check_every if window is None else window
        deadline = time.monotonic() + timeout_s
        while True:
            counters = self.probe.counters(max(0.1, deadline - time.monotonic()))
            if counters is not None:
                self.report.counters = counters
                if _gossip_read(counters) >= self.gossip_sent - window:
                    return True
            if time.monotonic() >= deadline or not self._alive():
                return False
            time.sleep(0.02)

    def _note_growth(self) -> None:
        """Keep the frames behind a big step up in RSS (replay them to find which)."""
        memory = self.node.memory_mib()
        if memory is None:
            return
        grown = memory[0] - self.last_rss_mib
        self.last_rss_mib = memory[0]
        if grown >= RSS_STEP_MIB and len(self.report.rss_steps) < 5:
            path = self._save_suspects("growth")
            self.report.rss_steps.append(f"+{grown:.0f} MiB to {memory[0]:.0f} MiB by frame "
                                         f"{self.report.total}; frames: {path}")

    def _sample_fds(self) -> None:
        fds = self.node.open_fds()
        if fds is not None:
            self.report.open_fds.append(fds)

    def _check_memory(self) -> None:
        watch = self.watch
        memory = self.node.memory_mib()
        if memory is not None:
            watch.peak_mib = max(watch.peak_mib, *memory)
        self.report.peak_rss_mib = watch.peak_mib
        if watch.killed_at_mib is not None:
            self.report.rss_killed_at_mib = watch.killed_at_mib
            self._save_suspects("rss")
            raise _StopFuzz(f"RSS {watch.killed_at_mib:.0f} MiB: node killed by the watchdog")
        if watch.peak_mib > self.options.rss_limit_mib and not self.over_bound:
            # a failure, yet the run goes on (the watchdog still stops a runaway)
            self.over_bound = True
            self.report.rss_steps.append(f"over the bound: {watch.peak_mib:.0f} MiB by frame "
                                         f"{self.report.total}; frames: "
                                         f"{self._save_suspects('rss')}")

    def _hang(self, what: str) -> None:
        """Count a hang, keep the frames that led to it, and wait for the node to come back
        (it may be busy rather than stuck); if it does not, end the run."""
        report = self.report
        report.hangs += 1
        path = self._save_suspects("hang")
        started = time.monotonic()
        deadline = started + self.options.recover_timeout_s
        back = False
        while time.monotonic() < deadline and self._alive() and self.watch.killed_at_mib is None:
            if self.probe.ping_s(min(1.0, max(0.05, deadline - time.monotonic()))) is not None:
                back = "gossip" not in self.options.targets or self._gossip_caught_up(
                    max(0.1, deadline - time.monotonic()), window=0)
                if back:
                    break
        note = (f"{what} (after {report.total} frames; answering again after "
                f"{time.monotonic() - started:.1f}s)" if back else
                f"{what} (after {report.total} frames; still not answering after "
                f"{self.options.recover_timeout_s}s)")
        report.hang_notes.append(f"{note}; frames: {path}")
        self._check_memory()
        if not back:
            raise _StopFuzz("the node stopped answering")
        self.since_check = []

    def _save_suspects(self, why: str) -> str:
        """The frames since the last good check, for --replay."""
        path = self.workdir / f"suspects-{why}-{len(self.report.suspects) + 1}.msgpack"
        path.write_bytes(pack({"endpoints": list(self.ctx.endpoints),
                               "frames": [[name, parts] for name, parts in self.since_check]}))
        self.report.suspects.append(str(path))
        return str(path)

    # -------------------------------------------------------------- after the fuzz

    def post_checks(self, full: bool = True) -> None:
        """The node serves correctly afterwards (each check is recorded, none raises)."""
        checks, probe = self.report.post_checks, self.probe
        self._check_memory_at_end()
        self._sample_fds()
        if not self._alive():
            killed = self.watch.killed_at_mib
            checks["alive"] = (f"killed by the watchdog at {killed:.0f} MiB" if killed
                               else f"exited with {self.node.exit_code()}")
            return
        checks["alive"] = "ok"
        latency = probe.ping_s(self.options.ping_timeout_s)
        checks["ping"] = "ok" if latency is not None else "no answer"
        if not full:
            return
        self.drain()
        counters = probe.counters(self.options.ping_timeout_s)
        checks["stats"] = "ok" if counters is not None else "no answer"
        self.report.counters = counters or self.report.counters
        accepted = (counters or {}).get("gossip_accepted", 0)

        def beacon_accepted() -> bool:
            self.peer.beacon()
            now = probe.counters(1)
            return bool(now and now.get("gossip_accepted", 0) > accepted)
        checks["gossip"] = self._passes(beacon_accepted, 10, "a heartbeat accepted")
        problem = self.observer.problem(3)
        checks["own_gossip"] = "ok" if problem is None else problem
        checks["forged_removed"] = self._passes(self._forget_forged_members, 60,
                                                "every forged member marked left")
        checks["put_get"] = self._put_get()
        self._check_memory_at_end()

    @staticmethod
    def _passes(condition, timeout_s: float, what: str) -> str:
        try:
            wait_for(condition, timeout_s, what)
        except TimeoutError as exc:
            return str(exc)
        return "ok"

    def _forget_forged_members(self) -> bool:
        """Gossip every member but the node as left with the highest generation the node
        adopts (no record can outrank it), until its ring holds only itself again."""
        status = self.probe.ask(MsgType.CLUSTER_STATUS, {}, 5)
        if status is None or status.type != MsgType.OK:
            return False
        rows = status.body["members"]
        own = next(r for r in rows if r["node_id"] == TARGET_ID)
        if own["status"] != "normal":
            raise RuntimeError(f"the node is {own['status']}, not normal")
        others = [r for r in rows if r["node_id"] != TARGET_ID and r["status"] != "left"]
        if not others:
            ring = self.probe.ask(MsgType.RING_STATE, {}, 5)
            return ring is not None and [n["node_id"] for n in ring.body["nodes"]] == [TARGET_ID]
        for start in range(0, len(others), 256):
            records = [Member(r["node_id"], "left", "left", MemberStatus.LEFT,
                              _TOP_ADOPTED_GENERATION, _MAX_GENERATION).to_wire()
                       for r in others[start:start + 256]]
            self.peer.beacon(records)
        return False

    def _put_get(self) -> str:
        client = Client([self.node.address], timeout=5, retries=1)
        try:
            for i in range(5):
                key, value = f"fuzz-check-{os.getpid()}-{i}", f"value-{i}".encode()
                self._put_when_not_busy(client, key, value)
                got = client.get(key, replicas=1, r=1)
                if not got.found or got.value != value:
                    return f"GET {key} returned {got!r}, not {value!r}"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            client.close()
        return "ok"

    def _put_when_not_busy(self, client: Client, key: str, value: bytes) -> None:
        """A put, retried while the node says it is busy: batches of up to 1000 keys the
        fuzzer sent may wait on forged replicas until their request timeout (2 s) and count
        against the node's pending limit meanwhile (backpressure, not a fault)."""
        deadline = time.monotonic() + 10
        while True:
            try:
                client.put(key, value, replicas=1, w=1)
                return
            except Unavailable as exc:
                if "retry later" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)   # the node's own advice: retry later

    def _check_memory_at_end(self) -> None:
        memory = self.node.memory_mib()
        if memory is not None:
            self.watch.peak_mib = max(self.watch.peak_mib, *memory)
            self.report.end_rss_mib = memory[0]
        self.report.peak_rss_mib = self.watch.peak_mib
        if self.watch.killed_at_mib is not None:
            self.report.rss_killed_at_mib = self.watch.killed_at_mib

    def read_node_log(self) -> None:
        """The exceptions the node logged: inputs no check foresaw."""
        try:
            text = self.node.log_path.read_text(errors="replace")
        except OSError:
            return
        for line in text.splitlines():
            if not line.startswith("{"):
                if line.startswith(("Traceback", "MemoryError", "Fatal", "Assertion")):
                    self.report.node_errors[f"stderr: {line[:120]}"] += 1
                continue
            if '"exception"' not in line and '"error"' not in line[:200]:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            exception = entry.get("exception")
            if exception:
                last = exception.strip().splitlines()[-1][:160]
                self.report.node_errors[f"{entry.get('event')}: {last}"] += 1
            elif entry.get("level") in ("error", "critical"):
                self.report.node_errors[f"{entry.get('event')}"] += 1

    def close(self) -> None:
        self.node.stop()
        if self.watch is not None:
            self.watch.stopping.set()
            self.watch.join(timeout=1)
        for part in (self.probe, self.peer, self.observer):
            if part is not None:
                part.close()
        if self.fuzzer is not None:
            self.fuzzer.close(linger=0)
        self.context.term()


def _drive(strategy: st.SearchStrategy, seed: int, examples: int, consume) -> None:
    """Run ``consume`` on ``examples`` values of ``strategy``, hypothesis outside pytest."""
    @hypothesis_seed(seed)
    @settings(max_examples=examples, database=None, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    @given(strategy)
    def run(value) -> None:
        consume(value)
    run()


def fuzz(options: FuzzOptions) -> FuzzReport:
    """The whole run: start the node, fuzz it, check it, stop it; never raises for what the
    node does (that goes in the report)."""
    owned = options.workdir is None
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="zring-fuzz-"))
    workdir.mkdir(parents=True, exist_ok=True)
    run = FuzzRun(options, workdir)
    report = run.report
    try:
        run.start()
        say(f"fuzzing {run.node.address} (gossip {run.node.gossip_address}, pid "
            f"{run.node.pid}): {options.frames} frames, seed {options.seed}, targets "
            f"{'+'.join(options.targets)}; files in {workdir}")
        fuzz_started = run.fuzz_started = time.monotonic()
        try:
            _send_frames(run)
        except _StopFuzz as stop:
            if str(stop) != "done":
                report.stopped_early = str(stop)
        report.fuzz_s = time.monotonic() - fuzz_started
        if not report.stopped_early:
            run.check()   # the frames since the last check
        # a node that stopped answering gets only the quick checks: the rest would time out
        run.post_checks(full=not report.stopped_early)
    except _StopFuzz as stop:
        report.stopped_early = report.stopped_early or str(stop)
        run.post_checks(full=False)
    except (RuntimeError, TimeoutError) as exc:   # setting up: the node never got going
        report.stopped_early = f"setup failed: {exc}"
    finally:
        run.read_node_log()
        report.duration_s = time.monotonic() - report.started_at
        report.exit_code = report.exit_code if report.crashes else run.node.exit_code()
        run.close()
    if owned and not report.failures:   # nothing to look at: a passed run leaves no files
        shutil.rmtree(workdir, ignore_errors=True)
        report.workdir = None
    return report


def _send_frames(run: FuzzRun) -> None:
    """Hypothesis batches, each frame followed by its share of mutations and now and then
    by a big frame, until ``options.frames`` went out (raises _StopFuzz)."""
    options, report = run.options, run.report
    mutator = Mutator(options.seed, options.max_big_mib, options.targets)
    mutated_per_frame = options.mutated_share / (1 - options.mutated_share)
    owed = 0.0
    next_big = options.big_every

    def consume(batch: dict[str, list[list[bytes]]]) -> None:
        nonlocal owed, next_big
        frames = [(name, parts) for name, drawn in batch.items() for parts in drawn]
        mutator.rng.shuffle(frames)
        for name, parts in frames:
            if report.total >= options.frames:
                raise _StopFuzz("done")
            run.send(name, parts)
            mutator.remember(name, parts)
            owed += mutated_per_frame
            while owed >= 1 and report.total < options.frames:
                owed -= 1
                run.send(*mutator.mutated())
            if options.big_every and report.total >= next_big:
                next_big += options.big_every
                run.send(*mutator.big())
        run.drain()

    strategy = batches(run.ctx, options.targets)
    per_example = sum(_KIND_COUNTS[n.split("/")[1]] for n in frame_strategies(run.ctx)
                      if n.split("/")[0] in options.targets) * (1 + mutated_per_frame)
    for round_number in range(1000):   # hypothesis may end a round early
        sent_before = report.total
        examples = int((options.frames - report.total) / per_example) + 1
        _drive(strategy, options.seed * 1000 + round_number, examples, consume)
        if report.total == sent_before:
            raise _StopFuzz("hypothesis generated no frames")


# ---------------------------------------------------------------------- replay

def describe(part: bytes, limit: int = 240) -> str:
    """A short human view of one frame: its decoded shape, else its first bytes."""
    try:
        value = msgpack.unpackb(part, raw=False, strict_map_key=False)
        text = _short(value, 6)
    except Exception as exc:
        text = f"undecodable ({type(exc).__name__}): {part[:48].hex()}"
    return f"{len(part)} bytes: {text[:limit]}"


def _short(value: object, depth: int) -> str:
    if depth <= 0:
        return "..."
    if isinstance(value, (str, bytes)) and len(value) > 40:
        return f"{value[:20]!r}...<{len(value)}>"
    if isinstance(value, list):
        items = [_short(v, depth - 1) for v in value[:6]]
        return "[" + ", ".join(items) + (f", ...<{len(value)}>" if len(value) > 6 else "") + "]"
    if isinstance(value, dict):
        items = [f"{_short(k, 1)}: {_short(v, depth - 1)}" for k, v in list(value.items())[:12]]
        return "{" + ", ".join(items) + "}"
    return repr(value)


def replay(path: Path, options: FuzzOptions, slow_s: float = 1.0) -> int:
    """Resend a suspects file one frame at a time, a PING after each; name the frames
    after which the node was slow, silent or gone, or had grown by 8 MiB or more."""
    saved = msgpack.unpackb(path.read_bytes(), raw=False)
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="zring-fuzz-replay-"))
    workdir.mkdir(parents=True, exist_ok=True)
    run = FuzzRun(options, workdir)
    culprits = []
    try:
        run.start(extra_endpoints=tuple(saved["endpoints"]))
        last_rss = run.node.memory_mib()[0]
        say(f"replaying {len(saved['frames'])} frames from {path} (node log {workdir})")
        for index, (name, parts) in enumerate(saved["frames"]):
            reason = unsafe_reason(parts, run.ctx)
            if reason:
                say(f"  #{index} skipped: {reason}")
                continue
            target = name.split("/")[0]
            (run.fuzzer.send_multipart if target == "router" else run.peer.pub.send_multipart)(
                parts)
            if target == "gossip":
                run.gossip_sent += 1
            started = time.monotonic()
            answered = run.probe.ping_s(options.recover_timeout_s) is not None and (
                target != "gossip" or run._gossip_caught_up(options.recover_timeout_s, 0))
            took = time.monotonic() - started
            memory = run.node.memory_mib()
            grown = memory[0] - last_rss if memory else 0.0
            last_rss = memory[0] if memory else last_rss
            run.drain()
            if not answered or took > slow_s or grown >= 8 or not run._alive():
                state = ("gone" if not run._alive() else "silent" if not answered
                         else f"{took:.1f}s, RSS +{grown:.0f} MiB")
                culprits.append(index)
                say(f"  #{index} {name} -> {state}, RSS {memory[0] if memory else 0:.0f} MiB; "
                    + "; ".join(describe(p) for p in parts))
                if not answered:
                    break
    finally:
        run.close()
    say(f"{len(culprits)} frame(s) the node choked on" if culprits else
        "the node took every frame in stride")
    return 1 if culprits else 0


# ---------------------------------------------------------------------- atheris

def atheris_fuzz(runs: int, options: FuzzOptions) -> int:
    """Coverage-guided, in process: libFuzzer (atheris) feeds a sans-IO NodeCore each input,
    a ROUTER frame (first byte ``r``) or gossip (``g``), after a tick; its effects (sends,
    subscriptions) are dropped, so no guard is needed. One core lives through the run, as a
    node does: a crash may need the inputs before it (libFuzzer keeps them in the corpus)."""
    try:
        import atheris
    except ImportError:
        print("fuzz.py: --atheris needs atheris (pip install atheris)", file=sys.stderr)
        return 2
    from zring.config import NodeConfig
    from zring.core.node import NodeCore
    from zring.log import configure_logging
    from zring.storage import MemoryStore

    configure_logging("error", "console")   # each rejected input would log a warning
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="zring-fuzz-atheris-"))
    corpus = workdir / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    address, gossip_address = "tcp://127.0.0.1:1", "tcp://127.0.0.1:2"
    ctx = FuzzContext(TARGET_ID, 1, int(MemberStatus.NORMAL), PEER_ID,
                      (address, gossip_address), max_weight=options.max_weight,
                      fresh_ids=options.fresh_ids)
    seeds: list[bytes] = []

    def keep(batch: dict[str, list[list[bytes]]]) -> None:   # hypothesis frames as seeds
        for name, drawn in batch.items():
            seeds.extend(name[0].encode() + parts[-1] for parts in drawn
                         if len(parts[-1]) <= 64 * 1024)
    _drive(batches(ctx, ("router", "gossip")), options.seed, 20, keep)
    for index, data in enumerate(seeds):
        (corpus / f"seed-{index}").write_bytes(data)

    config = NodeConfig(TARGET_ID, address, gossip_address, seeds=[address], replicas=1,
                        write_quorum=1, read_quorum=1)
    clock = [time.time()]
    core = NodeCore(config, MemoryStore(), clock[0])
    core.start(clock[0])

    def one_input(data: bytes) -> None:
        clock[0] += 0.01
        errors_before = core.stats["handler_errors"]
        if data[:1] == b"g":
            core.handle_gossip(data[1:], clock[0])
        else:
            core.handle_frame((b"fuzzer",), data[1:], clock[0])
        core.tick(clock[0])
        # a handler's exception the node caught, counted and logged is a bug all the same
        if core.stats["handler_errors"] > errors_before:
            raise RuntimeError("a handler failed on an input no check foresaw (logged above)")

    say(f"atheris: {runs} runs, {len(seeds)} seed inputs, corpus and crashes in {workdir}")
    atheris.instrument_all()   # zring is loaded already: instrument what is
    atheris.Setup([sys.argv[0], f"-runs={runs}", f"-seed={options.seed}",
                   f"-rss_limit_mb={int(options.rss_kill_mib)}", "-max_len=65536",
                   f"-artifact_prefix={workdir}/", str(corpus)], one_input)
    atheris.Fuzz()   # libFuzzer exits the process: 0 when the runs are done
    return 0


# ---------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fuzz.py", description=__doc__.split("\n")[0])
    defaults = FuzzOptions()
    parser.add_argument("--frames", type=int, default=defaults.frames,
                        help="messages to send, all targets together (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--target", choices=("both", "router", "gossip"), default="both")
    parser.add_argument("--mutated-share", type=float, default=defaults.mutated_share,
                        help="share of frames that are byte mutations of structured ones")
    parser.add_argument("--big-every", type=int, default=defaults.big_every,
                        help="a frame of 1 MiB..--max-big-mib every N frames (0: none)")
    parser.add_argument("--max-big-mib", type=float, default=defaults.max_big_mib)
    parser.add_argument("--check-every", type=int, default=defaults.check_every)
    parser.add_argument("--ping-timeout", type=float, default=defaults.ping_timeout_s)
    parser.add_argument("--recover-timeout", type=float, default=defaults.recover_timeout_s)
    parser.add_argument("--rss-limit-mib", type=float, default=defaults.rss_limit_mib)
    parser.add_argument("--rss-kill-mib", type=float, default=defaults.rss_kill_mib)
    parser.add_argument("--max-seconds", type=float, default=defaults.max_seconds,
                        help="stop fuzzing after this long, a failure (default: no limit)")
    parser.add_argument("--max-weight", type=float, default=defaults.max_weight,
                        help="the largest weight in a forged member record")
    parser.add_argument("--no-fresh-ids", action="store_true",
                        help="forged records name only a pool of 16 fake node ids")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the node log and suspects go (default: a new temp dir)")
    parser.add_argument("--log-level", default=defaults.log_level,
                        choices=("debug", "info", "warning", "error"))
    parser.add_argument("--replay", type=Path, default=None, metavar="SUSPECTS",
                        help="resend a suspects file one frame at a time instead")
    parser.add_argument("--atheris", type=int, default=0, metavar="RUNS",
                        help="fuzz a NodeCore in process with atheris instead (no node)")
    return parser


def options_from_args(args: argparse.Namespace) -> FuzzOptions:
    targets = ("router", "gossip") if args.target == "both" else (args.target,)
    return FuzzOptions(frames=args.frames, seed=args.seed, targets=targets,
                       mutated_share=args.mutated_share, big_every=args.big_every,
                       max_big_mib=args.max_big_mib, check_every=args.check_every,
                       ping_timeout_s=args.ping_timeout, recover_timeout_s=args.recover_timeout,
                       rss_limit_mib=args.rss_limit_mib, rss_kill_mib=args.rss_kill_mib,
                       max_seconds=args.max_seconds,
                       max_weight=args.max_weight, fresh_ids=not args.no_fresh_ids,
                       workdir=args.dir, log_level=args.log_level)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.frames < 1 or args.check_every < 1 or not (
            0 <= args.mutated_share < 1) or not MIN_WEIGHT <= args.max_weight <= MAX_WEIGHT:
        print("fuzz.py: error: --frames and --check-every must be >= 1, "
              f"--mutated-share in [0, 1), --max-weight in [{MIN_WEIGHT}, {MAX_WEIGHT}]",
              file=sys.stderr)
        return 2
    options = options_from_args(args)
    try:
        if args.replay is not None:
            return replay(args.replay, options)
        if args.atheris:
            return atheris_fuzz(args.atheris, options)
        report = fuzz(options)
    except KeyboardInterrupt:
        print("fuzz.py: interrupted", file=sys.stderr)
        return 130
    for line in report.lines():
        say(line)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
