"""AsyncClient: many requests in flight at once from one asyncio event loop.

    async with AsyncClient(["tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002"]) as client:
        await client.put("user:1", b"alice")
        results = await asyncio.gather(*(client.get(f"user:{i}") for i in range(200)))
        await client.mput({"a": b"1", "b": b"2"})
        await client.mget(["a", "b"])         # [GetResult, GetResult], in key order

Every method of :class:`zring.Client`, each returning an awaitable of the same result: the
requests themselves are :mod:`zring.clientcore`'s, shared by both clients. The client keeps
ONE DEALER per node endpoint (opened on first use) and sends every request to that endpoint
over it; a single reader task per socket matches each reply to the future awaiting it by
request id (a stray reply, e.g. a late one to a request already answered, is ignored). The
sockets are plain pyzmq sockets watched through the loop's selector
(:class:`~zring.aiosockets.LoopDealer`): a send that the socket takes at once costs no
future, a reply already queued no wakeup (zmq.asyncio spent about three times as much CPU
per request).

Each attempt waits at most ``timeout`` seconds (its send included). On silence the request is
resent to the next endpoint, up to ``retries`` more times with a short backoff (Lazy Pirate,
as in :class:`~zring.Client`), then :class:`~zring.errors.Timeout` is raised. The socket is
kept when the node answered anything else since the request was sent (it is alive, just slow
for that request: its late reply is simply ignored); when it was silent throughout, it is
closed with LINGER 0, so requests still queued for a dead node are dropped rather than
delivered when it comes back, and the other requests waiting on it are resent at once. An
ERROR reply raises the matching :mod:`zring.errors` exception and is not retried.

A client belongs to the event loop that first uses it and is not thread-safe. ``close()``
(sync) closes its sockets; ``aclose()`` and ``async with`` also wait for the reader tasks to
end. A client stays usable after ``close()``, e.g. from a later ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Self

import zmq

from zring.aiosockets import Connection, LoopDealer, PendingReplies
from zring.clientcore.commands import Commands
from zring.clientcore.requests import Command, Exchange, Gossip, Request, Sleep, Steps
from zring.clientnet import GossipListener, new_dealer, wall_ms
from zring.errors import ZringError
from zring.protocol import Message

__all__ = ["AsyncClient"]


class AsyncClient(Commands):
    """An asyncio connection to a zring cluster through its seed nodes, built as
    :class:`~zring.Client` is (the same arguments)."""

    _monotonic = staticmethod(time.monotonic)
    _wall_ms = staticmethod(wall_ms)

    def _setup(self) -> None:
        self._context = zmq.Context.instance()
        self._connections: dict[str, Connection] = {}
        self._replies = PendingReplies()
        self._gossip = GossipListener(self.keys)
        self._closes = 0   # close() count: a request that outlived a close() fails

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
        self._gossip.close(self._routes)
        for connection in list(self._connections.values()):
            self._drop(connection, ZringError("the client was closed during the request"))

    async def aclose(self) -> None:
        """``close()``, then wait until the reader tasks of this loop have ended."""
        loop = asyncio.get_running_loop()
        readers = [c.reader for c in self._connections.values()
                   if c.reader is not None and c.loop is loop]
        self.close()
        await asyncio.gather(*readers, return_exceptions=True)

    # -------------------------------------------------------------- effects

    async def _run(self, steps: Steps) -> Any:
        command, closes = Command(steps), self._closes
        effect = command.effect
        while effect is not None:
            if self._closes != closes:
                raise ZringError("the client was closed during the request")
            # what the effect came to (its result, or the ZringError it raised), awaited
            # here: one coroutine less per request than through a helper
            try:
                if effect.__class__ is Exchange:
                    requests = effect.requests
                    outcome: Any = [await self._attempt(requests[0], effect.timeout)] \
                        if len(requests) == 1 else await self._exchange(effect)
                elif effect.__class__ is Sleep:
                    outcome = await asyncio.sleep(effect.seconds)
                else:
                    outcome = self._listen(effect)
            except ZringError as exc:
                outcome = exc
            effect = command.step(outcome)
        return command.result

    def _listen(self, effect: Gossip) -> None:
        self._gossip.listen(effect.endpoints)
        self._gossip.drain(self._routes, time.monotonic())

    async def _exchange(self, effect: Exchange) -> list[Message | ZringError | None]:
        """Each request's reply (None on silence), the requests concurrently."""
        if effect.quorum is not None:
            return await self._exchange_quorum(effect)
        outcomes = await asyncio.gather(*(self._attempt(request, effect.timeout)
                                          for request in effect.requests),
                                        return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, ZringError):
                raise outcome
        return outcomes

    async def _exchange_quorum(self, effect: Exchange) -> list[Message | ZringError | None]:
        """A quorum exchange: the replies until it is decided (see Exchange); the attempts
        still waiting then are cancelled (their late replies are ignored)."""
        tasks = [asyncio.ensure_future(self._attempt(request, effect.timeout))
                 for request in effect.requests]
        index = {task: position for position, task in enumerate(tasks)}
        outcomes: list[Message | ZringError | None] = [None] * len(tasks)
        good = bad = 0
        pending = set(tasks)
        try:
            while pending:
                done, pending = await asyncio.wait(pending,
                                                   return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    error = task.exception()
                    if error is not None and not isinstance(error, ZringError):
                        raise error
                    outcome = outcomes[index[task]] = error or task.result()
                    if outcome.__class__ is Message and effect.accepts(outcome):
                        good += 1
                    else:
                        bad += 1
                if effect.decided(good, bad):
                    break
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        return outcomes

    async def _attempt(self, request: Request, timeout: float) -> Message | None:
        """Send ``request`` to its endpoint and await its reply; None on silence."""
        connection = self._connection(request.endpoint)
        request_id = request.request_id
        future = self._replies.expect(request_id)
        connection.inflight.add(request_id)
        sent_at = time.monotonic()
        # one timer per attempt (cheaper than asyncio.timeout): silence fails the future
        timer = connection.loop.call_at(connection.loop.time() + timeout, _time_out, future)
        try:
            if not connection.socket.try_send(request.frame):   # a full queue: wait for room
                async with asyncio.timeout(timeout):
                    await connection.socket.send(request.frame)
            return await future
        except TimeoutError:
            if not connection.closed and connection.last_reply_at < sent_at:
                self._drop(connection)   # silent throughout: drop what is queued for it
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

    # -------------------------------------------------------------- connections

    def _connection(self, endpoint: str) -> Connection:
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
            connection = Connection(endpoint, self._new_socket(endpoint), loop)
            connection.reader = loop.create_task(self._read_replies(connection),
                                                 name=f"zring reader {endpoint}")
            self._connections[endpoint] = connection
        return connection

    async def _read_replies(self, connection: Connection) -> None:
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

    def _drop(self, connection: Connection, error: BaseException | None = None) -> None:
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

    def _new_socket(self, endpoint: str) -> LoopDealer:
        return LoopDealer(new_dealer(self._context, endpoint, self.keys),
                          asyncio.get_running_loop())

    # -------------------------------------------------------------- probes (read-only)

    @property
    def open_connections(self) -> int:
        """How many node sockets (DEALERs, each with its reader task) are open now: one per
        endpoint in use; a node silent throughout a request has its socket closed, and
        ``close()`` closes them all."""
        return len(self._connections)

    @property
    def requests_in_flight(self) -> int:
        """Requests sent and still awaiting their reply (or their timeout), over all
        sockets."""
        return len(self._replies)

    @property
    def listening_to_gossip(self) -> bool:
        """Whether this client is subscribed to the nodes' gossip (a token-aware client
        subscribes once it has the ring; ``close()`` ends it)."""
        return self._gossip.listening


def _time_out(future: asyncio.Future) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def _current_task() -> asyncio.Task | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop (close() after the loop ended)
        return None
