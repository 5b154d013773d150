"""core/node.py, the composition root: frames decoded and dispatched, peer BATCH frames,
the reaction to a member-table change, timers fanned out, and a failed commit's replies."""

from __future__ import annotations

import pytest
from coresim import (
    CLIENT_ROUTE,
    WRITER,
    Stamps,
    cluster_of,
    get,
    put,
    replicas_of,
    simstore_cluster_of,
    stamped_put,
)
from simnet import CLIENT

from zring.core.effects import Publish, Reply, Send, Unsubscribe
from zring.errors import StorageError
from zring.membership import MemberStatus
from zring.protocol import Message, MsgType, encode


def server_cycle(core, now: float, frames: list[bytes] = ()) -> list:
    """One loop cycle as server.py runs it: requests, then the tick, in one group commit;
    a failed commit turns the cycle's acknowledgements into errors."""
    effects: list = []
    try:
        with core.store.group_commit():
            for frame in frames:
                effects += core.handle_frame(CLIENT, frame, now)
            effects += core.tick(now)
    except StorageError as exc:
        effects = core.commit_failed(effects, exc, now)
    return [e.message for e in effects if isinstance(e, Reply)]


@pytest.mark.parametrize("frame", [b"", b"\xc1", b"\x93\x01", encode(Message(MsgType.OK, 1, {})),
                                   b"\x93\xcd\x03\xe7\x01\x80"])
def test_malformed_frames_get_an_error_and_the_node_keeps_serving(cluster, frame):
    core = cluster.node("node1")
    effects = core.handle_frame((CLIENT,), frame, cluster.now)
    assert len(effects) == 1 and effects[0].message.type == MsgType.ERROR
    assert put(cluster, "node1", "after", b"ok").type == MsgType.OK


def test_a_batch_answers_each_message_and_refuses_what_cannot_be_batched():
    sim = cluster_of(3)
    core = sim.node("node1")
    wires = [[int(MsgType.REPLICA_READ), 7, {"key": "a"}],
             [int(MsgType.RANGE_PULL), 8, {"intervals": [], "limit": 1}],
             [int(MsgType.REPLICA_READ), 9, {"key": 5}],
             "junk"]
    effects = core.handle_frame(CLIENT_ROUTE,
                                encode(Message(MsgType.BATCH, 0, {"messages": wires})), sim.now)
    replies = [e for e in effects if isinstance(e, Reply)]
    assert len(replies) == 1 and replies[0].message.type == MsgType.BATCH
    answers = replies[0].message.body["messages"]
    assert [a[0] for a in answers] == [int(MsgType.OK), int(MsgType.ERROR),
                                       int(MsgType.ERROR), int(MsgType.ERROR)]
    assert [a[1] for a in answers[:3]] == [7, 8, 9]


def test_a_wall_clock_stepped_back_does_not_silence_the_node():
    sim = simstore_cluster_of(3)
    address = sim.node("node1").config.address
    sim.offsets[address] = 20.0   # ran 20 s ahead...
    sim.run(2.0)
    sim.offsets[address] = 0.0    # ...then NTP stepped it back
    sim.run(5.0)   # its timers were set by the fast clock: they keep the time they had left
    for peer in ("node2", "node3"):
        assert sim.node(peer).members.liveness("node1", sim.now).value == "up"
    assert stamped_put(sim, "node1", "k", b"v", Stamps(sim).next()).type == MsgType.OK


def test_a_failed_commit_takes_back_our_own_acknowledgement():
    sim = simstore_cluster_of(3)
    stamps = Stamps(sim)
    key = next(k for k in (f"c{i}" for i in range(100)) if replicas_of(sim, k)[0] == "node1")
    others = [n for n in replicas_of(sim, key) if n != "node1"]
    for node in others[1:]:   # one peer answers; with ours that would make w=2
        sim.pause(sim.node(node).config.address)
    sim.node("node1").store.failing = "commit"   # our write happens, then is undone
    reply = stamped_put(sim, "node1", key, b"v", stamps.next())
    assert reply.type == MsgType.ERROR   # not acknowledged on one real copy
    assert sim.node("node1").store.get(key) is None
    assert sim.node("node1").stats["commits_failed"] >= 1


def test_a_full_disk_fails_the_cycles_that_write_and_reads_go_on():
    sim = simstore_cluster_of(3)
    stamps = Stamps(sim)
    keys = [k for k in (f"d{i}" for i in range(40)) if "node1" in replicas_of(sim, k)][:10]
    for key in keys:
        assert stamped_put(sim, "node2", key, b"v", stamps.next()).type == MsgType.OK
    sim.run(0.5)
    core = sim.node("node1")
    core.store.failing = "commit"   # full: every commit that writes fails
    write = encode(Message(MsgType.PUT, 1, {"key": "new", "value": b"v", "ts": stamps.next(),
                                            "writer": WRITER, "r": 1}))
    now = sim.now
    server_cycle(core, now, [write])   # our copy is written, then the commit fails
    assert core.store.get("new") is None and core.stats["commits_failed"] == 1
    for step in range(1, 30):   # later cycles that only read commit nothing: they answer
        reads = [encode(Message(MsgType.GET, 100 + i, {"key": key, "r": 1}))
                 for i, key in enumerate(keys)]   # our own copies: answered this cycle
        replies = server_cycle(core, now + step * 0.1, reads)
        assert [r.body.get("value") for r in replies if r.request_id >= 100] == [b"v"] * 10
    assert core.stats["commits_failed"] <= 3   # bookkeeping writes retried at most each second


@pytest.mark.parametrize("fsync", ["always", "periodic"])
def test_power_loss_keeps_what_each_policy_promises(fsync):
    sim = simstore_cluster_of(3, fsync=fsync, fsync_period_s=1.0)
    stamps = Stamps(sim)
    acked: dict[str, float] = {}
    for i in range(40):
        key = f"p{i}"
        if stamped_put(sim, f"node{i % 3 + 1}", key, b"v", stamps.next()).type == MsgType.OK:
            acked[key] = sim.now
        sim.run(0.05)
    lost_power_at = sim.now
    for core in list(sim.cores.values()):   # every machine loses power at once
        sim.restart(core.config.node_id, store=core.store.power_loss())
    assert sim.run_until(sim.converged, 10)
    promised = [k for k, at in acked.items()
                if fsync == "always" or at <= lost_power_at - 1.0]   # periodic: 1 period
    assert promised
    for key in promised:
        assert get(sim, "node1", key, r=3).body["value"] == b"v", key


def test_every_request_type_has_one_handler():
    core = cluster_of(1).node("node1")
    assert MsgType.PUT in core.handlers and MsgType.BATCH in core.handlers
    assert core.handlers[MsgType.PUT] == core.coordinator.handlers[MsgType.PUT]
    assert core.handlers[MsgType.MGET] == core.multikey.handlers[MsgType.MGET]
    assert core.handlers[MsgType.RANGE_PULL] == core.replica.handlers[MsgType.RANGE_PULL]
    assert MsgType.OK not in core.handlers and MsgType.GOSSIP not in core.handlers


def test_a_handler_that_fails_unexpectedly_answers_an_error_and_the_node_serves_on(cluster):
    core = cluster.node("node1")

    def broken(route, message, now):
        raise KeyError("a bug")
    core.handlers[MsgType.PING] = broken
    effects = core.handle_frame(CLIENT_ROUTE, encode(Message(MsgType.PING, 4, {})),
                                cluster.now)
    [reply] = effects
    assert reply.message.type == MsgType.ERROR and reply.message.request_id == 4
    assert "KeyError" in reply.message.body["message"] and core.stats["handler_errors"] == 1
    assert put(cluster, "node1", "after", b"ok").type == MsgType.OK


def test_a_member_table_change_is_acted_on_within_the_entry_point_that_made_it(cluster):
    core = cluster.node("node1")
    node3 = cluster.node("node3")
    frame = encode(Message(MsgType.FORCE_REMOVE, 7, {"node_id": "node3"}))
    effects = core.handle_frame(CLIENT_ROUTE, frame, cluster.now)
    assert core.ring.nodes == ["node1", "node2"]          # the ring rebuilt at once
    assert not core.settled                               # node2 still routes by the old one
    assert Unsubscribe(node3.config.gossip_address) in effects
    assert any(isinstance(e, Reply) and e.message.type == MsgType.OK for e in effects)


def test_a_change_of_our_own_status_is_gossiped_at_once(cluster):
    core = cluster.node("node1")
    frame = encode(Message(MsgType.REMOVE_NODE, 7, {"node_id": "node1"}))
    effects = core.handle_frame(CLIENT_ROUTE, frame, cluster.now)
    beats = [e for e in effects if isinstance(e, Publish)]
    assert core.members.own.status == MemberStatus.LEAVING and len(beats) == 1
    own = next(m for m in beats[0].message.body["members"] if m["node_id"] == "node1")
    assert own["status"] == int(MemberStatus.LEAVING)


def test_a_member_table_changed_between_entry_points_is_acted_on_by_the_next(cluster):
    core = cluster.node("node1")
    core.members.set_status("node3", MemberStatus.LEFT)
    assert core.ring.nodes == ["node1", "node2", "node3"]  # nothing ran yet
    core.tick(cluster.now)
    assert core.ring.nodes == ["node1", "node2"]


def test_a_failed_commit_turns_acknowledgements_into_errors_and_lets_the_rest_through(cluster):
    core = cluster.node("node1")
    write_ack = Reply(CLIENT_ROUTE, Message(MsgType.OK, 1, {"stored_on": ["node1"]}))
    read = Reply(CLIENT_ROUTE, Message(MsgType.OK, 2, {"found": True}), only_reads=True)
    refusal = Reply(CLIENT_ROUTE, Message(MsgType.ERROR, 3, {"code": "x", "message": "y"}))
    batch = Reply((b"node2",), Message(MsgType.BATCH, 0, {"messages": [
        [int(MsgType.OK), 11, {}], [int(MsgType.OK), 12, {}]]}))
    send = Send("tcp://sim:7002", Message(MsgType.REPLICA_READ, 9, {"key": "k"}))
    out = core.commit_failed([write_ack, read, refusal, batch, send],
                             StorageError("disk full", reason="error"), cluster.now)
    assert out[0].message.type == MsgType.ERROR and out[0].message.request_id == 1
    assert out[0].message.body["code"] == "storage"
    assert out[1] is read and out[2] is refusal and out[4] is send
    wires = out[3].message.body["messages"]
    assert [(w[0], w[1]) for w in wires] == [(int(MsgType.ERROR), 11), (int(MsgType.ERROR), 12)]
    assert core.stats["commits_failed"] == 1


def test_a_part_failing_in_a_tick_is_counted_and_the_others_still_run(cluster):
    core = cluster.node("node1")

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")
    core.store.hint_counts = broken          # the hints' replay fails
    effects = core.tick(cluster.now + 5)
    assert core.stats["housekeeping_errors"] == 1
    assert any(isinstance(e, Publish) for e in effects)   # gossip beat regardless
    del core.store.hint_counts
    core.tick(cluster.now + 10)
    assert core.stats["housekeeping_errors"] == 1


def test_next_deadline_is_the_earliest_of_the_parts(cluster):
    core = cluster.node("node1")
    now = cluster.now
    core.tick(now)
    beat_due = now + core.config.gossip_interval_s
    assert now <= core.next_deadline() <= beat_due
    frame = encode(Message(MsgType.PUT, 5, {"key": "k", "value": b"v"}))
    core.handle_frame(CLIENT_ROUTE, frame, now)   # its peer calls are due then, or sooner
    assert core.next_deadline() <= now + core.config.request_timeout_s
