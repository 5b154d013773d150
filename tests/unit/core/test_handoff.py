"""core/handoff.py: moving ranges when membership changes: a joiner pulls from the nodes it
displaces, a leaver pushes to who gains, takeovers after a forced removal, ``rebalance``
pushes what a node no longer replicates; progress saved and resumed."""

from __future__ import annotations

from coresim import (
    SMALL_STREAMS,
    cluster_of,
    count_streamed,
    holders,
    normal_everywhere,
    put,
    status_everywhere,
    watch_effects,
)
from simnet import SimCluster

from zring.hashing import key_position
from zring.membership import MemberStatus
from zring.protocol import MsgType, encode
from zring.storage.base import Record
from zring.versions import Version


def addr(sim, node_id):
    return sim.node(node_id).config.address


def test_join_streams_only_moved_ranges_and_old_replicas_drop_them(cluster):
    for i in range(300):
        assert put(cluster, "node1", f"key{i}", b"v").type == MsgType.OK
    cluster.run(1)
    before = {c.config.node_id: c.store.count() for c in cluster.cores.values()}
    assert before == {"node1": 300, "node2": 300, "node3": 300}
    cluster.add("node4", seed=False)
    node4 = cluster.node("node4")
    assert cluster.run_until(lambda: node4.members.own.status == MemberStatus.NORMAL
                             and cluster.converged(), 30)
    cluster.run(2)
    counts = {c.config.node_id: c.store.count() for c in cluster.cores.values()}
    assert sum(counts.values()) == 900  # N=3 copies of each key, none lost, none extra
    ring = node4.ring
    for i in range(300):
        assert holders(cluster, f"key{i}") == sorted(ring.get_nodes(f"key{i}", 3))
    for core in cluster.cores.values():
        assert core.ring.nodes == ["node1", "node2", "node3", "node4"]


def test_graceful_leave_hands_data_over(cluster):
    cluster.add("node4", seed=False)
    assert cluster.run_until(lambda: cluster.node("node4").members.own.status ==
                             MemberStatus.NORMAL and cluster.converged(), 30)
    for i in range(200):
        put(cluster, "node1", f"key{i}", b"v")
    reply = cluster.request("node1", MsgType.REMOVE_NODE, {"node_id": "node2"})
    assert reply.type == MsgType.OK
    node2 = cluster.node("node2")
    assert cluster.run_until(lambda: node2.members.own.status == MemberStatus.LEFT, 30)
    cluster.run(5)
    ring = cluster.node("node1").ring
    assert ring.nodes == ["node1", "node3", "node4"]
    for i in range(200):
        assert holders(cluster, f"key{i}") == sorted(ring.get_nodes(f"key{i}", 3))


def test_forced_removal_rebuilds_replicas_from_survivors(cluster):
    cluster.add("node4", seed=False)
    assert cluster.run_until(lambda: cluster.node("node4").members.own.status ==
                             MemberStatus.NORMAL and cluster.converged(), 30)
    for i in range(200):
        put(cluster, "node1", f"key{i}", b"v")
    cluster.run(1)
    dead = cluster.node("node3")
    cluster.down.add(dead.config.address)
    reply = cluster.request("node1", MsgType.REMOVE_NODE, {"node_id": "node3", "graceful": False})
    assert reply.type == MsgType.OK
    cluster.run(10)
    ring = cluster.node("node1").ring
    assert ring.nodes == ["node1", "node2", "node4"]
    for i in range(200):
        assert [n for n in holders(cluster, f"key{i}") if n != "node3"] == \
            sorted(ring.get_nodes(f"key{i}", 3))


def test_streams_split_large_values_into_byte_bounded_messages():
    sim = SimCluster()
    for i in range(1, 4):
        sim.add(f"node{i}", stream_batch_bytes=2_000_000)
    assert sim.run_until(lambda: sim.converged() and len(sim.node("node1").ring) == 3, 10)
    big = b"x" * 700_000
    for i in range(12):
        assert put(sim, "node1", f"big{i}", big).type == MsgType.OK
    sim.run(1)
    sizes = []

    def recording(address, effects):
        for effect in effects:
            message = getattr(effect, "message", None)
            if message is not None:
                sizes.append(len(encode(message)))
        return effects
    watch_effects(sim, recording)
    sim.add("node4", seed=False, stream_batch_bytes=2_000_000)
    node4 = sim.node("node4")
    assert sim.run_until(lambda: node4.members.own.status == MemberStatus.NORMAL
                         and sim.converged(), 30)
    assert sim.request("node1", MsgType.REMOVE_NODE, {"node_id": "node2"}).type == MsgType.OK
    assert sim.run_until(lambda: sim.node("node2").members.own.status == MemberStatus.LEFT, 30)
    sim.run(5)
    ring = sim.node("node1").ring
    for i in range(12):
        assert holders(sim, f"big{i}") == sorted(ring.get_nodes(f"big{i}", 3))
    assert max(sizes) < 2_000_000 + 800_000  # one value past the budget at most


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
        f"node1 still {node1.members.own.status.name}: its rebalance push to the "
        f"removed node4 is still running")


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


def test_a_node_with_nothing_to_move_reports_no_transfer(cluster):
    core = cluster.node("node1")
    assert core.handoff.transfer() == () and core.handoff.join is None
    rows = cluster.request("node2", MsgType.CLUSTER_STATUS, {}).body["members"]
    assert all(r["transfer"] == [] for r in rows)


def test_the_last_node_of_a_cluster_cannot_leave():
    sim = cluster_of(1)
    reply = sim.request("node1", MsgType.REMOVE_NODE, {"node_id": "node1"})
    assert reply.type == MsgType.ERROR and reply.body["code"] == "invalid"
    assert sim.node("node1").members.own.status == MemberStatus.NORMAL


def test_a_rebalance_is_refused_while_the_ring_is_changing():
    sim = cluster_of(3)
    sim.node("node1").members.set_status("node3", MemberStatus.LEAVING)
    reply = sim.request("node1", MsgType.REBALANCE_LOCAL, {})
    assert reply.type == MsgType.ERROR and reply.body["code"] == "conflict"


def test_a_rebalance_of_a_node_holding_only_its_own_ranges_moves_nothing(cluster):
    for i in range(30):
        put(cluster, "node1", f"k{i}")
    cluster.run(1)
    reply = cluster.request("node1", MsgType.REBALANCE_LOCAL, {})
    assert reply.type == MsgType.OK and reply.body == {"sent": 0, "dropped": 0}
    assert cluster.node("node1").store.count() == 30
