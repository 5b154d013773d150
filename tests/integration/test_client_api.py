"""The client API against a real cluster, run once with Client and once with AsyncClient
(``client_kind``), then what only the asyncio client does: many requests in flight, closing
mid-request, living across event loops.

One 3-node cluster serves the whole module; each test uses its own keys.
"""

from __future__ import annotations

import asyncio

import pytest
from clients import KINDS, Connector, first_seed, open_sockets, run
from cluster import TestCluster, free_ports

from zring import AsyncClient, InvalidRequest, NotMember, ZringError

pytestmark = pytest.mark.integration

NODES = ["node1", "node2", "node3"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One 3-node cluster for these tests (each uses its own keys)."""
    with TestCluster(tmp_path_factory.mktemp("clients")) as running:
        yield running


@pytest.fixture(params=KINDS)
def connect(request):
    connector = Connector(request.param)
    yield connector
    connector.close()


def dead_endpoints(count: int) -> list[str]:
    """Loopback endpoints nothing listens on."""
    return [f"tcp://127.0.0.1:{port}" for port in free_ports(count)]


# ------------------------------------------------------------------ both clients


def test_put_get_delete_round_trip(shared, connect):
    client = connect(shared.seeds)
    key = f"api:{client.kind}:greeting"
    put = client.put(key, "hello")
    assert put.success and len(put.stored_on) >= 2 and sorted(put.replicated_to) == NODES
    got = client.get(key)
    assert got.found and got.value == "hello" and got.version == put.version
    client.put(f"{key}:blob", b"\x00\x01", w=3)
    assert client.get(f"{key}:blob", r=3).value == b"\x00\x01"
    deleted = client.delete(key)
    assert deleted.success and deleted.version > put.version
    assert not client.get(key).found


def test_ring_status_and_node_requests(shared, connect):
    client = connect(shared.seeds)
    ring = client.ring_state()
    assert sorted(n.node_id for n in ring.nodes) == NODES and ring.replicas == 3
    status = client.cluster_status()
    assert sorted(m.node_id for m in status.members) == NODES
    assert isinstance(client.ping(), dict)
    key = f"api:{client.kind}:owned"
    client.put(key, "x", w=3)
    assert client.get_nodes(key) == ring.hash_ring().get_nodes(key, 3)
    owner = client.get_node(key)
    assert owner == client.get_nodes(key)[0]
    assert key in client.local_keys(owner)
    assert isinstance(client.node_stats(owner), dict)
    with pytest.raises(NotMember):
        client.local_keys("node9")


def test_plan_and_repair(shared, connect):
    client = connect(shared.seeds)
    plan = client.plan("remove", "node3")
    assert plan["action"] == "remove" and plan["node_id"] == "node3"
    assert {row["node_id"] for row in plan["nodes"]} <= set(NODES)
    with pytest.raises(InvalidRequest):
        client.plan("grow", "node3")
    assert "sessions" in client.repair(timeout=60)


def test_mput_and_mget_of_250_keys(shared, connect):
    client = connect(shared.seeds)
    keys = [f"api:{client.kind}:m{i}" for i in range(250)]
    puts = client.mput({key: f"value of {key}".encode() for key in keys}, w=2)
    assert len(puts) == 250 and all(p.success and len(p.stored_on) >= 2 for p in puts)
    gets = client.mget([*keys, f"api:{client.kind}:m-missing"], r=2)
    assert [g.value for g in gets[:-1]] == [f"value of {k}".encode() for k in keys]
    assert [g.version for g in gets[:-1]] == [p.version for p in puts]
    assert not gets[-1].found
    assert client.get(keys[123]).value == f"value of {keys[123]}".encode()


@pytest.mark.parametrize("token_aware", [True, False])
def test_batches_of_several_frames_round_trip(shared, connect, token_aware):
    client = connect(shared.seeds, timeout=20, token_aware=token_aware)
    items = {f"api:{client.kind}:{token_aware}:big{i}": f"v{i}".encode() for i in range(2100)}
    assert len(client.mput(items)) == 2100
    results = client.mget([*items, "api:missing"])
    assert [r.value for r in results[:-1]] == list(items.values())
    assert not results[-1].found


def test_a_dead_first_seed_is_skipped(shared, connect):
    seeds = [*dead_endpoints(1), *shared.seeds]
    with first_seed(0):
        client = connect(seeds, timeout=0.5, token_aware=False)
    assert client.seed == seeds[0]
    key = f"api:{client.kind}:skip"
    client.put(key, "ok")
    assert all(client.get(key).value == "ok" for _ in range(5))
    assert client.seed == seeds[1]


# ------------------------------------------------------------------ the asyncio client


def test_200_concurrent_gets_share_one_socket_per_node(shared):
    async def main():
        async with AsyncClient(shared.seeds) as client:
            await asyncio.gather(*(client.put(f"aio:c{i}", f"v{i}") for i in range(200)))
            results = await asyncio.gather(*(client.get(f"aio:c{i}") for i in range(200)))
            assert [r.value for r in results] == [f"v{i}" for i in range(200)]
            # token-aware: each key's request went to a replica, over that node's socket
            assert client.open_connections <= 3 and client.requests_in_flight == 0
            assert client.ring_fingerprint is not None
        async with AsyncClient(shared.seeds, token_aware=False) as client:
            results = await asyncio.gather(*(client.get(f"aio:c{i}") for i in range(200)))
            assert [r.value for r in results] == [f"v{i}" for i in range(200)]
            assert client.open_connections == 1 and client.requests_in_flight == 0
    run(main())


def test_close_is_idempotent_and_the_client_outlives_event_loops(shared):
    client = AsyncClient(shared.seeds)
    client.close()
    # no close() inside: asyncio.run's shutdown cancels the reader, which closes its socket
    asyncio.run(client.put("aio:loops", "one"))
    assert client.open_connections == 0 and not open_sockets()
    assert asyncio.run(client.get("aio:loops")).value == "one"
    assert client.open_connections == 0 and not open_sockets()
    client.close()
    client.close()

    async def closed_mid_request():
        task = asyncio.create_task(client.get("aio:loops"))
        await asyncio.sleep(0)       # sent, not answered
        client.close()
        with pytest.raises(ZringError):
            await task
        assert (await client.get("aio:loops")).value == "one"   # still usable
        await client.aclose()
        await client.aclose()
    run(closed_mid_request())
