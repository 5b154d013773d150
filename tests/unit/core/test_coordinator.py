"""core/coordinator.py: a client's PUT, GET and DELETE coordinated over the key's replicas:
quorums, stand-bys, late copies of retried writes, and blocking read repair."""

from __future__ import annotations

import pytest
from coresim import (
    WRITER,
    Stamps,
    cluster_of,
    count_sends,
    get,
    holders,
    liveness_of,
    put,
    replicas_of,
    requests_dropped,
    simstore_cluster_of,
    stamped_put,
    values_held,
)
from simnet import SimCluster

from zring.hashing import key_position
from zring.protocol import MsgType

# what a write sends its replicas (a BATCH frame may carry one)
WRITES = frozenset({MsgType.REPLICA_WRITE, MsgType.BATCH, MsgType.HINT_WRITE})


def writes_lost(sim: SimCluster, sender: str):
    """Every write ``sender`` sends to a peer is lost on the way (batches too)."""
    return requests_dropped(sim, sender, WRITES)


def partial_write(sim: SimCluster, key: str, value: bytes, stamps: Stamps) -> str:
    """A write that lands on its coordinator only and fails; the coordinator's node id."""
    coordinator = replicas_of(sim, key)[0]
    with writes_lost(sim, coordinator):
        failed = stamped_put(sim, coordinator, key, value, stamps.next(), w=2)
        sim.run(1.0)   # its hints for the others are lost too
    assert failed.type == MsgType.ERROR
    for core in sim.cores.values():
        core.store.delete_hints(h.hint_id for target in ("node1", "node2", "node3")
                                for h in core.store.hints_for(target))
    return coordinator


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


def test_reads_fail_fast_when_too_few_replicas_are_up(cluster):
    cluster.run(3)
    cluster.down.update(c.config.address for c in cluster.cores.values()
                        if c.config.node_id in ("node2", "node3"))
    assert cluster.run_until(lambda: liveness_of(cluster, "node1", "node3") == "down", 5)
    started = cluster.now
    reply = get(cluster, "node1", "k")
    assert reply.type == MsgType.ERROR and reply.body["code"] == "unavailable"
    assert "down" in reply.body["message"] and cluster.now - started < 0.1


def test_reads_ask_only_r_replicas_the_coordinator_first():
    sim = cluster_of(3)
    sim.request("node1", MsgType.PUT, {"key": "k", "value": b"v"})
    sent = count_sends(sim, "node1")
    assert sim.request("node1", MsgType.GET, {"key": "k", "r": 1}).body["found"]
    assert [m for m in sent if m.type == MsgType.REPLICA_READ] == []
    assert sim.request("node1", MsgType.GET, {"key": "k", "r": 2}).body["found"]
    assert len([m for m in sent if m.type == MsgType.REPLICA_READ]) == 1


def test_a_replica_that_does_not_answer_is_replaced_by_a_stand_by():
    sim = cluster_of(3)
    sim.request("node1", MsgType.PUT, {"key": "k", "value": b"v"})
    core = sim.node("node1")
    others = [x for x in core.ring.get_nodes_at(key_position("k"), 3) if x != "node1"]
    # the replica node1 asks first stops answering before anyone can notice: its request
    # times out, then the stand-by is asked
    sim.down.add(sim.node(others[0]).config.address)
    reply = sim.request("node1", MsgType.GET, {"key": "k", "r": 2}, max_seconds=10)
    assert reply.type == MsgType.OK and reply.body["found"]
    assert sorted(reply.body["served_by"]) == sorted(["node1", others[1]])


def test_a_retried_write_applied_late_never_overrides_a_later_acknowledged_one():
    sim = simstore_cluster_of(3)
    stamps = Stamps(sim)
    key = "late"
    owner, second, _ = replicas_of(sim, key)
    owner_address = sim.node(owner).config.address
    sim.pause(owner_address)   # SIGSTOP: what is sent to it waits in its socket
    first = {"key": key, "value": b"A", "ts": stamps.next(), "writer": WRITER}
    sim.send(owner, MsgType.PUT, first, via_network=True)
    sim.run(1.0)   # the client times out and resends the same write (same stamp) elsewhere
    assert sim.request(second, MsgType.PUT, first).type == MsgType.OK
    assert stamped_put(sim, second, key, b"B", stamps.next()).type == MsgType.OK
    sim.resume(owner_address)   # the first copy arrives now, long after its client gave up
    sim.run(2.0)
    for node in ("node1", "node2", "node3"):
        assert get(sim, node, key, r=3).body["value"] == b"B"
    assert set(values_held(sim, key).values()) == {b"B"}


def test_a_write_older_than_what_replicas_hold_is_refused_with_the_newer_version():
    sim = simstore_cluster_of(3)
    stamps = Stamps(sim)
    old = stamps.next()
    newer = old + (100 << 16)   # another client's clock, 100 ms ahead
    assert stamped_put(sim, "node1", "k", b"new", newer).type == MsgType.OK
    reply = stamped_put(sim, "node2", "k", b"old", old)
    assert reply.type == MsgType.ERROR and reply.body["code"] == "version_conflict"
    assert reply.body["details"]["held"] == [newer, WRITER]
    assert get(sim, "node3", "k").body["value"] == b"new"
    # stamped again above what is held, as the clients do: taken
    stamps.clock.observe(newer)
    assert stamped_put(sim, "node2", "k", b"old", stamps.next()).type == MsgType.OK
    assert get(sim, "node1", "k").body["value"] == b"old"


def test_a_resent_write_with_the_same_stamp_is_acknowledged_again():
    sim = simstore_cluster_of(3)
    ts = Stamps(sim).next()
    assert stamped_put(sim, "node1", "k", b"v", ts).type == MsgType.OK
    again = stamped_put(sim, "node2", "k", b"v", ts)   # a duplicate: equal versions are taken
    assert again.type == MsgType.OK and again.body["version"] == [ts, WRITER]


def test_a_failing_store_fails_only_its_requests_and_the_node_serves_again_after():
    sim = simstore_cluster_of(3, max_pending_requests=20)
    core = sim.node("node1")
    stamps = Stamps(sim)
    core.store.failing = "write"
    for i in range(60):   # three times max_pending_requests: none of them may stay pending
        reply = stamped_put(sim, "node1", f"f{i}", b"v", stamps.next(), w=3)
        assert reply.type == MsgType.ERROR   # w=3 needs our copy too
    sim.run(1.0)   # the peers' acks of the last ones arrive: nothing stays pending
    assert not core.pending()["operations"]
    reads = [get(sim, "node1", f"f{i}") for i in range(5)]
    assert all(r.type == MsgType.OK for r in reads)   # reads still work
    core.store.failing = None
    assert stamped_put(sim, "node1", "after", b"v", stamps.next(), w=3).type == MsgType.OK


def test_a_read_that_finds_replicas_disagreeing_writes_the_newest_back_before_answering():
    sim = simstore_cluster_of(3)
    coordinator = partial_write(sim, "mono", b"partial", Stamps(sim))
    others = [n for n in replicas_of(sim, "mono") if n != coordinator]
    first = get(sim, coordinator, "mono")   # sees the partial write: must make it stick
    assert first.body["value"] == b"partial"
    sim.stopped.add(sim.node(coordinator).config.address)   # then its coordinator dies
    later = get(sim, others[0], "mono")
    assert later.type == MsgType.OK and later.body["value"] == b"partial"


def test_a_read_that_cannot_write_the_newest_back_does_not_return_it():
    sim = simstore_cluster_of(3)
    coordinator = partial_write(sim, "mono", b"partial", Stamps(sim))
    others = [n for n in replicas_of(sim, "mono") if n != coordinator]
    with writes_lost(sim, coordinator):   # so are the read's write-backs
        first = sim.request(coordinator, MsgType.GET, {"key": "mono"}, max_seconds=2)
    sim.stopped.add(sim.node(coordinator).config.address)   # the coordinator dies
    later = get(sim, others[0], "mono")
    # it may answer "partial" only once a write quorum holds it; else it cannot answer
    assert first.type == MsgType.ERROR
    assert later.type == MsgType.OK and not later.body["found"]


def test_a_coordinator_that_is_no_replica_of_the_key_sends_its_ring():
    sim = cluster_of(4)
    core = sim.node("node1")
    ring = core.ring
    elsewhere = next(f"k{i}" for i in range(1000)
                     if "node1" not in ring.get_nodes_at(key_position(f"k{i}"), 3))
    here = next(f"k{i}" for i in range(1000)
                if "node1" in ring.get_nodes_at(key_position(f"k{i}"), 3))
    for key in (elsewhere, here):
        assert put(sim, "node1", key).type == MsgType.OK
    assert put(sim, "node1", elsewhere).body["ring"] == ring.fingerprint()
    assert get(sim, "node1", elsewhere).body["ring"] == ring.fingerprint()
    assert "ring" not in put(sim, "node1", here).body
    assert "ring" not in get(sim, "node1", here).body


def test_a_write_every_replica_refused_says_it_was_applied_nowhere():
    sim = cluster_of(3)
    stamps = Stamps(sim)
    old = stamps.next()
    assert stamped_put(sim, "node1", "k", b"new", old + (100 << 16)).type == MsgType.OK
    sim.run(0.5)   # every replica holds the newer version
    reply = stamped_put(sim, "node2", "k", b"old", old)
    assert reply.body["code"] == "version_conflict"
    assert reply.body["details"]["all_refused"] is True
    assert reply.body["details"]["held"] == [old + (100 << 16), WRITER]
    assert sim.node("node2").stats["writes_refused_newer"] == 1


def test_a_client_timestamp_is_checked():
    sim = cluster_of(3)
    for ts, writer in ((-1, WRITER), (1 << 63, WRITER), ("5", WRITER), (5, ""),
                       (5, "w" * 257), (5, 7)):
        reply = sim.request("node1", MsgType.PUT, {"key": "k", "value": b"v", "ts": ts,
                                                   "writer": writer})
        assert reply.type == MsgType.ERROR and reply.body["code"] in ("invalid", "protocol")
    assert all(c.store.get("k") is None for c in sim.cores.values())
