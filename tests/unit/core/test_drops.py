"""core/drops.py: ranges handed over, deleted once every member routes by the ring that took
them away, request_timeout_s later, narrowed to what a later ring leaves us."""

from __future__ import annotations

from coresim import (
    SMALL_STREAMS,
    cluster_of,
    holders,
    member,
    normal_everywhere,
    part_context,
    put,
)

from zring.core.drops import Drops, merge_intervals
from zring.core.topology import Topology
from zring.hashing import key_position
from zring.membership import MemberStatus
from zring.protocol import MsgType
from zring.ring import RingDiff
from zring.storage.base import Record
from zring.versions import Version

NOW = 1000.0
KEYS = [f"k{i}" for i in range(1000)]


def node_a(**overrides):
    """Node a of a, b, c, d with a record of every key in KEYS (whatever it replicates)."""
    ctx = part_context("a", peers=("b", "c", "d"), request_timeout_s=2.0, **overrides)
    ctx.store.put_many(Record(k, b"v", Version(1 << 20, "w"), key_position(k)) for k in KEYS)
    topology = Topology(ctx, NOW)
    return ctx, topology, Drops(ctx, topology)


def change(topology: Topology, *records, now: float = NOW):
    topology.ctx.members.merge(list(records), now)
    return topology.members_changed()


def settle(topology: Topology, now: float, heartbeat: int) -> None:
    """Every peer gossips that it routes by our ring; the topology notices on its tick."""
    members = topology.ctx.members
    fingerprint = topology.ring.fingerprint()
    members.merge([member(m.node_id, m.status, generation=m.generation, heartbeat=heartbeat,
                          ring=fingerprint) for m in members.peers()], now)
    topology.tick(now)
    assert topology.settled_at == now


def replicated_by_a(ring, key: str) -> bool:
    return "a" in ring.get_nodes_at(key_position(key), 3)


def handed_to_e(ctx, topology):
    """e joins (streamed): a queues what it handed e. Returns (old ring, new ring)."""
    old = topology.ring
    change(topology, member("e", streamed=True))
    new = topology.ring
    intervals = RingDiff(old, new, 3).handed_over("a", {"e"})
    assert intervals
    return old, new, intervals


def test_merge_intervals_joins_overlapping_and_touching_ones():
    assert merge_intervals([(10, 19), (0, 4), (5, 9), (30, 40), (35, 39)]) == [(0, 19),
                                                                               (30, 40)]
    assert merge_intervals([]) == []


def test_a_drop_waits_for_the_ring_to_settle_then_request_timeout_s():
    ctx, topology, drops = node_a()
    old, new, intervals = handed_to_e(ctx, topology)
    drops.add(new, intervals)
    assert drops.next_deadline(NOW) is None          # not settled: nothing to wake for
    drops.tick(NOW + 5)
    assert ctx.store.count() == len(KEYS)
    settle(topology, NOW + 10, heartbeat=2)
    assert drops.next_deadline(NOW + 10) == NOW + 10  # at once: start the wait
    drops.tick(NOW + 10)
    assert ctx.store.count() == len(KEYS)
    assert drops.next_deadline(NOW + 10) == NOW + 12  # settled at + request_timeout_s
    drops.tick(NOW + 11.99)
    assert ctx.store.count() == len(KEYS)
    drops.tick(NOW + 12)
    dropped = {k for k in KEYS if replicated_by_a(old, k) and not replicated_by_a(new, k)}
    assert dropped and set(ctx.store.keys()) == set(KEYS) - dropped
    assert drops.next_deadline(NOW + 12) is None      # done


def test_a_drop_waits_while_a_join_or_leave_streams():
    ctx, topology, drops = node_a()
    _, new, intervals = handed_to_e(ctx, topology)
    drops.add(new, intervals)
    settle(topology, NOW + 1, heartbeat=2)
    change(topology, member("f", MemberStatus.JOINING), now=NOW + 1)
    assert topology.change_under_way(NOW + 1) and topology.settled_at is not None
    assert drops.next_deadline(NOW + 1) is None
    drops.tick(NOW + 100)        # f is down by then: it holds nothing up any more
    drops.tick(NOW + 200)
    assert ctx.store.count() < len(KEYS)


def test_a_drop_keeps_what_the_next_ring_gives_back():
    ctx, topology, drops = node_a()
    old, with_e, intervals = handed_to_e(ctx, topology)
    drops.add(with_e, intervals)
    # before it settled, e leaves again and f joins: a regains part of what e took
    change(topology, member("e", MemberStatus.LEFT, generation=2, streamed=True),
           member("f", streamed=True))
    with_f = topology.ring
    settle(topology, NOW + 1, heartbeat=2)
    drops.tick(NOW + 1)
    drops.tick(NOW + 3)          # request_timeout_s after settling on the new ring
    handed = {k for k in KEYS if replicated_by_a(old, k) and not replicated_by_a(with_e, k)}
    dropped = {k for k in handed if not replicated_by_a(with_f, k)}
    assert dropped and dropped < handed      # part of it came back: only the rest goes
    assert set(ctx.store.keys()) == set(KEYS) - dropped


def test_a_drop_whose_ranges_all_come_back_deletes_nothing():
    ctx, topology, drops = node_a()
    _, with_e, intervals = handed_to_e(ctx, topology)
    drops.add(with_e, intervals)
    change(topology, member("e", MemberStatus.LEFT, generation=2, streamed=True))
    settle(topology, NOW + 1, heartbeat=2)
    drops.tick(NOW + 1)
    drops.tick(NOW + 3)
    assert ctx.store.count() == len(KEYS) and drops.next_deadline(NOW + 3) is None


def test_old_replicas_drop_what_they_gave_away_only_after_every_member_switched():
    sim = cluster_of(3, **SMALL_STREAMS)
    for i in range(300):
        put(sim, "node1", f"k{i}")
    node3 = sim.node("node3")
    sim.add("node4", seed=False, **SMALL_STREAMS)
    # node3 hears nothing for a while: it still routes by the old ring
    assert sim.run_until(lambda: sim.node("node4").members.own.status == MemberStatus.NORMAL,
                         30)
    sim.down.add(node3.config.address)
    sim.run(1.5)
    node1 = sim.node("node1")
    ring = node1.ring
    lost = [f"k{i}" for i in range(300) if "node1" not in ring.get_nodes(f"k{i}", 3)]
    assert lost and node1.topology.previous is not None
    assert all(node1.store.get(k) is not None for k in lost)  # node3 may still read them here
    sim.down.discard(node3.config.address)
    assert sim.run_until(lambda: node1.topology.previous is None, 10)
    assert sim.run_until(lambda: all(node1.store.get(k) is None for k in lost), 10)


def test_a_drop_keeps_what_a_later_change_gives_back():
    sim = cluster_of(3, **SMALL_STREAMS)
    for i in range(300):
        put(sim, "node1", f"k{i}")
    sim.add("node4", seed=False, **SMALL_STREAMS)
    assert sim.run_until(lambda: normal_everywhere(sim, "node4"), 30)
    # node4 leaves again before node1 dropped what it gave node4
    reply = sim.request("node2", MsgType.REMOVE_NODE, {"node_id": "node4"})
    assert reply.type == MsgType.OK
    assert sim.run_until(lambda: sim.node("node4").members.own.status == MemberStatus.LEFT, 30)
    sim.run(5)
    for i in range(300):
        assert holders(sim, f"k{i}") == ["node1", "node2", "node3"], f"k{i}"
