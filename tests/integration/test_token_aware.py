"""Token-aware routing on a real cluster of 4 nodes (N=3) that a fifth joins. Batches with
and without routing are test_client_api.py's."""

from __future__ import annotations

import pytest
from cluster import TestCluster, wait_for

from zring import Client

pytestmark = pytest.mark.integration


def owner_served(client: Client, keys: list[str]) -> int:
    """Keys whose r=1 read was answered by their first replica: the node a token-aware
    client sends to, which then reads locally."""
    return sum(client.get(k, r=1).served_by[0] == client.get_nodes(k)[0] for k in keys)


def test_requests_go_to_the_key_owner_and_follow_a_join(tmp_path):
    with TestCluster(tmp_path, nodes=4, spares=1) as cluster:
        client = cluster.client()
        keys = [f"key{i}" for i in range(40)]
        assert [r.stored_on != () for r in client.mput({k: k for k in keys})] == [True] * 40
        # (a node whose gossip the client has not heard yet is tried last: wait for it)
        wait_for(lambda: owner_served(client, keys) == 40, 10, "every owner to serve")
        fingerprint = client.ring_fingerprint
        assert fingerprint == client.ring_state().fingerprint
        cluster.chaos("start", "node5")
        cluster.wait_converged([f"node{i}" for i in range(1, 6)], timeout_s=90)
        # gossip tells the client its ring is stale; it refetches and follows the owners
        wait_for(lambda: client.get("key0").found and client.ring_fingerprint
                 != fingerprint, 10, "the client to learn the new ring")
        assert owner_served(client, keys) == 40
        assert [r.value for r in client.mget(keys)] == keys


def direct_counts(client: Client, nodes: list[str]) -> tuple[int, int]:
    """Client-coordinated writes and reads the nodes' replicas took, in all."""
    stats = [client.node_stats(node) for node in nodes]
    return (sum(s.get("direct_writes", 0) for s in stats),
            sum(s.get("direct_reads", 0) for s in stats))


def test_a_token_aware_client_coordinates_its_quorums_and_rides_out_a_paused_replica(tmp_path):
    with TestCluster(tmp_path) as cluster:
        nodes = ["node1", "node2", "node3"]
        client = cluster.client(timeout=2.0)
        keys = [f"direct{i}" for i in range(30)]
        for key in keys:
            client.put(key, key.encode())
        assert [client.get(k).value for k in keys] == [k.encode() for k in keys]
        writes, reads = direct_counts(client, nodes)
        assert writes == 3 * len(keys) and reads == 2 * len(keys)   # N copies, R reads each
        assert [r.value for r in client.mget(keys)] == [k.encode() for k in keys]
        assert direct_counts(client, nodes) == (writes, reads + 2 * len(keys))
        assert all(len(r.stored_on) >= 2 for r in client.mput({k: b"batch" for k in keys}))
        assert direct_counts(client, nodes)[0] == writes + 3 * len(keys)
        assert [r.value for r in client.mget(keys)] == [b"batch"] * len(keys)
        writes, reads = direct_counts(client, nodes)

        # a client that is not token-aware goes through a node, as before
        with Client([cluster.addresses["node1"]], token_aware=False) as through_node:
            through_node.put("via-node", b"v")
            assert through_node.get("via-node").value == b"v"
        assert direct_counts(client, nodes) == (writes, reads)

        # one replica paused (SIGSTOP): W=2 of the others acknowledge every write; once
        # its gossip is silent the client lets nodes coordinate (and keep hints for it)
        cluster.chaos("pause", "node3", in_process=True)
        try:
            for key in keys:
                client.put(key, b"while-paused")

            def hinted() -> bool:
                client.put("probe", b"v")   # coordinated by a node once node3 seems down
                return sum(client.node_stats(n).get("hints_stored", 0)
                           for n in ("node1", "node2")) > 0
            wait_for(hinted, 15, "a node to coordinate a write and keep a hint for node3")
        finally:
            cluster.chaos("resume", "node3", in_process=True)
        wait_for(lambda: cluster.status_from("node1").member("node3").liveness == "up", 15,
                 "node1 to see node3 up")
        assert [client.get(k, r=3).value for k in keys] == [b"while-paused"] * len(keys)
