"""core/admin.py: operators' requests: add, remove and force-remove members, and rebalance
and repair run on every node at once."""

from __future__ import annotations

from coresim import (
    SMALL_STREAMS,
    cluster_of,
    deliver,
    five_nodes,
    holders,
    liveness_of,
    put,
)

from zring.membership import MemberStatus
from zring.protocol import MsgType


def test_rebalance_moves_misplaced_keys_to_their_owners(cluster):
    core = cluster.node("node1")
    from zring.hashing import key_position
    from zring.storage.base import Record
    from zring.versions import Version
    # plant keys on node1 only, as if written with n=1 elsewhere
    for i in range(50):
        core.store.put(Record(f"m{i}", b"v", Version(1 << 20, "node1"), key_position(f"m{i}")))
    reply = cluster.request("node2", MsgType.REBALANCE, {}, max_seconds=30)
    assert reply.type == MsgType.OK
    for i in range(50):
        assert holders(cluster, f"m{i}") == ["node1", "node2", "node3"]


def test_a_force_removed_node_that_restarts_stays_out():
    from zring.core.node import NodeCore
    sim = five_nodes()
    node4 = sim.node("node4")
    sim.down.add(node4.config.address)
    assert sim.run_until(lambda: liveness_of(sim, "node1", "node4") == "down", 5)
    reply = sim.request("node1", MsgType.REMOVE_NODE, {"node_id": "node4", "graceful": False})
    assert reply.type == MsgType.OK
    sim.run(2)
    # node4 comes back from its own store, as after a restart by supervisord
    restarted = NodeCore(node4.config, node4.store, sim.now)
    sim.cores[node4.config.address] = restarted
    deliver(sim, node4.config.address, restarted.start(sim.now))
    sim.down.discard(node4.config.address)
    assert sim.run_until(lambda: restarted.members.own.status == MemberStatus.LEFT, 10)
    assert sim.node("node1").ring.nodes == ["node1", "node2", "node3", "node5"]
    refused = sim.request("node4", MsgType.PUT, {"key": "k", "value": b"v"})
    assert refused.type == MsgType.ERROR and refused.body["code"] == "not_member"


def test_a_second_change_is_refused_once_the_first_is_known():
    sim = cluster_of(4, **SMALL_STREAMS)
    for i in range(300):
        put(sim, "node1", f"k{i}")
    assert sim.request("node1", MsgType.REMOVE_NODE, {"node_id": "node2"}).type == MsgType.OK
    sim.run(0.01)
    reply = sim.request("node1", MsgType.REMOVE_NODE, {"node_id": "node3"})
    assert reply.type == MsgType.ERROR and reply.body["code"] == "conflict"
    assert "node2" in reply.body["message"]


def test_removing_or_force_removing_who_is_no_member_is_refused(cluster):
    for msg_type, body in ((MsgType.REMOVE_NODE, {"node_id": "ghost"}),
                           (MsgType.FORCE_REMOVE, {"node_id": "ghost"})):
        reply = cluster.request("node1", msg_type, body)
        assert reply.type == MsgType.ERROR and reply.body["code"] == "not_member"


def test_a_node_cannot_force_remove_itself(cluster):
    reply = cluster.request("node1", MsgType.FORCE_REMOVE, {"node_id": "node1"})
    assert reply.type == MsgType.ERROR and reply.body["code"] == "invalid"
    assert cluster.node("node1").members.own.status == MemberStatus.NORMAL


def test_adding_a_member_that_is_already_in_answers_its_status(cluster):
    reply = cluster.request("node1", MsgType.ADD_NODE, {"node_id": "node2",
                                                        "address": "tcp://sim:7002"})
    assert reply.type == MsgType.OK and reply.body == {"node_id": "node2", "status": "normal"}


def test_adding_a_node_that_does_not_answer_says_so(cluster):
    reply = cluster.request("node1", MsgType.ADD_NODE, {"node_id": "node9",
                                                        "address": "tcp://sim:7009"})
    assert reply.type == MsgType.ERROR and reply.body["code"] == "unavailable"
    assert "node9" not in cluster.node("node1").members


def test_a_fan_out_names_the_nodes_it_did_not_complete_on():
    sim = cluster_of(3, repair_timeout_s=1.0)
    sim.down.add(sim.node("node3").config.address)    # asked, never answers
    reply = sim.request("node1", MsgType.REPAIR, {}, max_seconds=10)
    assert reply.type == MsgType.ERROR and reply.body["code"] == "unavailable"
    assert "node3" in reply.body["message"]


def test_a_fan_out_sums_every_nodes_counts(cluster):
    for i in range(20):
        put(cluster, "node1", f"k{i}")
    cluster.run(1)
    reply = cluster.request("node1", MsgType.REPAIR, {}, max_seconds=60)
    assert reply.type == MsgType.OK and reply.body["sessions"] == 3
    assert reply.body["records_hashed"] == 3 * 20   # each pair once, by its initiator
