"""Token-aware routing: the ring a client routes by, and which endpoint gets a key's request.

The table learns the ring from any node (RING_STATE) and sends each key's request straight
to a live replica of the key, so the coordinator reads or writes locally. It marks its ring
stale when a node's gossip says it routes by another ring, when a reply carries another
ring's fingerprint, or when an endpoint goes silent. ``now`` (monotonic seconds) is passed
to every method that needs the time; the transport reads the gossip socket and hands each
GOSSIP body to :meth:`RoutingTable.heard`.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from zring.clientcore.results import RingState, unwrap
from zring.errors import ClockSkew, NotMember, Unavailable

if TYPE_CHECKING:
    from zring.protocol import Message, MsgType
    from zring.ring import HashRing

__all__ = ["AVOID_S", "GOSSIP_CHECK_S", "GOSSIP_SILENCE_S", "RING_REFRESH_GAP_S", "Routing",
           "RoutingTable"]

AVOID_S = 3.0             # a silent endpoint is tried last for this long
GOSSIP_SILENCE_S = 3.0    # a node whose gossip we have not heard this long is tried last
RING_REFRESH_GAP_S = 0.5  # refetch a stale ring at most this often
GOSSIP_CHECK_S = 0.02     # read arrived gossip before a request at most this often


class Routing:
    """The ring a token-aware client routes by, with each node's endpoint."""

    __slots__ = ("ring", "fingerprint", "replicas", "write_quorum", "read_quorum", "settled",
                 "addresses", "node_of", "preferred")

    def __init__(self, ring: HashRing, state: RingState) -> None:
        self.ring = ring
        self.fingerprint = state.fingerprint
        self.replicas = state.replicas
        self.write_quorum = state.write_quorum
        self.read_quorum = state.read_quorum
        # no member joining or leaving: each key has one preference list, which a client
        # may coordinate a quorum over itself (the replicas check it too)
        self.settled = all(m.status in ("normal", "left") for m in state.members)
        self.addresses = {node.node_id: node.address for node in state.nodes}
        self.node_of = {address: node_id for node_id, address in self.addresses.items()}
        # each client prefers its own random order of nodes: batches spread over clients
        self.preferred = random.sample(list(self.addresses.values()), len(self.addresses))

    def endpoints(self, key: str) -> list[str]:
        return [self.addresses[n] for n in self.ring.get_nodes(key, self.replicas)
                if n in self.addresses]


class RoutingTable:
    """Token-aware routing state: the ring, whether it is stale, when each node was last
    heard gossiping, and the endpoints that went silent lately."""

    def __init__(self) -> None:
        self.routing: Routing | None = None
        self.stale = False
        self.fetched_at = -1e9
        self.avoid: dict[str, float] = {}   # endpoint -> monotonic time it is avoided until
        # our own view of who is alive: when we last heard each node's gossip (it publishes
        # every 0.5 s), so a dead owner is skipped without first waiting out a timeout
        self.heard_at: dict[str, float] = {}
        self.listening_since: float | None = None
        self.gossip_read_at = -1e9
        # members the node that gave us the ring saw down, and when we learnt it: avoided
        # until we hear their gossip (a new client has heard nobody yet)
        self.reported_down: dict[str, float] = {}

    def avoided(self, endpoint: str, now: float) -> bool:
        """Whether ``endpoint`` went silent lately, its node's gossip did, or the node we
        had the ring from saw it down and we have not heard it since."""
        if self.avoid.get(endpoint, 0.0) > now:
            return True
        routing = self.routing
        if routing is None:
            return False
        node_id = routing.node_of.get(endpoint)
        if node_id is None:
            return False
        if self.reported_down:
            down_at = self.reported_down.get(node_id)
            if down_at is not None and self.heard_at.get(node_id, -1e9) < down_at:
                return True
        since = self.listening_since
        if since is None or now - since < GOSSIP_SILENCE_S:
            return False
        return now - self.heard_at.get(node_id, since) > GOSSIP_SILENCE_S

    def gossip_due(self, now: float) -> bool:
        """Read the gossip that arrived before this request? Nodes gossip every 0.5 s:
        asking the socket before each of thousands of requests a second finds nothing new."""
        if now - self.gossip_read_at >= GOSSIP_CHECK_S:
            self.gossip_read_at = now
            return True
        return False

    def wants_ring(self, now: float) -> bool:
        """True if the ring should be (re)fetched now (and note the try)."""
        if (self.routing is None or self.stale) and now - self.fetched_at >= RING_REFRESH_GAP_S:
            self.fetched_at = now
            return True
        return False

    def due(self, now: float) -> tuple[bool, bool] | None:
        """What to do before a routed request (and note it done): (``gossip_due``,
        ``wants_ring``), or None for neither, as for most requests (in one call)."""
        if now - self.gossip_read_at < GOSSIP_CHECK_S and self.routing is not None \
                and not self.stale:
            return None
        gossip, fetch = self.gossip_due(now), self.wants_ring(now)
        return (gossip, fetch) if gossip or fetch else None

    def ring_sources(self, seeds: list[str], now: float) -> list[str]:
        """Where to ask for the ring: known nodes that seem alive, then the seeds."""
        if self.routing is None:
            return seeds
        known = [e for e in self.routing.addresses.values() if not self.avoided(e, now)]
        return known + [e for e in seeds if e not in known]

    def update(self, state: RingState, now: float) -> list[str]:
        """Route by ``state`` from now on; the gossip endpoints to listen to."""
        if self.routing is None or self.routing.fingerprint != state.fingerprint:
            ring = state.hash_ring()
        else:
            ring = self.routing.ring
        self.routing = Routing(ring, state)
        self.stale = False
        self.reported_down = {m.node_id: now for m in state.members
                              if m.liveness == "down" and m.status != "left"}
        if self.listening_since is None:
            self.listening_since = now
        return [m.gossip_address for m in state.members
                if m.gossip_address and m.status != "left"]

    def unsubscribed(self) -> None:
        """The gossip socket was closed: refetch (and resubscribe) on next use."""
        self.listening_since = None
        self.stale = True

    def heard(self, body: dict, now: float) -> None:
        """A GOSSIP body: its sender is alive; a sender routing by another ring means ours
        is stale (membership changed)."""
        if self.routing is None:
            return
        fingerprint = self.routing.fingerprint
        sender = body["sender"]
        self.heard_at[sender] = now
        for row in body["members"]:
            if isinstance(row, dict) and row.get("node_id") == sender and \
                    row.get("ring", fingerprint) != fingerprint:
                self.stale = True

    def endpoints_for(self, key: str, seeds: list[str], now: float) -> list[str]:
        """Where to send ``key``'s request, in order: its replicas (ones that went silent
        lately last), then the seeds."""
        if self.routing is None:
            return seeds
        replicas = self.routing.endpoints(key)
        fresh = [e for e in replicas if not self.avoided(e, now)]
        ordered = fresh + [e for e in replicas if e not in fresh]
        return ordered + [e for e in seeds if e not in ordered]

    def owner_endpoint(self, key: str, seed: str, now: float) -> str:
        """The endpoint of ``key``'s first replica (fast: batches group by it)."""
        routing = self.routing
        if routing is None:
            return seed
        endpoint = routing.addresses.get(routing.ring.get_node(key), seed)
        if self.avoided(endpoint, now):
            return self.endpoints_for(key, [seed], now)[0]  # its owner seems down
        return endpoint

    def group(self, keys: list[str], seed: str, now: float) -> dict[str, list[int]]:
        """The indexes of ``keys`` grouped by where a batch sends them: when every node
        holds every key (no more nodes than replicas), all to one node (this client's
        preferred live one: one request, fewer hops); otherwise by each key's owner."""
        routing = self.routing
        if not keys:
            return {}
        if routing is None:
            return {seed: list(range(len(keys)))}
        if len(routing.addresses) <= routing.replicas:
            endpoint = next((e for e in routing.preferred if not self.avoided(e, now)),
                            None) or self.owner_endpoint(keys[0], seed, now)
            return {endpoint: list(range(len(keys)))}
        groups: dict[str, list[int]] = {}
        usable: dict[str, bool] = {}   # endpoint -> not avoided right now
        get_node, addresses = routing.ring.get_node, routing.addresses
        for index, key in enumerate(keys):
            endpoint = addresses.get(get_node(key), seed)
            ok = usable.get(endpoint)
            if ok is None:
                ok = usable[endpoint] = not self.avoided(endpoint, now)
            if not ok:
                endpoint = self.endpoints_for(key, [seed], now)[0]  # its owner seems down
            groups.setdefault(endpoint, []).append(index)
        return groups

    def note_reply(self, body: dict) -> None:
        """A node that was not a replica of the key says which ring it routes by."""
        ring = body.get("ring")
        if ring is not None and self.routing is not None and ring != self.routing.fingerprint:
            self.stale = True

    def unwrap(self, endpoint: str, reply: Message, msg_type: MsgType, *, may_retry: bool,
               now: float) -> dict | None:
        """The body of a routed request's reply (its ring hint noted); None: refused by a
        node that left or whose clock is off, so the caller asks the next endpoint."""
        try:
            result = unwrap(reply, msg_type)
        except Unavailable:
            # a coordinator cut off from the key's replicas: ask another next time
            self.avoid_for_now(endpoint, now)
            raise
        except NotMember:
            self.silent(endpoint, now)
            if not may_retry:
                raise
            return None
        except ClockSkew as exc:
            if "node" not in exc.details or not may_retry:
                raise   # our own clock is ahead: no node will take the write
            self.avoid_for_now(endpoint, now)   # its clock is off: another replica coordinates
            return None
        self.note_reply(result)
        return result

    def avoid_for_now(self, endpoint: str, now: float) -> None:
        self.avoid[endpoint] = now + AVOID_S

    def silent(self, endpoint: str, now: float) -> None:
        """No reply from ``endpoint``: try it last for a while; perhaps the ring moved on."""
        self.avoid_for_now(endpoint, now)
        self.stale = True
