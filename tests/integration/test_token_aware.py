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
        assert owner_served(client, keys) == 40
        fingerprint = client.ring_fingerprint
        assert fingerprint == client.ring_state().fingerprint
        cluster.chaos("start", "node5")
        cluster.wait_converged([f"node{i}" for i in range(1, 6)], timeout_s=90)
        # gossip tells the client its ring is stale; it refetches and follows the owners
        wait_for(lambda: client.get("key0").found and client.ring_fingerprint
                 != fingerprint, 10, "the client to learn the new ring")
        assert owner_served(client, keys) == 40
        assert [r.value for r in client.mget(keys)] == keys
