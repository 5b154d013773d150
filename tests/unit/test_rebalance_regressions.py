"""Regression tests from a review of "safe joins and leaves under load": each failed before
its fix and describes the sequence it exercises."""

from __future__ import annotations

from simnet import SimCluster
from test_rebalance_core import SMALL_STREAMS, cluster_of, put

from zring.hashing import key_position
from zring.membership import MemberStatus
from zring.protocol import MsgType
from zring.storage.base import Record
from zring.versions import Version


def addr(sim, node_id):
    return sim.node(node_id).config.address


def status_everywhere(sim, node_id, status):
    return all(c.members.get(node_id) is not None and c.members[node_id].status == status
               for a, c in sim.cores.items() if sim._alive(a))


# ------------------------------------------------------------------ two joins, stale rings


def test_two_joiners_that_finish_before_hearing_each_other_leave_a_quorum_write_on_one_node():
    """node4 and node5 join at once (README: "two nodes started at the same moment both
    join"). Each plans against ring R0 and streams each gained range from "the node it
    displaces" in R0 + itself. For a range whose R0 list is [A, B, C] and whose final list
    (R0 + node4 + node5) keeps only A, both joiners pick C as their source. Both complete
    before the other's NORMAL reaches them (equal work: they finish in the same instant; no
    message is delayed or dropped here), so neither restarts against the new ring, and B and
    C then drop the range. A write acknowledged by W=2 of [A, B] (C was down past the hint
    window) ends up on A alone; an R=2 read answered by the two joiners returns the older
    value."""
    sim = cluster_of(3, hint_window_s=0.01, **SMALL_STREAMS)
    keys = [f"k{i}" for i in range(300)]
    for key in keys:
        assert put(sim, "node1", key, b"old").type == MsgType.OK
    # node3 is down past the hint window: the new values reach node1 and node2 only (W=2)
    sim.down.add(addr(sim, "node3"))
    assert sim.run_until(lambda: not sim.node("node1").members.is_up("node3", sim.now)
                         and not sim.node("node2").members.is_up("node3", sim.now), 10)
    for key in keys:
        assert put(sim, "node1", key, b"new").type == MsgType.OK
    sim.down.discard(addr(sim, "node3"))
    assert sim.run_until(sim.converged, 10)
    sim.run(2)

    sim.add("node4", seed=False, **SMALL_STREAMS)
    sim.add("node5", seed=False, **SMALL_STREAMS)
    node4, node5 = sim.node("node4"), sim.node("node5")
    assert sim.run_until(lambda: node4.members.own.status == MemberStatus.NORMAL
                         and node5.members.own.status == MemberStatus.NORMAL, 30)
    assert sim.run_until(sim.converged, 20)
    sim.run(5)  # past the drop delay

    ring = sim.node("node1").ring
    under_replicated = []
    for key in keys:
        replicas = ring.get_nodes(key, 3)
        newest = [x for x in replicas
                  if (r := sim.node(x).store.get(key)) is not None and r.value == b"new"]
        if len(newest) < 2:
            under_replicated.append((key, replicas, newest))
    stale_reads = []
    for key, replicas, _ in under_replicated:
        if replicas[:2] in (["node4", "node5"], ["node5", "node4"]):
            reply = sim.request(replicas[0], MsgType.GET, {"key": key})
            if reply.type == MsgType.OK and reply.body["value"] == b"old":
                stale_reads.append(key)
    assert not under_replicated, (
        f"{len(under_replicated)} acknowledged writes left on fewer than W=2 of their new "
        f"replicas, e.g. {under_replicated[:3]}; stale R=2 reads: {stale_reads[:5]}")


# ------------------------------------------------------------------ rebalance


def test_a_rebalance_towards_an_owner_that_is_then_removed_never_ends_and_blocks_a_leave():
    """node1 holds a misplaced record; one of its owners (node4) is dead, so the rebalance
    push waits for its ack. The operator force-removes node4. The push routes by the ring
    captured when it started (``route_record`` closes over ``ring``) and is never cancelled
    or re-planned on a ring change, so it resends to the removed node forever: the
    rebalance never completes, every later REBALANCE_LOCAL is refused ("a rebalance is
    already running"), and node1 can never leave (``_advance_leave`` waits for it)."""
    sim = cluster_of(4)
    node1 = sim.node("node1")
    ring = node1.ring
    key = next(f"m{i}" for i in range(1000)
               if "node1" not in ring.get_nodes(f"m{i}", 3)
               and "node4" in ring.get_nodes(f"m{i}", 3))
    node1.store.put(Record(key, b"v", Version(1 << 20, "node2"), key_position(key)))
    sim.down.add(addr(sim, "node4"))
    sim.send("node1", MsgType.REBALANCE_LOCAL, {})
    sim.run(3)
    reply = sim.request("node2", MsgType.REMOVE_NODE, {"node_id": "node4", "graceful": False})
    assert reply.type == MsgType.OK
    assert sim.run_until(lambda: status_everywhere(sim, "node4", MemberStatus.LEFT), 10)
    assert sim.run_until(sim.converged, 10)
    reply = sim.request("node2", MsgType.REMOVE_NODE, {"node_id": "node1"})
    assert reply.type == MsgType.OK, reply.body
    assert sim.run_until(lambda: node1.members.own.status == MemberStatus.LEFT, 30), (
        f"node1 still {node1.members.own.status.name}: its {node1._push_kind} push to the "
        f"removed node4 is still running")


# ------------------------------------------------------------------ resume


def test_a_join_resumed_with_another_chunk_size_skips_records():
    """The join's saved progress names finished chunks by number; the numbering depends on
    ``stream_intervals_per_pull`` (and on the joiner's own weight), neither of which is part
    of the saved progress nor of the fingerprint it is checked against. A joiner restarted
    with that setting changed (an operator tuning a slow join) marks other intervals as
    done and never pulls them."""
    sim = cluster_of(3, **SMALL_STREAMS)
    keys = [f"k{i}" for i in range(600)]
    for key in keys:
        put(sim, "node1", key)
    sim.add("node4", seed=False, **SMALL_STREAMS)
    node4 = sim.node("node4")
    assert sim.run_until(lambda: node4.handoff.join is not None
                         and len(node4.handoff.join.progress()["done"]) >= 10, 30)
    node4.config.stream_intervals_per_pull = 2   # restarted with a changed setting
    restarted = sim.restart("node4")
    assert sim.run_until(lambda: status_everywhere(sim, "node4", MemberStatus.NORMAL)
                         and sim.converged(), 30)
    ring = sim.node("node1").ring
    owned = sorted(k for k in keys if "node4" in ring.get_nodes(k, 3))
    missing = sorted(set(owned) - set(restarted.store.keys()))
    assert not missing, f"node4 joined without {len(missing)} of its {len(owned)} records"


# ------------------------------------------------------------------ malformed peer input


def test_a_malformed_range_stats_reply_makes_the_joiner_unreadable_to_every_peer():
    """``_count_transfer`` copies a source's RANGE_STATS figures into ``_transfer_totals``
    unchecked; they go out in the joiner's own member record, which every peer validates
    strictly (``_transfer``: ints in [-1, 2**63)) and rejects - with the whole gossip
    message. One reply of ``{"records": 10.0}`` (an older or buggy peer) therefore stops
    every peer from hearing the joiner's heartbeats: they declare it down, mid-join."""
    sim = SimCluster(latency_s=0.01)  # a long join: well past the detector's patience
    for i in range(1, 4):
        sim.add(f"node{i}", **SMALL_STREAMS)
    assert sim.run_until(lambda: sim.converged() and len(sim.node("node1").ring) == 3, 10)
    records = [Record(f"k{i}", b"v", Version(1 << 20, "node1"), key_position(f"k{i}"))
               for i in range(20_000)]
    for core in sim.cores.values():
        core.store.put_many(records)
        def bad_stats(route, message, now):
            from zring.core.effects import Reply
            from zring.protocol import Message
            return [Reply(route, Message(MsgType.OK, message.request_id,
                                         {"records": 10.0, "bytes": 0}))]
        core.handlers[MsgType.RANGE_STATS] = bad_stats
    sim.add("node4", seed=False, **SMALL_STREAMS)
    node4 = sim.node("node4")
    assert sim.run_until(lambda: node4.handoff.join is not None, 20)
    sim.run(4)
    assert node4.handoff.join is not None  # still streaming
    assert node4.handoff.transfer()[2::2] == (-1, -1)  # the malformed counts were not taken
    node1 = sim.node("node1")
    assert node1.members.is_up("node4", sim.now) and node1.stats["bad_gossip"] == 0, (
        f"node1 rejected {node1.stats['bad_gossip']} gossip messages and sees node4 as "
        f"{node1.members.liveness('node4', sim.now).name}")
