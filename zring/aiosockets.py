"""The asyncio client's sockets: DEALERs driven by the event loop's selector, and the
futures of the requests awaiting their replies (matched by request id)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import zmq

from zring.errors import ProtocolError
from zring.protocol import Message, decode

__all__ = ["Connection", "LoopDealer", "PendingReplies"]

_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)   # plain ints: IntFlag math is slower


class PendingReplies:
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


class LoopDealer:
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


class Connection:
    """One DEALER to one node endpoint, shared by every request sent there."""

    __slots__ = ("endpoint", "socket", "loop", "reader", "inflight", "last_reply_at",
                 "closed")

    def __init__(self, endpoint: str, socket: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.endpoint = endpoint
        self.socket = socket                     # a LoopDealer
        self.loop = loop                         # the loop its reader task runs on
        self.reader: asyncio.Task | None = None  # resolves replies until the socket closes
        self.inflight: set[int] = set()          # request ids sent here, not yet answered
        self.last_reply_at = float("-inf")       # monotonic time of the last frame received
        self.closed = False
