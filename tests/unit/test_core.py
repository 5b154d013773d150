"""The node core's coordination logic on an in-memory network (no sockets)."""

from __future__ import annotations

import pytest
from simnet import CLIENT, SimCluster

from zring.membership import MemberStatus
from zring.protocol import Message, MsgType, encode


@pytest.fixture
def cluster():
    sim = SimCluster()
    for i in range(1, 4):
        sim.add(f"node{i}")
    assert sim.run_until(lambda: sim.converged() and len(sim.node("node1").ring) == 3, 10)
    return sim


def put(sim, node, key, value, **extra):
    return sim.request(node, MsgType.PUT, {"key": key, "value": value, **extra})


def get(sim, node, key, **extra):
    return sim.request(node, MsgType.GET, {"key": key, **extra})


def holders(sim, key):
    return sorted(c.config.node_id for c in sim.cores.values()
                  if (r := c.store.get(key)) is not None and not r.is_tombstone)


def test_seeds_converge_on_one_ring(cluster):
    for core in cluster.cores.values():
        assert core.ring.nodes == ["node1", "node2", "node3"]
        assert all(m.status == MemberStatus.NORMAL for m in core.members.all())


def test_put_then_get_through_any_node(cluster):
    reply = put(cluster, "node1", "k", b"v")
    assert reply.type == MsgType.OK
    assert len(reply.body["stored_on"]) >= 2 and len(reply.body["replicated_to"]) == 3
    cluster.run(1)
    assert holders(cluster, "k") == ["node1", "node2", "node3"]
    for node in ("node1", "node2", "node3"):
        reply = get(cluster, node, "k")
        assert reply.body["found"] and reply.body["value"] == b"v"


def test_values_keep_their_type(cluster):
    put(cluster, "node1", "text", "héllo")
    put(cluster, "node1", "blob", b"\x00\xff")
    assert get(cluster, "node2", "text").body["value"] == "héllo"
    assert get(cluster, "node2", "blob").body["value"] == b"\x00\xff"


def test_last_writer_wins_and_delete_tombstones(cluster):
    put(cluster, "node1", "k", b"one")
    put(cluster, "node2", "k", b"two")
    assert get(cluster, "node3", "k").body["value"] == b"two"
    reply = cluster.request("node3", MsgType.DELETE, {"key": "k"})
    assert reply.type == MsgType.OK
    assert get(cluster, "node1", "k").body["found"] is False
    cluster.run(1)
    assert all(c.store.get("k").is_tombstone for c in cluster.cores.values())


def test_replication_factor_one_stores_on_one_node(cluster):
    reply = put(cluster, "node1", "solo", b"v", n=1, w=1)
    assert reply.type == MsgType.OK and len(reply.body["replicated_to"]) == 1
    cluster.run(1)
    assert holders(cluster, "solo") == reply.body["replicated_to"]


def test_write_fails_clearly_without_quorum(cluster):
    cluster.down.update(a for a, c in cluster.cores.items() if c.config.node_id != "node1")
    reply = put(cluster, "node1", "k", b"v")
    assert reply.type == MsgType.ERROR and reply.body["code"] == "unavailable"
    reply = get(cluster, "node1", "k")
    assert reply.type == MsgType.ERROR and reply.body["code"] == "unavailable"


def test_read_survives_one_dead_replica_and_repairs_stale_ones(cluster):
    put(cluster, "node1", "k", b"v1")
    cluster.run(1)
    node3 = cluster.node("node3")
    cluster.down.add(node3.config.address)
    put(cluster, "node1", "k", b"v2")
    assert get(cluster, "node2", "k").body["value"] == b"v2"
    cluster.down.clear()
    assert node3.store.get("k").value == b"v1"
    reply = get(cluster, "node3", "k", r=3)
    assert reply.body["value"] == b"v2"
    cluster.run(1)
    assert node3.store.get("k").value == b"v2"  # read repair


@pytest.mark.parametrize("body, code", [
    ({"key": "k", "value": b"v", "w": 4}, "invalid"),
    ({"key": "k", "value": 5}, "protocol"),
    ({"key": "x" * 5000, "value": b"v"}, "invalid"),
    ({"key": "k", "value": b"v" * (4 * 1024 * 1024 + 1)}, "invalid"),
    ({"value": b"v"}, "protocol"),
])
def test_bad_requests_get_clear_errors(cluster, body, code):
    reply = cluster.request("node1", MsgType.PUT, body)
    assert reply.type == MsgType.ERROR and reply.body["code"] == code
    assert put(cluster, "node1", "after", b"ok").type == MsgType.OK


@pytest.mark.parametrize("frame", [b"", b"\xc1", b"\x93\x01", encode(Message(MsgType.OK, 1, {})),
                                   b"\x93\xcd\x03\xe7\x01\x80"])
def test_malformed_frames_get_an_error_and_the_node_keeps_serving(cluster, frame):
    core = cluster.node("node1")
    effects = core.handle_frame((CLIENT,), frame, cluster.now)
    assert len(effects) == 1 and effects[0].message.type == MsgType.ERROR
    assert put(cluster, "node1", "after", b"ok").type == MsgType.OK


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


def test_cluster_status_and_local_keys(cluster):
    put(cluster, "node1", "a", b"1")
    cluster.run(16)  # key counts refresh every 15 s
    reply = cluster.request("node2", MsgType.CLUSTER_STATUS, {})
    rows = {row["node_id"]: row for row in reply.body["members"]}
    assert set(rows) == {"node1", "node2", "node3"}
    assert all(r["status"] == "normal" and r["liveness"] == "up" for r in rows.values())
    assert rows["node2"]["keys_count"] == 1
    assert cluster.request("node3", MsgType.LOCAL_KEYS, {}).body["keys"] == ["a"]


# ------------------------------------------------------------------ failures


def liveness_of(sim, observer, node_id):
    core = sim.node(observer)
    return core.members.liveness(node_id, sim.now).value


def test_a_silent_node_is_suspected_then_declared_down_and_comes_back(cluster):
    node3 = cluster.node("node3")
    cluster.run(5)  # a few seconds of heartbeats to learn the rhythm
    cluster.down.add(node3.config.address)
    went_down_at = cluster.now
    assert cluster.run_until(lambda: liveness_of(cluster, "node1", "node3") == "suspect", 5)
    assert cluster.run_until(lambda: liveness_of(cluster, "node1", "node3") == "down", 5)
    assert cluster.now - went_down_at <= 2.6
    assert liveness_of(cluster, "node2", "node3") == "down"
    cluster.down.clear()
    assert cluster.run_until(lambda: liveness_of(cluster, "node1", "node3") == "up", 2)
    # liveness never changed ownership
    assert cluster.node("node1").ring.nodes == ["node1", "node2", "node3"]


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


def test_reads_fail_fast_when_too_few_replicas_are_up(cluster):
    cluster.run(3)
    cluster.down.update(c.config.address for c in cluster.cores.values()
                        if c.config.node_id in ("node2", "node3"))
    assert cluster.run_until(lambda: liveness_of(cluster, "node1", "node3") == "down", 5)
    started = cluster.now
    reply = get(cluster, "node1", "k")
    assert reply.type == MsgType.ERROR and reply.body["code"] == "unavailable"
    assert "down" in reply.body["message"] and cluster.now - started < 0.1


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


def test_a_node_refuses_new_requests_past_its_pending_limit(cluster):
    core = cluster.node("node1")
    core.config.max_pending_requests = 2
    cluster.down.update(a for a, c in cluster.cores.items() if c is not core)
    frames = [encode(Message(MsgType.PUT, i, {"key": f"k{i}", "value": b"v"}))
              for i in range(1, 4)]
    replies = [e for f in frames for e in core.handle_frame((CLIENT,), f, cluster.now)
               if e.__class__.__name__ == "Reply"]
    assert [r.message.body["code"] for r in replies] == ["unavailable"]
    assert "retry later" in replies[0].message.body["message"]


# ------------------------------------------------------------------ anti-entropy


def store_state(core):
    return {key: core.store.get(key) for key in core.store.keys(include_tombstones=True)}


def test_repair_exchanges_only_what_differs_and_replicas_converge(cluster):
    from zring.storage.base import Record
    from zring.versions import Version
    for i in range(300):
        put(cluster, "node1", f"key{i}", f"v{i}".encode())
    cluster.run(1)
    node1, node2, node3 = (cluster.node(n) for n in ("node1", "node2", "node3"))
    node3.store.delete_keys([f"key{i}" for i in range(0, 300, 10)])           # missing
    for i in range(1, 300, 30):                                                # newer on one
        rec = node2.store.get(f"key{i}")
        node2.store.put(Record(rec.key, b"newer", Version(rec.version.timestamp + 1, "x"),
                               rec.position))
    reply = cluster.request("node1", MsgType.REPAIR, {}, max_seconds=60)
    assert reply.type == MsgType.OK, reply.body
    assert 0 < reply.body["segments_differing"] <= 3 * 40  # 40 keys differ, 3 pairs
    # only the differing keys move (at most once per pair), not whole segments
    assert reply.body["records_pulled"] + reply.body["records_pushed"] <= 3 * 40
    assert store_state(node1) == store_state(node2) == store_state(node3)
    assert node3.store.get("key10").value == b"v10" and node1.store.get("key1").value == b"newer"


def test_repair_of_identical_replicas_moves_no_records(cluster):
    for i in range(100):
        put(cluster, "node1", f"same{i}", b"v")
    cluster.run(1)
    reply = cluster.request("node2", MsgType.REPAIR, {}, max_seconds=60)
    assert reply.body["segments_differing"] == 0 and reply.body["records_pulled"] == 0
    assert reply.body["sessions"] == 3  # every pair once


def test_a_wiped_replica_gets_every_key_back(cluster):
    for i in range(200):
        put(cluster, "node1", f"wiped{i}", b"v")
    cluster.run(1)
    node2 = cluster.node("node2")
    node2.store.delete_range(0, (1 << 64) - 1)
    assert cluster.request("node3", MsgType.REPAIR, {}, max_seconds=60).type == MsgType.OK
    assert node2.store.count() == 200


def test_background_repair_runs_at_its_pace():
    sim = SimCluster()
    for i in range(1, 4):
        sim.add(f"node{i}", repair_interval_s=5.0)
    assert sim.run_until(lambda: sim.converged() and len(sim.node("node1").ring) == 3, 10)
    for i in range(50):
        put(sim, "node1", f"bg{i}", b"v")
    sim.run(1)
    sim.node("node3").store.delete_keys([f"bg{i}" for i in range(50)])
    assert sim.run_until(lambda: sim.node("node3").store.count() == 50, 30)


def test_a_delete_missed_by_a_replica_stays_deleted_through_repair_and_gc():
    sim = SimCluster()
    for i in range(1, 4):
        sim.add(f"node{i}", hint_window_s=5.0, tombstone_grace_s=60.0,
                tombstone_gc_interval_s=10.0)
    assert sim.run_until(lambda: sim.converged() and len(sim.node("node1").ring) == 3, 10)
    put(sim, "node1", "doomed", b"old")
    sim.run(3)
    node3 = sim.node("node3")
    sim.down.add(node3.config.address)
    assert sim.run_until(lambda: liveness_of(sim, "node1", "node3") == "down", 5)
    assert sim.request("node1", MsgType.DELETE, {"key": "doomed"}).type == MsgType.OK
    sim.run(10)  # past the hint window: the hint for node3 expires undelivered
    assert all(not c.store.hint_counts() for c in sim.cores.values())
    sim.down.clear()
    sim.run(3)
    assert node3.store.get("doomed").value == b"old"  # the replica missed the delete
    assert sim.request("node2", MsgType.REPAIR, {}, max_seconds=60).type == MsgType.OK
    assert node3.store.get("doomed").is_tombstone
    sim.run(80)  # past the grace period: every tombstone is collected
    assert all(c.store.get("doomed") is None for c in sim.cores.values())
    assert get(sim, "node3", "doomed", r=3).body["found"] is False
    assert sum(c.stats["tombstones_purged"] for c in sim.cores.values()) == 3


def test_a_node_restarts_from_its_store_again_and_again():
    from zring.config import NodeConfig
    from zring.core.node import NodeCore
    from zring.storage import MemoryStore
    store = MemoryStore()
    config = NodeConfig(node_id="n1", address="tcp://sim:1", gossip_address="tcp://sim:2",
                        seeds=["tcp://sim:1"], vnodes=16)
    generations = []
    for restart in range(3):
        core = NodeCore(config, store, 1000.0 + restart)
        core.start(1000.0 + restart)
        core.tick(1000.5 + restart)  # gossips: saves nothing new, but must not break
        generations.append(core.members.own.generation)
        assert core.members.own.status == MemberStatus.NORMAL
    assert generations == [1, 2, 3]


# ------------------------------------------------------------------ regressions (review)


def five_nodes():
    sim = SimCluster()
    for i in range(1, 6):
        sim.add(f"node{i}")
    assert sim.run_until(lambda: sim.converged() and len(sim.node("node1").ring) == 5, 10)
    sim.run(3)
    return sim


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
    sim._apply(node4.config.address, restarted.start(sim.now))
    sim.down.discard(node4.config.address)
    assert sim.run_until(lambda: restarted.members.own.status == MemberStatus.LEFT, 10)
    assert sim.node("node1").ring.nodes == ["node1", "node2", "node3", "node5"]
    refused = sim.request("node4", MsgType.PUT, {"key": "k", "value": b"v"})
    assert refused.type == MsgType.ERROR and refused.body["code"] == "not_member"


@pytest.mark.parametrize("weight", [float("inf"), float("nan"), 1e-30, 1e9])
def test_gossip_with_an_unusable_weight_is_refused_and_the_node_keeps_going(cluster, weight):
    core = cluster.node("node1")
    record = core.members.own.to_wire() | {"node_id": "evil", "weight": weight,
                                             "address": "tcp://sim:9", "status": 2}
    frame = encode(Message(MsgType.GOSSIP, 0, {"sender": "evil", "members": [record]}))
    assert core.handle_gossip(frame, cluster.now) == []
    assert "evil" not in core.members
    assert put(cluster, "node1", "after", b"ok").type == MsgType.OK


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
    original = sim._apply

    def recording_apply(address, effects):
        for effect in effects:
            message = getattr(effect, "message", None)
            if message is not None:
                sizes.append(len(encode(message)))
        return original(address, effects)
    sim._apply = recording_apply
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
