"""Client: talk to a zring cluster through any of its nodes (Lazy Pirate over DEALERs).

    with Client(["tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002"]) as client:
        client.put("user:1", b"alice")
        client.get("user:1").value          # b"alice"

Any node coordinates any request. Every request waits at most ``timeout`` seconds for its
reply (a blocking recv with a timeout, never an unbounded wait); on silence the socket is
closed with LINGER 0 (dropping the unsent request and any late reply) and the request is
resent to the next endpoint, up to ``retries`` more times with a short backoff (the retry
policy, :class:`~zring.clientcore.retry.Retry`). Then :class:`~zring.errors.Timeout` is
raised. An ERROR reply raises the matching :mod:`zring.errors` exception at once: the
cluster answered, so retrying elsewhere would not help (a write that was refused with
``Unavailable`` may still have been applied on some replicas, as the message says).

Replies are matched by request id; a stray reply to an earlier request is ignored.

Token-aware routing (``token_aware=True``, the default): the client learns the ring from any
node (RING_STATE) and sends each key's request straight to a live replica of the key, so the
coordinator reads or writes locally and nothing takes an extra hop. It keeps the ring current
by subscribing to the nodes' gossip (a member that routes by another ring marks ours stale)
and by the hint a node adds to a reply when it was not a replica of the key. The seeds are
the fallback when the ring is unknown or every replica is silent.

What a request does is :mod:`zring.clientcore`'s, shared with :class:`zring.aio.AsyncClient`;
this module only moves its frames. A client is not thread-safe (neither is a ZeroMQ socket):
use one per thread.
"""

from __future__ import annotations

import time
from typing import Any, Self

import zmq

from zring.clientcore.commands import Commands
from zring.clientcore.options import DEFAULT_SEEDS, parse_seeds, seeds_from_env
from zring.clientcore.requests import Command, Exchange, Gossip, Request, Sleep, Steps
from zring.clientcore.results import (  # importable from here too, as they always were
    ClusterStatus,
    DeleteResult,
    GetResult,
    MemberInfo,
    PutResult,
    RingState,
)
from zring.clientnet import GossipListener, new_dealer, wall_ms
from zring.errors import ProtocolError
from zring.protocol import Message, decode
from zring.security import ClientKeys

__all__ = [
    "DEFAULT_SEEDS", "Client", "ClientKeys", "ClusterStatus", "DeleteResult", "GetResult",
    "MemberInfo", "PutResult", "RingState", "parse_seeds", "seeds_from_env",
]

_POLLIN = int(zmq.POLLIN)
_RCVTIMEO = int(zmq.RCVTIMEO)


class Client(Commands):
    """A blocking connection to a zring cluster through its seed nodes: ``Client(seeds,
    timeout=5.0, retries=3, *, token_aware=True, keys=None)``, the arguments as
    :class:`~zring.clientcore.session.Session` takes them."""

    _monotonic = staticmethod(time.monotonic)
    _wall_ms = staticmethod(wall_ms)

    def _setup(self) -> None:
        self._context = zmq.Context.instance()
        self._sockets: dict[str, zmq.Socket] = {}   # endpoint -> DEALER
        self._gossip = GossipListener(self.keys)
        self._effects = {Exchange: self._exchange, Sleep: self._sleep, Gossip: self._listen}

    def __repr__(self) -> str:
        return f"Client(seeds={self.seeds!r}, timeout={self.timeout}, retries={self.retries})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the sockets (LINGER 0: nothing pending is kept). The client stays usable."""
        for endpoint in list(self._sockets):
            self._drop(endpoint)
        self._gossip.close(self._routes)

    # -------------------------------------------------------------- effects

    def _run(self, steps: Steps) -> Any:
        return Command(steps).run(self._perform)

    def _perform(self, effect: Exchange | Sleep | Gossip) -> Any:
        return self._effects[effect.__class__](effect)

    @staticmethod
    def _sleep(effect: Sleep) -> None:
        time.sleep(effect.seconds)

    def _listen(self, effect: Gossip) -> None:
        self._gossip.listen(effect.endpoints)
        self._gossip.drain(self._routes, time.monotonic())

    def _exchange(self, effect: Exchange) -> list[Message | None]:
        """Each request's reply, None where the endpoint stayed silent (its socket is
        closed then: it may still answer, and that reply must never be read)."""
        requests = effect.requests
        if len(requests) == 1:
            [request] = requests
            reply = self._exchange_one(request, effect.timeout)
            if reply is None:
                self._drop(request.endpoint)
            return [reply]
        replies = self._exchange_many(effect)
        if not effect.ended_early(replies):
            for request, reply in zip(requests, replies, strict=True):
                if reply is None:
                    self._drop(request.endpoint)
        return replies

    def _exchange_one(self, request: Request, timeout: float) -> Message | None:
        deadline = time.monotonic() + timeout
        socket = self._socket(request.endpoint)
        try:
            if not _send_within(socket, request.frame, timeout):
                return None
            while (remaining := deadline - time.monotonic()) > 0:
                # a blocking recv with a timeout: one wait on the socket's own signal, where
                # zmq_poll asks the socket for its events before and after waiting
                socket.setsockopt(_RCVTIMEO, int(remaining * 1000) + 1)
                reply = _decoded(request.endpoint, socket.recv_multipart())
                if reply.request_id == request.request_id:
                    return reply
                # a reply to an earlier request of ours: ignore it
        except zmq.Again:
            return None
        except BaseException:
            self._drop(request.endpoint)   # it may still be answered: never read that reply
            raise
        return None

    def _exchange_many(self, effect: Exchange) -> list[Message | None]:
        """Send every request at once, then gather the replies as they come (a quorum
        exchange: until it is decided)."""
        requests, timeout = effect.requests, effect.timeout
        quorum, accepts = effect.quorum, effect.accepts
        good = bad = 0
        replies: list[Message | None] = [None] * len(requests)
        waiting: dict[int, int] = {}   # request id -> index
        for index, request in enumerate(requests):
            if _send_within(self._socket(request.endpoint), request.frame, timeout):
                waiting[request.request_id] = index
        endpoint_of = {self._sockets[requests[index].endpoint]: requests[index].endpoint
                       for index in waiting.values()}
        polled = [(socket, _POLLIN) for socket in endpoint_of]
        deadline = time.monotonic() + timeout
        while waiting and (remaining := deadline - time.monotonic()) > 0:
            for socket, _ in zmq.zmq_poll(polled, int(remaining * 1000) + 1):
                while True:
                    try:
                        frames = socket.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    reply = _decoded(endpoint_of[socket], frames)
                    index = waiting.pop(reply.request_id, None)
                    if index is not None:   # else a reply to an earlier request of ours
                        replies[index] = reply
                        if quorum is not None:
                            if accepts(reply):
                                good += 1
                            else:
                                bad += 1
                            if effect.decided(good, bad):
                                return replies   # the rest are read and ignored later
        return replies

    # -------------------------------------------------------------- sockets

    def _socket(self, endpoint: str) -> zmq.Socket:
        socket = self._sockets.get(endpoint)
        if socket is None:
            socket = self._sockets[endpoint] = new_dealer(self._context, endpoint, self.keys)
        return socket

    def _drop(self, endpoint: str) -> None:
        socket = self._sockets.pop(endpoint, None)
        if socket is not None:
            socket.close(linger=0)

    # -------------------------------------------------------------- probes (read-only)

    @property
    def open_connections(self) -> int:
        """How many node sockets (DEALERs) are open now: one per endpoint in use; a node
        that stays silent has its socket closed, and ``close()`` closes them all."""
        return len(self._sockets)

    @property
    def requests_in_flight(self) -> int:
        """Requests awaiting their reply: always 0 for a blocking client between calls
        (see :attr:`zring.aio.AsyncClient.requests_in_flight`)."""
        return 0

    @property
    def listening_to_gossip(self) -> bool:
        """Whether this client is subscribed to the nodes' gossip (a token-aware client
        subscribes once it has the ring; ``close()`` ends it)."""
        return self._gossip.listening


def _decoded(endpoint: str, frames: list[bytes]) -> Message:
    try:
        return decode(frames[-1], bounded=False)
    except ProtocolError as exc:
        raise ProtocolError(f"bad reply from {endpoint}: {exc}") from None


def _send_within(socket: zmq.Socket, frame: bytes, timeout: float) -> bool:
    """Queue ``frame`` on ``socket``, waiting up to ``timeout`` for room in a full queue;
    False if it could not be queued."""
    try:
        socket.send(frame, zmq.NOBLOCK)
    except zmq.Again:
        if not socket.poll(timeout * 1000, zmq.POLLOUT):
            return False
        try:
            socket.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            return False
    return True
