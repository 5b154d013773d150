"""Requests this node sent to peers and still waits on: ids, callbacks, deadlines.

A call is an entry keyed by its request id, completed by the peer's reply or, with None, by
its deadline: the node never waits, so a slow peer delays only the requests that need it.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass

from zring.core.effects import Effect, Send
from zring.protocol import Message, MsgType

__all__ = ["Calls", "ReplyFn"]

# (the peer's node id, its reply or None on the deadline, now) -> effects
ReplyFn = Callable[[str, Message | None, float], list]


@dataclass(slots=True)
class _Call:
    node_id: str
    deadline: float
    on_reply: ReplyFn


class Calls:
    def __init__(self, address_of: Callable[[str], str | None], timeout_s: float,
                 stats: dict[str, int], log) -> None:
        self._address_of = address_of   # a member's ROUTER address (None: unknown)
        self._timeout_s = timeout_s
        self._stats = stats
        self._log = log
        self._ids = itertools.count(1)
        self._pending: dict[int, _Call] = {}
        self._deadlines: list[tuple[float, int]] = []

    def next_id(self) -> int:
        """A fresh id (for a coordinated operation's own bookkeeping too)."""
        return next(self._ids)

    def call(self, node_id: str, msg_type: MsgType, body: dict, on_reply: ReplyFn,
             now: float, timeout_s: float | None = None) -> list[Effect]:
        """Send a request to member ``node_id``; an unknown member fails it at once."""
        address = self._address_of(node_id)
        if address is None:
            return on_reply(node_id, None, now)
        return self.call_address(address, node_id, msg_type, body, on_reply, now, timeout_s)

    def call_address(self, address: str, node_id: str, msg_type: MsgType, body: dict,
                     on_reply: ReplyFn, now: float,
                     timeout_s: float | None = None) -> list[Effect]:
        request_id = next(self._ids)
        deadline = now + (timeout_s or self._timeout_s)
        self._pending[request_id] = _Call(node_id, deadline, on_reply)
        heapq.heappush(self._deadlines, (deadline, request_id))
        return [Send(address, Message(msg_type, request_id, body))]

    def complete(self, message: Message, now: float) -> list[Effect] | None:
        """A reply: its call's callback's effects (None: late or unknown, already failed by
        its deadline). A reply of neither OK nor ERROR counts as none."""
        call = self._pending.pop(message.request_id, None)
        if call is None:
            return None
        reply = message if message.type in (MsgType.OK, MsgType.ERROR) else None
        return call.on_reply(call.node_id, reply, now)

    def expire(self, now: float) -> list[Effect]:
        """Fail every call whose deadline passed."""
        effects: list[Effect] = []
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, request_id = heapq.heappop(deadlines)
            call = self._pending.pop(request_id, None)
            if call is None:
                continue
            self._stats["peer_timeouts"] += 1
            try:
                effects += call.on_reply(call.node_id, None, now)
            except Exception:  # e.g. a hint that could not be stored: keep serving
                self._stats["handler_errors"] += 1
                self._log.exception("timeout_handling_failed", peer=call.node_id)
        return effects

    def next_deadline(self) -> float | None:
        # calls answered already leave their deadline in the heap: drop those from its top,
        # or the loop would wake for each of them request_timeout_s after a burst
        deadlines, pending = self._deadlines, self._pending
        while deadlines and deadlines[0][1] not in pending:
            heapq.heappop(deadlines)
        return deadlines[0][0] if deadlines else None

    def shift(self, step: float) -> None:
        """The wall clock stepped back by ``step``: each call keeps the time it had left."""
        self._deadlines = [(deadline - step, request_id)
                           for deadline, request_id in self._deadlines]
        heapq.heapify(self._deadlines)

    def __len__(self) -> int:
        return len(self._pending)
