"""core/hints.py: writes kept for replicas that are down or silent, and delivered once
they are back (or, for members that left, to the keys' current replicas)."""

from __future__ import annotations

from coresim import five_nodes, get, holders, liveness_of, part_context, put

from zring.core.hints import Hints, within_bytes
from zring.core.topology import Topology
from zring.errors import StorageError
from zring.membership import MemberStatus
from zring.protocol import MsgType
from zring.storage.base import Hint, Record
from zring.versions import Version

NOW = 1000.0


def hints_of(node_id: str = "a", **overrides) -> Hints:
    ctx = part_context(node_id, peers=tuple(x for x in "abcde" if x != node_id), **overrides)
    return Hints(ctx, Topology(ctx, NOW), NOW)


def test_writes_for_a_down_replica_are_hinted_and_replayed(cluster):
    cluster.add("node4", seed=False)
    node4 = cluster.node("node4")
    assert cluster.run_until(lambda: node4.members.own.status == MemberStatus.NORMAL
                             and cluster.converged(), 30)
    cluster.run(3)
    node2 = cluster.node("node2")
    cluster.down.add(node2.config.address)
    assert cluster.run_until(lambda: liveness_of(cluster, "node1", "node2") == "down", 5)
    ring = cluster.node("node1").ring
    keys = [f"hinted{i}" for i in range(200) if "node2" in ring.get_nodes(f"hinted{i}", 3)]
    for key in keys:
        reply = put(cluster, "node1", key, b"while-down")
        assert reply.type == MsgType.OK and "node2" not in reply.body["stored_on"]
        assert get(cluster, "node3", key).body["value"] == b"while-down"  # reads skip node2
    held = sum(c.store.hint_counts().get("node2", 0) for c in cluster.cores.values())
    assert held == len(keys)
    assert node2.store.get(keys[0]) is None
    cluster.down.clear()
    assert cluster.run_until(lambda: all(
        node2.store.get(k) is not None and node2.store.get(k).value == b"while-down"
        for k in keys), 10)
    cluster.run(2)
    assert all(not c.store.hint_counts() for c in cluster.cores.values())
    assert sum(c.stats["hints_delivered"] for c in cluster.cores.values()) == len(keys)


def test_with_no_spare_node_the_coordinator_holds_the_hint(cluster):
    cluster.run(3)
    node3 = cluster.node("node3")
    cluster.down.add(node3.config.address)
    assert cluster.run_until(lambda: liveness_of(cluster, "node1", "node3") == "down", 5)
    reply = put(cluster, "node1", "k", b"v")
    assert reply.type == MsgType.OK and sorted(reply.body["stored_on"]) == ["node1", "node2"]
    assert cluster.node("node1").store.hint_counts() == {"node3": 1}
    cluster.down.clear()
    assert cluster.run_until(lambda: node3.store.get("k") is not None, 5)


def test_hints_for_a_removed_node_go_to_the_current_replicas(cluster):
    cluster.run(3)
    node3 = cluster.node("node3")
    cluster.down.add(node3.config.address)
    assert cluster.run_until(lambda: liveness_of(cluster, "node1", "node3") == "down", 5)
    assert put(cluster, "node1", "orphan", b"v").type == MsgType.OK
    reply = cluster.request("node2", MsgType.REMOVE_NODE, {"node_id": "node3",
                                                           "graceful": False})
    assert reply.type == MsgType.OK
    cluster.run(5)
    assert all(not c.store.hint_counts() for a, c in cluster.cores.items()
               if a != node3.config.address)
    assert holders(cluster, "orphan") == ["node1", "node2"]


def test_a_replica_that_misses_a_write_before_detection_gets_it_as_a_hint(cluster):
    cluster.run(3)
    node3 = cluster.node("node3")
    cluster.down.add(node3.config.address)  # dead, but not yet detected
    assert liveness_of(cluster, "node1", "node3") == "up"
    reply = put(cluster, "node1", "early", b"v")
    assert reply.type == MsgType.OK
    assert cluster.run_until(lambda: cluster.node("node1").store.hint_counts() == {"node3": 1},
                             3)
    cluster.down.clear()
    assert cluster.run_until(lambda: node3.store.get("early") is not None, 5)


def test_a_node_that_is_both_stand_in_and_pending_target_counts_once():
    sim = five_nodes()
    sim.down.add(sim.node("node3").config.address)
    assert sim.run_until(lambda: liveness_of(sim, "node1", "node3") == "down", 5)
    node1 = sim.node("node1")
    node1.members.set_status("node2", MemberStatus.LEAVING)  # pending targets appear
    node1.tick(sim.now)   # the node reacts to the member table once per entry point
    for i in range(100):
        reply = put(sim, "node1", f"dup{i}", b"v")
        stored_on = reply.body.get("stored_on", [])
        assert len(stored_on) == len(set(stored_on)), reply.body


def test_a_down_replica_gets_the_next_live_node_past_the_preference_list_as_stand_in():
    hints = hints_of()
    ring = hints.topology.ring
    position = 12345
    order = ring.get_nodes_at(position, 5)
    targets = order[:3]
    holders, local = hints.holders(position, 3, [targets[1]], targets, NOW)
    assert holders == {order[3]: targets[1]} and local == []
    holders, local = hints.holders(position, 3, targets[1:], targets, NOW)
    assert holders == {order[3]: targets[1], order[4]: targets[2]} and local == []
    assert hints.holders(position, 3, [], targets, NOW) == ({}, [])


def test_with_no_spare_the_hint_stays_here_and_a_target_never_stands_in():
    hints = hints_of()
    position = 12345
    order = hints.topology.ring.get_nodes_at(position, 5)
    targets = order[:4]           # during a change: four targets, one spare
    holders, local = hints.holders(position, 3, targets[2:], targets, NOW)
    assert set(holders) == {order[4]} and len(local) == 1
    assert not set(holders) & set(targets)


def test_a_replica_down_past_the_hint_window_gets_no_hint():
    hints = hints_of(hint_window_s=60.0)
    position = 12345
    targets = hints.topology.ring.get_nodes_at(position, 3)
    later = NOW + 61
    assert hints.holders(position, 3, [targets[1]], targets, later) == ({}, [])
    assert hints.ctx.stats["hints_skipped_window"] == 1


def test_a_hint_that_cannot_be_stored_is_counted_lost():
    hints = hints_of()
    record = Record("k", b"v", Version(1, "w"), 5)

    def full(hints):
        raise StorageError("disk full", reason="error")
    hints.keep([Hint(0, "b", record, 1)])
    assert hints.ctx.stats["hints_stored"] == 1
    assert hints.ctx.store.hint_counts() == {"b": 1}
    hints.ctx.store.add_hints = full
    hints.keep([Hint(0, "c", record, 1), Hint(0, "d", record, 1)])
    assert hints.ctx.stats["hints_lost"] == 2 and hints.ctx.store.hint_counts() == {"b": 1}


def test_a_member_back_up_has_its_hints_replayed_on_the_next_tick():
    hints = hints_of(hint_replay_interval_s=10.0)
    hints.tick(NOW)
    assert hints.next_deadline(NOW) == NOW + 10.0
    hints.replay_soon(NOW + 1)
    assert hints.next_deadline(NOW + 1) == NOW + 1
    hints.shift_timers(0.5)
    assert hints.next_deadline(NOW + 1) == NOW + 0.5


def test_within_bytes_keeps_a_prefix_under_the_budget_but_at_least_one():
    sizes = [4, 4, 4]
    assert within_bytes(sizes, 9, lambda x: x) == [4, 4]
    assert within_bytes([100], 9, lambda x: x) == [100]
    assert within_bytes([], 9, lambda x: x) == []
