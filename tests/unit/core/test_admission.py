"""core/admission.py: a node not ready holds client reads and writes (refusing them after
request_timeout_s), and a node past max_pending_requests refuses them."""

from __future__ import annotations

from coresim import CLIENT_ROUTE, WRITER, Stamps, cluster_of, replicas_of, stamped_put, values_held
from simnet import CLIENT, SimCluster
from simstore import SimStore

from zring.protocol import Message, MsgType, encode


def test_a_node_refuses_new_requests_past_its_pending_limit(cluster):
    core = cluster.node("node1")
    core.config.max_pending_requests = 2
    cluster.down.update(a for a, c in cluster.cores.items() if c is not core)
    frames = [encode(Message(MsgType.PUT, i, {"key": f"k{i}", "value": b"v"}))
              for i in range(1, 4)]
    replies = [e for f in frames for e in core.handle_frame((CLIENT,), f, cluster.now)
               if e.__class__.__name__ == "Reply"]
    assert [r.message.body["code"] for r in replies] == ["unavailable"]
    assert "retry later" in replies[0].message.body["message"]


def test_batch_keys_count_towards_the_pending_limit():
    sim = cluster_of(3, max_pending_requests=50)
    reply = sim.request("node1", MsgType.MGET, {"keys": [f"k{i}" for i in range(51)]})
    assert reply.type == MsgType.ERROR and reply.body["code"] == "unavailable"
    reply = sim.request("node1", MsgType.MGET, {"keys": [f"k{i}" for i in range(50)]})
    assert reply.type == MsgType.OK


def test_fresh_seeds_started_apart_coordinate_nothing_until_every_seed_is_met():
    sim = SimCluster()
    seeds = [sim.address_of(i) for i in range(1, 4)]
    sim.add("node1", seeds=seeds, store=SimStore())
    sim.run(0.2)
    held = sim.send("node1", MsgType.PUT, {"key": "k", "value": b"early", "ts": 1 << 40,
                                            "writer": WRITER})
    sim.run(0.2)
    assert held not in sim.client_replies   # held while node1 is the only seed up
    sim.add("node2", seeds=seeds, store=SimStore())
    sim.run(0.4)   # past request_timeout_s: refused, not taken by a ring of two
    reply = sim.client_replies.pop(held)
    assert reply.type == MsgType.ERROR and "forming" in reply.body["message"]
    assert "tcp://sim:7003" in reply.body["message"]
    assert all(c.store.get("k") is None for c in sim.cores.values())
    sim.add("node3", seeds=seeds, store=SimStore())
    assert sim.run_until(sim.converged, 10)
    stamps = Stamps(sim)
    keys = [f"k{i}" for i in range(50)]
    for key in keys:
        assert stamped_put(sim, "node1", key, b"v", stamps.next()).type == MsgType.OK
    for key in keys:   # every write is on the replicas the full ring gives it
        held_by = {n for n, v in values_held(sim, key).items() if v == b"v"}
        assert len(held_by & set(replicas_of(sim, key))) >= 2


def test_a_restarted_node_holds_requests_until_it_hears_a_peer():
    sim = cluster_of(3)
    core = sim.restart("node1")
    now = sim.now
    assert not core.ready(now)
    frame = encode(Message(MsgType.GET, 5, {"key": "k"}))
    assert core.handle_frame(CLIENT_ROUTE, frame, now) == []
    assert core.pending()["deferred"] == 1
    ping = encode(Message(MsgType.PING, 6, {}))     # no ring needed: answered at once
    assert [e.message.request_id for e in core.handle_frame(CLIENT_ROUTE, ping, now)] == [6]
    assert sim.run_until(lambda: core.pending()["deferred"] == 0, 1.0)
    assert core.ready(sim.now)


def test_a_held_request_is_refused_after_request_timeout_s():
    sim = SimCluster()
    seeds = [sim.address_of(i) for i in range(1, 3)]
    core = sim.add("node1", seeds=seeds)    # node2 never comes: the cluster never forms
    now = sim.now
    assert core.handle_frame(CLIENT_ROUTE, encode(Message(MsgType.GET, 5, {"key": "k"})),
                             now) == []
    assert core.next_deadline() <= now + core.config.request_timeout_s
    core.tick(now + core.config.request_timeout_s - 0.01)
    assert core.pending()["deferred"] == 1
    effects = core.tick(now + core.config.request_timeout_s)
    refused = [e.message for e in effects if getattr(e, "route", None) == CLIENT_ROUTE]
    assert [m.request_id for m in refused] == [5] and refused[0].body["code"] == "unavailable"
    assert core.pending()["deferred"] == 0 and core.stats["deferred_expired"] == 1


def test_a_node_holds_at_most_max_pending_requests():
    sim = SimCluster()
    seeds = [sim.address_of(i) for i in range(1, 3)]
    core = sim.add("node1", seeds=seeds, max_pending_requests=2)
    frames = [encode(Message(MsgType.GET, i, {"key": "k"})) for i in range(1, 4)]
    effects = [e for f in frames for e in core.handle_frame(CLIENT_ROUTE, f, sim.now)]
    assert [e.message.request_id for e in effects] == [3]
    assert effects[0].message.body["code"] == "unavailable"
    assert core.pending()["deferred"] == 2 and core.stats["overloaded"] == 1
