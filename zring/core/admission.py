"""Which client requests a node takes now: none before it is ready (a restarted node until
it heard its peers, a fresh seed until the cluster formed; held, not refused), and none past
``max_pending_requests`` (refused: the client retries elsewhere or later)."""

from __future__ import annotations

from collections.abc import Callable

from zring.core.batching import MAX_BATCH_KEYS
from zring.core.context import NodeContext
from zring.core.effects import Effect, Reply, error
from zring.core.gossip import Gossip
from zring.errors import Unavailable
from zring.protocol import Message, MsgType

__all__ = ["QUORUM_TYPES", "Admission"]

# requests that need the ring to be right: held while the node is not ready
QUORUM_TYPES = frozenset({MsgType.PUT, MsgType.GET, MsgType.DELETE, MsgType.MGET,
                          MsgType.MPUT})


class Admission:
    def __init__(self, ctx: NodeContext, gossip: Gossip, now: float) -> None:
        self.ctx = ctx
        self.gossip = gossip
        self._ready_at = now + 2 * ctx.config.gossip_interval_s  # see ready
        self._ready = False
        # requests held until ready: (route, frame, arrived at, request id)
        self._held: list[tuple[tuple[bytes, ...], bytes, float, int]] = []

    def ready(self, now: float) -> bool:
        """A node (re)started with peers coordinates reads and writes only once it heard
        their gossip (or after two gossip intervals): its saved ring may predate a change
        made while it was down, and routing by it could miss the new replicas. A seed
        started fresh waits until it has met every seed (``Gossip.formed``)."""
        if not self.gossip.formed:
            return False
        if not self._ready and (now >= self._ready_at or not self.ctx.members.peers()):
            self._ready = True
        return self._ready

    def heard_peer(self, now: float) -> None:
        """A peer's gossip arrived: we are up to date; release what is held."""
        if not self._ready:
            self._ready_at = now

    def hold(self, route, frame: bytes, now: float, request_id: int) -> list[Effect]:
        """Held, not refused: answered once ready, or refused after request_timeout_s."""
        config = self.ctx.config
        if len(self._held) >= config.max_pending_requests:
            self.ctx.stats["overloaded"] += 1
            return [Reply(route, error(request_id, Unavailable(
                f"{config.node_id} is starting and holds {len(self._held)} requests; "
                "retry later")))]
        self._held.append((route, frame, now, request_id))
        return []

    def release(self, now: float,
                handle: Callable[[tuple[bytes, ...], bytes, float], list[Effect]]
                ) -> list[Effect]:
        """Once ready, every held request goes to ``handle``; until then, those held for
        request_timeout_s are refused."""
        if not self._held:
            return []
        if not self.ready(now):
            return self._expire(now)
        held, self._held = self._held, []
        effects: list[Effect] = []
        for route, frame, _, _ in held:   # permitted before they were held
            effects += handle(route, frame, now)
        return effects

    def _expire(self, now: float) -> list[Effect]:
        """Held requests older than request_timeout_s are refused (their client gave up or
        will): a node can wait for a missing seed for as long as it takes."""
        cutoff = now - self.ctx.config.request_timeout_s
        if self._held[0][2] > cutoff:
            return []
        node_id = self.ctx.node_id
        missing = self.gossip.seeds_missing() if not self.gossip.formed else []
        why = (f"the cluster is forming: {node_id} has not met seeds {', '.join(missing)} "
               "yet" if missing else f"{node_id} is starting and has not heard its peers yet")
        effects: list[Effect] = []
        while self._held and self._held[0][2] <= cutoff:
            route, _, _, request_id = self._held.pop(0)
            self.ctx.stats["deferred_expired"] += 1
            effects.append(Reply(route, error(request_id, Unavailable(f"{why}; retry later"))))
        return effects

    def overloaded(self, route, message: Message, operations: int,
                   batch_keys: int) -> list[Effect] | None:
        """A refusal if taking ``message`` would put more than max_pending_requests
        operations and batch keys in flight (None: take it)."""
        adds = _batch_size(message)
        if adds > MAX_BATCH_KEYS or operations + batch_keys + adds \
                <= self.ctx.config.max_pending_requests:   # too big: refused as invalid
            return None
        self.ctx.stats["overloaded"] += 1
        return [Reply(route, error(message.request_id, Unavailable(
            f"{self.ctx.node_id} is coordinating {operations} requests and {batch_keys} keys "
            "of batches; retry later")))]

    def next_deadline(self) -> float | None:
        if not self._held:
            return None
        expiry = self._held[0][2] + self.ctx.config.request_timeout_s
        if self.gossip.formed:   # unformed: nothing but a seed's gossip makes it ready
            return min(self._ready_at, expiry)
        return expiry

    def __len__(self) -> int:
        return len(self._held)


def _batch_size(message: Message) -> int:
    """Keys a request adds to the node's pending operations (a batch: one per key)."""
    if message.type == MsgType.MGET:
        return len(message.body["keys"])
    if message.type == MsgType.MPUT:
        return len(message.body["items"])
    return 1
