"""Requests as a transport sees them: the effects a command asks for, and the one driver.

A command (see ``commands``) is a generator: it yields an effect and gets its outcome back.
There are three effects, all a transport implements:

- :class:`Exchange`: send each request's frame to its endpoint and wait up to ``timeout``
  for the replies (matched by request id); the outcome is each reply, or None on silence.
  A quorum exchange (``quorum`` k) may end as soon as k replies were accepted, or as soon
  as so many were not that k never can be: the requests still unanswered then are None
  too, but were not silent (their endpoints are not dropped; a late reply is ignored);
- :class:`Sleep`: wait (a backoff, or between status polls);
- :class:`Gossip`: listen to these gossip endpoints too, and hand every GOSSIP that
  arrived to the routing table.

The blocking client drives a command with :meth:`Command.run`; the asyncio client awaits
each effect in its own loop. An effect that raises a ZringError is thrown into the command.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from zring.errors import Timeout, ZringError
from zring.protocol import Message, MsgType, encode

__all__ = ["Command", "Exchange", "Gossip", "Request", "Sleep", "Steps"]


class Request:
    """One request on its way: one id and one frame for all its resends, where it goes now,
    where it went, and how it ended (a reply body or an error)."""

    __slots__ = ("type", "request_id", "frame", "key", "first", "endpoint", "order", "tried",
                 "body", "error", "unanswered")

    def __init__(self, msg_type: MsgType, request_id: int, body: dict, key: str | None = None,
                 first: str | None = None) -> None:
        self.type = msg_type
        self.request_id = request_id
        self.frame = encode(Message(msg_type, request_id, body))
        self.key = key            # routed to this key's replicas (None: through the seeds)
        self.first = first        # the endpoint of its first try, if chosen beforehand
        self.endpoint = first or ""
        self.order: list[str] | None = None   # a routed request's later tries, in order
        self.tried: list[str] = []
        self.body: dict | None = None
        self.error: ZringError | None = None
        self.unanswered = False   # some try went unanswered: its fate there is unknown

    def timed_out(self, timeout: float) -> Timeout:
        return Timeout(f"no reply to {self.type.name} within {timeout:g}s from "
                       f"{', '.join(dict.fromkeys(self.tried))} ({len(self.tried)} tries)")


def accepted(reply: Message) -> bool:
    """A quorum exchange's default test of a reply: an OK."""
    return reply.type == MsgType.OK


class Exchange:
    """Send every request to its ``endpoint``; the outcome: each one's reply or None.

    ``quorum`` (k): the transport may return once ``accepts`` held for k replies, or failed
    for more than ``len(requests) - k`` (a quorum no longer possible); the outcome then has
    None for the requests not answered yet, and :meth:`ended_early` tells the caller that
    those were not silent. ``quorum`` None: wait for every reply or the timeout."""

    __slots__ = ("requests", "timeout", "quorum", "accepts")

    def __init__(self, requests: list[Request], timeout: float, quorum: int | None = None,
                 accepts: Callable[[Message], bool] = accepted) -> None:
        self.requests = requests
        self.timeout = timeout
        self.quorum = quorum
        self.accepts = accepts

    def decided(self, accepted_count: int, refused_count: int) -> bool:
        """Whether a quorum exchange may end with these counts of replies."""
        quorum = self.quorum
        return quorum is not None and (accepted_count >= quorum or
                                       refused_count > len(self.requests) - quorum)

    def ended_early(self, replies: list[Message | None]) -> bool:
        """Whether ``replies`` (this exchange's outcome) were decided before the timeout:
        the requests without a reply were then not waited for, not silent."""
        if self.quorum is None:
            return False
        accepts = self.accepts
        answers = [reply for reply in replies if isinstance(reply, Message)]
        good = sum(1 for reply in answers if accepts(reply))
        bad = len(answers) - good
        return self.decided(good, bad)


class Sleep:
    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class Gossip:
    """Listen to ``endpoints`` too (those not yet listened to), then read what arrived."""

    __slots__ = ("endpoints",)

    def __init__(self, endpoints: list[str]) -> None:
        self.endpoints = endpoints


Steps = Generator[Exchange | Sleep | Gossip, Any, Any]


class Command:
    """A command being driven: ``effect`` is what it waits for (None once it returned)."""

    # no bound methods kept: the fewer objects a request keeps alive while it waits, the
    # less often (with many requests in flight) the cyclic GC runs
    __slots__ = ("_steps", "effect", "result")

    def __init__(self, steps: Steps) -> None:
        self._steps = steps
        self.result: Any = None
        try:
            self.effect: Exchange | Sleep | Gossip | None = steps.send(None)
        except StopIteration as done:   # (a command that asked for nothing)
            self.result = done.value
            self.effect = None

    def step(self, outcome: Any) -> Exchange | Sleep | Gossip | None:
        """Hand the effect's outcome (or the ZringError it raised) to the command; the next
        effect (also kept as ``effect``), None once the command returned."""
        try:
            effect = self._steps.throw(outcome) if isinstance(outcome, ZringError) else \
                self._steps.send(outcome)
        except StopIteration as done:
            self.result = done.value
            effect = None
        self.effect = effect
        return effect

    def run(self, perform: Callable[[Any], Any]) -> Any:
        """Drive the command to its end, ``perform`` doing each effect (blocking)."""
        effect = self.effect
        while effect is not None:
            try:
                outcome = perform(effect)
            except ZringError as exc:
                outcome = exc
            effect = self.step(outcome)
        return self.result
