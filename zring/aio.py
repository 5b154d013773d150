"""AsyncClient: many requests in flight at once from one asyncio event loop.

    async with AsyncClient(["tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002"]) as client:
        await client.put("user:1", b"alice")
        results = await asyncio.gather(*(client.get(f"user:{i}") for i in range(200)))
        await client.mput({"a": b"1", "b": b"2"})
        await client.mget(["a", "b"])         # [GetResult, GetResult], in key order

The same API as :class:`zring.Client`, as coroutines. The client keeps ONE DEALER per node
endpoint (opened on first use) and sends every request to that endpoint over it; a single
reader task per socket matches each reply to the future awaiting it by request id (a stray
reply, e.g. a late one to a request already answered, is ignored). The sockets are plain
pyzmq sockets watched through the loop's selector (``_LoopDealer``): a send that the socket
takes at once costs no future, a reply already queued no wakeup (zmq.asyncio spent about
three times as much CPU per request).

Each attempt waits at most ``timeout`` seconds (its send included). On silence the request is
resent to the next seed, up to ``retries`` more times with a short backoff (Lazy Pirate, as
in :class:`~zring.Client`), then :class:`~zring.errors.Timeout` is raised. The socket is kept
when the node answered anything else since the request was sent (it is alive, just slow for
that request: its late reply is simply ignored); when it was silent throughout, it is closed
with LINGER 0, so requests still queued for a dead node are dropped rather than delivered
when it comes back, and the other requests waiting on it are resent at once. An ERROR reply
raises the matching :mod:`zring.errors` exception and is not retried.

``mget``/``mput`` send at most 1000 keys (and about 8 MiB of keys and values) per MGET/MPUT
message, the chunks concurrently. Each key's result comes back in order; if a key failed on
its own, the first such error (in key order) is raised after every chunk has answered, with
``details`` ``key`` and ``index``.

A client belongs to the event loop that first uses it and is not thread-safe. ``close()``
(sync) closes its sockets; ``aclose()`` and ``async with`` also wait for the reader tasks to
end. A client stays usable after ``close()``, e.g. from a later ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Self

import zmq

from zring.client import (
    _BACKOFF_BASE_S,
    _BACKOFF_MAX_S,
    _BATCH_CHUNK,
    _CONFLICT_RETRIES,
    _EVENTS,
    _POLLIN,
    ClusterStatus,
    DeleteResult,
    GetResult,
    PutResult,
    RingState,
    WriteStamps,  # noqa: I001 - kept beside the private names below
    _client_options,
    _count,
    _key,
    _Router,
    _seeds_from,
    _unwrap,
    _value,
    new_dealer,
    restampable,
)
from zring.core.batching import cut
from zring.errors import (
    InvalidRequest,
    ProtocolError,
    Timeout,
    VersionConflict,
    ZringError,
    error_from_code,
)
from zring.protocol import Message, MsgType, decode, encode
from zring.security import ClientKeys

__all__ = ["AsyncClient"]

BATCH_MAX_KEYS = _BATCH_CHUNK         # keys (or items) in one MGET / MPUT message
BATCH_MAX_BYTES = 8 * 1024 * 1024     # keys + values in one MPUT message (one big item alone)


# ------------------------------------------------------------------ reply matching


class _PendingReplies:
    """Request id -> the future of the attempt awaiting its reply (pure: no sockets).

    A resent request keeps its id, so a late reply from the node asked first also completes
    it; that is the same request's answer."""

    def __init__(self) -> None:
        self._waiting: dict[int, asyncio.Future[Message | None]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def expect(self, request_id: int) -> asyncio.Future[Message | None]:
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        return future

    def forget(self, request_id: int, future: asyncio.Future) -> None:
        if self._waiting.get(request_id) is future:
            del self._waiting[request_id]

    def resolve(self, endpoint: str, frame: bytes) -> bool:
        """Complete the request ``frame`` answers; False if it answers none (ignored)."""
        try:
            reply = decode(frame, bounded=False)
        except ProtocolError as exc:
            # a frame whose request id could still be read fails that request alone
            future = self._waiting.get(exc.details.get("request_id"))
            if future is None or future.done():
                return False
            future.set_exception(ProtocolError(f"bad reply from {endpoint}: {exc}"))
            return True
        future = self._waiting.get(reply.request_id)
        if future is None or future.done():
            return False
        future.set_result(reply)
        return True

    def wake(self, request_ids: Iterable[int], error: BaseException | None = None) -> None:
        """End these requests' waits: with ``error``, or as silence (None: resend now)."""
        for request_id in request_ids:
            future = self._waiting.get(request_id)
            if future is not None and not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)


_POLLOUT = int(zmq.POLLOUT)
_RECV_BURST = 64   # replies read back to back before the reader yields to other tasks


class _LoopDealer:
    """A DEALER socket driven by an asyncio loop's selector.

    ZeroMQ's FD is edge-triggered: it signals that ZMQ_EVENTS may have changed, not that a
    message waits, so ZMQ_EVENTS is read after every send and receive and on every
    signal. ``try_send`` never waits; ``send`` waits for room (a full HWM); the one reader
    awaits ``recv_multipart``. Closing fails the reader with ENOTSOCK and cancels waiting
    sends."""

    __slots__ = ("socket", "loop", "_fd", "_reader", "_senders", "_burst", "closed")

    def __init__(self, socket: zmq.Socket, loop: asyncio.AbstractEventLoop) -> None:
        self.socket = socket
        self.loop = loop
        self._fd = socket.getsockopt(zmq.FD)
        self._reader: asyncio.Future | None = None
        self._senders: list[asyncio.Future] = []
        self._burst = 0
        self.closed = False
        loop.add_reader(self._fd, self._on_events)

    def _on_events(self) -> None:
        if self.closed:
            return
        events = self.socket.getsockopt(_EVENTS)
        if events & _POLLIN and self._reader is not None and not self._reader.done():
            self._reader.set_result(None)
        if events & _POLLOUT and self._senders:
            for waiter in self._senders:
                if not waiter.done():
                    waiter.set_result(None)

    def try_send(self, frame: bytes) -> bool:
        """Queue ``frame`` if the socket takes it now (the usual case)."""
        if self.closed:
            raise zmq.ZMQError(zmq.ENOTSOCK)
        try:
            self.socket.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self._on_events()  # even a refused send may swallow the FD's signal of a reply
            return False
        self._on_events()  # sending may have swallowed the FD's signal of a reply
        return True

    async def send(self, frame: bytes) -> None:
        while not self.try_send(frame):
            waiter = self.loop.create_future()
            self._senders.append(waiter)
            try:
                await waiter
            finally:
                self._senders.remove(waiter)

    async def recv_multipart(self) -> list[bytes]:
        while True:
            if self.closed:
                raise zmq.ZMQError(zmq.ENOTSOCK)
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                self._burst = 0
                self._reader = self.loop.create_future()
                self._on_events()  # a reply that arrived since the recv: no wait
                await self._reader
                continue
            self._burst += 1
            if self._burst >= _RECV_BURST:  # a steady stream: let the requests run too
                self._burst = 0
                await asyncio.sleep(0)
            return frames

    def close(self, linger: int | None = 0) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.loop.is_closed():  # a closed loop runs no callbacks: its waiters are gone
            self.loop.remove_reader(self._fd)
            if self._reader is not None and not self._reader.done():
                self._reader.set_exception(zmq.ZMQError(zmq.ENOTSOCK))
            for waiter in self._senders:
                waiter.cancel()   # as pyzmq cancels the sends pending on a closed socket
        self.socket.close(linger=0)


class _Connection:
    """One DEALER to one node endpoint, shared by every request sent there."""

    __slots__ = ("endpoint", "socket", "loop", "reader", "inflight", "last_reply_at",
                 "closed")

    def __init__(self, endpoint: str, socket: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.endpoint = endpoint
        self.socket = socket                     # a _LoopDealer
        self.loop = loop                         # the loop its reader task runs on
        self.reader: asyncio.Task | None = None  # resolves replies until the socket closes
        self.inflight: set[int] = set()          # request ids sent here, not yet answered
        self.last_reply_at = float("-inf")       # monotonic time of the last frame received
        self.closed = False


# ------------------------------------------------------------------ batches


def _chunks(entries: list, size: Callable[[Any], int] | None = None) -> list[list]:
    """``entries`` cut into runs of at most BATCH_MAX_KEYS (and BATCH_MAX_BYTES by ``size``)."""
    return cut(entries, size or (lambda entry: 0), BATCH_MAX_KEYS, BATCH_MAX_BYTES)


def _item_bytes(item: list) -> int:
    """Bytes of an MPUT item's key and value (its timestamp is a few more)."""
    return sum(len(part.encode()) if isinstance(part, str) else len(part) for part in item[:2])


def _in_order(entries: list, order: list[list[int]]) -> list:
    """Entries that came back group by group, put back in key order."""
    placed: list = [None] * len(entries)
    for index, entry in zip((i for group in order for i in group), entries, strict=True):
        placed[index] = entry
    return placed


def _batch_results(entries: list, keys: Sequence[str], from_body: Callable[[dict], Any]) -> list:
    """Per-key reply entries -> results; the first per-key error entry is raised."""
    results, first_error = [], None
    for index, (key, entry) in enumerate(zip(keys, entries)):
        if not isinstance(entry, dict):
            raise ProtocolError(f"batch result {index} is not a map")
        if "error" in entry:
            if first_error is None:
                first_error = error_from_code(str(entry["error"]), str(entry.get("message", "")),
                                              {"key": key, "index": index})
            results.append(None)
        else:
            results.append(from_body(entry))
    if first_error is not None:
        raise first_error
    return results


# ------------------------------------------------------------------ client


class AsyncClient:
    """An asyncio connection to a zring cluster through its seed nodes.

    ``seeds``: ROUTER endpoints (a list or a comma-separated str; default ``$ZRING_SEEDS``,
    else 127.0.0.1:7001..7003). ``timeout``: seconds to wait for each reply. ``retries``:
    how many times a silent request is resent, each time to the next seed. ``keys``: as
    Client's (CurveZMQ keys for a cluster with security on).
    """

    def __init__(self, seeds: str | Sequence[str] | None = None, timeout: float = 5.0,
                 retries: int = 3, *, token_aware: bool = True,
                 keys: ClientKeys | None = None) -> None:
        self.seeds, self.timeout, self.retries = _client_options(seeds, timeout, retries)
        self.keys = keys
        self._context = zmq.Context.instance()
        self._connections: dict[str, _Connection] = {}
        self._replies = _PendingReplies()
        self._seed_index = random.randrange(len(self.seeds))  # spread clients over seeds
        self._ids = itertools.count(random.getrandbits(32) + 1)
        self._closes = 0   # close() count: a request that outlived a close() fails
        self.token_aware = token_aware   # as Client: each key's request to one of its replicas
        self._router = _Router(self.keys)
        self._stamps = WriteStamps()   # as Client's: one stamp per write, kept on resends

    def __repr__(self) -> str:
        return f"AsyncClient(seeds={self.seeds!r}, timeout={self.timeout}, " \
               f"retries={self.retries})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def close(self) -> None:
        """Close every socket (LINGER 0: nothing pending is kept); requests still waiting
        fail with ZringError. Idempotent; the client stays usable."""
        self._closes += 1
        self._router.close()
        for connection in list(self._connections.values()):
            self._drop(connection, ZringError("the client was closed during the request"))

    async def aclose(self) -> None:
        """``close()``, then wait until the reader tasks of this loop have ended."""
        loop = asyncio.get_running_loop()
        readers = [c.reader for c in self._connections.values()
                   if c.reader is not None and c.loop is loop]
        self.close()
        await asyncio.gather(*readers, return_exceptions=True)

    # -------------------------------------------------------------- data

    async def put(self, key: str, value: bytes | str, *, replicas: int | None = None,
                  w: int | None = None) -> PutResult:
        """Write ``value``; succeeds once ``w`` of the ``replicas`` replicas stored it."""
        return PutResult.from_body(await self._write(MsgType.PUT, {
            "key": _key(key), "value": _value(value), "n": _count(replicas, "replicas"),
            "w": _count(w, "w")}, key))

    async def get(self, key: str, *, r: int | None = None,
                  replicas: int | None = None) -> GetResult:
        """Read the newest value among ``r`` replicas (``found`` is False if there is none)."""
        body = await self._execute(MsgType.GET, {
            "key": _key(key), "n": _count(replicas, "replicas"), "r": _count(r, "r")}, key)
        self._stamps.observe_body(body)
        return GetResult.from_body(body)

    async def delete(self, key: str, *, w: int | None = None,
                     replicas: int | None = None) -> DeleteResult:
        """Write a tombstone for ``key`` (deleting a missing key succeeds too)."""
        return DeleteResult.from_body(await self._write(MsgType.DELETE, {
            "key": _key(key), "n": _count(replicas, "replicas"), "w": _count(w, "w")}, key))

    async def _write(self, msg_type: MsgType, body: dict, key: str) -> dict:
        """As Client's: stamped once for all resends; stamped again above a newer version
        held only if it was applied nowhere (every replica refused it, nothing went
        unanswered), else VersionConflict."""
        stamps = self._stamps
        body["writer"] = stamps.writer
        for attempt in range(_CONFLICT_RETRIES + 1):
            body["ts"] = stamps.next()
            silences: list[str] = []
            try:
                result = await self._execute(msg_type, body, key, silences)
            except VersionConflict as exc:
                if not stamps.stamp_again(exc, attempt, bool(silences)):
                    raise
                continue
            stamps.observe_body(result)
            return result
        raise AssertionError("unreachable")

    async def mget(self, keys: Iterable[str], *, r: int | None = None) -> list[GetResult]:
        """``get`` of every key, in key order, in MGET messages of at most 1000 keys sent
        concurrently. A key's own error is raised (the first, after all have answered)."""
        if isinstance(keys, (str, bytes)):
            raise InvalidRequest("mget takes an iterable of keys, not a single key")
        keys = [_key(key) for key in keys]
        r = _count(r, "r")
        order = await self._by_owner(keys)
        entries = await self._execute_batch(
            MsgType.MGET, [{"keys": [keys[i] for i in chunk], "r": r, "n": None}
                           for group in order for chunk in _chunks(group)], "keys")
        results = _batch_results(_in_order(entries, order), keys, GetResult.from_body)
        for result in results:
            if result.version is not None:
                self._stamps.observe(result.version.timestamp)
        return results

    async def mput(self, items: Mapping[str, bytes | str] | Iterable[tuple[str, bytes | str]],
                   *, w: int | None = None) -> list[PutResult]:
        """``put`` of every (key, value) item, results in item order, in MPUT messages of at
        most 1000 items sent concurrently. An item's own error is raised (the first, after
        all have answered)."""
        stamps = self._stamps
        triples = [[_key(key), _value(value), stamps.next()] for key, value in _pairs(items)]
        w = _count(w, "w")
        uncertain: set[int] = set()   # items resent after a silence: their fate is unknown
        entries = await self._mput_entries(triples, w, list(range(len(triples))), uncertain)
        for _ in range(_CONFLICT_RETRIES):
            for entry in entries:
                if isinstance(entry, dict):
                    stamps.observe_conflict(entry.get("held"))
            again = restampable(entries, uncertain)
            if not again:
                break
            for index in again:   # applied nowhere: stamped again above what is held
                triples[index][2] = stamps.next()
            retried = await self._mput_entries([triples[i] for i in again], w, again,
                                               uncertain)
            for index, entry in zip(again, retried, strict=True):
                entries[index] = entry
        results = _batch_results(entries, [key for key, _, _ in triples], PutResult.from_body)
        for result in results:
            if result.version is not None:
                stamps.observe(result.version.timestamp)
        return results

    async def _mput_entries(self, triples: list[list], w: int | None, indexes: list[int],
                            uncertain: set[int]) -> list:
        """Each ``[key, value, ts]``'s result entry (an error entry included), in order;
        ``indexes[i]`` (the item's index in the caller's list) goes into ``uncertain`` if
        its chunk was resent after a silence."""
        order = await self._by_owner([key for key, _, _ in triples])
        chunks = [chunk for group in order
                  for chunk in _chunks(group, lambda i: _item_bytes(triples[i]))]
        resent: list[bool] = []
        entries = await self._execute_batch(
            MsgType.MPUT,
            [{"items": [triples[i] for i in chunk], "w": w, "n": None,
              "writer": self._stamps.writer} for chunk in chunks], "items", resent)
        for chunk, was_resent in zip(chunks, resent, strict=True):
            if was_resent:
                uncertain.update(indexes[i] for i in chunk)
        return _in_order(entries, chunks)

    # -------------------------------------------------------------- ring and cluster

    async def ring_state(self) -> RingState:
        return RingState.from_body(await self._execute(MsgType.RING_STATE, {}))

    async def cluster_status(self) -> ClusterStatus:
        return ClusterStatus.from_body(await self._execute(MsgType.CLUSTER_STATUS, {}))

    async def ping(self) -> dict:
        return await self._execute(MsgType.PING, {})

    # -------------------------------------------------------------- routing

    def _endpoint_for(self, key: str | None) -> str:
        """The current seed: where requests about the cluster go, and keys' requests while
        the ring is unknown."""
        return self.seeds[self._seed_index]

    async def _routing(self) -> bool:
        """Token-aware routing is on and a ring is known (fetched on first use, refetched
        when gossip or a reply says it is stale; one fetch at a time)."""
        if not self.token_aware:
            return False
        router = self._router
        if router.wants_ring():
            for endpoint in router.ring_sources(self.seeds)[:3]:
                request_id = next(self._ids)
                frame = encode(Message(MsgType.RING_STATE, request_id, {}))
                try:
                    reply = await self._attempt(endpoint, request_id, frame)
                    if reply is not None:
                        router.update(RingState.from_body(_unwrap(reply,
                                                                  MsgType.RING_STATE)))
                        break
                except ZringError:
                    pass
                router.silent(endpoint)  # silent or failing: ask the next one
        return router.routing is not None

    async def _by_owner(self, keys: list[str]) -> list[list[int]]:
        """Key indexes grouped by the endpoint of each key's first replica (one group of
        all of them without a ring)."""
        if not keys or not await self._routing():
            return [list(range(len(keys)))] if keys else []
        return list(self._router.group(keys, self._endpoint_for(None)).values())

    def _on_silence(self, connection: _Connection, sent_at: float) -> None:
        """An attempt sent at ``sent_at`` got no reply in time: if the node said nothing at
        all since then, drop its socket; move off it unless another request already did."""
        if not connection.closed and connection.last_reply_at < sent_at:
            self._drop(connection)
        if self.seeds[self._seed_index] == connection.endpoint:
            self._seed_index = (self._seed_index + 1) % len(self.seeds)

    # -------------------------------------------------------------- transport

    async def _execute(self, msg_type: MsgType, body: dict, key: str | None = None,
                       silences: list[str] | None = None) -> dict:
        """Send one request (Lazy Pirate over the seeds); the OK body, or raise. Each
        endpoint that stayed silent (the request was resent) is added to ``silences``."""
        closes = self._closes
        request_id = next(self._ids)
        frame = encode(Message(msg_type, request_id, body))
        tried: list[str] = []
        routed = key is not None and await self._routing()
        endpoints = None   # a routed request's whole order, worked out if the owner fails
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(min(_BACKOFF_BASE_S * 2 ** (attempt - 1), _BACKOFF_MAX_S))
            if self._closes != closes:
                raise ZringError("the client was closed during the request")
            if not routed:
                endpoint = self._endpoint_for(key)
            elif not attempt:
                endpoint = self._router.owner_endpoint(key, self._endpoint_for(None))
            else:  # worked out after the owner was marked silent: it starts past the owner
                if endpoints is None:
                    endpoints = self._router.endpoints_for(
                        key, _seeds_from(self.seeds, self._seed_index))
                endpoint = endpoints[(attempt - 1) % len(endpoints)]
            tried.append(endpoint)
            reply = await self._attempt(endpoint, request_id, frame)
            if reply is not None:
                if not routed:
                    return _unwrap(reply, msg_type)
                result = self._router.unwrap(endpoint, reply, msg_type,
                                             may_retry=attempt < self.retries)
                if result is not None:
                    return result
                continue
            if silences is not None:
                silences.append(endpoint)
            if routed:
                self._router.silent(endpoint)
        raise Timeout(f"no reply to {msg_type.name} within {self.timeout:g}s from "
                      f"{', '.join(dict.fromkeys(tried))} ({len(tried)} tries)")

    async def _attempt(self, endpoint: str, request_id: int, frame: bytes) -> Message | None:
        """Send ``frame`` to ``endpoint`` and await its reply; None on silence."""
        connection = self._connection(endpoint)
        future = self._replies.expect(request_id)
        connection.inflight.add(request_id)
        sent_at = time.monotonic()
        # one timer per attempt (cheaper than asyncio.timeout): silence fails the future
        timer = connection.loop.call_at(connection.loop.time() + self.timeout, _time_out,
                                        future)
        try:
            if not connection.socket.try_send(frame):   # a full queue: wait for room
                async with asyncio.timeout(self.timeout):
                    await connection.socket.send(frame)
            return await future
        except TimeoutError:
            self._on_silence(connection, sent_at)
            return None
        except asyncio.CancelledError:
            # closing a socket cancels its pending sends: that is silence, not our
            # cancellation (the task itself was not asked to stop)
            task = asyncio.current_task()
            if connection.closed and task is not None and task.cancelling() == 0:
                return None
            raise
        except zmq.ZMQError:
            if connection.closed:
                return None
            raise
        finally:
            timer.cancel()
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: a timeout nobody awaited is not logged
            connection.inflight.discard(request_id)
            self._replies.forget(request_id, future)

    async def _execute_batch(self, msg_type: MsgType, bodies: list[dict], field: str,
                             resent: list[bool] | None = None) -> list:
        """Send the chunk ``bodies`` concurrently; every chunk's ``results`` in order. Raises
        the first chunk's error (in chunk order) once every chunk has ended. ``resent``
        gets, per chunk, whether it was resent after a silence."""
        if not bodies:
            return []
        silences: list[list[str]] = [[] for _ in bodies]
        if resent is not None:
            resent[:] = [False] * len(bodies)

        async def one(index: int, body: dict) -> list:
            key = body[field][0] if field == "keys" else body[field][0][0]
            try:
                reply = await self._execute(msg_type, body, key, silences[index])
            finally:
                if resent is not None:
                    resent[index] = bool(silences[index])
            results = reply.get("results")
            if not isinstance(results, list) or len(results) != len(body[field]):
                got = len(results) if isinstance(results, list) else "no"
                raise ProtocolError(f"{msg_type.name} reply has {got} results for "
                                    f"{len(body[field])} {field}")
            return results

        if len(bodies) == 1:
            return await one(0, bodies[0])
        outcomes = await asyncio.gather(*(one(i, body) for i, body in enumerate(bodies)),
                                        return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return [entry for outcome in outcomes for entry in outcome]

    def _connection(self, endpoint: str) -> _Connection:
        """The open DEALER to ``endpoint`` (opened, with its reader task, on first use)."""
        loop = asyncio.get_running_loop()
        connection = self._connections.get(endpoint)
        if connection is not None and connection.loop is not loop:
            if not connection.loop.is_closed():
                raise RuntimeError("this AsyncClient is in use on another event loop; "
                                   "close() it first or use one client per loop")
            self._drop(connection)
            connection = None
        if connection is None:
            connection = _Connection(endpoint, self._new_socket(endpoint), loop)
            connection.reader = loop.create_task(self._read_replies(connection),
                                                 name=f"zring reader {endpoint}")
            self._connections[endpoint] = connection
        return connection

    async def _read_replies(self, connection: _Connection) -> None:
        """The socket's one reader: every frame completes the request it answers."""
        try:
            while True:
                frames = await connection.socket.recv_multipart()
                connection.last_reply_at = time.monotonic()
                self._replies.resolve(connection.endpoint, frames[-1])
        except zmq.ZMQError:
            pass  # the socket or its context was closed
        finally:
            self._drop(connection)

    def _drop(self, connection: _Connection, error: BaseException | None = None) -> None:
        """Close ``connection`` (LINGER 0) and end its requests' waits: with ``error``, or
        as silence so they are resent elsewhere at once. Idempotent."""
        if connection.closed:
            return
        connection.closed = True
        if self._connections.get(connection.endpoint) is connection:
            del self._connections[connection.endpoint]
        if not connection.loop.is_closed():  # else its waiters are gone with their loop
            self._replies.wake(list(connection.inflight), error)
            reader = connection.reader
            if reader is not None and not reader.done() and reader is not _current_task():
                reader.cancel()
        connection.socket.close(linger=0)

    def _new_socket(self, endpoint: str) -> _LoopDealer:
        return _LoopDealer(new_dealer(self._context, endpoint, self.keys),
                           asyncio.get_running_loop())


def _time_out(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def _pairs(items: object) -> Iterator[tuple[object, object]]:
    """mput's ``items`` (a mapping or an iterable of (key, value) pairs) as pairs."""
    if isinstance(items, Mapping):
        yield from items.items()
        return
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise InvalidRequest("mput takes a mapping or an iterable of (key, value) pairs, "
                             f"not {type(items).__name__}")
    for item in items:
        if isinstance(item, (str, bytes)) or not isinstance(item, (tuple, list)) \
                or len(item) != 2:
            raise InvalidRequest(f"an mput item must be a (key, value) pair, got {item!r:.80}")
        yield item[0], item[1]


def _current_task() -> asyncio.Task | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop (close() after the loop ended)
        return None
