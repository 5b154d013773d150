"""Hard limits on what one frame or one gossip message can make a node hold."""

from __future__ import annotations

import resource

import pytest
from simnet import CLIENT, SimCluster

from zring.core.effects import Reply
from zring.errors import ProtocolError
from zring.failure import PhiAccrualDetector
from zring.membership import MAX_MEMBERS, MAX_RING_TOKENS, Member, MemberStatus, MemberTable
from zring.protocol import Message, MsgType, decode, encode


def frame_with_keys(count: int, item: bytes) -> bytes:
    """An MGET whose ``keys`` array declares ``count`` items, each the msgpack ``item``."""
    return (b"\x93\x16\x01\x81\xa4keys\xdd" + count.to_bytes(4, "big") + item * count)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("count, item, error", [
    (3_000_000, b"\x90", "max_array_len"),         # 3M empty lists: ~200 MiB if unpacked
    (1_900_000, b"\x91\x90", "objects"),           # 1.9M one-item lists: 3.8M objects
    (1_000_000, b"\x82\xa1a\x90\xa1b\x90", "objects"),   # 1M maps of two empty lists
])
def test_a_frame_that_would_unpack_into_millions_of_objects_is_refused(count, item, error):
    frame = frame_with_keys(count, item)
    before = peak_rss_mib()
    with pytest.raises(ProtocolError, match=error):
        decode(frame)
    # the refusal costs little beyond the frame itself (an unbounded unpack: 200+ MiB)
    assert peak_rss_mib() - before < 3 * len(frame) / 2**20 + 150


@pytest.mark.parametrize("frame", [
    b"\x91" * 100_000 + b"\xc0",                      # nested deeper than msgpack's stack
    b"\x93\x0a\x01\x81\xa3key\xdb\xff\xff\xff\xff",   # a str declaring 4 GiB
    b"\x93\x0a\x01\xdf\xff\xff\xff\xff",              # a map declaring 4G pairs
    b"\x93\x0a\x01\x81\xa3key\xd6\xff\x00\x00\x00\x00",   # an ext type (a timestamp)
])
def test_hostile_encodings_are_protocol_errors(frame):
    with pytest.raises(ProtocolError):
        decode(frame)


def test_large_legitimate_frames_still_decode():
    records = [[f"k{i}", b"x" * 1000, 123, "n1"] for i in range(2000)]
    frame = encode(Message(MsgType.REPLICA_WRITE, 1, {"records": records}))
    assert len(frame) > 1 << 20
    assert decode(frame).body["records"][1999][0] == "k1999"
    keys = [f"k{i}" for i in range(1_000_000)]   # a big LOCAL_KEYS reply
    assert len(decode(encode(Message(MsgType.OK, 1, {"keys": keys}))).body["keys"]) == 10**6


def member(node_id: str, **changes) -> Member:
    fields = dict(node_id=node_id, address="tcp://127.0.0.1:1", gossip_address="x",
                  status=MemberStatus.NORMAL, generation=1, heartbeat=1)
    return Member(**{**fields, **changes})


def test_the_member_table_stops_growing_at_its_cap():
    table = MemberTable(member("me"), PhiAccrualDetector(expected_interval_s=0.5))
    table.merge([member(f"forged{i}", status=MemberStatus.LEFT) for i in range(3000)], 0.0)
    assert len(table.all()) == MAX_MEMBERS and table.records_refused == 3000 - MAX_MEMBERS + 1
    # members already known still update
    table.merge([member("forged0", generation=5, status=MemberStatus.LEFT)], 1.0)
    assert table.get("forged0").generation == 5


def test_the_ring_stops_growing_at_its_weight_cap():
    table = MemberTable(member("me"), PhiAccrualDetector(expected_interval_s=0.5),
                        max_ring_weight=10.0)
    assert table.merge([member("big", weight=8.0)], 0.0)
    table.merge([member("huge", weight=100.0), member("small", weight=1.0),
                 member("left", weight=100.0, status=MemberStatus.LEFT)], 0.0)
    assert sorted(table.ring_weights()) == ["big", "me", "small"]   # 1 + 8 + 1 = 10
    assert table.records_refused == 1 and table.get("left") is not None
    # a joining member counts too: the future ring holds it
    table.merge([member("joiner", weight=1.0, status=MemberStatus.JOINING)], 0.0)
    assert table.get("joiner") is None and table.records_refused == 2
    table.merge([member("big", generation=2, weight=9.0)], 1.0)      # would make 11
    assert table.get("big").weight == 8.0
    table.merge([member("big", generation=3, status=MemberStatus.LEFT)], 2.0)
    table.merge([member("huge", generation=2, weight=8.0)], 3.0)     # room again
    assert table.ring_weights()["huge"] == 8.0


def test_forged_members_cannot_build_a_ring_beyond_its_token_cap():
    sim = SimCluster()
    core = sim.add("node1", vnodes=1 << 16)   # room for 64 units of weight
    forged = [member(f"forged{i}", weight=100.0).to_wire() for i in range(50)]
    frame = encode(Message(MsgType.GOSSIP, 0, {"sender": "forged0", "members": forged}))
    core.handle_gossip(frame, sim.now)
    tokens = sum(round(core.config.vnodes * w) for w in core.members.ring_weights().values())
    assert tokens <= MAX_RING_TOKENS and core.members.records_refused > 0


@pytest.mark.parametrize("changes", [{"node_id": "n" * 300}, {"address": "a" * 2000},
                                     {"gossip_address": "g" * 2000}])
def test_member_records_with_oversized_fields_are_refused(changes):
    wire = member("n1").to_wire() | changes
    with pytest.raises(ProtocolError):
        Member.from_wire(wire)


def test_a_full_member_table_refuses_a_join_with_a_clear_error(monkeypatch):
    monkeypatch.setattr("zring.membership.MAX_MEMBERS", 3)
    sim = SimCluster()
    for i in range(1, 4):
        sim.add(f"node{i}")
    assert sim.run_until(lambda: sim.converged(), 10)
    record = member("node9", status=MemberStatus.JOINING).to_wire()
    [reply] = [e for e in sim.node("node1").handle_frame(
        (CLIENT,), encode(Message(MsgType.JOIN, 3, {"member": record})), sim.now)
        if isinstance(e, Reply)]
    assert reply.message.type == MsgType.ERROR and reply.message.body["code"] == "unavailable"
    assert "node9" not in sim.node("node1").members


def test_a_request_of_too_many_parts_gets_a_protocol_error():
    sim = SimCluster()
    core = sim.add("node1")
    [reply] = core.refuse_multipart(b"client-7", 6)
    assert reply.route == (b"client-7",) and reply.message.request_id == 0
    assert reply.message.body["code"] == "protocol" and "not 5" in reply.message.body["message"]
    assert core.stats["bad_frames"] == 1


def test_records_of_absurd_generations_are_refused_so_a_bump_stays_valid():
    table = MemberTable(member("me"), PhiAccrualDetector(expected_interval_s=0.5))
    table.merge([member("x", generation=2**63 - 1), member("me", generation=2**62)], 0.0)
    assert table.get("x") is None and table.own.generation == 1
    assert table.records_refused == 2
    table.merge([member("y", generation=2**62 - 1)], 0.0)
    bumped = table.set_status("y", MemberStatus.LEFT)
    assert Member.from_wire(bumped.to_wire()) == bumped   # still valid on the wire


def test_a_client_reads_a_reply_bigger_than_a_node_would_accept():
    keys = [f"k{i}" for i in range(2_100_000)]
    frame = encode(Message(MsgType.OK, 1, {"keys": keys}))
    with pytest.raises(ProtocolError):
        decode(frame)
    assert len(decode(frame, bounded=False).body["keys"]) == 2_100_000
