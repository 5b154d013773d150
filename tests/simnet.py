"""An in-memory network for node cores: no sockets, no threads, a virtual clock.

Routes each core's effects to the other cores exactly as server.py would over ZeroMQ, so
the core's protocol (quorums, gossip, joins, leaves) is tested deterministically. As in
server.py, each delivery or timer runs inside the node's ``store.group_commit()`` and its
replies leave only after the commit (a commit that fails turns them into errors); a node
with ``fsync="always"`` syncs after each commit, one with ``"periodic"`` every
``fsync_period_s``.

Tests watch and bend the traffic through public hooks: ``on_effects`` (every node's effects
pass each watcher before the network carries them out), ``drop_requests`` (node-to-node
requests lost on the way) and ``apply`` (effects of a core a test called directly).

Each node reads its own clock: the network's time plus the node's ``offsets`` entry (a node
whose clock runs ahead or behind). A node in ``paused`` (SIGSTOP) runs no timers and takes
no messages; what is sent to it waits, and arrives when it resumes, as TCP delivers it.

Clients: ``send``/``request`` speak for one anonymous client whose replies land in
``client_replies`` by request id. A client with a name of its own (tests/simclient.py)
attaches a :class:`ClientPort` (``attach_client``): its requests travel as any message
(``send_from_client``), the replies the nodes address to its route come to its port, and so
does the gossip of the nodes it subscribed to (``subscribe_client``). Clients are never
partitioned or paused. ``call_at`` is a timer (a client's timeouts and sleeps): never lost,
delayed or duplicated, whatever a subclass does to messages.
"""

from __future__ import annotations

import heapq
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Protocol

from zring.config import NodeConfig
from zring.core.batching import coalesce_sends
from zring.core.effects import Publish, Reply, Send, Shutdown, Subscribe, Unsubscribe
from zring.core.node import NodeCore
from zring.errors import StorageError
from zring.protocol import Message, MsgType, decode, encode
from zring.storage import MemoryStore

CLIENT = b"client"
GONE_CLIENT = b"gone-client"  # a route whose replies are dropped (fuzzed requests)


class ClientPort(Protocol):
    """Where the network hands what arrives for an attached client."""

    def reply_arrived(self, sender: str, frame: bytes) -> None:
        """A node at address ``sender`` answered one of the client's requests."""

    def gossip_arrived(self, sender: str, frame: bytes) -> None:
        """A node the client subscribed to published ``frame`` (a GOSSIP)."""


class Timer:
    """A pending ``SimCluster.call_at``: ``cancel()`` keeps it from running."""

    __slots__ = ("action",)

    def __init__(self, action: Callable[[], None]) -> None:
        self.action: Callable[[], None] | None = action

    def cancel(self) -> None:
        self.action = None

    def __call__(self) -> None:
        if self.action is not None:
            self.action()


class SimCluster:
    def __init__(self, start: float = 1_700_000_000.0, latency_s: float = 0.001) -> None:
        self.now = start
        self.latency_s = latency_s
        self.cores: dict[str, NodeCore] = {}            # by ROUTER address
        self.by_gossip: dict[str, str] = {}             # gossip address -> address
        self.subscriptions: dict[str, set[str]] = defaultdict(set)  # address -> gossip addrs
        self.down: set[str] = set()
        self.stopped: set[str] = set()
        self.paused: set[str] = set()
        self.held: dict[str, list] = defaultdict(list)  # address -> deliveries while paused
        self.offsets: dict[str, float] = defaultdict(float)  # address -> clock offset (s)
        self.client_replies: dict[int, Message] = {}
        self.client_ports: dict[bytes, ClientPort] = {}   # client route -> its port
        self.client_subscriptions: dict[bytes, set[str]] = {}  # client route -> gossip addrs
        self.next_sync_at: dict[str, float] = {}
        self._last_ticks: dict[str, float] = {}   # address -> network time of its last tick
        self._queue: list = []
        self._seq = itertools.count()
        self._request_ids = itertools.count(1)
        # watch(address, effects) -> the effects to carry out: each in turn, see apply()
        self.on_effects: list[Callable[[str, list], list]] = []
        self._lost: list[Callable[[str, str, bytes], bool]] = []   # see drop_requests()

    # ---------------------------------------------------------------- nodes

    def address_of(self, index: int) -> str:
        """The ROUTER address the ``index``-th node added (from 1) gets."""
        return f"tcp://sim:{7000 + index}"

    def add(self, node_id: str, *, seed: bool = True, store=None, seeds: list[str] | None = None,
            **overrides) -> NodeCore:
        index = len(self.cores) + 1
        address = self.address_of(index)
        if seeds is None:
            seeds = [c.config.address for c in self.cores.values()
                     if c.config.address in c.config.seeds] or [address]
            if seed and address not in seeds:
                seeds.append(address)
        settings = dict(vnodes=64, request_timeout_s=0.5)
        settings.update(overrides)
        config = NodeConfig(node_id=node_id, address=address, gossip_address=f"{address}/pub",
                            seeds=list(seeds), **settings)
        store = store if store is not None else MemoryStore()
        core = NodeCore(config, store, self.clock(address))
        self.cores[address] = core
        self.by_gossip[config.gossip_address] = address
        self._run_core(address, lambda now: core.start(now))
        return core

    def restart(self, node_id: str, store=None) -> NodeCore:
        """Crash ``node_id`` (its core and everything in flight to it are lost) and start a
        new core on the same store (or ``store``: what survived a power loss), as a kill -9
        and supervisord's restart would."""
        old = self.node(node_id)
        address = old.config.address
        store = old.store if store is None else store
        core = NodeCore(old.config, store, self.clock(address))
        self.cores[address] = core
        self.subscriptions[address].clear()
        self.stopped.discard(address)
        self.paused.discard(address)
        self.held.pop(address, None)
        self._run_core(address, lambda now: core.start(now))
        return core

    def node(self, node_id: str) -> NodeCore:
        return next(c for c in self.cores.values() if c.config.node_id == node_id)

    def clock(self, address: str) -> float:
        """The wall clock of the node at ``address``."""
        return self.now + self.offsets[address]

    def pause(self, address: str) -> None:
        self.paused.add(address)

    def resume(self, address: str) -> None:
        """SIGCONT: what waited for the node arrives now, in the order it was sent."""
        self.paused.discard(address)
        for action in self.held.pop(address, []):
            self._schedule(0.0, action)

    # ---------------------------------------------------------------- traffic

    def _schedule(self, delay: float, action) -> None:
        """A message under way: ``action`` delivers it ``delay`` seconds from now (a subclass
        may lose, delay or duplicate it)."""
        heapq.heappush(self._queue, (self.now + delay, next(self._seq), action))

    def call_at(self, when: float, action: Callable[[], None]) -> Timer:
        """A timer: ``action`` runs at network time ``when`` (now if that passed), unless
        the timer returned is cancelled first."""
        timer = Timer(action)
        heapq.heappush(self._queue, (max(when, self.now), next(self._seq), timer))
        return timer

    def _drop_cancelled_timers(self) -> None:
        """Cancelled timers at the head of the queue go: none costs a step of the loop."""
        queue = self._queue
        while queue and queue[0][2].__class__ is Timer and queue[0][2].action is None:
            heapq.heappop(queue)

    def _run_core(self, address: str, call) -> None:
        """``call(now)`` on the node's core inside one group commit, as a loop cycle of
        server.py runs; its effects leave after the commit."""
        core = self.cores[address]
        store = core.store
        now = self.clock(address)
        effects: list = []
        try:
            with store.group_commit():
                effects = call(now)
        except StorageError as exc:
            effects = core.commit_failed(effects, exc, now)
        if core.config.fsync == "always":
            try:
                store.sync()
            except StorageError:
                pass
        self.apply(address, effects)

    def apply(self, address: str, effects) -> None:
        """Carry out the effects the core at ``address`` returned: the network does so with
        those of the calls it makes itself, a test with those of a core it called directly.
        Each watcher of ``on_effects``, in order, sees them first and returns those that go
        on."""
        effects = list(effects)
        for watch in self.on_effects:
            effects = list(watch(address, effects))
        for effect in coalesce_sends(effects):  # as server.py batches per peer
            if isinstance(effect, Reply):
                self._route_reply(address, effect)
            elif isinstance(effect, Send):
                frame = encode(effect.message)
                target = effect.address
                self._schedule(self.latency_s, lambda t=target, s=address, f=frame:
                               self._deliver_request(t, s, f))
            elif isinstance(effect, Publish):
                frame = encode(effect.message)
                gossip = self.cores[address].config.gossip_address
                for subscriber, subs in self.subscriptions.items():
                    if gossip in subs:
                        self._schedule(self.latency_s, lambda t=subscriber, f=frame, s=address:
                                       self._deliver_gossip(t, s, f))
                for route, subs in self.client_subscriptions.items():
                    if gossip in subs:
                        port = self.client_ports[route]
                        self._schedule(self.latency_s, lambda p=port, f=frame, s=address:
                                       p.gossip_arrived(s, f))
            elif isinstance(effect, Subscribe):
                self.subscriptions[address].add(effect.gossip_address)
            elif isinstance(effect, Unsubscribe):
                self.subscriptions[address].discard(effect.gossip_address)
            elif isinstance(effect, Shutdown):
                self.stopped.add(address)

    def _route_reply(self, address: str, effect: Reply) -> None:
        if effect.route[0] == GONE_CLIENT:
            return   # a client that went away: nobody reads its replies
        frame = encode(effect.message)
        if effect.route[0] == CLIENT:
            self._schedule(self.latency_s, lambda m=decode(frame):
                           self.client_replies.__setitem__(m.request_id, m))
        elif (port := self.client_ports.get(effect.route[0])) is not None:
            self._schedule(self.latency_s, lambda p=port, f=frame: p.reply_arrived(address, f))
        else:
            requester = effect.route[0].decode()
            self._schedule(self.latency_s, lambda t=requester, s=address, f=frame:
                           self._deliver_reply(t, s, f))

    def alive(self, address: str) -> bool:
        """Whether the node at ``address`` is up (neither down nor stopped; maybe paused)."""
        return address in self.cores and address not in self.down and \
            address not in self.stopped

    def _running(self, address: str) -> bool:
        return self.alive(address) and address not in self.paused

    def drop_requests(self, lost: Callable[[str, str, bytes], bool]) -> Callable[[], None]:
        """From now on a request one node sends another is lost on the way when
        ``lost(target, sender, frame)`` is true (checked as it arrives, so also for those
        already under way); the function returned ends the loss."""
        self._lost.append(lost)
        return lambda: self._lost.remove(lost)

    def _held(self, target: str, action) -> bool:
        """A delivery to a paused node waits for it (False: deliver now)."""
        if target in self.paused and self.alive(target):
            self.held[target].append(action)
            return True
        return False

    def _deliver_request(self, target: str, sender: str, frame: bytes) -> None:
        if self._lost and any(lost(target, sender, frame) for lost in self._lost):
            return
        if self._held(target, lambda: self._deliver_request(target, sender, frame)):
            return
        if self.alive(target) and self.alive(sender):
            core = self.cores[target]
            self._run_core(target, lambda now: core.handle_frame((sender.encode(),), frame, now))

    def _deliver_client(self, target: str, frame: bytes, route: tuple[bytes, ...] = (CLIENT,)
                        ) -> None:
        """A client's request arrives at ``target`` (lost to a crashed node, held for a
        paused one); the node answers at ``route``."""
        if self._held(target, lambda: self._deliver_client(target, frame, route)):
            return
        if self.alive(target):
            core = self.cores[target]
            self._run_core(target, lambda now: core.handle_frame(route, frame, now))

    def _deliver_reply(self, target: str, sender: str, frame: bytes) -> None:
        if self._held(target, lambda: self._deliver_reply(target, sender, frame)):
            return
        if self.alive(target) and self.alive(sender):
            core = self.cores[target]
            self._run_core(target, lambda now: core.handle_reply(sender, frame, now))

    def _deliver_gossip(self, target: str, sender: str, frame: bytes) -> None:
        if self._held(target, lambda: self._deliver_gossip(target, sender, frame)):
            return
        if self.alive(target) and self.alive(sender):
            core = self.cores[target]
            self._run_core(target, lambda now: core.handle_gossip(frame, now))

    def _deadline(self, address: str, core: NodeCore) -> float:
        """The node's next deadline in network time (it reads its own clock), at most a
        second away: server.py's poll waits at most that long (so a clock stepped back
        cannot put the node to sleep)."""
        deadline = min(core.next_deadline() - self.offsets[address],
                       self._last_ticks.get(address, self.now) + 1.0)
        if core.config.fsync == "periodic":
            deadline = min(deadline, self.next_sync_at.get(address, self.now))
        return deadline

    def _tick(self, address: str, core: NodeCore) -> None:
        self._last_ticks[address] = self.now
        self._run_core(address, core.tick)
        if core.config.fsync == "periodic" and self.now >= self.next_sync_at.get(address, 0):
            self.next_sync_at[address] = self.now + core.config.fsync_period_s
            try:
                core.store.sync()
            except StorageError:
                pass

    def run(self, seconds: float) -> None:
        self.run_until(lambda: False, seconds)

    def run_until(self, condition, max_seconds: float) -> bool:
        """Advance virtual time, delivering messages and firing timers, until ``condition``."""
        end = self.now + max_seconds
        while not condition():
            next_timer = min((self._deadline(a, c) for a, c in self.cores.items()
                              if self._running(a)), default=end)
            self._drop_cancelled_timers()
            next_message = self._queue[0][0] if self._queue else end
            step = min(next_timer, next_message, end)
            if step >= end and self.now >= end:
                return condition()
            self.now = max(self.now, step)
            while self._queue and self._queue[0][0] <= self.now:
                _, _, action = heapq.heappop(self._queue)
                action()
            for address, core in list(self.cores.items()):
                if self._running(address) and self._deadline(address, core) <= self.now:
                    self._tick(address, core)
            if self.now >= end:
                return condition()
        return True

    # ---------------------------------------------------------------- client

    def send(self, node_id: str, msg_type: MsgType, body: dict, *,
             via_network: bool = False) -> int:
        """Send a client request without waiting; its reply lands in ``client_replies``.
        ``via_network``: it travels like any message (it waits for a paused node, is lost
        to a crashed one); otherwise the node takes it at once."""
        core = self.node(node_id)
        address = core.config.address
        request_id = next(self._request_ids)
        frame = encode(Message(msg_type, request_id, body))
        if via_network:
            self._schedule(self.latency_s, lambda: self._deliver_client(address, frame))
        else:
            self._run_core(address, lambda now: core.handle_frame((CLIENT,), frame, now))
        return request_id

    def attach_client(self, name: str, port: ClientPort) -> None:
        """A client named ``name`` (its route to the nodes): what arrives for it goes to
        ``port``."""
        route = name.encode()
        if route in (CLIENT, GONE_CLIENT) or route in self.client_ports or \
                name in self.cores:
            raise ValueError(f"the client name {name!r} is taken")
        self.client_ports[route] = port
        self.client_subscriptions[route] = set()

    def send_from_client(self, name: str, endpoint: str, frame: bytes) -> None:
        """The attached client ``name`` sends ``frame`` to the node at ``endpoint``; it
        travels like any message, and the node answers at the client's route."""
        route = (name.encode(),)
        self._schedule(self.latency_s, lambda: self._deliver_client(endpoint, frame, route))

    def subscribe_client(self, name: str, gossip_addresses: Iterable[str]) -> None:
        """The attached client ``name`` hears the gossip published at these addresses from
        now on (a SUB socket's connects: they last through the node's restarts)."""
        self.client_subscriptions[name.encode()].update(gossip_addresses)

    def request(self, node_id: str, msg_type: MsgType, body: dict,
                max_seconds: float = 5.0) -> Message:
        request_id = self.send(node_id, msg_type, body)
        assert self.run_until(lambda: request_id in self.client_replies, max_seconds), \
            f"no reply to {msg_type.name} within {max_seconds}s"
        return self.client_replies.pop(request_id)

    def converged(self) -> bool:
        live = [c for a, c in self.cores.items() if self._running(a)]
        rings = {c.ring.fingerprint() for c in live}
        statuses = {tuple((m.node_id, m.status) for m in c.members.all()) for c in live}
        # settled too: every node knows every other routes by the same ring, and serves
        settled = all(c.settled and c.ready(self.clock(c.config.address))
                      and c.clock_checked(self.clock(c.config.address)) for c in live)
        return len(rings) == 1 and len(statuses) == 1 and settled
