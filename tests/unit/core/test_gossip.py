"""core/gossip.py: heartbeats, seeds, JOIN, the member table on disk, liveness."""

from __future__ import annotations

import pytest
from coresim import cluster_of, liveness_of, member, part_context, put
from simnet import SimCluster

from zring.config import NodeConfig
from zring.core.effects import Publish, Subscribe, Unsubscribe
from zring.core.gossip import Gossip, load_member_table
from zring.errors import InvalidRequest
from zring.membership import MemberStatus
from zring.protocol import Message, MsgType, encode
from zring.storage import MemoryStore

NOW = 1000.0


def gossip_of(node_id: str = "a", peers=("b", "c"), **overrides) -> Gossip:
    ctx = part_context(node_id, peers=peers, **overrides)
    return Gossip(ctx, NOW, lambda: 42, lambda: (), lambda now: None)


def test_seeds_converge_on_one_ring(cluster):
    for core in cluster.cores.values():
        assert core.ring.nodes == ["node1", "node2", "node3"]
        assert all(m.status == MemberStatus.NORMAL for m in core.members.all())


def test_a_silent_node_is_suspected_then_declared_down_and_comes_back(cluster):
    node3 = cluster.node("node3")
    cluster.run(5)  # a few seconds of heartbeats to learn the rhythm
    cluster.down.add(node3.config.address)
    went_down_at = cluster.now
    assert cluster.run_until(lambda: liveness_of(cluster, "node1", "node3") == "suspect", 5)
    assert cluster.run_until(lambda: liveness_of(cluster, "node1", "node3") == "down", 5)
    assert cluster.now - went_down_at <= 2.6
    assert liveness_of(cluster, "node2", "node3") == "down"
    cluster.down.clear()
    assert cluster.run_until(lambda: liveness_of(cluster, "node1", "node3") == "up", 2)
    # liveness never changed ownership
    assert cluster.node("node1").ring.nodes == ["node1", "node2", "node3"]


def test_a_node_restarts_from_its_store_again_and_again():
    from zring.config import NodeConfig
    from zring.core.node import NodeCore
    from zring.storage import MemoryStore
    store = MemoryStore()
    config = NodeConfig(node_id="n1", address="tcp://sim:1", gossip_address="tcp://sim:2",
                        seeds=["tcp://sim:1"], vnodes=16)
    generations = []
    for restart in range(3):
        core = NodeCore(config, store, 1000.0 + restart)
        core.start(1000.0 + restart)
        core.tick(1000.5 + restart)  # gossips: saves nothing new, but must not break
        generations.append(core.members.own.generation)
        assert core.members.own.status == MemberStatus.NORMAL
    assert generations == [1, 2, 3]


@pytest.mark.parametrize("weight", [float("inf"), float("nan"), 1e-30, 1e9])
def test_gossip_with_an_unusable_weight_is_refused_and_the_node_keeps_going(cluster, weight):
    core = cluster.node("node1")
    record = core.members.own.to_wire() | {"node_id": "evil", "weight": weight,
                                             "address": "tcp://sim:9", "status": 2}
    frame = encode(Message(MsgType.GOSSIP, 0, {"sender": "evil", "members": [record]}))
    assert core.handle_gossip(frame, cluster.now) == []
    assert "evil" not in core.members
    assert put(cluster, "node1", "after", b"ok").type == MsgType.OK


def test_a_seed_starts_normal_and_any_other_node_joining():
    store = MemoryStore()
    seed = NodeConfig(node_id="s", address="tcp://s:1", gossip_address="tcp://s:2",
                      seeds=["tcp://s:1"])
    other = NodeConfig(node_id="n", address="tcp://n:1", gossip_address="tcp://n:2",
                       seeds=["tcp://s:1"])
    assert load_member_table(seed, store, NOW).own.status == MemberStatus.NORMAL
    assert load_member_table(other, MemoryStore(), NOW).own.status == MemberStatus.JOINING


def test_a_beat_publishes_the_member_table_with_our_ring_and_a_new_heartbeat():
    gossip = gossip_of()
    before = gossip.ctx.members.own.heartbeat
    [beat] = gossip.beat(NOW)
    assert isinstance(beat, Publish) and beat.message.type == MsgType.GOSSIP
    own = gossip.ctx.members.own
    assert own.heartbeat == before + 1 and own.ring == 42
    assert {m["node_id"] for m in beat.message.body["members"]} == {"a", "b", "c"}
    assert gossip.next_deadline(NOW) <= NOW + gossip.ctx.config.gossip_interval_s


def test_subscriptions_follow_the_member_table():
    gossip = gossip_of()
    assert gossip.sync_subscriptions() == [Subscribe("tcp://b:2"), Subscribe("tcp://c:2")]
    assert gossip.sync_subscriptions() == []
    gossip.ctx.members.set_status("c", MemberStatus.LEFT)
    assert gossip.sync_subscriptions() == [Unsubscribe("tcp://c:2")]


def test_a_gossip_message_merges_its_records_and_names_its_sender():
    gossip = gossip_of()
    frame = encode(Message(MsgType.GOSSIP, 0, {"sender": "b", "members": [
        member("b").to_wire(), member("d", MemberStatus.JOINING).to_wire()]}))
    sender, effects = gossip.receive(frame, NOW)
    assert sender == "b" and "d" in gossip.ctx.members
    assert Subscribe("tcp://d:2") in effects and gossip.ctx.stats["gossip_accepted"] == 1


@pytest.mark.parametrize("frame", [
    b"\x00", encode(Message(MsgType.PING, 0, {})),
    encode(Message(MsgType.GOSSIP, 0, {"sender": "b", "members": [{"node_id": "x"}]}))])
def test_a_message_that_is_no_gossip_is_refused_and_counted(frame):
    gossip = gossip_of()
    assert gossip.receive(frame, NOW) == (None, [])
    assert gossip.ctx.stats["bad_gossip"] == 1 and gossip.ctx.stats["gossip_accepted"] == 0


def test_join_admits_a_new_member_and_answers_with_the_member_table():
    gossip = gossip_of()
    body = {"member": member("d", MemberStatus.JOINING).to_wire()}
    effects = gossip.handlers[MsgType.JOIN]((b"x",), Message(MsgType.JOIN, 3, body), NOW)
    reply = effects[-1].message
    assert reply.type == MsgType.OK and reply.request_id == 3
    assert {m["node_id"] for m in reply.body["members"]} == {"a", "b", "c", "d"}
    assert gossip.ctx.members["d"].status == MemberStatus.JOINING


def test_join_refuses_a_node_id_a_live_member_uses_at_another_address():
    gossip = gossip_of()
    impostor = member("b").to_wire() | {"address": "tcp://elsewhere:1"}
    with pytest.raises(InvalidRequest, match="already used"):
        gossip.handlers[MsgType.JOIN]((b"x",), Message(MsgType.JOIN, 3,
                                                         {"member": impostor}), NOW)


def test_a_fresh_seed_has_formed_only_once_it_met_every_seed():
    sim = SimCluster()
    seeds = [sim.address_of(i) for i in range(1, 3)]
    core = sim.add("node1", seeds=seeds)
    sim.run(1.0)
    assert not core.gossip.formed and core.gossip.seeds_missing() == [seeds[1]]
    assert not core.ready(sim.now)
    sim.add("node2", seeds=seeds)
    assert sim.run_until(lambda: core.gossip.formed, 5)
    assert core.gossip.seeds_missing() == [] and core.store.get_meta("formed") == b"1"


def test_the_member_table_is_saved_once_per_cycle_it_changed_in():
    sim = cluster_of(3)
    core = sim.node("node1")
    core.members.set_status("node3", MemberStatus.LEAVING)
    core.tick(sim.now)
    restarted = sim.restart("node1")
    assert restarted.members["node3"].status == MemberStatus.LEAVING
