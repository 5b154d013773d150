"""An in-memory network for node cores: no sockets, no threads, a virtual clock.

Routes each core's effects to the other cores exactly as server.py would over ZeroMQ, so
the core's protocol (quorums, gossip, joins, leaves) is tested deterministically.
"""

from __future__ import annotations

import heapq
import itertools
from collections import defaultdict

from zring.config import NodeConfig
from zring.core.batching import coalesce_sends
from zring.core.effects import Publish, Reply, Send, Shutdown, Subscribe, Unsubscribe
from zring.core.node import NodeCore
from zring.protocol import Message, MsgType, decode, encode
from zring.storage import MemoryStore

CLIENT = b"client"


class SimCluster:
    def __init__(self, start: float = 1_700_000_000.0, latency_s: float = 0.001) -> None:
        self.now = start
        self.latency_s = latency_s
        self.cores: dict[str, NodeCore] = {}            # by ROUTER address
        self.by_gossip: dict[str, str] = {}             # gossip address -> address
        self.subscriptions: dict[str, set[str]] = defaultdict(set)  # address -> gossip addrs
        self.down: set[str] = set()
        self.stopped: set[str] = set()
        self.client_replies: dict[int, Message] = {}
        self._queue: list = []
        self._seq = itertools.count()
        self._request_ids = itertools.count(1)

    # ---------------------------------------------------------------- nodes

    def add(self, node_id: str, *, seed: bool = True, store=None, **overrides) -> NodeCore:
        index = len(self.cores) + 1
        address = f"tcp://sim:{7000 + index}"
        seeds = [c.config.address for c in self.cores.values()
                 if c.config.address in c.config.seeds] or [address]
        if seed and address not in seeds:
            seeds.append(address)
        settings = dict(vnodes=64, request_timeout_s=0.5)
        settings.update(overrides)
        config = NodeConfig(node_id=node_id, address=address, gossip_address=f"{address}/pub",
                            seeds=list(seeds), **settings)
        core = NodeCore(config, store if store is not None else MemoryStore(), self.now)
        self.cores[address] = core
        self.by_gossip[config.gossip_address] = address
        self._apply(address, core.start(self.now))
        return core

    def restart(self, node_id: str) -> NodeCore:
        """Crash ``node_id`` (its core and everything in flight to it are lost) and start a
        new core on the same store, as a kill -9 and supervisord's restart would."""
        old = self.node(node_id)
        address = old.config.address
        core = NodeCore(old.config, old.store, self.now)
        self.cores[address] = core
        self.subscriptions[address].clear()
        self.stopped.discard(address)
        self._apply(address, core.start(self.now))
        return core

    def node(self, node_id: str) -> NodeCore:
        return next(c for c in self.cores.values() if c.config.node_id == node_id)

    # ---------------------------------------------------------------- traffic

    def _schedule(self, delay: float, action) -> None:
        heapq.heappush(self._queue, (self.now + delay, next(self._seq), action))

    def _apply(self, address: str, effects) -> None:
        for effect in coalesce_sends(list(effects)):  # as server.py batches per peer
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
            elif isinstance(effect, Subscribe):
                self.subscriptions[address].add(effect.gossip_address)
            elif isinstance(effect, Unsubscribe):
                self.subscriptions[address].discard(effect.gossip_address)
            elif isinstance(effect, Shutdown):
                self.stopped.add(address)

    def _route_reply(self, address: str, effect: Reply) -> None:
        frame = encode(effect.message)
        if effect.route[0] == CLIENT:
            self._schedule(self.latency_s, lambda m=decode(frame):
                           self.client_replies.__setitem__(m.request_id, m))
        else:
            requester = effect.route[0].decode()
            self._schedule(self.latency_s, lambda t=requester, s=address, f=frame:
                           self._deliver_reply(t, s, f))

    def _alive(self, address: str) -> bool:
        return address in self.cores and address not in self.down and \
            address not in self.stopped

    def _deliver_request(self, target: str, sender: str, frame: bytes) -> None:
        if self._alive(target) and self._alive(sender):
            self._apply(target, self.cores[target].handle_frame((sender.encode(),), frame,
                                                                self.now))

    def _deliver_reply(self, target: str, sender: str, frame: bytes) -> None:
        if self._alive(target) and self._alive(sender):
            self._apply(target, self.cores[target].handle_reply(sender, frame, self.now))

    def _deliver_gossip(self, target: str, sender: str, frame: bytes) -> None:
        if self._alive(target) and self._alive(sender):
            self._apply(target, self.cores[target].handle_gossip(frame, self.now))

    def run(self, seconds: float) -> None:
        self.run_until(lambda: False, seconds)

    def run_until(self, condition, max_seconds: float) -> bool:
        """Advance virtual time, delivering messages and firing timers, until ``condition``."""
        end = self.now + max_seconds
        while not condition():
            next_timer = min((c.next_deadline() for a, c in self.cores.items()
                              if self._alive(a)), default=end)
            next_message = self._queue[0][0] if self._queue else end
            step = min(next_timer, next_message, end)
            if step >= end and self.now >= end:
                return condition()
            self.now = max(self.now, step)
            while self._queue and self._queue[0][0] <= self.now:
                _, _, action = heapq.heappop(self._queue)
                action()
            for address, core in list(self.cores.items()):
                if self._alive(address) and core.next_deadline() <= self.now:
                    self._apply(address, core.tick(self.now))
            if self.now >= end:
                return condition()
        return True

    # ---------------------------------------------------------------- client

    def send(self, node_id: str, msg_type: MsgType, body: dict) -> int:
        """Send a client request without waiting; its reply lands in ``client_replies``."""
        core = self.node(node_id)
        request_id = next(self._request_ids)
        frame = encode(Message(msg_type, request_id, body))
        self._apply(core.config.address, core.handle_frame((CLIENT,), frame, self.now))
        return request_id

    def request(self, node_id: str, msg_type: MsgType, body: dict,
                max_seconds: float = 5.0) -> Message:
        request_id = self.send(node_id, msg_type, body)
        assert self.run_until(lambda: request_id in self.client_replies, max_seconds), \
            f"no reply to {msg_type.name} within {max_seconds}s"
        return self.client_replies.pop(request_id)

    def converged(self) -> bool:
        live = [c for a, c in self.cores.items() if self._alive(a)]
        rings = {c.ring.fingerprint() for c in live}
        statuses = {tuple((m.node_id, m.status) for m in c.members.all()) for c in live}
        # settled too: every node knows every other routes by the same ring, and serves
        settled = all(c._previous_ring is None and c._is_ready(self.now) for c in live)
        return len(rings) == 1 and len(statuses) == 1 and settled
