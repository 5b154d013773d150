"""Real-time safety of the node core on the in-memory network (no sockets): late copies of
retried writes, clocks off, a forming cluster, failing stores, monotonic reads, exact status.
Each test judges by the values clients wrote and read, and by when."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from simnet import CLIENT, SimCluster
from simstore import SimStore

from zring.core.effects import Reply
from zring.errors import StorageError
from zring.protocol import Message, MsgType, decode, encode
from zring.versions import HybridClock

WRITER = "client-test"


class Stamps:
    """A client's write stamps, as zring.client.WriteStamps on the network's clock."""

    def __init__(self, sim: SimCluster, offset_s: float = 0.0) -> None:
        self.sim, self.offset_s, self.clock = sim, offset_s, HybridClock()

    def next(self) -> int:
        return self.clock.now(int((self.sim.now + self.offset_s) * 1000))


def cluster_of(count: int = 3, **overrides) -> SimCluster:
    sim = SimCluster()
    for i in range(1, count + 1):
        sim.add(f"node{i}", store=SimStore(), **overrides)
    assert sim.run_until(lambda: sim.converged() and len(sim.node("node1").ring) == count, 10)
    return sim


def put(sim, node, key, value, ts, **extra) -> Message:
    body = {"key": key, "value": value, "ts": ts, "writer": WRITER, **extra}
    return sim.request(node, MsgType.PUT, body)


def get(sim, node, key, **extra) -> Message:
    return sim.request(node, MsgType.GET, {"key": key, **extra})


def replicas_of(sim: SimCluster, key: str) -> list[str]:
    return sim.node("node1").ring.get_nodes(key, 3)


def values_held(sim: SimCluster, key: str) -> dict[str, object]:
    return {c.config.node_id: (r.value if (r := c.store.get(key)) else None)
            for c in sim.cores.values()}


# ---------------------------------------------------------------- late copies of retries


def test_a_retried_write_applied_late_never_overrides_a_later_acknowledged_one():
    sim = cluster_of(3)
    stamps = Stamps(sim)
    key = "late"
    owner, second, _ = replicas_of(sim, key)
    owner_address = sim.node(owner).config.address
    sim.pause(owner_address)   # SIGSTOP: what is sent to it waits in its socket
    first = {"key": key, "value": b"A", "ts": stamps.next(), "writer": WRITER}
    sim.send(owner, MsgType.PUT, first, via_network=True)
    sim.run(1.0)   # the client times out and resends the same write (same stamp) elsewhere
    assert sim.request(second, MsgType.PUT, first).type == MsgType.OK
    assert put(sim, second, key, b"B", stamps.next()).type == MsgType.OK
    sim.resume(owner_address)   # the first copy arrives now, long after its client gave up
    sim.run(2.0)
    for node in ("node1", "node2", "node3"):
        assert get(sim, node, key, r=3).body["value"] == b"B"
    assert set(values_held(sim, key).values()) == {b"B"}


def test_a_write_older_than_what_replicas_hold_is_refused_with_the_newer_version():
    sim = cluster_of(3)
    stamps = Stamps(sim)
    old = stamps.next()
    newer = old + (100 << 16)   # another client's clock, 100 ms ahead
    assert put(sim, "node1", "k", b"new", newer).type == MsgType.OK
    reply = put(sim, "node2", "k", b"old", old)
    assert reply.type == MsgType.ERROR and reply.body["code"] == "version_conflict"
    assert reply.body["details"]["held"] == [newer, WRITER]
    assert get(sim, "node3", "k").body["value"] == b"new"
    # stamped again above what is held, as the clients do: taken
    stamps.clock.observe(newer)
    assert put(sim, "node2", "k", b"old", stamps.next()).type == MsgType.OK
    assert get(sim, "node1", "k").body["value"] == b"old"


def test_a_resent_write_with_the_same_stamp_is_acknowledged_again():
    sim = cluster_of(3)
    ts = Stamps(sim).next()
    assert put(sim, "node1", "k", b"v", ts).type == MsgType.OK
    again = put(sim, "node2", "k", b"v", ts)   # a duplicate: equal versions are taken
    assert again.type == MsgType.OK and again.body["version"] == [ts, WRITER]


def test_mput_keys_refused_for_a_newer_version_say_which_version_is_held():
    sim = cluster_of(3)
    stamps = Stamps(sim)
    old = stamps.next()
    newer = old + (100 << 16)
    put(sim, "node1", "a", b"new", newer)
    reply = sim.request("node2", MsgType.MPUT, {"items": [["a", b"old", old],
                                                          ["b", b"fresh", stamps.next()]],
                                                "writer": WRITER})
    first, second = reply.body["results"]
    assert first["error"] == "version_conflict" and first["held"] == [newer, WRITER]
    assert second["stored_on"]


# ---------------------------------------------------------------- clocks


def test_a_node_whose_clock_is_off_refuses_to_coordinate_writes_and_says_by_how_much():
    sim = cluster_of(3, clock_check_interval_s=0.25)
    sim.offsets[sim.node("node1").config.address] = 300.0
    sim.run(1.0)   # the next clock checks measure it
    reply = put(sim, "node1", "k", b"v", Stamps(sim).next())
    assert reply.type == MsgType.ERROR and reply.body["code"] == "clock_skew"
    assert reply.body["details"]["offset_s"] == pytest.approx(300, abs=0.1)
    assert reply.body["details"]["node"] == "node1"
    assert put(sim, "node2", "k", b"v", Stamps(sim).next()).type == MsgType.OK
    rows = {r["node_id"]: r for r in sim.request("node2", MsgType.CLUSTER_STATUS,
                                                 {}).body["members"]}
    assert rows["node1"]["clock_ok"] is False and rows["node2"]["clock_ok"] is True
    assert rows["node1"]["clock_offset_s"] == pytest.approx(300, abs=0.1)
    sim.offsets[sim.node("node1").config.address] = 0.0   # fixed (NTP)
    sim.run(1.0)
    assert put(sim, "node1", "k2", b"v", Stamps(sim).next()).type == MsgType.OK


def test_timestamps_from_beyond_the_maximum_offset_are_refused_and_counted():
    sim = cluster_of(3)
    core = sim.node("node2")
    ahead = int((sim.now + 5) * 1000) << 16   # a clock 5 s ahead
    effects = core.handle_frame((b"node1",), encode(Message(MsgType.REPLICA_WRITE, 7, {
        "records": [["k", b"v", ahead, "node1"]], "cond": True})), sim.now)
    reply = next(e for e in effects if isinstance(e, Reply)).message
    assert reply.type == MsgType.ERROR and reply.body["code"] == "clock_skew"
    assert core.stats["future_timestamps_refused"] == 1 and core.store.get("k") is None
    assert core.clock.last < ahead   # never observed
    client_write = put(sim, "node1", "k", b"v", ahead)   # a client whose clock is ahead
    assert client_write.body["code"] == "clock_skew" and "client" in \
        client_write.body["message"]


def test_the_hybrid_clock_never_goes_back_across_a_restart():
    sim = cluster_of(3)
    before = sim.node("node1").clock.last
    for i in range(20):   # writes without a client stamp: the node's own clock stamps them
        assert sim.request("node1", MsgType.PUT, {"key": f"k{i}", "value": b"v"}).type == \
            MsgType.OK
    issued = sim.node("node1").clock.last
    assert issued > before
    sim.run(0.5)   # its ceiling is saved with a loop cycle
    address = sim.node("node1").config.address
    sim.offsets[address] = -300.0   # restarted with its clock behind
    restarted = sim.restart("node1")
    assert restarted.clock.last >= issued


def test_a_node_restarted_with_its_clock_far_ahead_stamps_nothing_from_the_future():
    sim = cluster_of(3, clock_check_interval_s=0.25)
    address = sim.node("node1").config.address
    sim.offsets[address] = 365 * 86400.0   # a year ahead
    sim.restart("node1")
    sim.run(1.0)
    for i in range(5):
        reply = sim.request("node1", MsgType.PUT, {"key": f"y{i}", "value": b"v"})
        assert reply.body.get("code") == "clock_skew"
    sim.offsets[address] = 0.0   # fixed, and restarted
    sim.restart("node1")
    sim.run(1.0)
    stamps = Stamps(sim)
    for i in range(5):   # new writes of those keys are taken and read back
        assert put(sim, "node2", f"y{i}", b"new", stamps.next()).type == MsgType.OK
        assert get(sim, "node1", f"y{i}").body["value"] == b"new"
    assert max(c.clock.last for c in sim.cores.values()) < int((sim.now + 1) * 1000) << 16


def test_a_wall_clock_stepped_back_does_not_silence_the_node():
    sim = cluster_of(3)
    address = sim.node("node1").config.address
    sim.offsets[address] = 20.0   # ran 20 s ahead...
    sim.run(2.0)
    sim.offsets[address] = 0.0    # ...then NTP stepped it back
    sim.run(5.0)   # its timers were set by the fast clock: they keep the time they had left
    for peer in ("node2", "node3"):
        assert sim.node(peer).members.liveness("node1", sim.now).value == "up"
    assert put(sim, "node1", "k", b"v", Stamps(sim).next()).type == MsgType.OK


# ---------------------------------------------------------------- a forming cluster


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
        assert put(sim, "node1", key, b"v", stamps.next()).type == MsgType.OK
    for key in keys:   # every write is on the replicas the full ring gives it
        held_by = {n for n, v in values_held(sim, key).items() if v == b"v"}
        assert len(held_by & set(replicas_of(sim, key))) >= 2


# ---------------------------------------------------------------- failing stores


def test_a_failing_store_fails_only_its_requests_and_the_node_serves_again_after():
    sim = cluster_of(3, max_pending_requests=20)
    core = sim.node("node1")
    stamps = Stamps(sim)
    core.store.failing = "write"
    for i in range(60):   # three times max_pending_requests: none of them may stay pending
        reply = put(sim, "node1", f"f{i}", b"v", stamps.next(), w=3)
        assert reply.type == MsgType.ERROR   # w=3 needs our copy too
    sim.run(1.0)   # the peers' acks of the last ones arrive: nothing stays pending
    assert not core.pending()["operations"]
    reads = [get(sim, "node1", f"f{i}") for i in range(5)]
    assert all(r.type == MsgType.OK for r in reads)   # reads still work
    core.store.failing = None
    assert put(sim, "node1", "after", b"v", stamps.next(), w=3).type == MsgType.OK


def test_a_failed_commit_takes_back_our_own_acknowledgement():
    sim = cluster_of(3)
    stamps = Stamps(sim)
    key = next(k for k in (f"c{i}" for i in range(100)) if replicas_of(sim, k)[0] == "node1")
    others = [n for n in replicas_of(sim, key) if n != "node1"]
    for node in others[1:]:   # one peer answers; with ours that would make w=2
        sim.pause(sim.node(node).config.address)
    sim.node("node1").store.failing = "commit"   # our write happens, then is undone
    reply = put(sim, "node1", key, b"v", stamps.next())
    assert reply.type == MsgType.ERROR   # not acknowledged on one real copy
    assert sim.node("node1").store.get(key) is None
    assert sim.node("node1").stats["commits_failed"] >= 1


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


def test_a_full_disk_fails_the_cycles_that_write_and_reads_go_on():
    sim = cluster_of(3)
    stamps = Stamps(sim)
    keys = [k for k in (f"d{i}" for i in range(40)) if "node1" in replicas_of(sim, k)][:10]
    for key in keys:
        assert put(sim, "node2", key, b"v", stamps.next()).type == MsgType.OK
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


# ---------------------------------------------------------------- monotonic reads


@contextmanager
def writes_lost(sim: SimCluster, sender: str):
    """Every write ``sender`` sends to a peer is lost on the way (batches too)."""
    address = sim.node(sender).config.address
    deliver = sim._deliver_request

    def deliver_unless_write(target, source, frame):
        if source == address and decode(frame).type in (MsgType.REPLICA_WRITE, MsgType.BATCH,
                                                         MsgType.HINT_WRITE):
            return
        deliver(target, source, frame)
    sim._deliver_request = deliver_unless_write
    try:
        yield
    finally:
        sim._deliver_request = deliver


def partial_write(sim: SimCluster, key: str, value: bytes, stamps: Stamps) -> str:
    """A write that lands on its coordinator only and fails; the coordinator's node id."""
    coordinator = replicas_of(sim, key)[0]
    with writes_lost(sim, coordinator):
        failed = put(sim, coordinator, key, value, stamps.next(), w=2)
        sim.run(1.0)   # its hints for the others are lost too
    assert failed.type == MsgType.ERROR
    for core in sim.cores.values():
        core.store.delete_hints(h.hint_id for target in ("node1", "node2", "node3")
                                for h in core.store.hints_for(target))
    return coordinator


def test_a_read_that_finds_replicas_disagreeing_writes_the_newest_back_before_answering():
    sim = cluster_of(3)
    coordinator = partial_write(sim, "mono", b"partial", Stamps(sim))
    others = [n for n in replicas_of(sim, "mono") if n != coordinator]
    first = get(sim, coordinator, "mono")   # sees the partial write: must make it stick
    assert first.body["value"] == b"partial"
    sim.stopped.add(sim.node(coordinator).config.address)   # then its coordinator dies
    later = get(sim, others[0], "mono")
    assert later.type == MsgType.OK and later.body["value"] == b"partial"


def test_a_read_that_cannot_write_the_newest_back_does_not_return_it():
    sim = cluster_of(3)
    coordinator = partial_write(sim, "mono", b"partial", Stamps(sim))
    others = [n for n in replicas_of(sim, "mono") if n != coordinator]
    with writes_lost(sim, coordinator):   # so are the read's write-backs
        first = sim.request(coordinator, MsgType.GET, {"key": "mono"}, max_seconds=2)
    sim.stopped.add(sim.node(coordinator).config.address)   # the coordinator dies
    later = get(sim, others[0], "mono")
    # it may answer "partial" only once a write quorum holds it; else it cannot answer
    assert first.type == MsgType.ERROR
    assert later.type == MsgType.OK and not later.body["found"]


# ---------------------------------------------------------------- status


def test_status_figures_are_exact_right_after_writes():
    sim = cluster_of(3)
    stamps = Stamps(sim)
    items = [[f"s{i}", b"x" * 10, stamps.next()] for i in range(300)]
    reply = sim.request("node1", MsgType.MPUT, {"items": items, "writer": WRITER, "w": 3})
    assert all("stored_on" in r for r in reply.body["results"])
    rows = sim.request("node2", MsgType.CLUSTER_STATUS, {}).body["members"]
    assert sum(r["keys_count"] for r in rows) == 900
    assert all(r["figures"] == "exact" for r in rows)
    assert sum(r["bytes"] for r in rows) == sum(3 * (len(k) + 10) for k, _, _ in items)


# ---------------------------------------------------------------- power loss


@pytest.mark.parametrize("fsync", ["always", "periodic"])
def test_power_loss_keeps_what_each_policy_promises(fsync):
    sim = cluster_of(3, fsync=fsync, fsync_period_s=1.0)
    stamps = Stamps(sim)
    acked: dict[str, float] = {}
    for i in range(40):
        key = f"p{i}"
        if put(sim, f"node{i % 3 + 1}", key, b"v", stamps.next()).type == MsgType.OK:
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
