"""AsyncClient without sockets: reply matching, concurrency, retries, batches, closing.

Each node endpoint is a FakeSocket (``AsyncClient._new_socket`` is patched) whose scripted
behaviour answers a decoded request with replies after delays, or with silence.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgpack
import pytest
import zmq
from clients import first_seed

from zring.aio import AsyncClient
from zring.aiosockets import PendingReplies
from zring.clientcore import batches
from zring.clientcore.results import GetResult, PutResult
from zring.errors import (
    InvalidRequest,
    ProtocolError,
    Timeout,
    Unavailable,
    VersionConflict,
    ZringError,
)
from zring.protocol import Message, MsgType, decode, encode

A, B = "tcp://a:1", "tcp://b:2"

# behaviour: request -> [(delay_s, reply frame), ...]; [] is silence
Behaviour = Callable[[Message], list[tuple[float, bytes]]]


def ok(body: dict, request: Message, delay: float = 0.0) -> list[tuple[float, bytes]]:
    return [(delay, encode(Message(MsgType.OK, request.request_id, body)))]


def get_body(value, node: str = "n1") -> dict:
    return {"found": value is not None, "value": value, "version": [1, node],
            "served_by": [node]}


def answer(request: Message, node: str = "n1") -> dict:
    """What a healthy node answers (values echo the keys)."""
    body = request.body
    if request.type == MsgType.GET:
        return get_body(body["key"], node)
    if request.type in (MsgType.PUT, MsgType.DELETE):
        return {"stored_on": [node], "replicated_to": [node], "version": [2, node]}
    if request.type == MsgType.MGET:
        return {"results": [get_body(k, node) for k in body["keys"]]}
    if request.type == MsgType.MPUT:
        return {"results": [{"stored_on": [node], "replicated_to": [node], "version": [3, k]}
                            for k, *_ in body["items"]]}
    return {"pong": node}


def healthy(request: Message) -> list[tuple[float, bytes]]:
    return ok(answer(request), request)


def silent(request: Message) -> list[tuple[float, bytes]]:
    return []


class FakeSocket:
    """A DEALER to a scripted node: ``try_send``/``send`` hand the request to the behaviour,
    whose replies arrive in ``recv_multipart`` after their delays."""

    def __init__(self, endpoint: str, behaviour: Behaviour, block_sends: bool = False) -> None:
        self.endpoint = endpoint
        self.behaviour = behaviour
        self.block_sends = block_sends   # as a full HWM: a send waits until close cancels it
        self.inbox: asyncio.Queue[list[bytes]] = asyncio.Queue()
        self.sent: list[Message] = []
        self.closed = False
        self._blocked: list[asyncio.Future] = []

    def try_send(self, frame: bytes) -> bool:
        if self.closed:
            raise zmq.ZMQError(zmq.ENOTSOCK)
        if self.block_sends:
            return False
        self._deliver(frame)
        return True

    async def send(self, frame: bytes) -> None:
        if self.closed:
            raise zmq.ZMQError(zmq.ENOTSOCK)
        if self.block_sends:
            future = asyncio.get_running_loop().create_future()
            self._blocked.append(future)
            await future
        self._deliver(frame)

    def _deliver(self, frame: bytes) -> None:
        request = decode(frame)
        self.sent.append(request)
        loop = asyncio.get_running_loop()
        for delay, reply in self.behaviour(request):
            loop.call_later(delay, self.inbox.put_nowait, [reply])

    async def recv_multipart(self) -> list[bytes]:
        return await self.inbox.get()

    def close(self, linger: int | None = None) -> None:
        self.closed = True
        for future in self._blocked:
            future.cancel()   # what pyzmq does to sends pending on a closed socket


class FakeNetwork:
    def __init__(self) -> None:
        self.behaviours: dict[str, Behaviour] = {}
        self.blocking: set[str] = set()
        self.sockets: list[FakeSocket] = []

    def socket(self, endpoint: str) -> FakeSocket:
        behaviour = self.behaviours.get(endpoint, silent)
        sock = FakeSocket(endpoint, behaviour, endpoint in self.blocking)
        self.sockets.append(sock)
        return sock

    def sent_to(self, endpoint: str) -> list[Message]:
        return [m for s in self.sockets if s.endpoint == endpoint for m in s.sent]


@pytest.fixture
def net(monkeypatch) -> FakeNetwork:
    network = FakeNetwork()
    monkeypatch.setattr(AsyncClient, "_new_socket", lambda self, endpoint:
                        network.socket(endpoint))
    return network


def client_on(*seeds: str, first: int = 0, **kwargs) -> AsyncClient:
    kwargs.setdefault("token_aware", False)  # these fakes answer requests, not RING_STATE
    with first_seed(first):   # deterministic: start at seeds[first]
        return AsyncClient(list(seeds), **kwargs)


# ------------------------------------------------------------------ constructor and arguments


@pytest.mark.parametrize("call", [
    lambda c: c.get(1),
    lambda c: c.get("k", r="2"),
    lambda c: c.get("k", replicas=True),
    lambda c: c.put("k", 1),
    lambda c: c.put(b"k", "v"),
    lambda c: c.put("k", "v", w=2.0),
    lambda c: c.delete(None),
    lambda c: c.mget("abc"),
    lambda c: c.mget(["a", 1]),
    lambda c: c.mget(["a"], r="1"),
    lambda c: c.mput("ab"),
    lambda c: c.mput(5),
    lambda c: c.mput(["ab"]),
    lambda c: c.mput([("k",)]),
    lambda c: c.mput([("k", "v", "x")]),
    lambda c: c.mput({"k": 3}),
    lambda c: c.mput({1: "v"}),
    lambda c: c.mput({"k": "v"}, w="2"),
])
def test_bad_arguments_raise_invalid_request_before_any_socket(net, call):
    client = client_on(A)
    with pytest.raises(InvalidRequest):
        asyncio.run(call(client))
    assert net.sockets == []


# ------------------------------------------------------------------ reply matching


def test_pending_replies_match_by_request_id_and_ignore_strays():
    async def main():
        replies = PendingReplies()
        first, second = replies.expect(7), replies.expect(8)
        assert replies.resolve(A, encode(Message(MsgType.OK, 8, {"n": 8})))   # out of order
        assert not replies.resolve(A, encode(Message(MsgType.OK, 99, {})))   # stray
        assert not replies.resolve(A, encode(Message(MsgType.OK, 8, {"n": 0})))  # duplicate
        assert not first.done() and second.result().body == {"n": 8}
        assert replies.resolve(A, encode(Message(MsgType.ERROR, 7, {"code": "unavailable",
                                                                     "message": "m"})))
        assert first.result().type == MsgType.ERROR
        replies.forget(7, first)
        replies.forget(8, second)
        assert len(replies) == 0
    asyncio.run(main())


def test_pending_replies_fail_only_the_request_a_bad_frame_names():
    async def main():
        replies = PendingReplies()
        named, other = replies.expect(5), replies.expect(6)
        bad = msgpack.packb([int(MsgType.ERROR), 5, {"code": 1}])  # code must be a str
        assert replies.resolve(A, bad)
        with pytest.raises(ProtocolError, match="bad reply from tcp://a:1"):
            named.result()
        assert not replies.resolve(A, b"\xc1garbage")   # no id to go by: ignored
        assert replies.resolve(A, msgpack.packb([999, 6, {}]))  # unknown type, readable id
        with pytest.raises(ProtocolError):
            other.result()
    asyncio.run(main())


def test_pending_replies_wake_as_silence_or_error():
    async def main():
        replies = PendingReplies()
        quiet, failing = replies.expect(1), replies.expect(2)
        replies.wake([1])
        replies.wake([2, 3], ZringError("closed"))
        assert quiet.result() is None
        with pytest.raises(ZringError, match="closed"):
            failing.result()
    asyncio.run(main())


# ------------------------------------------------------------------ requests


def test_concurrent_requests_share_one_socket_and_get_their_own_replies(net):
    def reversed_and_noisy(request: Message):
        # later requests answer sooner; every reply comes with a stray and a duplicate
        delay = max(0.0, 0.2 - int(request.body["key"]) * 0.0005)
        return [*ok(answer(request), request, delay),
                *ok(get_body("stray"), Message(MsgType.OK, 1), delay),
                *ok(get_body("dup"), request, delay + 0.01)]
    net.behaviours[A] = reversed_and_noisy
    client = client_on(A)

    async def main():
        async with client:
            return await asyncio.gather(*(client.get(str(i)) for i in range(300)))
    results = asyncio.run(main())
    assert [r.value for r in results] == [str(i) for i in range(300)]
    assert all(isinstance(r, GetResult) and r.found for r in results)
    assert len(net.sockets) == 1 and net.sockets[0].closed
    assert client.requests_in_flight == 0 and client.open_connections == 0


def test_put_get_delete_ping_bodies(net):
    net.behaviours[A] = healthy
    client = client_on(A)

    async def main():
        async with client:
            put = await client.put("k", b"v", replicas=2, w=1)
            got = await client.get("k", r=1, replicas=2)
            deleted = await client.delete("k", w=2)
            pong = await client.ping()
        return put, got, deleted, pong
    put, got, deleted, pong = asyncio.run(main())
    assert isinstance(put, PutResult) and put.success and put.stored_on == ("n1",)
    assert got.value == "k" and deleted.success and pong == {"pong": "n1"}
    bodies = [(m.type, {k: v for k, v in m.body.items() if k != "ts"})
              for m in net.sent_to(A)]
    stamp = {"writer": client.writer}
    assert bodies[:3] == [(MsgType.PUT, {"key": "k", "value": b"v", "n": 2, "w": 1, **stamp}),
                          (MsgType.GET, {"key": "k", "n": 2, "r": 1}),
                          (MsgType.DELETE, {"key": "k", "n": None, "w": 2, **stamp})]
    stamps = [m.body["ts"] for m in net.sent_to(A) if m.type in (MsgType.PUT, MsgType.DELETE)]
    assert stamps[0] < stamps[1]


@pytest.mark.parametrize("code, error", [("unavailable", Unavailable),
                                         ("invalid", InvalidRequest),
                                         ("something_new", ZringError)])
def test_error_reply_raises_its_exception_without_retrying(net, code, error):
    net.behaviours[A] = lambda request: [(0, encode(Message(MsgType.ERROR, request.request_id, {
        "code": code, "message": "too few", "details": {"needed": 2}})))]
    net.behaviours[B] = healthy
    client = client_on(A, B)
    with pytest.raises(error, match="too few") as raised:
        asyncio.run(client.get("k"))
    assert type(raised.value) is error and raised.value.details == {"needed": 2}
    assert len(net.sent_to(A)) == 1 and net.sent_to(B) == []


def conflicting_once(all_refused: bool, held_ts: int):
    """A node that refuses the first PUT for a newer version held, then takes writes."""
    refused: list[int] = []

    def behaviour(request: Message):
        if request.type == MsgType.PUT and not refused:
            refused.append(request.body["ts"])
            return [(0, encode(Message(MsgType.ERROR, request.request_id, {
                "code": "version_conflict", "message": "held newer",
                "details": {"held": [held_ts, "other"], "all_refused": all_refused}})))]
        return healthy(request)
    return behaviour


@pytest.mark.parametrize("all_refused", [True, False])
def test_a_refused_write_is_stamped_again_only_if_it_was_applied_nowhere(net, all_refused):
    held = (int(time.time() * 1000) + 50) << 16
    net.behaviours[A] = conflicting_once(all_refused, held)
    client = client_on(A)

    async def main():
        async with client:
            return await client.put("k", b"v")
    if all_refused:
        assert asyncio.run(main()).success
        first, second = (m.body["ts"] for m in net.sent_to(A))
        assert first < held < second
    else:
        with pytest.raises(VersionConflict):
            asyncio.run(main())
        assert len(net.sent_to(A)) == 1


def test_silence_resends_to_the_next_seed_and_drops_the_silent_socket(net):
    net.behaviours[B] = healthy
    client = client_on(A, B, timeout=0.2)

    async def main():
        async with client:
            return await client.get("k")
    assert asyncio.run(main()).value == "k"
    [sent_a], [sent_b] = net.sent_to(A), net.sent_to(B)
    assert sent_a.request_id == sent_b.request_id   # the same request, resent
    assert client.seed == B
    assert all(s.closed for s in net.sockets)


def test_many_requests_on_a_silent_seed_move_to_the_next_seed_once(net):
    net.behaviours[B] = healthy
    client = client_on(A, B, timeout=0.3)

    async def main():
        async with client:
            start = time.monotonic()
            results = await asyncio.gather(*(client.get(str(i)) for i in range(50)))
            return results, time.monotonic() - start
    results, elapsed = asyncio.run(main())
    assert [r.value for r in results] == [str(i) for i in range(50)]
    assert client.seed == B                    # 50 silences, one move (not 50: back to A)
    assert len(net.sent_to(A)) == 50 and len(net.sent_to(B)) == 50
    assert elapsed < 0.3 + 0.05 + 0.25        # one timeout, one backoff, then B at once


def test_a_late_reply_from_a_live_node_completes_the_resent_request(net):
    def slow_for_one_key(request: Message):
        return ok(answer(request, "a"), request, 0.45 if request.body["key"] == "slow" else 0.05)
    net.behaviours[A] = slow_for_one_key   # B stays silent
    client = client_on(A, B, timeout=0.3)

    async def main():
        async with client:
            return await asyncio.gather(client.get("slow"), client.get("fast"))
    slow, fast = asyncio.run(main())
    assert slow.value == "slow" and slow.served_by == ("a",) and fast.value == "fast"
    assert len(net.sent_to(B)) == 1           # resent there, answered by A's late reply
    a_socket = next(s for s in net.sockets if s.endpoint == A)
    assert a_socket.sent and len(net.sockets) == 2  # A answered something: socket kept


def test_silence_everywhere_raises_timeout_within_the_deadline(net):
    client = client_on(A, B, timeout=0.1, retries=2)

    async def main():
        async with client:
            start = time.monotonic()
            with pytest.raises(Timeout) as raised:
                await client.get("k")
            return raised.value, time.monotonic() - start
    error, elapsed = asyncio.run(main())
    assert "GET" in str(error) and A in str(error) and B in str(error) and "3 tries" in str(error)
    assert 0.3 <= elapsed < 0.3 + 0.05 + 0.1 + 0.3   # 3 timeouts + 2 backoffs + slack
    assert len(net.sockets) == 3 and all(s.closed for s in net.sockets)
    assert client.requests_in_flight == 0 and client.open_connections == 0


def test_closing_a_socket_resends_its_blocked_sends_at_once(net):
    net.blocking.add(A)                       # A's queue is full: sends wait
    net.behaviours[B] = healthy
    client = client_on(A, B, timeout=0.4)

    async def main():
        async with client:
            first = asyncio.create_task(client.get("one"))
            await asyncio.sleep(0.2)
            start = time.monotonic()
            second = await client.get("two")  # its send to A is cancelled by A's drop
            return await first, second, time.monotonic() - start
    first, second, elapsed = asyncio.run(main())
    assert (first.value, second.value) == ("one", "two")
    # A dropped when the first timed out (0.2 s after the second was sent), then one
    # backoff: the second did not wait out its own 0.4 s
    assert elapsed < 0.35


def test_cancelling_a_request_propagates_and_cleans_up(net):
    client = client_on(A, timeout=5)

    async def main():
        task = asyncio.create_task(client.get("k"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.requests_in_flight == 0
        assert client.open_connections == 1   # the socket stays: A was not silent
        await client.aclose()
    asyncio.run(main())


def test_bad_reply_to_a_request_raises_protocol_error(net):
    net.behaviours[A] = lambda request: [(0, msgpack.packb([int(MsgType.ERROR),
                                                            request.request_id, {}]))]
    with pytest.raises(ProtocolError, match="bad reply from tcp://a:1"):
        asyncio.run(client_on(A).get("k"))


# ------------------------------------------------------------------ batches


def test_mget_sends_concurrent_chunks_of_1000_and_keeps_key_order(net):
    in_flight, peak = 0, 0

    def counting(request: Message):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)

        def answered():
            nonlocal in_flight
            in_flight -= 1
        asyncio.get_running_loop().call_later(0.05, answered)
        return ok(answer(request), request, 0.05)
    net.behaviours[A] = counting
    keys = [f"k{i}" for i in range(2500)]

    async def main():
        async with client_on(A) as client:
            return await client.mget(keys, r=1)
    results = asyncio.run(main())
    assert [r.value for r in results] == keys
    sent = net.sent_to(A)
    assert [len(m.body["keys"]) for m in sent] == [1000, 1000, 500]
    assert all(m.type == MsgType.MGET and m.body["r"] == 1 and m.body["n"] is None
               for m in sent)
    assert peak == 3   # the chunks were in flight together


def test_mput_takes_a_dict_or_pairs_and_keeps_item_order(net):
    net.behaviours[A] = healthy

    client = client_on(A)

    async def main():
        async with client:
            from_dict = await client.mput({"a": b"1", "b": "2"}, w=1)
            from_pairs = await client.mput((f"k{i}", b"v") for i in range(1500))
        return from_dict, from_pairs
    from_dict, from_pairs = asyncio.run(main())
    assert [r.version.node_id for r in from_dict] == ["a", "b"]
    assert all(isinstance(r, PutResult) and r.success for r in from_pairs)
    assert [r.version.node_id for r in from_pairs] == [f"k{i}" for i in range(1500)]
    first, *rest = net.sent_to(A)
    assert [item[:2] for item in first.body["items"]] == [["a", b"1"], ["b", "2"]]
    assert all(type(item[2]) is int for item in first.body["items"])
    assert {k: first.body[k] for k in ("w", "n", "writer")} == {
        "w": 1, "n": None, "writer": client.writer}
    assert [len(m.body["items"]) for m in rest] == [1000, 500]


def test_batch_raises_the_first_key_error_after_every_chunk_answered(net, monkeypatch):
    monkeypatch.setattr(batches, "BATCH_MAX_KEYS", 2)

    def some_fail(request: Message):
        results = [{"error": "unavailable", "message": f"{k} has too few replicas"}
                   if k in ("k3", "k4") else get_body(k) for k in request.body["keys"]]
        return ok({"results": results}, request)
    net.behaviours[A] = some_fail

    async def main():
        async with client_on(A) as client:
            with pytest.raises(Unavailable, match="k3 has too few") as raised:
                await client.mget([f"k{i}" for i in range(6)])
        return raised.value
    error = asyncio.run(main())
    assert error.details == {"key": "k3", "index": 3}
    assert len(net.sent_to(A)) == 3


def test_batch_reply_with_the_wrong_number_of_results_is_a_protocol_error(net):
    net.behaviours[A] = lambda request: ok({"results": [get_body("only one")]}, request)
    with pytest.raises(ProtocolError, match="MGET reply has 1 results for 2 keys"):
        asyncio.run(client_on(A).mget(["a", "b"]))


def test_a_failed_chunk_is_raised_after_the_others_end(net, monkeypatch):
    monkeypatch.setattr(batches, "BATCH_MAX_KEYS", 1)
    net.behaviours[A] = lambda request: (
        [] if request.body["keys"] == ["lost"] else ok(answer(request), request))
    client = client_on(A, timeout=0.1, retries=0)

    async def main():
        with pytest.raises(Timeout, match="MGET"):
            await client.mget(["a", "lost", "b"])
        others = asyncio.all_tasks() - {asyncio.current_task()}
        assert [t.get_name() for t in others] == [f"zring reader {A}"]  # no chunk running
        await client.aclose()
        assert asyncio.all_tasks() == {asyncio.current_task()}
    asyncio.run(main())


def test_empty_batches_send_nothing(net):
    async def main():
        async with client_on(A) as client:
            return await client.mget([]), await client.mput({}), await client.mput([])
    assert asyncio.run(main()) == ([], [], [])
    assert net.sockets == []


# ------------------------------------------------------------------ closing and loops


def test_close_is_idempotent_and_the_client_works_in_a_later_event_loop(net):
    net.behaviours[A] = healthy
    client = client_on(A)
    client.close()
    assert asyncio.run(client.get("one")).value == "one"
    # asyncio.run cancelled the reader at its end, which closed the socket
    assert client.open_connections == 0 and net.sockets[0].closed
    assert asyncio.run(client.get("two")).value == "two"
    client.close()
    client.close()
    assert len(net.sockets) == 2 and all(s.closed for s in net.sockets)


def test_close_fails_the_requests_in_flight(net):
    client = client_on(A, timeout=5)

    async def main():
        task = asyncio.create_task(client.get("k"))
        await asyncio.sleep(0.05)
        client.close()
        with pytest.raises(ZringError, match="closed"):
            await task
        await asyncio.sleep(0)
        assert asyncio.all_tasks() == {asyncio.current_task()}
    asyncio.run(main())
    assert net.sockets[0].closed


def test_async_with_leaves_no_task_and_no_open_socket(net):
    def seed_a(request: Message):   # knows member b, at B
        if request.type == MsgType.CLUSTER_STATUS:
            return ok({"node_id": "a", "members": [
                {"node_id": "b", "address": B, "status": "normal", "liveness": "up"}]},
                request)
        return healthy(request)
    net.behaviours.update({A: seed_a, B: lambda request: ok({"counters": {}}, request)})

    async def main():
        async with client_on(A, B) as client:
            await client.get("x")
            await client.node_stats("b")   # asked at b itself: a socket to B
            assert client.open_connections == 2
        assert asyncio.all_tasks() == {asyncio.current_task()}
        assert client.open_connections == 0
    asyncio.run(main())
    assert all(s.closed for s in net.sockets)
