"""AsyncClient against a real cluster: node processes under supervisord, ZeroMQ on loopback."""

from __future__ import annotations

import asyncio
import time

import pytest
import zmq
from cluster import TestCluster, free_ports

from zring import AsyncClient, Timeout, ZringError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One 3-node cluster for these tests (each uses its own keys)."""
    with TestCluster(tmp_path_factory.mktemp("aio")) as running:
        yield running


def open_sockets() -> list:
    # pyzmq's context tracks its sockets (weakly): the clients' DEALERs are among them (a
    # client's gossip SUB lives on across event loops until close())
    return [s for s in zmq.Context.instance()._sockets
            if not s.closed and s.type == zmq.DEALER]


def run(coro):
    """Run ``coro`` in a fresh event loop and check it left no task or socket behind."""
    async def checked():
        try:
            return await coro
        finally:
            await asyncio.sleep(0)
            leftover = asyncio.all_tasks() - {asyncio.current_task()}
            assert not leftover, leftover
            assert not open_sockets()
    return asyncio.run(checked())


def dead_endpoints(count: int) -> list[str]:
    """Loopback endpoints nothing listens on."""
    return [f"tcp://127.0.0.1:{port}" for port in free_ports(count)]


def test_put_get_delete_round_trip(shared):
    async def main():
        async with AsyncClient(shared.seeds) as client:
            put = await client.put("aio:greeting", "hello")
            assert put.success and len(put.stored_on) >= 2
            assert sorted(put.replicated_to) == ["node1", "node2", "node3"]
            got = await client.get("aio:greeting")
            assert got.found and got.value == "hello" and got.version == put.version
            await client.put("aio:blob", b"\x00\x01", w=3)
            assert (await client.get("aio:blob", r=3)).value == b"\x00\x01"
            deleted = await client.delete("aio:greeting")
            assert deleted.success and deleted.version > put.version
            assert not (await client.get("aio:greeting")).found
            ring = await client.ring_state()
            assert sorted(n.node_id for n in ring.nodes) == ["node1", "node2", "node3"]
            status = await client.cluster_status()
            assert sorted(m.node_id for m in status.members) == ["node1", "node2", "node3"]
            assert isinstance(await client.ping(), dict)
            assert set(client._connections) <= set(shared.seeds)
    run(main())


def test_200_concurrent_gets_share_one_socket_per_node(shared):
    async def main():
        async with AsyncClient(shared.seeds) as client:
            await asyncio.gather(*(client.put(f"aio:c{i}", f"v{i}") for i in range(200)))
            results = await asyncio.gather(*(client.get(f"aio:c{i}") for i in range(200)))
            assert [r.value for r in results] == [f"v{i}" for i in range(200)]
            # token-aware: each key's request went to a replica, over that node's socket
            assert len(client._connections) <= 3 and len(client._replies) == 0
            assert client._router.routing is not None
        async with AsyncClient(shared.seeds, token_aware=False) as client:
            results = await asyncio.gather(*(client.get(f"aio:c{i}") for i in range(200)))
            assert [r.value for r in results] == [f"v{i}" for i in range(200)]
            assert len(client._connections) == 1 and len(client._replies) == 0
    run(main())


def test_mput_and_mget_of_250_keys(shared):
    keys = [f"aio:m{i}" for i in range(250)]

    async def main():
        async with AsyncClient(shared.seeds) as client:
            puts = await client.mput({key: f"value of {key}".encode() for key in keys}, w=2)
            assert len(puts) == 250 and all(p.success and len(p.stored_on) >= 2 for p in puts)
            gets = await client.mget(keys + ["aio:m-missing"], r=2)
            assert [g.value for g in gets[:-1]] == [f"value of {k}".encode() for k in keys]
            assert [g.version for g in gets[:-1]] == [p.version for p in puts]
            assert not gets[-1].found
            # what mput wrote, single gets read too
            assert (await client.get(keys[123])).value == b"value of aio:m123"
    run(main())


def test_mput_and_mget_in_several_chunks(shared):
    keys = [f"aio:big{i}" for i in range(2100)]

    async def main():
        async with AsyncClient(shared.seeds, timeout=20) as client:
            await client.mput((key, key) for key in keys)
            assert [g.value for g in await client.mget(keys)] == keys
    run(main())


def test_timeout_on_a_dead_endpoint_within_the_deadline():
    async def main():
        client = AsyncClient(dead_endpoints(2), timeout=0.3, retries=1, token_aware=False)
        start = time.monotonic()
        with pytest.raises(Timeout, match="2 tries"):
            await client.get("k")
        elapsed = time.monotonic() - start
        assert 0.6 <= elapsed < 0.6 + 0.05 + 0.3   # two timeouts, one backoff, slack
        assert client._connections == {}            # silent sockets were closed
        await client.aclose()
    run(main())


def test_a_dead_first_seed_is_skipped(shared):
    async def main():
        async with AsyncClient([*dead_endpoints(1), *shared.seeds], timeout=0.5) as client:
            client._seed_index = 0
            await client.put("aio:skip", "ok")
            results = await asyncio.gather(*(client.get("aio:skip") for _ in range(20)))
            assert all(r.value == "ok" for r in results)
            assert client._seed_index == 1
    run(main())


def test_close_is_idempotent_and_the_client_outlives_event_loops(shared):
    client = AsyncClient(shared.seeds)
    client.close()
    # no close() inside: asyncio.run's shutdown cancels the reader, which closes its socket
    asyncio.run(client.put("aio:loops", "one"))
    assert client._connections == {} and not open_sockets()
    assert asyncio.run(client.get("aio:loops")).value == "one"
    assert client._connections == {} and not open_sockets()
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


# ------------------------------------------------------------------ the selector-driven DEALER


def test_a_refused_send_does_not_swallow_the_signal_of_a_waiting_reply():
    from zring.aio import _LoopDealer

    async def scenario():
        context = zmq.Context.instance()
        router = context.socket(zmq.ROUTER)
        router.setsockopt(zmq.RCVHWM, 1)
        router.setsockopt(zmq.LINGER, 0)
        port = free_ports(1)[0]
        router.bind(f"tcp://127.0.0.1:{port}")
        raw = context.socket(zmq.DEALER)
        raw.setsockopt(zmq.SNDHWM, 1)
        raw.connect(f"tcp://127.0.0.1:{port}")
        dealer = _LoopDealer(raw, asyncio.get_running_loop())
        try:
            assert dealer.try_send(b"hello")
            identity, _ = router.recv_multipart()        # learn who to answer
            deadline = time.monotonic() + 10
            fill = b"x" * (1 << 20)   # big frames fill the TCP buffers behind the queue too
            refused_since = None      # the router reads no more: fill until sends stay refused
            while refused_since is None or time.monotonic() - refused_since < 0.3:
                assert time.monotonic() < deadline, "the send queue never filled"
                if dealer.try_send(fill):
                    refused_since = None
                elif refused_since is None:
                    refused_since = time.monotonic()
                await asyncio.sleep(0.01)
            reader = asyncio.ensure_future(dealer.recv_multipart())
            await asyncio.sleep(0)                        # the reader waits on its future
            assert not reader.done()
            router.send_multipart([identity, b"reply"])
            # the loop is not running while the reply arrives; ZeroMQ's FD fires once, and
            # reading EVENTS (as any send does, a refused one too) resets it
            while not raw.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                assert time.monotonic() < deadline, "the reply never arrived"
                time.sleep(0.001)
            assert not dealer.try_send(b"more")           # refused: it must wake the reader
            frames = await asyncio.wait_for(reader, 2)
            assert frames == [b"reply"]
        finally:
            dealer.close()
            router.close(linger=0)

    asyncio.run(scenario())


def test_closing_a_dealer_after_its_loop_closed_does_not_raise():
    from zring.aio import _LoopDealer

    loop = asyncio.new_event_loop()
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.connect(f"tcp://127.0.0.1:{free_ports(1)[0]}")
    dealer = _LoopDealer(raw, loop)
    reader = loop.create_task(dealer.recv_multipart())
    loop.run_until_complete(asyncio.sleep(0.01))          # the reader now waits
    loop.close()                                           # with the reader still pending
    dealer.close()                                         # must not touch the dead loop
    assert raw.closed and not reader.done()
