"""core/topology.py: the current, previous and future rings, the replica sets a write needs
a quorum in, settling, and who is joining or leaving."""

from __future__ import annotations

import pytest
from coresim import (
    SMALL_STREAMS,
    cluster_of,
    holders,
    member,
    normal_everywhere,
    part_context,
    put,
)

from zring.core.topology import Topology
from zring.errors import MembershipConflict
from zring.hashing import key_position
from zring.membership import MemberStatus
from zring.protocol import MsgType

NOW = 1000.0
POSITIONS = [key_position(f"p{i}") for i in range(400)]


def topology_of(node_id: str = "a", peers=("b", "c", "d")) -> Topology:
    return Topology(part_context(node_id, peers=peers), NOW)


def change(topology: Topology, *records) -> object:
    """Records arrive by gossip; the node core then tells the topology (once)."""
    topology.ctx.members.merge(list(records), NOW)
    return topology.members_changed()


def switch_peers(topology: Topology, *node_ids: str, heartbeat: int = 2) -> None:
    """Peers gossip that they route by our ring now."""
    members = topology.ctx.members
    fingerprint = topology.ring.fingerprint()
    members.merge([member(x, members[x].status, generation=members[x].generation,
                          heartbeat=heartbeat, ring=fingerprint) for x in node_ids], NOW)


def test_the_ring_is_built_from_the_member_table_and_steady():
    topology = topology_of()
    assert topology.ring.nodes == ["a", "b", "c", "d"]
    assert topology.previous is None and topology.future() is None and topology.steady()
    assert topology.ctx.members.own.ring == topology.ring.fingerprint()
    assert all(topology.write_sets(p, 3) == [topology.ring.get_nodes_at(p, 3)]
               for p in POSITIONS[:50])


def test_a_joiner_is_in_the_future_ring_and_writes_need_a_quorum_there_too():
    topology = topology_of()
    assert change(topology, member("e", MemberStatus.JOINING)) is None  # ring unchanged
    future = topology.future()
    assert future is not None and "e" in future and "e" not in topology.ring
    assert not topology.steady()
    joint = [p for p in POSITIONS if "e" in future.get_nodes_at(p, 3)]
    apart = [p for p in POSITIONS if "e" not in future.get_nodes_at(p, 3)]
    assert joint and apart
    for p in joint:
        assert topology.write_sets(p, 3) == [topology.ring.get_nodes_at(p, 3),
                                             future.get_nodes_at(p, 3)]
    for p in apart:
        assert topology.write_sets(p, 3) == [topology.ring.get_nodes_at(p, 3)]


def test_a_leaver_is_out_of_the_future_ring():
    topology = topology_of()
    change(topology, member("d", MemberStatus.LEAVING, generation=2))
    future = topology.future()
    assert "d" in topology.ring and "d" not in future
    p = next(p for p in POSITIONS if "d" in topology.ring.get_nodes_at(p, 3))
    sets = topology.write_sets(p, 3)
    assert len(sets) == 2 and "d" in sets[0] and "d" not in sets[1]


def test_a_ring_change_keeps_the_previous_ring_until_every_peer_switched():
    topology = topology_of()
    old = topology.ring
    returned = change(topology, member("e", MemberStatus.NORMAL, streamed=True))
    assert returned is old and topology.previous is old and "e" in topology.ring
    assert topology.settled_at is None and not topology.steady()
    p = next(p for p in POSITIONS if "e" in topology.ring.get_nodes_at(p, 3))
    assert topology.write_sets(p, 3) == [topology.ring.get_nodes_at(p, 3),
                                         old.get_nodes_at(p, 3)]
    switch_peers(topology, "b", "c", "d")        # e still routes by the old ring
    topology.tick(NOW + 1)
    assert topology.previous is old and topology.settled_at is None
    with pytest.raises(MembershipConflict, match="still switching"):
        topology.check_settled(NOW + 1)
    switch_peers(topology, "e")
    topology.tick(NOW + 2)
    assert topology.previous is None and topology.settled_at == NOW + 2
    topology.check_settled(NOW + 2)
    assert topology.steady()


def test_a_member_that_left_is_in_no_write_set():
    topology = topology_of()
    old = topology.ring
    change(topology, member("d", MemberStatus.LEFT, generation=2, streamed=True))
    assert topology.previous is old and "d" not in topology.ring
    for p in [p for p in POSITIONS if "d" in old.get_nodes_at(p, 3)][:20]:
        sets = topology.write_sets(p, 3)
        assert all("d" not in s for s in sets)
        assert len(sets) == 2 and sets[1] == [x for x in old.get_nodes_at(p, 3) if x != "d"]


def test_replicas_that_agree_stick_only_with_a_quorum_in_every_ring():
    topology = topology_of()
    p = POSITIONS[0]
    assert topology.sticks(p, 3, [])                  # steady: R replicas are a quorum
    change(topology, member("e", MemberStatus.JOINING))
    future = topology.future()
    p = next(p for p in POSITIONS if "e" in future.get_nodes_at(p, 3))
    current, coming = topology.write_sets(p, 3)
    only_current = [x for x in current if x not in coming]
    stays = [x for x in current if x in coming]
    assert only_current and len(stays) == 2
    assert not topology.sticks(p, 3, [only_current[0], stays[0]])
    assert topology.sticks(p, 3, stays)
    assert topology.sticks(p, 3, [only_current[0], stays[0], "e"])


def test_changes_go_one_at_a_time_in_node_id_order():
    for node_id, expected in (("a", True), ("c", False)):
        topology = topology_of(node_id, peers=tuple(x for x in "abcd" if x != node_id))
        change(topology, member("b", MemberStatus.JOINING, generation=2))
        assert [m.node_id for m in topology.changing(NOW)] == ["b"]
        assert topology.change_under_way(NOW)
        assert topology.my_turn(NOW) is expected, node_id
        # b crashed and nobody removed it: declared down, it holds nobody up
        assert topology.my_turn(NOW + 3600) and not topology.change_under_way(NOW + 3600)


def test_a_second_change_is_refused_while_one_is_under_way():
    topology = topology_of()
    topology.check_no_change_in_progress("x", NOW)
    change(topology, member("b", MemberStatus.LEAVING, generation=2))
    topology.check_no_change_in_progress("b", NOW)   # asked again for the same node: fine
    with pytest.raises(MembershipConflict, match=r"\(b\)"):
        topology.check_no_change_in_progress("x", NOW)
    with pytest.raises(MembershipConflict, match="b joining or leaving"):
        topology.check_settled(NOW)


def test_members_changed_without_a_ring_change_forgets_the_cached_future():
    topology = topology_of()
    change(topology, member("e", MemberStatus.JOINING))
    assert "e" in topology.future()
    assert change(topology, member("e", MemberStatus.LEFT, generation=2)) is None
    assert topology.future() is None and topology.steady()


def test_writes_during_a_join_reach_the_joiner(cluster):
    cluster.add("node4", seed=False)
    node4 = cluster.node("node4")
    written = 0
    while node4.members.own.status != MemberStatus.NORMAL and written < 2000:
        assert put(cluster, "node2", f"live{written}", b"v").type == MsgType.OK
        written += 1
    assert cluster.run_until(lambda: cluster.converged(), 30)
    cluster.run(2)
    for i in range(written):
        assert holders(cluster, f"live{i}") == sorted(node4.ring.get_nodes(f"live{i}", 3))


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
