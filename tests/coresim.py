"""Helpers the node core's unit tests share (tests/unit/core/): clusters on the in-memory
network, client requests, who holds a key, and standalone parts for tests of one part.

The helpers that watch or bend what the simulated network carries (``watch_effects``,
``deliver``, ``requests_dropped``) use its public hooks (``SimCluster.on_effects``,
``apply``, ``drop_requests``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import structlog
from simnet import CLIENT, SimCluster
from simstore import SimStore

from zring.config import NodeConfig
from zring.core.batching import coalesce_sends
from zring.core.context import NodeContext
from zring.core.effects import Send
from zring.core.gossip import load_member_table
from zring.core.node import NodeCore
from zring.membership import Member, MemberStatus
from zring.protocol import Message, MsgType, decode
from zring.storage import MemoryStore
from zring.versions import HybridClock

__all__ = ["CLIENT", "CLIENT_ROUTE", "SMALL_STREAMS", "WRITER", "Stamps", "alive",
           "cluster_of", "count_sends", "count_streamed", "deliver", "five_nodes", "get",
           "holders",
           "liveness_of", "member", "normal_everywhere", "part_context", "put",
           "replicas_of", "requests_dropped", "simstore_cluster_of", "stamped_put",
           "status_everywhere", "values_held", "watch_effects"]

CLIENT_ROUTE = (CLIENT,)   # a client's routing envelope on the ROUTER
WRITER = "client-test"     # the writer id of client-stamped writes
# small pages and chunks: a transfer of a few hundred records takes many round trips
SMALL_STREAMS = dict(stream_batch_records=20, stream_intervals_per_pull=4,
                     stream_pulls_in_flight=1)


# ------------------------------------------------------------------ clusters


def cluster_of(count: int = 3, **overrides) -> SimCluster:
    """``count`` seeds on the simulated network, converged on one ring."""
    sim = SimCluster()
    for i in range(1, count + 1):
        sim.add(f"node{i}", **overrides)
    assert sim.run_until(lambda: sim.converged() and len(sim.node("node1").ring) == count, 10)
    return sim


def simstore_cluster_of(count: int = 3, **overrides) -> SimCluster:
    """As ``cluster_of``, each node on a SimStore (a disk that can fail or lose power)."""
    sim = SimCluster()
    for i in range(1, count + 1):
        sim.add(f"node{i}", store=SimStore(), **overrides)
    assert sim.run_until(lambda: sim.converged() and len(sim.node("node1").ring) == count, 10)
    return sim


def five_nodes() -> SimCluster:
    """Five seeds, converged, with a few seconds of heartbeats behind them."""
    sim = SimCluster()
    for i in range(1, 6):
        sim.add(f"node{i}")
    assert sim.run_until(lambda: sim.converged() and len(sim.node("node1").ring) == 5, 10)
    sim.run(3)
    return sim


def alive(sim: SimCluster, address: str) -> bool:
    """The node at ``address`` runs (not crashed, cut off or stopped)."""
    return address in sim.cores and address not in sim.down and address not in sim.stopped


def status_everywhere(sim: SimCluster, node_id: str, status: MemberStatus) -> bool:
    """Every live node has ``node_id`` with ``status`` in its member table."""
    return all(c.members.get(node_id) is not None and c.members[node_id].status == status
               for a, c in sim.cores.items() if alive(sim, a))


def normal_everywhere(sim: SimCluster, node_id: str) -> bool:
    return status_everywhere(sim, node_id, MemberStatus.NORMAL)


def liveness_of(sim: SimCluster, observer: str, node_id: str) -> str:
    """How ``observer``'s failure detector sees ``node_id`` now ("up", "suspect", "down")."""
    core = sim.node(observer)
    return core.members.liveness(node_id, sim.now).value


# ------------------------------------------------------------------ client requests


def put(sim: SimCluster, node: str, key: str, value=b"v", **extra) -> Message:
    return sim.request(node, MsgType.PUT, {"key": key, "value": value, **extra})


def get(sim: SimCluster, node: str, key: str, **extra) -> Message:
    return sim.request(node, MsgType.GET, {"key": key, **extra})


class Stamps:
    """A client's write stamps, as zring.client.WriteStamps on the network's clock."""

    def __init__(self, sim: SimCluster, offset_s: float = 0.0) -> None:
        self.sim, self.offset_s, self.clock = sim, offset_s, HybridClock()

    def next(self) -> int:
        return self.clock.now(int((self.sim.now + self.offset_s) * 1000))


def stamped_put(sim: SimCluster, node: str, key: str, value, ts: int, **extra) -> Message:
    """A PUT with a client timestamp (``ts``) and writer id, as the clients send them."""
    body = {"key": key, "value": value, "ts": ts, "writer": WRITER, **extra}
    return sim.request(node, MsgType.PUT, body)


# ------------------------------------------------------------------ who holds what


def holders(sim: SimCluster, key: str) -> list[str]:
    """The nodes holding a live value of ``key`` (a tombstone does not count)."""
    return sorted(c.config.node_id for c in sim.cores.values()
                  if (r := c.store.get(key)) is not None and not r.is_tombstone)


def replicas_of(sim: SimCluster, key: str) -> list[str]:
    return sim.node("node1").ring.get_nodes(key, 3)


def values_held(sim: SimCluster, key: str) -> dict[str, object]:
    return {c.config.node_id: (r.value if (r := c.store.get(key)) else None)
            for c in sim.cores.values()}


def count_streamed(core: NodeCore) -> list[int]:
    """Wrap the store's streaming entry point: how many records arrived by range streams."""
    received = [0]
    original = core.store.put_wire

    def counting(items):
        received[0] += len(items)
        return original(items)
    core.store.put_wire = counting
    return received


# ------------------------------------------------------------------ the network's traffic


def deliver(sim: SimCluster, address: str, effects) -> None:
    """Carry out effects the core at ``address`` returned to a test that called it directly,
    as the network does with those of the calls it makes itself."""
    sim.apply(address, effects)


def watch_effects(sim: SimCluster, watch: Callable[[str, list], list]) -> None:
    """From now on every node's effects pass ``watch(address, effects)`` first: it sees them
    and returns those the network carries out."""
    sim.on_effects.append(watch)


def count_sends(sim: SimCluster, node_id: str) -> list[Message]:
    """Record every Send the node's effects carry (after coalescing, as they leave)."""
    sent: list[Message] = []
    address = sim.node(node_id).config.address

    def watch(source, effects):
        if source == address:
            sent.extend(e.message for e in coalesce_sends(effects) if isinstance(e, Send))
        return effects
    watch_effects(sim, watch)
    return sent


@contextmanager
def requests_dropped(sim: SimCluster, sender: str, types: frozenset[MsgType]):
    """Every request of one of ``types`` that node ``sender`` sends a peer is lost on the
    way (a BATCH frame whole, whatever it carries, if BATCH is in ``types``)."""
    address = sim.node(sender).config.address
    stop = sim.drop_requests(lambda target, source, frame:
                             source == address and decode(frame).type in types)
    try:
        yield
    finally:
        stop()


# ------------------------------------------------------------------ one part alone


def member(node_id: str, status: MemberStatus = MemberStatus.NORMAL, *, generation: int = 1,
           heartbeat: int = 1, weight: float = 1.0, ring: int = 0,
           streamed: bool = False) -> Member:
    """A member record as gossip brings it (``ring``: the fingerprint it routes by)."""
    return Member(node_id, f"tcp://{node_id}:1", f"tcp://{node_id}:2", status, generation,
                  heartbeat, weight, streamed=streamed, ring=ring)


def part_context(node_id: str = "a", peers=("b", "c"), now: float = 1000.0, store=None,
                 **overrides) -> NodeContext:
    """The context a part is built with, for a seed ``node_id`` whose member table already
    holds ``peers`` (NORMAL members, heard from at ``now``); no network, no other part."""
    config = NodeConfig(node_id=node_id, address=f"tcp://{node_id}:1",
                        gossip_address=f"tcp://{node_id}:2", seeds=[f"tcp://{node_id}:1"],
                        **{"vnodes": 16, **overrides})
    store = store if store is not None else MemoryStore()
    members = load_member_table(config, store, now)
    members.merge([member(p) for p in peers], now)
    return NodeContext(config, store, members, structlog.get_logger("test").bind(node=node_id))
