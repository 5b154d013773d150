"""core/replica.py: the replica side: records written and read for a coordinator, hints
kept for a peer, and pages of a range for a node that streams it."""

from __future__ import annotations

import pytest
from coresim import member, part_context

from zring.core.clocks import NodeClock
from zring.core.replica import Replica
from zring.core.topology import Topology
from zring.errors import ClockSkew, InvalidRequest, NotCoordinated, NotMember, ProtocolError
from zring.hashing import key_position
from zring.membership import MemberStatus
from zring.protocol import Message, MsgType
from zring.storage.base import Record
from zring.versions import Version

NOW = 1000.0
FULL = [0, (1 << 64) - 1]
TS = (int(NOW * 1000) - 5000) << 16     # five seconds ago


def replica_of(peers=("b", "c"), ready: bool = True, **overrides) -> Replica:
    ctx = part_context(peers=peers, **overrides)
    return Replica(ctx, NodeClock(ctx, NOW), Topology(ctx, NOW), lambda now: ready)


def ask(replica: Replica, msg_type: MsgType, body: dict) -> Message:
    [reply] = replica.handlers[msg_type]((b"peer",), Message(msg_type, 7, body), NOW)
    return reply.message


def wire(key: str, value=b"v", ts: int = TS, writer: str = "w") -> list:
    return [key, value, ts, writer]


def test_a_client_write_is_refused_where_a_newer_version_is_held():
    replica = replica_of()
    assert ask(replica, MsgType.REPLICA_WRITE, {"records": [wire("k", ts=TS + 10)],
                                                "cond": True}).body == {"received": 1}
    reply = ask(replica, MsgType.REPLICA_WRITE, {"records": [wire("k", b"old"),
                                                             wire("j")], "cond": True})
    assert reply.body == {"received": 1, "newer": [[0, TS + 10, "w"]]}
    assert replica.ctx.store.get("k").version == Version(TS + 10, "w")
    assert replica.ctx.stats["replica_writes_refused_newer"] == 1


def test_other_records_keep_the_newer_of_the_two_silently():
    replica = replica_of()
    ask(replica, MsgType.REPLICA_WRITE, {"records": [wire("k", b"new", ts=TS + 10)]})
    reply = ask(replica, MsgType.REPLICA_WRITE, {"records": [wire("k", b"old")]})
    assert "newer" not in reply.body and replica.ctx.store.get("k").value == b"new"


def test_a_stored_timestamp_moves_the_hybrid_clock():
    replica = replica_of()
    ask(replica, MsgType.REPLICA_WRITE, {"records": [wire("k", ts=TS + (1 << 20))]})
    assert replica.clock.hlc.last >= TS + (1 << 20)


@pytest.mark.parametrize("records, error", [
    ([["k", b"v", TS]], ProtocolError),
    ([["x" * 5000, b"v", TS, "w"]], InvalidRequest),
    ([["k", b"v" * 101, TS, "w"]], InvalidRequest),
])
def test_records_of_the_wrong_shape_or_size_are_refused(records, error):
    replica = replica_of(max_value_bytes=100)
    with pytest.raises(error):
        replica.handlers[MsgType.REPLICA_WRITE]((b"p",), Message(
            MsgType.REPLICA_WRITE, 7, {"records": records}), NOW)
    assert replica.ctx.store.count() == 0


def test_reads_answer_the_stored_record_and_stand_if_a_commit_fails():
    replica = replica_of()
    ask(replica, MsgType.REPLICA_WRITE, {"records": [wire("k")]})
    [reply] = replica.handlers[MsgType.REPLICA_READ]((b"p",), Message(
        MsgType.REPLICA_READ, 7, {"key": "k"}), NOW)
    assert reply.message.body == {"record": wire("k")} and reply.only_reads
    assert ask(replica, MsgType.REPLICA_READ, {"key": "missing"}).body == {"record": None}
    many = ask(replica, MsgType.REPLICA_READ_MANY, {"keys": ["k", "missing"]})
    assert many.body == {"records": [wire("k"), None]}


def test_a_hint_write_keeps_the_records_for_their_target():
    replica = replica_of()
    reply = ask(replica, MsgType.HINT_WRITE, {"target": "c", "records": [wire("k"),
                                                                          wire("j")]})
    assert reply.body == {"stored": 2} and replica.ctx.store.hint_counts() == {"c": 2}
    assert replica.ctx.store.get("k") is None


def test_a_range_pull_pages_by_position_and_says_where_it_stopped():
    replica = replica_of(stream_batch_records=1000)
    keys = [f"k{i}" for i in range(25)]
    replica.ctx.store.put_many(Record(k, b"v", Version(TS, "w"), key_position(k))
                               for k in keys)
    seen, after, pages = [], None, 0
    while True:
        body = ask(replica, MsgType.RANGE_PULL, {"intervals": [FULL], "after": after,
                                                 "limit": 10}).body
        pages += 1
        seen += [r[0] for r in body["records"]]
        if not body["more"]:
            break
        assert body["last"] == key_position(body["records"][-1][0])
        after = body["last"]
    assert sorted(seen) == sorted(keys) and len(seen) == 25 and pages == 3


def test_a_range_pull_is_capped_at_stream_batch_records():
    replica = replica_of(stream_batch_records=5)
    replica.ctx.store.put_many(Record(f"k{i}", b"v", Version(TS, "w"), key_position(f"k{i}"))
                               for i in range(20))
    body = ask(replica, MsgType.RANGE_PULL, {"intervals": [FULL], "limit": 1000}).body
    assert len(body["records"]) == 5 and body["more"]


def test_scan_intervals_checks_its_intervals():
    replica = replica_of()
    for intervals in ([[0]], [[0, -1]], [[0, 1 << 64]], [(0, 5)], [[0, "5"]]):
        with pytest.raises(InvalidRequest):
            replica.scan_intervals(intervals, None, 10, None)
    with pytest.raises(InvalidRequest, match="too many"):
        replica.scan_intervals([[0, 1]] * 65_537, None, 10, None)


def test_a_node_that_left_serves_no_replica_requests():
    replica = replica_of()
    replica.ctx.members.set_status("a", MemberStatus.LEFT)
    for msg_type, body in ((MsgType.REPLICA_WRITE, {"records": [wire("k")]}),
                           (MsgType.REPLICA_READ, {"key": "k"}),
                           (MsgType.RANGE_PULL, {"intervals": [FULL], "limit": 10})):
        with pytest.raises(NotMember):
            replica.handlers[msg_type]((b"p",), Message(msg_type, 7, body), NOW)


# ---------------------------------------------------------------- client-coordinated


def own_key(replica: Replica, mine: bool = True) -> str:
    """A key of which the replica is (or is not) one of the 3 replicas."""
    ring = replica.topology.ring
    return next(k for k in (f"key{i}" for i in range(1000))
                if (replica.ctx.node_id in ring.get_nodes(k, 3)) == mine)


def direct_write(replica: Replica, key: str, ts: int = TS, value=b"v", **extra) -> Message:
    body = {"key": key, "value": value, "ts": ts, "writer": "client-1",
            "ring": replica.topology.ring.fingerprint(), "n": 3, **extra}
    return ask(replica, MsgType.DIRECT_WRITE, body)


def test_a_client_write_to_a_replica_is_taken_unless_a_newer_version_is_held():
    replica = replica_of(peers=("b", "c", "d"))
    key = own_key(replica)
    assert direct_write(replica, key, TS + 10).body == {"stored": True}
    assert direct_write(replica, key, TS + 10).body == {"stored": True}   # a resend
    refused = direct_write(replica, key, TS + 5, b"older").body
    assert refused == {"stored": False, "newer": [TS + 10, "client-1"]}
    assert replica.ctx.store.get(key).value == b"v"
    # a read's write-back keeps the newer copy, and says nothing of the older one
    assert direct_write(replica, key, TS + 1, b"old", cond=False).body == {"stored": True}
    assert replica.ctx.store.get(key).version == Version(TS + 10, "client-1")
    read = ask(replica, MsgType.DIRECT_READ, {"key": key, "n": 3,
                                              "ring": replica.topology.ring.fingerprint()})
    assert read.body == {"record": [key, b"v", TS + 10, "client-1"]}
    assert replica.ctx.stats["direct_writes"] == 4 and replica.ctx.stats["direct_reads"] == 1


def test_a_client_delete_writes_a_tombstone():
    replica = replica_of()
    direct_write(replica, "k", TS)
    assert direct_write(replica, "k", TS + 1, value=None).body == {"stored": True}
    assert replica.ctx.store.get("k").value is None


@pytest.mark.parametrize("case", ["ring", "not_replica", "starting", "changing"])
def test_a_replica_refuses_what_a_node_must_coordinate(case):
    replica = replica_of(peers=("b", "c", "d"), ready=case != "starting")
    key = own_key(replica, mine=case != "not_replica")
    ring = replica.topology.ring.fingerprint()
    if case == "ring":
        ring ^= 1
    if case == "changing":
        replica.ctx.members.merge([member("e", MemberStatus.JOINING)], NOW)
        replica.topology.members_changed()
        assert not replica.topology.steady()
    for msg_type, body in ((MsgType.DIRECT_WRITE, {"value": b"v", "ts": TS, "writer": "c"}),
                           (MsgType.DIRECT_READ, {})):
        with pytest.raises(NotCoordinated, match="send the request to a node"):
            ask(replica, msg_type, {"key": key, "ring": ring, "n": 3, **body})
    assert replica.ctx.store.get(key) is None
    assert replica.ctx.stats["direct_refused"] == 2


def test_a_client_write_stamped_beyond_the_clock_offset_is_refused():
    replica = replica_of()
    ahead = (int(NOW * 1000) + 60_000) << 16
    with pytest.raises(ClockSkew):
        direct_write(replica, "k", ahead)
    with pytest.raises(InvalidRequest):
        direct_write(replica, "k", TS, value=b"x" * (replica.ctx.config.max_value_bytes + 1))
    with pytest.raises(InvalidRequest):
        direct_write(replica, "k", TS, n=0)
    assert replica.ctx.store.get("k") is None


def test_many_client_writes_and_reads_of_a_replica_s_keys():
    replica = replica_of(peers=("b", "c", "d"))
    ring = replica.topology.ring.fingerprint()
    mine = [k for k in (f"key{i}" for i in range(200))
            if "a" in replica.topology.ring.get_nodes(k, 3)][:5]
    replica.ctx.store.put(Record(mine[1], b"newer", Version(TS + 50, "x"),
                                 key_position(mine[1])))
    body = {"items": [[k, b"v", TS + 10] for k in mine], "writer": "client-1", "ring": ring,
            "n": 3}
    reply = ask(replica, MsgType.DIRECT_WRITE_MANY, body).body
    assert reply == {"received": 4, "newer": [[1, TS + 50, "x"]]}
    read = ask(replica, MsgType.DIRECT_READ_MANY, {"keys": mine, "ring": ring, "n": 3}).body
    assert [r[1] for r in read["records"]] == [b"v", b"newer", b"v", b"v", b"v"]
    assert replica.ctx.stats["direct_writes"] == 5 and replica.ctx.stats["direct_reads"] == 5
    # one key that is not ours, or one bad item: the whole frame is a node's
    other = own_key(replica, mine=False)
    with pytest.raises(NotCoordinated):
        ask(replica, MsgType.DIRECT_READ_MANY, {"keys": [*mine, other], "ring": ring, "n": 3})
    with pytest.raises(InvalidRequest):
        ask(replica, MsgType.DIRECT_WRITE_MANY, {**body, "items": [[mine[0], None, TS]]})
