"""The simulated transport of the client core (tests/simclient.py) over the in-memory
network: commands driven in virtual time, replies routed per client, quorum exchanges ended
once decided, timeouts and retries in virtual seconds, gossip handed to the routing table."""

from __future__ import annotations

import itertools
import random

import pytest
from coresim import cluster_of
from simclient import SimClient, longest_command_s

from zring.clientcore.requests import Exchange, Request
from zring.errors import Timeout
from zring.protocol import MsgType


@pytest.fixture
def sim():
    saved = random.getstate()
    random.seed(0)   # the client core's first seed and request ids
    yield cluster_of(3)
    random.setstate(saved)


def seeds_of(sim) -> list[str]:
    return list(sim.cores)


@pytest.mark.parametrize("token_aware", [True, False])
def test_put_then_get_through_the_client_core(sim, token_aware):
    client = SimClient(sim, "client-a", seeds_of(sim), token_aware=token_aware)
    started = sim.now
    put = client.call(lambda: client.put("k", b"v1"))
    assert put.success and len(put.stored_on) >= 2
    assert client.call(lambda: client.get("k")).value == b"v1"
    assert sim.now - started < 1.0   # virtual time: a few latencies, no timeout
    assert client.commands_running == 0
    assert (client.ring_fingerprint is not None) is token_aware


def test_many_commands_in_flight_at_once(sim):
    client = SimClient(sim, "client-a", seeds_of(sim))
    client.call(lambda: client.put("warm", b"up"))   # the ring fetched first
    ended: dict[str, object] = {}
    for i in range(20):
        key = f"k{i}"
        client.launch(lambda key=key: client.put(key, key.encode()),
                      lambda result, error, key=key: ended.__setitem__(key, error or result))
    assert client.commands_running == 20
    assert sim.run_until(lambda: len(ended) == 20, 5)
    assert all(result.success for result in ended.values())
    got = client.call(lambda: client.mget([f"k{i}" for i in range(20)]))
    assert [r.value for r in got] == [f"k{i}".encode() for i in range(20)]


def test_replies_go_to_the_client_that_asked(sim):
    """Two clients whose request ids are the same: each gets its own reply."""
    first = SimClient(sim, "client-a", seeds_of(sim), token_aware=False)
    second = SimClient(sim, "client-b", seeds_of(sim), token_aware=False)
    first._ids, second._ids = itertools.count(7), itertools.count(7)
    results: dict[str, object] = {}
    first.launch(lambda: first.put("a", b"from-a"), lambda r, e: results.__setitem__("a", r))
    second.launch(lambda: second.put("b", b"from-b"), lambda r, e: results.__setitem__("b", r))
    assert sim.run_until(lambda: len(results) == 2, 5)
    assert first.call(lambda: first.get("a")).value == b"from-a"
    assert second.call(lambda: second.get("b")).value == b"from-b"
    # and the anonymous client of SimCluster.request is unaffected
    assert sim.request("node1", MsgType.GET, {"key": "a"}).body["value"] == b"from-a"


def test_a_silent_node_costs_every_try_its_timeout_in_virtual_time(sim):
    address = sim.node("node1").config.address
    client = SimClient(sim, "client-a", [address], token_aware=False, timeout=1.0,
                       retries=2)
    sim.stopped.add(address)   # crashed: what is sent to it is lost
    started = sim.now
    with pytest.raises(Timeout):
        client.call(lambda: client.ping())
    # three tries of 1 s, the backoffs between them (0.05 + 0.1 s)
    assert sim.now - started == pytest.approx(3.15, abs=0.01)


def test_a_paused_node_gets_the_request_when_it_resumes(sim):
    address = sim.node("node2").config.address
    client = SimClient(sim, "client-a", [address], token_aware=False, timeout=1.0,
                       retries=0)
    sim.pause(address)
    ended = []
    client.launch(lambda: client.put("k", b"late"), lambda r, e: ended.append(e))
    assert sim.run_until(lambda: bool(ended), 2)
    assert isinstance(ended[0], Timeout)   # unanswered while paused
    sim.resume(address)
    sim.run(1)
    # the held request arrived and was applied: a write whose fate was unknown
    reader = SimClient(sim, "client-b", seeds_of(sim), token_aware=False)
    assert reader.call(lambda: reader.get("k", r=3)).value == b"late"


def test_a_quorum_exchange_ends_once_decided(sim):
    """Three PINGs, quorum 2, one to a paused node: the outcome comes as soon as two
    answered, the third None (not waited for: ended early)."""
    client = SimClient(sim, "client-a", seeds_of(sim), token_aware=False, timeout=1.0)
    paused = sim.node("node3").config.address
    sim.pause(paused)
    requests = [Request(MsgType.PING, 900 + i, {}, first=endpoint)
                for i, endpoint in enumerate(seeds_of(sim))]
    exchange = Exchange(requests, 1.0, quorum=2)

    def steps():
        return (yield exchange)
    started = sim.now
    replies = client.call(lambda: client._run(steps()))
    assert sim.now - started < 0.1
    assert [reply is not None for reply in replies] == [True, True, False]
    assert exchange.ended_early(replies)


def test_an_exchange_without_a_quorum_waits_for_every_reply_or_the_timeout(sim):
    client = SimClient(sim, "client-a", seeds_of(sim), token_aware=False, timeout=1.0)
    sim.pause(sim.node("node3").config.address)
    requests = [Request(MsgType.PING, 900 + i, {}, first=endpoint)
                for i, endpoint in enumerate(seeds_of(sim))]

    def steps():
        return (yield Exchange(requests, 1.0))
    started = sim.now
    replies = client.call(lambda: client._run(steps()))
    assert sim.now - started == pytest.approx(1.0)
    assert [reply is not None for reply in replies] == [True, True, False]


def test_a_token_aware_client_hears_the_nodes_gossip(sim):
    client = SimClient(sim, "client-a", seeds_of(sim))
    client.call(lambda: client.put("k", b"v"))
    assert client.listening_to_gossip
    sim.run(2)   # the nodes gossip every 0.5 s
    client.call(lambda: client.get("k"))   # reads what arrived before routing
    assert set(client._routes.heard_at) == {"node1", "node2", "node3"}


def test_abandoned_commands_end_as_timeouts(sim):
    address = sim.node("node1").config.address
    client = SimClient(sim, "client-a", [address], token_aware=False)
    sim.pause(address)
    ended = []
    client.launch(lambda: client.get("k"), lambda r, e: ended.append(e))
    sim.run(0.5)
    client.abandon()
    assert len(ended) == 1 and isinstance(ended[0], Timeout)
    assert client.commands_running == 0
    sim.resume(address)
    sim.run(longest_command_s(client))   # its timers and late reply find nothing to resume
    assert len(ended) == 1


def test_the_clocks_are_the_networks(sim):
    client = SimClient(sim, "client-a", seeds_of(sim), clock_offset_s=-0.25)
    assert client._monotonic() == sim.now
    assert client._wall_ms() == int((sim.now - 0.25) * 1000)
    assert client.writer == "client-a"


def test_a_name_is_one_clients(sim):
    SimClient(sim, "client-a", seeds_of(sim))
    with pytest.raises(ValueError):
        SimClient(sim, "client-a", seeds_of(sim))
