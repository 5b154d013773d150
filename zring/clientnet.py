"""The ZeroMQ sockets both clients open: a DEALER per node, and one SUB to the nodes' gossip."""

from __future__ import annotations

import time
from collections.abc import Iterable

import zmq

from zring.clientcore.routing import RoutingTable
from zring.errors import InvalidRequest, ProtocolError
from zring.protocol import MAX_FRAME_BYTES, MsgType, decode
from zring.security import ClientKeys

__all__ = ["GossipListener", "new_dealer", "wall_ms"]

_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)   # plain ints: IntFlag math is slower


def wall_ms() -> int:
    """The wall clock in milliseconds (write stamps are taken from it)."""
    return int(time.time() * 1000)


def new_dealer(context: zmq.Context, endpoint: str, keys: ClientKeys | None) -> zmq.Socket:
    """A client's DEALER to ``endpoint``: LINGER 0, MAXMSGSIZE, bounded HWMs, CurveZMQ if
    ``keys``."""
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
    socket.setsockopt(zmq.SNDHWM, 1000)
    socket.setsockopt(zmq.RCVHWM, 1000)
    if keys is not None:
        keys.connect(socket)
    try:
        socket.connect(endpoint)
    except zmq.ZMQError as exc:
        socket.close(linger=0)
        raise InvalidRequest(f"bad endpoint {endpoint!r}: {exc}") from None
    return socket


class GossipListener:
    """A token-aware client's SUB to the nodes' gossip, read without blocking before a
    request (the routing table says when): who is alive, and whether our ring is stale."""

    def __init__(self, keys: ClientKeys | None = None) -> None:
        self.keys = keys
        self._socket: zmq.Socket | None = None
        self._endpoints: set[str] = set()

    def listen(self, endpoints: Iterable[str]) -> None:
        """Subscribe to the gossip of ``endpoints`` too."""
        for endpoint in endpoints:
            if endpoint in self._endpoints:
                continue
            if self._socket is None:
                self._socket = zmq.Context.instance().socket(zmq.SUB)
                self._socket.setsockopt(zmq.LINGER, 0)
                self._socket.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
                self._socket.setsockopt(zmq.RCVHWM, 100)
                self._socket.setsockopt(zmq.SUBSCRIBE, b"")
                if self.keys is not None:
                    self.keys.connect(self._socket)
            try:
                self._socket.connect(endpoint)
            except zmq.ZMQError:
                continue
            self._endpoints.add(endpoint)

    @property
    def listening(self) -> bool:
        return self._socket is not None

    def drain(self, routes: RoutingTable, now: float, budget: int = 100) -> None:
        """Hand the gossip that arrived since the last request to ``routes``."""
        gossip = self._socket
        if gossip is None:
            return
        for _ in range(budget):
            if not gossip.getsockopt(_EVENTS) & _POLLIN:
                return  # cheaper than a recv raising Again, before every request
            try:
                frame = gossip.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                message = decode(frame, bounded=False)
            except ProtocolError:
                continue
            if message.type == MsgType.GOSSIP:
                routes.heard(message.body, now)

    def close(self, routes: RoutingTable) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
            self._endpoints.clear()
            routes.unsubscribed()
