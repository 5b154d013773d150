"""Joins and leaves in the simulated network: where ranges stream from, joint write quorums
while members disagree on the ring, drops only once everyone switched, resumable transfers,
plans, and two changes at once."""

from __future__ import annotations

import pytest
from simnet import CLIENT, SimCluster

from zring.core.node import NodeCore
from zring.core.quorum import Quorum, write_quorum_state
from zring.membership import MemberStatus
from zring.protocol import MsgType

SMALL_STREAMS = dict(stream_batch_records=20, stream_intervals_per_pull=4,
                     stream_pulls_in_flight=1)


def cluster_of(count: int = 3, **overrides) -> SimCluster:
    sim = SimCluster()
    for i in range(1, count + 1):
        sim.add(f"node{i}", **overrides)
    assert sim.run_until(lambda: sim.converged() and len(sim.node("node1").ring) == count, 10)
    return sim


def put(sim, node, key, value=b"v", **extra):
    return sim.request(node, MsgType.PUT, {"key": key, "value": value, **extra})


def holders(sim, key):
    return sorted(c.config.node_id for c in sim.cores.values()
                  if c.store.get(key) is not None)


def count_streamed(core: NodeCore) -> list[int]:
    """Wrap the store's streaming entry point: how many records arrived by range streams."""
    received = [0]
    original = core.store.put_wire

    def counting(items):
        received[0] += len(items)
        return original(items)
    core.store.put_wire = counting
    return received


def normal_everywhere(sim, node_id):
    return all(c.members.get(node_id) is not None
               and c.members[node_id].status == MemberStatus.NORMAL
               for a, c in sim.cores.items() if sim._alive(a))


# ------------------------------------------------------------------ write quorums


def quorum(sets, acks=(), failed=(), counted=None, hinted_for=None):
    counted = counted or sorted({x for s in sets for x in s})
    return Quorum((CLIENT,), 1, MsgType.PUT, "k", 2, list(counted), sets=sets,
                   acks=list(acks), failed=list(failed), hinted_for=hinted_for or {})


def test_a_write_during_a_change_needs_a_quorum_in_both_rings():
    sets = [["a", "b", "c"], ["d", "b", "c"]]   # d joins, displacing a
    assert write_quorum_state(quorum(sets, acks=["a", "d"])) == (False, True)
    assert write_quorum_state(quorum(sets, acks=["a", "b"])) == (False, True)
    assert write_quorum_state(quorum(sets, acks=["a", "b", "d"]))[0]
    assert write_quorum_state(quorum(sets, acks=["b", "c"]))[0]
    # b and c failed: the new ring can no longer reach two
    assert write_quorum_state(quorum(sets, acks=["a", "d"], failed=["b", "c"])) \
        == (False, False)
    # a stand-in's ack counts for the replica it covers, in every set holding it
    assert write_quorum_state(quorum(
        sets, acks=["x", "c"], counted=["a", "x", "c", "d"], hinted_for={"x": "b"}))[0]


def test_writes_while_a_node_joins_reach_the_joiner_and_a_quorum_of_both_rings():
    sim = cluster_of(4, **SMALL_STREAMS)
    for i in range(100):
        put(sim, "node1", f"pre{i}")
    sim.add("node5", seed=False, **SMALL_STREAMS)
    assert sim.run_until(lambda: sim.node("node5").members.own.status ==
                         MemberStatus.JOINING and sim.node("node5").handoff.join is not None, 10)
    node5 = sim.node("node5")
    future = node5.topology.future() or node5.ring.copy()
    if "node5" not in future:
        future.add_node("node5")
    during = [f"during{i}" for i in range(60)]
    for key in during:
        reply = put(sim, "node2", key)
        assert reply.type == MsgType.OK
        if "node5" in future.get_nodes(key, 3):
            assert sim.node("node5").store.get(key) is not None, key  # pending write
    assert sim.run_until(lambda: normal_everywhere(sim, "node5") and sim.converged(), 30)
    sim.run(3)  # past the drop delay
    ring = sim.node("node1").ring
    for key in [f"pre{i}" for i in range(100)] + during:
        assert holders(sim, key) == sorted(ring.get_nodes(key, 3)), key


# ------------------------------------------------------------------ sources and drops


def test_a_join_streams_each_range_once_from_the_node_it_displaces():
    sim = cluster_of(3, **SMALL_STREAMS)
    for i in range(300):
        put(sim, "node1", f"k{i}")
    sim.add("node4", seed=False, **SMALL_STREAMS)
    node4 = sim.node("node4")
    streamed = count_streamed(node4)
    assert sim.run_until(lambda: normal_everywhere(sim, "node4") and sim.converged(), 30)
    ring = sim.node("node1").ring
    owned = [f"k{i}" for i in range(300) if "node4" in ring.get_nodes(f"k{i}", 3)]
    assert sorted(node4.store.keys()) == sorted(owned)
    assert streamed[0] == len(owned)  # once each: not once per old replica


def test_old_replicas_drop_what_they_gave_away_only_after_every_member_switched():
    sim = cluster_of(3, **SMALL_STREAMS)
    for i in range(300):
        put(sim, "node1", f"k{i}")
    node3 = sim.node("node3")
    sim.add("node4", seed=False, **SMALL_STREAMS)
    # node3 hears nothing for a while: it still routes by the old ring
    assert sim.run_until(lambda: sim.node("node4").members.own.status == MemberStatus.NORMAL,
                         30)
    sim.down.add(node3.config.address)
    sim.run(1.5)
    node1 = sim.node("node1")
    ring = node1.ring
    lost = [f"k{i}" for i in range(300) if "node1" not in ring.get_nodes(f"k{i}", 3)]
    assert lost and node1.topology.previous is not None
    assert all(node1.store.get(k) is not None for k in lost)  # node3 may still read them here
    sim.down.discard(node3.config.address)
    assert sim.run_until(lambda: node1.topology.previous is None, 10)
    assert sim.run_until(lambda: all(node1.store.get(k) is None for k in lost), 10)


def test_a_drop_keeps_what_a_later_change_gives_back():
    sim = cluster_of(3, **SMALL_STREAMS)
    for i in range(300):
        put(sim, "node1", f"k{i}")
    sim.add("node4", seed=False, **SMALL_STREAMS)
    assert sim.run_until(lambda: normal_everywhere(sim, "node4"), 30)
    # node4 leaves again before node1 dropped what it gave node4
    reply = sim.request("node2", MsgType.REMOVE_NODE, {"node_id": "node4"})
    assert reply.type == MsgType.OK
    assert sim.run_until(lambda: sim.node("node4").members.own.status == MemberStatus.LEFT, 30)
    sim.run(5)
    for i in range(300):
        assert holders(sim, f"k{i}") == ["node1", "node2", "node3"], f"k{i}"


# ------------------------------------------------------------------ progress and resume


def test_a_join_reports_its_transfer_and_resumes_after_a_crash():
    sim = cluster_of(3, **SMALL_STREAMS)
    for i in range(600):
        put(sim, "node1", f"k{i}")
    sim.add("node4", seed=False, **SMALL_STREAMS)
    node4 = sim.node("node4")
    first = count_streamed(node4)
    assert sim.run_until(lambda: node4.handoff.join is not None
                         and node4.handoff.join.records_received >= 150, 30)
    status = sim.request("node4", MsgType.CLUSTER_STATUS, {})
    row = next(r for r in status.body["members"] if r["node_id"] == "node4")
    kind, keys_done, keys_total, bytes_done, _ = row["transfer"]
    assert kind == "join" and keys_done >= 150 and bytes_done > 0
    assert keys_total == -1 or keys_total > keys_done
    done_before_crash = node4.handoff.join.records_received
    restarted = sim.restart("node4")
    second = count_streamed(restarted)
    assert sim.run_until(lambda: normal_everywhere(sim, "node4") and sim.converged(), 30)
    ring = sim.node("node1").ring
    owned = sum(1 for i in range(600) if "node4" in ring.get_nodes(f"k{i}", 3))
    assert sorted(restarted.store.keys()) == sorted(
        f"k{i}" for i in range(600) if "node4" in ring.get_nodes(f"k{i}", 3))
    # resumed: what arrived before the crash is not streamed again (a page in flight may be)
    assert second[0] <= owned - done_before_crash + 2 * SMALL_STREAMS["stream_batch_records"]
    before_crash = first[0] - second[0]  # one store: the first counter saw both runs
    assert before_crash >= done_before_crash
    assert before_crash + second[0] <= owned + 2 * SMALL_STREAMS["stream_batch_records"]


def test_plan_predicts_the_join_exactly_and_moves_nothing():
    sim = cluster_of(3)
    for i in range(400):
        put(sim, "node1", f"k{i}")
    before = {c.config.node_id: c.store.count() for c in sim.cores.values()}
    plan = sim.request("node2", MsgType.PLAN, {"action": "add", "node_id": "node4"}).body
    assert {c.config.node_id: c.store.count() for c in sim.cores.values()} == before
    rows = {r["node_id"]: r for r in plan["nodes"]}
    assert rows["node1"]["records_before"] == 400
    sim.add("node4", seed=False)
    assert sim.run_until(lambda: normal_everywhere(sim, "node4") and sim.converged(), 30)
    sim.run(3)
    after = {c.config.node_id: c.store.count() for c in sim.cores.values()}
    assert after == {x: r["records_after"] for x, r in rows.items()}
    assert plan["moved_records"] == after["node4"]
    assert plan["balance_after"] == pytest.approx(max(after.values()) / (1200 / 4), abs=1e-3)


def test_plan_of_a_removal_and_bad_plans():
    sim = cluster_of(4)
    for i in range(400):
        put(sim, "node1", f"k{i}")
    plan = sim.request("node1", MsgType.PLAN, {"action": "remove", "node_id": "node2"}).body
    rows = {r["node_id"]: r for r in plan["nodes"]}
    assert rows["node2"]["records_after"] == 0
    assert rows["node2"]["send_records"] == rows["node2"]["records_before"]
    assert plan["moved_records"] == rows["node2"]["records_before"] == plan["optimal_records"]
    assert sum(r["records_after"] for r in rows.values()) == 1200
    for body, code in [({"action": "add", "node_id": "node1"}, "invalid"),
                       ({"action": "remove", "node_id": "nodeX"}, "not_member"),
                       ({"action": "move", "node_id": "node1"}, "invalid")]:
        reply = sim.request("node1", MsgType.PLAN, body)
        assert reply.type == MsgType.ERROR and reply.body["code"] == code, body


# ------------------------------------------------------------------ concurrent changes


def test_two_joins_at_once_both_complete_on_one_ring():
    sim = cluster_of(3, **SMALL_STREAMS)
    for i in range(300):
        put(sim, "node1", f"k{i}")
    sim.add("node4", seed=False, **SMALL_STREAMS)
    sim.add("node5", seed=False, **SMALL_STREAMS)
    assert sim.run_until(lambda: normal_everywhere(sim, "node4")
                         and normal_everywhere(sim, "node5") and sim.converged(), 60)
    sim.run(5)
    ring = sim.node("node1").ring
    assert ring.nodes == ["node1", "node2", "node3", "node4", "node5"]
    for i in range(300):
        assert holders(sim, f"k{i}") == sorted(ring.get_nodes(f"k{i}", 3)), f"k{i}"


def test_a_join_while_another_node_leaves_completes_both():
    sim = cluster_of(4, **SMALL_STREAMS)
    for i in range(300):
        put(sim, "node1", f"k{i}")
    assert sim.request("node1", MsgType.REMOVE_NODE, {"node_id": "node2"}).type == MsgType.OK
    sim.add("node5", seed=False, **SMALL_STREAMS)
    assert sim.run_until(lambda: normal_everywhere(sim, "node5") and sim.node("node2")
                         .members.own.status == MemberStatus.LEFT, 60)
    assert sim.run_until(sim.converged, 10)
    sim.run(5)
    ring = sim.node("node1").ring
    assert ring.nodes == ["node1", "node3", "node4", "node5"]
    for i in range(300):
        assert [n for n in holders(sim, f"k{i}") if n != "node2"] == \
            sorted(ring.get_nodes(f"k{i}", 3)), f"k{i}"


def test_a_second_change_is_refused_once_the_first_is_known():
    sim = cluster_of(4, **SMALL_STREAMS)
    for i in range(300):
        put(sim, "node1", f"k{i}")
    assert sim.request("node1", MsgType.REMOVE_NODE, {"node_id": "node2"}).type == MsgType.OK
    sim.run(0.01)
    reply = sim.request("node1", MsgType.REMOVE_NODE, {"node_id": "node3"})
    assert reply.type == MsgType.ERROR and reply.body["code"] == "conflict"
    assert "node2" in reply.body["message"]


# ------------------------------------------------------------------ rebalance


def test_rebalance_keeps_a_misplaced_record_while_an_owner_cannot_confirm():
    from zring.hashing import key_position
    from zring.storage.base import Record
    from zring.versions import Version
    sim = cluster_of(4)
    node1 = sim.node("node1")
    ring = node1.ring
    key = next(f"m{i}" for i in range(1000) if "node1" not in ring.get_nodes(f"m{i}", 3))
    node1.store.put(Record(key, b"v", Version(1 << 20, "node1"), key_position(key)))
    owner = sim.node(ring.get_nodes(key, 3)[0])
    sim.down.add(owner.config.address)
    request_id = sim.send("node1", MsgType.REBALANCE_LOCAL, {})
    sim.run(3)
    assert node1.store.get(key) is not None  # one owner never confirmed: still here
    assert request_id not in sim.client_replies
    sim.down.discard(owner.config.address)
    assert sim.run_until(lambda: request_id in sim.client_replies, 10)
    assert sim.client_replies[request_id].body["dropped"] == 1
    assert node1.store.get(key) is None
    assert holders(sim, key) == sorted(ring.get_nodes(key, 3))


def test_ranges_of_a_displaced_node_that_is_down_come_from_the_other_replicas():
    sim = cluster_of(4, **SMALL_STREAMS)
    for i in range(300):
        put(sim, "node1", f"k{i}")
    sim.add("node5", seed=False, **SMALL_STREAMS)
    node5 = sim.node("node5")
    assert sim.run_until(lambda: node5.handoff.join is not None, 10)
    sources = node5.handoff.join.pending_sources()
    dead = sim.node(sources[0])
    sim.down.add(dead.config.address)
    streamed = count_streamed(node5)
    assert sim.run_until(lambda: node5.members.own.status == MemberStatus.NORMAL, 60)
    ring = node5.ring
    owned = [f"k{i}" for i in range(300) if "node5" in ring.get_nodes(f"k{i}", 3)]
    assert sorted(node5.store.keys()) == sorted(owned)
    assert streamed[0] > 0


def test_a_write_to_every_replica_succeeds_right_after_a_leave():
    # until the ring settles, the previous ring still lists the node that left; it refuses
    # writes, and holds nothing any more: it must not count against w=N
    sim = cluster_of(4)
    for i in range(50):
        put(sim, "node1", f"k{i}")
    assert sim.request("node1", MsgType.REMOVE_NODE, {"node_id": "node2"}).type == MsgType.OK
    node1 = sim.node("node1")
    assert sim.run_until(lambda: node1.members["node2"].status == MemberStatus.LEFT, 30)
    assert node1.topology.previous is not None and "node2" in node1.topology.previous
    for i in range(50):
        reply = put(sim, "node1", f"k{i}", b"after", w=3)
        assert reply.type == MsgType.OK, reply.body
