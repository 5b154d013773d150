"""AsyncClient on real sockets without a cluster: silence on dead endpoints, and the
selector-driven DEALER. The API against a cluster is test_client_api.py's (both clients)."""

from __future__ import annotations

import asyncio
import time

import pytest
import zmq
from clients import run
from cluster import free_ports

from zring import AsyncClient, Timeout

pytestmark = pytest.mark.integration


def dead_endpoints(count: int) -> list[str]:
    """Loopback endpoints nothing listens on."""
    return [f"tcp://127.0.0.1:{port}" for port in free_ports(count)]


def test_timeout_on_a_dead_endpoint_within_the_deadline():
    async def main():
        client = AsyncClient(dead_endpoints(2), timeout=0.3, retries=1, token_aware=False)
        start = time.monotonic()
        with pytest.raises(Timeout, match="2 tries"):
            await client.get("k")
        elapsed = time.monotonic() - start
        assert 0.6 <= elapsed < 0.6 + 0.05 + 0.3   # two timeouts, one backoff, slack
        assert client.open_connections == 0        # silent sockets were closed
        await client.aclose()
    run(main())


# ------------------------------------------------------------------ the selector-driven DEALER


def test_a_refused_send_does_not_swallow_the_signal_of_a_waiting_reply():
    from zring.aiosockets import LoopDealer

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
        dealer = LoopDealer(raw, asyncio.get_running_loop())
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
    from zring.aiosockets import LoopDealer

    loop = asyncio.new_event_loop()
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.connect(f"tcp://127.0.0.1:{free_ports(1)[0]}")
    dealer = LoopDealer(raw, loop)
    reader = loop.create_task(dealer.recv_multipart())
    loop.run_until_complete(asyncio.sleep(0.01))          # the reader now waits
    loop.close()                                           # with the reader still pending
    dealer.close()                                         # must not touch the dead loop
    assert raw.closed and not reader.done()
