"""core/antientropy.py: repair sessions between replica pairs (hash trees, then only the
keys that differ), in the background at a pace, and tombstones collected after the grace."""

from __future__ import annotations

from coresim import CLIENT_ROUTE, cluster_of, get, liveness_of, put
from simnet import SimCluster

from zring.protocol import Message, MsgType, encode


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


def test_a_tree_is_refused_to_a_peer_on_another_ring(cluster):
    reply = cluster.request("node1", MsgType.REPAIR_TREE, {"peer": "node2",
                                                           "fingerprint": 12345})
    assert reply.type == MsgType.ERROR and reply.body["code"] == "invalid"
    assert "rings differ" in reply.body["message"]


def test_a_tree_is_answered_once_built_in_the_ticks(cluster):
    core = cluster.node("node1")
    frame = encode(Message(MsgType.REPAIR_TREE, 5, {"peer": "node2",
                                                    "fingerprint": core.ring.fingerprint()}))
    assert core.handle_frame(CLIENT_ROUTE, frame, cluster.now) == []
    assert core.next_deadline() <= cluster.now     # hashing goes on at once
    replies = [e for e in core.tick(cluster.now) if getattr(e, "route", None) == CLIENT_ROUTE]
    [reply] = replies
    assert reply.message.body["records"] == 0 and len(reply.message.body["leaves"]) == 8 * 4096


def test_a_fetch_of_too_many_keys_is_refused(cluster):
    reply = cluster.request("node1", MsgType.REPAIR_FETCH, {"keys": ["k"] * 10_001})
    assert reply.type == MsgType.ERROR and reply.body["code"] == "invalid"


def test_a_session_whose_peer_does_not_answer_fails_and_says_so():
    sim = cluster_of(3, repair_timeout_s=1.0)
    sim.down.add(sim.node("node3").config.address)   # silent, not yet declared down
    reply = sim.request("node2", MsgType.REPAIR_LOCAL, {}, max_seconds=10)
    assert reply.type == MsgType.ERROR and reply.body["code"] == "unavailable"
    assert sim.node("node2").stats["repairs_failed"] == 1
