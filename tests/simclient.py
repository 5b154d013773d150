"""The client core on the simulated network: a third transport beside zring.client (blocking)
and zring.aio (asyncio), in virtual time.

:class:`SimClient` is :class:`zring.clientcore.commands.Commands` with ``_run`` returning the
:class:`~zring.clientcore.requests.Command` unrun: ``client.put(key, value)`` builds the
command; :meth:`SimClient.launch` starts it, and the network's event loop
(:meth:`SimCluster.run_until`) drives it and any number of others concurrently, performing
its effects as events in virtual time:

- ``Exchange``: each request's frame travels to the node at ``request.endpoint`` as any
  message does (lost to a crashed node, held for a paused one; a faulty network may lose,
  delay or duplicate it). A reply is matched by request id, and taken only from the
  endpoint the request went to this time (the real clients close a silent endpoint's
  socket, so its late replies are never read). The command gets its outcome once every
  request was answered, once a quorum exchange is decided (``Exchange.decided``), or at
  the timeout, with None for the silent ones;
- ``Sleep``: the command resumes that many virtual seconds later;
- ``Gossip``: the client subscribes to those gossip addresses (SimCluster.subscribe_client)
  and hands every GOSSIP that arrived since to its routing table, as
  zring.clientnet.GossipListener does; the command resumes at once.

The client's clocks are the network's: ``_monotonic`` its time in seconds, ``_wall_ms`` its
time plus the client's own ``clock_offset_s`` (a client whose wall clock is off). Its
writer id is its name; the client core's other random choices (the first seed, request ids,
each client's preferred node order) come from the module ``random``, which a simulation
seeds to replay a run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from simnet import SimCluster, Timer

from zring.clientcore.commands import Commands
from zring.clientcore.requests import Command, Exchange, Gossip, Sleep, Steps
from zring.clientcore.session import RING_FETCH_SOURCES, RING_FETCH_TIMEOUT_S
from zring.clientcore.stamps import CONFLICT_RETRIES, WriteStamps
from zring.errors import ProtocolError, Timeout, ZringError
from zring.protocol import Message, MsgType, decode

__all__ = ["GOSSIP_QUEUE", "SimClient", "longest_command_s"]

log = structlog.get_logger("zring.simclient")

GOSSIP_QUEUE = 100   # gossip frames kept unread (the real SUB socket's RCVHWM): newer ones drop
GOSSIP_READ_BUDGET = 100   # frames read per Gossip effect, as GossipListener.drain

# called once a command ended: (its result, None) or (None, the ZringError it raised)
Ended = Callable[[Any, ZringError | None], None]


class _Running:
    """A launched command and what it waits for."""

    __slots__ = ("command", "ended", "over", "number")

    def __init__(self, command: Command, ended: Ended, number: int) -> None:
        self.command = command
        self.ended = ended
        self.over = False
        self.number = number


class _Flight:
    """An Exchange in flight: the replies so far, and how many a quorum accepted/refused."""

    __slots__ = ("running", "exchange", "replies", "unanswered", "accepted", "refused",
                 "over", "timeout")

    def __init__(self, running: _Running, exchange: Exchange) -> None:
        self.running = running
        self.exchange = exchange
        self.replies: list[Message | None] = [None] * len(exchange.requests)
        self.unanswered = len(exchange.requests)
        self.accepted = self.refused = 0
        self.over = False
        self.timeout: Timer | None = None   # cancelled when the replies came first


class SimClient(Commands):
    """The client core over a :class:`SimCluster`, named ``name`` on it (its route and its
    writer id). ``seeds``, ``timeout``, ``retries`` and ``token_aware`` as
    :class:`zring.Client` takes them; ``clock_offset_s``: its wall clock minus real time."""

    def __init__(self, network: SimCluster, name: str, seeds: Iterable[str], *,
                 timeout: float = 1.0, retries: int = 3, token_aware: bool = True,
                 clock_offset_s: float = 0.0) -> None:
        self._network = network
        self.name = name
        self.clock_offset_s = clock_offset_s
        super().__init__(list(seeds), timeout, retries, token_aware=token_aware)
        self._stamps = WriteStamps(writer=name)   # a fixed writer id: a seed replays
        network.attach_client(name, self)

    def __repr__(self) -> str:
        return f"SimClient({self.name!r}, token_aware={self.token_aware})"

    def _setup(self) -> None:
        self._running: dict[int, _Running] = {}   # launch number -> command
        self._launches = 0
        # request id -> (its exchange, its index there, the endpoint it went to)
        self._waiting: dict[int, tuple[_Flight, int, str]] = {}
        self._gossip_heard: deque[bytes] = deque()
        self._subscribed: set[str] = set()

    # -------------------------------------------------------------- the transport's part

    def _run(self, steps: Steps) -> Command:
        return Command(steps)

    def _monotonic(self) -> float:
        return self._network.now

    def _wall_ms(self) -> int:
        return int((self._network.now + self.clock_offset_s) * 1000)

    # -------------------------------------------------------------- driving commands

    @property
    def commands_running(self) -> int:
        return len(self._running)

    def launch(self, make: Callable[[], Command], ended: Ended) -> None:
        """Start the command ``make()`` builds (e.g. ``lambda: client.put(k, v)``) now;
        ``ended`` is called with its result or error when it ends, in virtual time."""
        try:
            command = make()
        except ZringError as exc:   # refused before anything was sent
            ended(None, exc)
            return
        self._launches += 1
        running = _Running(command, ended, self._launches)
        self._running[running.number] = running
        self._advance(running, command.effect)

    def call(self, make: Callable[[], Command], max_seconds: float | None = None) -> Any:
        """Launch ``make()`` and run the network until it ends (at most ``max_seconds`` of
        virtual time, by default :func:`longest_command_s`): its result, or its error
        raised. Other commands and the nodes go on meanwhile."""
        outcome: list = []
        self.launch(make, lambda result, error: outcome.append((result, error)))
        limit = longest_command_s(self) if max_seconds is None else max_seconds
        if not self._network.run_until(lambda: bool(outcome), limit):
            raise AssertionError(f"{self.name}: the command did not end within {limit}s")
        result, error = outcome[0]
        if error is not None:
            raise error
        return result

    def abandon(self) -> None:
        """Give up every running command (the client goes away): each ends with Timeout, as
        its fate is unknown; what it sent may still arrive, its replies are not read."""
        for running in list(self._running.values()):
            self._end(running, None, Timeout(f"{self.name} gave the command up"))
        for flight, _, _ in self._waiting.values():
            flight.over = True
        self._waiting.clear()

    def _advance(self, running: _Running, effect: Exchange | Sleep | Gossip | None) -> None:
        """Perform effects until one waits (an exchange or a sleep) or the command ends."""
        while effect is not None:
            kind = effect.__class__
            if kind is Exchange:
                self._exchange(running, effect)
                return
            if kind is Sleep:
                self._network.call_at(self._network.now + effect.seconds,
                                      lambda: self._resume(running, None))
                return
            if kind is Gossip:
                self._listen(effect)
                effect = self._step(running, None)
                continue
            raise TypeError(f"unknown effect {effect!r}")
        if not running.over:
            self._end(running, running.command.result, None)

    def _step(self, running: _Running, outcome: Any) -> Exchange | Sleep | Gossip | None:
        """Hand ``outcome`` to the command; its next effect (None once it ended)."""
        try:
            return running.command.step(outcome)
        except ZringError as exc:   # the command raised: its end
            self._end(running, None, exc)
            return None

    def _resume(self, running: _Running, outcome: Any) -> None:
        if not running.over:
            self._advance(running, self._step(running, outcome))

    def _end(self, running: _Running, result: Any, error: ZringError | None) -> None:
        running.over = True
        del self._running[running.number]
        running.ended(result, error)

    # -------------------------------------------------------------- exchanges

    def _exchange(self, running: _Running, exchange: Exchange) -> None:
        network = self._network
        flight = _Flight(running, exchange)
        if not exchange.requests:
            network.call_at(network.now, lambda: self._exchange_over(flight))
            return
        for index, request in enumerate(exchange.requests):
            self._waiting[request.request_id] = (flight, index, request.endpoint)
            network.send_from_client(self.name, request.endpoint, request.frame)
        flight.timeout = network.call_at(network.now + exchange.timeout,
                                         lambda: self._exchange_over(flight))

    def reply_arrived(self, sender: str, frame: bytes) -> None:
        """A node answered (SimCluster's ClientPort): the request waiting for it, if any,
        takes it; a late or duplicate reply, or one from an endpoint the request has moved
        on from, is ignored."""
        try:
            reply = decode(frame, bounded=False)
        except ProtocolError as exc:
            log.warning("bad_reply", client=self.name, sender=sender, error=str(exc))
            return
        waiting = self._waiting.get(reply.request_id)
        if waiting is None or waiting[2] != sender:
            return
        flight, index, _ = waiting
        del self._waiting[reply.request_id]
        flight.replies[index] = reply
        flight.unanswered -= 1
        exchange = flight.exchange
        if exchange.quorum is not None:
            if exchange.accepts(reply):
                flight.accepted += 1
            else:
                flight.refused += 1
            if exchange.decided(flight.accepted, flight.refused):
                self._exchange_over(flight)
                return
        if not flight.unanswered:
            self._exchange_over(flight)

    def _exchange_over(self, flight: _Flight) -> None:
        """Every reply came, the quorum is decided, or the timeout passed: the command gets
        the replies (None for each request still unanswered; its late reply is ignored)."""
        if flight.over:
            return
        flight.over = True
        if flight.timeout is not None:
            flight.timeout.cancel()
        waiting = self._waiting
        for request in flight.exchange.requests:
            entry = waiting.get(request.request_id)
            if entry is not None and entry[0] is flight:
                del waiting[request.request_id]
        self._resume(flight.running, flight.replies)

    # -------------------------------------------------------------- gossip

    def gossip_arrived(self, sender: str, frame: bytes) -> None:
        """A node we subscribed to published (SimCluster's ClientPort): kept until the
        next Gossip effect reads it, up to GOSSIP_QUEUE frames (then new ones drop)."""
        if len(self._gossip_heard) < GOSSIP_QUEUE:
            self._gossip_heard.append(frame)

    def _listen(self, effect: Gossip) -> None:
        new = [endpoint for endpoint in effect.endpoints if endpoint not in self._subscribed]
        if new:
            self._subscribed.update(new)
            self._network.subscribe_client(self.name, new)
        heard, now = self._gossip_heard, self._monotonic()
        for _ in range(min(len(heard), GOSSIP_READ_BUDGET)):
            try:
                message = decode(heard.popleft(), bounded=False)
            except ProtocolError:
                continue
            if message.type == MsgType.GOSSIP:
                self._routes.heard(message.body, now)

    @property
    def listening_to_gossip(self) -> bool:
        return bool(self._subscribed)


def longest_command_s(client: SimClient) -> float:
    """An upper bound on how long one data command of ``client`` runs: each of its stamps
    (a write refused for a newer version is stamped again) may first fetch the ring from
    several nodes and then try every endpoint in turn, waiting out each timeout and
    backoff."""
    retry = client.retry
    ring_fetch = RING_FETCH_SOURCES * min(client.timeout, RING_FETCH_TIMEOUT_S)
    tries = retry.attempts * client.timeout + sum(retry.delay(n) for n in
                                                   range(1, retry.attempts))
    return (CONFLICT_RETRIES + 1) * (ring_fetch + tries)
