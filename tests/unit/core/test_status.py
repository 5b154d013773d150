"""core/status.py: PING, STATS, RING_STATE, CLUSTER_STATUS and LOCAL_KEYS."""

from __future__ import annotations

from coresim import WRITER, Stamps, cluster_of, put, simstore_cluster_of

from zring.core.status import figures_of
from zring.protocol import Message, MsgType


def test_cluster_status_and_local_keys(cluster):
    put(cluster, "node1", "a", b"1")
    cluster.run(16)  # key counts refresh every 15 s
    reply = cluster.request("node2", MsgType.CLUSTER_STATUS, {})
    rows = {row["node_id"]: row for row in reply.body["members"]}
    assert set(rows) == {"node1", "node2", "node3"}
    assert all(r["status"] == "normal" and r["liveness"] == "up" for r in rows.values())
    assert rows["node2"]["keys_count"] == 1
    assert cluster.request("node3", MsgType.LOCAL_KEYS, {}).body["keys"] == ["a"]


def test_status_figures_are_exact_right_after_writes():
    sim = simstore_cluster_of(3)
    stamps = Stamps(sim)
    items = [[f"s{i}", b"x" * 10, stamps.next()] for i in range(300)]
    reply = sim.request("node1", MsgType.MPUT, {"items": items, "writer": WRITER, "w": 3})
    assert all("stored_on" in r for r in reply.body["results"])
    rows = sim.request("node2", MsgType.CLUSTER_STATUS, {}).body["members"]
    assert sum(r["keys_count"] for r in rows) == 900
    assert all(r["figures"] == "exact" for r in rows)
    assert sum(r["bytes"] for r in rows) == sum(3 * (len(k) + 10) for k, _, _ in items)


def test_ping_says_who_answers_and_its_status(cluster):
    reply = cluster.request("node2", MsgType.PING, {})
    assert reply.body == {"node_id": "node2", "status": "normal"}


def test_stats_carry_the_counters_the_store_and_the_clock(cluster):
    put(cluster, "node1", "k")
    body = cluster.request("node1", MsgType.STATS, {}).body
    assert body["node_id"] == "node1" and body["store"]["keys"] == 1
    assert body["counters"]["gossip_accepted"] > 0
    assert "member_records_refused" in body["counters"] and body["clock"]["ok"] is True


def test_ring_state_lists_the_ring_and_the_replication_settings(cluster):
    body = cluster.request("node1", MsgType.RING_STATE, {}).body
    assert body["fingerprint"] == cluster.node("node1").ring.fingerprint()
    assert [n["node_id"] for n in body["nodes"]] == ["node1", "node2", "node3"]
    assert (body["replicas"], body["write_quorum"], body["read_quorum"]) == (3, 2, 2)


def test_a_member_that_does_not_answer_shows_what_it_last_gossiped():
    sim = cluster_of(3)
    put(sim, "node1", "k")
    sim.down.add(sim.node("node3").config.address)    # silent, not yet declared down
    rows = {r["node_id"]: r for r in sim.request("node1", MsgType.CLUSTER_STATUS, {},
                                                  max_seconds=5).body["members"]}
    assert rows["node3"]["figures"] == "gossip" and rows["node2"]["figures"] == "exact"


def test_local_keys_stop_at_the_limit(cluster):
    for i in range(5):
        put(cluster, "node1", f"k{i}")
    cluster.run(1)
    body = cluster.request("node2", MsgType.LOCAL_KEYS, {"limit": 3}).body
    assert body["node_id"] == "node2" and len(body["keys"]) == 3


def test_figures_of_a_stats_answer_only_when_well_formed():
    good = {"store": {"keys": 1, "hints": 0, "bytes": 9}, "clock": {"ok": True,
                                                                    "offset_s": 0.0}}
    assert figures_of(Message(MsgType.OK, 1, good)) == good
    assert figures_of(None) is None
    for bad in ({**good, "store": {"keys": 1.0, "hints": 0, "bytes": 9}},
                {**good, "clock": {"ok": 1, "offset_s": 0.0}},
                {"store": good["store"]}):
        assert figures_of(Message(MsgType.OK, 1, bad)) is None, bad
