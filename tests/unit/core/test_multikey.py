"""core/multikey.py: MGET and MPUT, one request per replica, the coordinator's own share a
loop cycle later, and any key the fast path cannot take handed to the single-key path."""

from __future__ import annotations

from coresim import (
    CLIENT_ROUTE,
    WRITER,
    Stamps,
    cluster_of,
    count_sends,
    deliver,
    simstore_cluster_of,
    stamped_put,
    watch_effects,
)
from simnet import SimCluster

from zring.core.batching import MAX_BATCH_KEYS
from zring.core.effects import Reply, Send
from zring.core.multikey import encoded_bound
from zring.errors import StorageError
from zring.hashing import key_position
from zring.protocol import Message, MsgType, encode
from zring.versions import LOGICAL_BITS


def queued(core) -> int:
    """Own reads and writes of batches waiting for the next loop cycle."""
    return core.pending()["own_work"]


def assert_own_work_fails_batch_9(core, now: float) -> None:
    """The batch's own reads or writes wait for the next cycle, run, fail: one error reply
    to the client's batch (request 9), and nothing of it stays open."""
    assert core.tick(now) == []
    failed = core.tick(now)
    assert [e.message.type for e in failed] == [MsgType.ERROR]
    assert failed[0].message.body["code"] == "storage" and failed[0].message.request_id == 9
    assert core.pending()["batch_keys"] == 0 and core.pending()["batches"] == 0


def assert_answered_by_the_peers_alone(sim: SimCluster, core, writes: list[Send],
                                       now: float) -> None:
    """Each peer applies its REPLICA_WRITE and acks; the last ack answers node1's MPUT with
    every key stored on node2 and node3 (node1's own copies not counted)."""
    for send in writes:
        peer = next(c for c in sim.cores.values() if c.config.address == send.address)
        answer = peer.handle_frame((b"node1",), encode(send.message), now)
        replies = core.handle_reply(send.address, encode(answer[0].message), now)
    assert [e.message.type for e in replies] == [MsgType.OK]
    assert all(sorted(r["stored_on"]) == ["node2", "node3"]
               for r in replies[0].message.body["results"])


def test_mput_then_mget_round_trip_in_key_order():
    sim = cluster_of(3)
    items = [[f"k{i}", f"v{i}".encode()] for i in range(50)]
    reply = sim.request("node1", MsgType.MPUT, {"items": items})
    assert reply.type == MsgType.OK
    results = reply.body["results"]
    assert len(results) == 50 and all(len(r["stored_on"]) >= 2 for r in results)
    keys = [f"k{i}" for i in range(50)] + ["missing"]
    reply = sim.request("node2", MsgType.MGET, {"keys": keys})
    results = reply.body["results"]
    assert [r["value"] for r in results[:50]] == [v for _, v in items]
    assert results[50]["found"] is False
    # every replica holds every key: the per-peer batches arrived whole
    for core in sim.cores.values():
        assert all(core.store.get(k) is not None for k, _ in items)


def test_mget_r1_answers_from_the_coordinators_copies_as_single_gets_do():
    sim = cluster_of(3)
    sim.request("node1", MsgType.MPUT, {"items": [["a", b"1"], ["b", "two"], ["gone", b"x"]]})
    sim.request("node1", MsgType.DELETE, {"key": "gone"})
    sent = count_sends(sim, "node2")
    keys = ["a", "b", "gone", "missing"]
    reply = sim.request("node2", MsgType.MGET, {"keys": keys, "r": 1})
    singles = [sim.request("node2", MsgType.GET, {"key": k, "r": 1}).body for k in keys]
    assert reply.body["results"] == singles
    assert [r["found"] for r in singles] == [True, True, False, False]
    assert singles[2]["version"] is not None and singles[3]["version"] is None  # tombstone
    assert all(r["served_by"] == ["node2"] for r in singles)
    assert not [m for m in sent if m.type in (MsgType.REPLICA_READ, MsgType.REPLICA_READ_MANY)]


def test_a_batch_reply_too_big_to_deliver_is_refused_with_a_clear_error():
    sim = cluster_of(3)
    big = b"v" * sim.node("node1").config.max_value_bytes
    keys = [f"big{i}" for i in range(5)]    # 5 x 4 MiB: over a batch reply's 16 MiB
    for key in keys:
        assert sim.request("node1", MsgType.PUT, {"key": key, "value": big}).type == MsgType.OK
    for r in (1, 2):
        reply = sim.request("node1", MsgType.MGET, {"keys": keys, "r": r})
        assert reply.type == MsgType.ERROR and reply.body["code"] == "invalid"
        assert "send fewer keys" in reply.body["message"]
    reply = sim.request("node1", MsgType.MGET, {"keys": keys[:3], "r": 1})
    assert [r["value"] for r in reply.body["results"]] == [big] * 3


def test_one_bad_key_fails_alone():
    sim = cluster_of(3)
    too_long = "x" * (sim.node("node1").config.max_key_bytes + 1)
    reply = sim.request("node1", MsgType.MPUT, {"items": [["a", b"1"], [too_long, b"2"],
                                                          ["c", 3]]})
    results = reply.body["results"]
    assert "version" in results[0]
    assert results[1]["error"] == "invalid" and "exceeds" in results[1]["message"]
    assert results[2]["error"] == "protocol"          # a value of the wrong type
    assert sim.request("node1", MsgType.GET, {"key": "a"}).body["value"] == b"1"


def test_empty_and_oversized_batches():
    sim = cluster_of(3)
    assert sim.request("node1", MsgType.MGET, {"keys": []}).body == {"results": []}
    reply = sim.request("node1", MsgType.MGET, {"keys": ["k"] * (MAX_BATCH_KEYS + 1)})
    assert reply.type == MsgType.ERROR and reply.body["code"] == "invalid"
    reply = sim.request("node1", MsgType.MPUT, {"items": [["k"]]})
    assert reply.type == MsgType.ERROR and reply.body["code"] == "protocol"


def test_a_store_failing_in_a_deferred_own_read_fails_the_batch_not_the_node():
    sim = cluster_of(3)
    keys = [f"k{i}" for i in range(20)]
    sim.request("node1", MsgType.MPUT, {"items": [[k, k.encode()] for k in keys]})
    core, now = sim.node("node1"), sim.now

    def broken(keys):
        raise StorageError("disk I/O error", path="x", reason="error")
    core.store.get_wire_many = broken
    effects = core.handle_frame(CLIENT_ROUTE, encode(Message(MsgType.MGET, 9, {"keys": keys,
                                                                         "r": 2})), now)
    assert any(isinstance(e, Send) for e in effects) and core.pending()["batch_keys"] == 20
    assert_own_work_fails_batch_9(core, now)
    del core.store.get_wire_many     # the store recovers: the node serves on
    reply = sim.request("node1", MsgType.MGET, {"keys": keys, "r": 2})
    assert [r["value"] for r in reply.body["results"]] == [k.encode() for k in keys]


def test_mput_sends_its_peers_their_writes_before_writing_its_own_copies():
    sim = cluster_of(3)
    core, now = sim.node("node1"), sim.now
    items = [[f"k{i}", b"v%d" % i] for i in range(20)]
    effects = core.handle_frame(CLIENT_ROUTE, encode(Message(MsgType.MPUT, 9, {"items": items})),
                                now)
    writes = [e for e in effects if isinstance(e, Send)]
    assert len(writes) == 2 and not any(isinstance(e, Reply) for e in effects)
    assert all(core.store.get(k) is None for k, _ in items)     # ours: not yet
    assert core.tick(now) == [] and core.next_deadline() <= now  # same cycle: not yet
    # both peers ack before our own write ran: w=2 is made, the batch is answered
    assert_answered_by_the_peers_alone(sim, core, writes, now)
    assert core.tick(now) == [] and not queued(core)    # next cycle: our copies too
    assert [core.store.get(k).value for k, _ in items] == [v for _, v in items]


def test_a_store_failing_in_a_deferred_own_write_counts_as_a_failed_replica():
    sim = cluster_of(3)
    core, now = sim.node("node1"), sim.now
    items = [[f"k{i}", b"v"] for i in range(10)]

    def broken(items):
        raise StorageError("disk I/O error", path="x", reason="error")
    core.store.write_if_newer = broken
    effects = core.handle_frame(CLIENT_ROUTE, encode(Message(MsgType.MPUT, 9, {"items": items})),
                                now)
    writes = [e for e in effects if isinstance(e, Send)]
    assert len(writes) == 2
    assert core.tick(now) == [] and core.tick(now) == []   # ours failed: no answer yet
    assert core.stats["own_writes_failed"] == 10 and not queued(core)
    # the peers' writes left before ours failed: they make w=2
    assert_answered_by_the_peers_alone(sim, core, writes, now)
    assert core.pending()["batch_keys"] == 0 and core.pending()["batches"] == 0
    del core.store.write_if_newer         # the store recovers: the node serves on
    reply = sim.request("node1", MsgType.MPUT, {"items": items})
    assert all(len(r["stored_on"]) >= 2 for r in reply.body["results"])
    assert sim.run_until(lambda: not queued(core), 5)
    assert all(core.store.get(k).value == b"v" for k, _ in items)


def test_own_work_queued_during_a_tick_runs_in_the_next_cycle():
    sim = cluster_of(3)
    core = sim.restart("node1")   # just restarted: requests wait until it hears its peers
    now = sim.now
    # client-stamped: a restarted node has not measured its clock yet to stamp writes
    items = [[f"k{i}", b"v", int(now * 1000) << LOGICAL_BITS] for i in range(10)]
    body = {"items": items, "writer": "client-1"}
    assert core.handle_frame(CLIENT_ROUTE, encode(Message(MsgType.MPUT, 9, body)), now) == []
    released = core.tick(now + 1)   # the held MPUT is handled inside this tick
    writes = [e for e in released
              if isinstance(e, Send) and e.message.type == MsgType.REPLICA_WRITE]
    assert len(writes) == 2 and queued(core)
    assert core.tick(now + 1) == [] and not queued(core)   # the next cycle writes ours
    assert all(core.store.get(k).value == b"v" for k, *_ in items)


def test_own_work_still_queued_when_the_node_stops_is_done_at_once():
    sim = cluster_of(3)
    core, now = sim.node("node1"), sim.now
    items = [[f"k{i}", b"v"] for i in range(10)]
    core.handle_frame(CLIENT_ROUTE, encode(Message(MsgType.MPUT, 9, {"items": items})), now)
    assert queued(core) and all(core.store.get(k) is None for k, _ in items)
    assert core.finish_own_work(now) == [] and not queued(core)   # no quorum yet: no reply
    assert all(core.store.get(k).value == b"v" for k, _ in items)


def test_mput_and_mget_send_one_request_per_peer_not_one_per_key():
    sim = cluster_of(3)
    sent = count_sends(sim, "node1")
    items = [[f"k{i}", b"v"] for i in range(40)]
    assert sim.request("node1", MsgType.MPUT, {"items": items}).type == MsgType.OK
    writes = [m for m in sent if m.type == MsgType.REPLICA_WRITE]
    assert len(writes) == 2 and all(len(m.body["records"]) == 40 for m in writes)
    sent.clear()
    reply = sim.request("node1", MsgType.MGET, {"keys": [k for k, _ in items], "r": 2})
    assert all(r["found"] for r in reply.body["results"])
    reads = [m for m in sent if m.type == MsgType.REPLICA_READ_MANY]
    assert 1 <= len(reads) <= 2 and sum(len(m.body["keys"]) for m in reads) == 40


def test_mget_asks_its_peer_before_reading_its_own_copies():
    sim = cluster_of(3)
    keys = [f"k{i}" for i in range(20)]
    sim.request("node1", MsgType.MPUT, {"items": [[k, k.encode()] for k in keys]})
    core, now = sim.node("node1"), sim.now
    frame = encode(Message(MsgType.MGET, 9, {"keys": keys, "r": 2}))
    effects = core.handle_frame(CLIENT_ROUTE, frame, now)
    reads = [e for e in effects if isinstance(e, Send)]
    assert [e.message.type for e in reads] == [MsgType.REPLICA_READ_MANY]  # no reply yet
    assert core.tick(now) == [] and core.next_deadline() <= now  # same cycle: not yet
    assert core.tick(now) == [] and not queued(core)          # next cycle: read, waits
    peer = next(c for c in sim.cores.values() if c.config.address == reads[0].address)
    answer = peer.handle_frame((b"node1",), encode(reads[0].message), now)
    reply_frame = encode(answer[0].message)
    replies = core.handle_reply(reads[0].address, reply_frame, now)
    assert [e.message.type for e in replies] == [MsgType.OK]
    assert [r["value"] for r in replies[0].message.body["results"]] == \
        [k.encode() for k in keys]
    assert all(len(r["served_by"]) == 2 for r in replies[0].message.body["results"])


def test_mget_own_reads_after_the_peer_failed_leave_the_single_key_path_alone():
    sim = cluster_of(3)
    keys = [f"k{i}" for i in range(10)]
    sim.request("node1", MsgType.MPUT, {"items": [[k, k.encode()] for k in keys]})
    core, now = sim.node("node1"), sim.now
    effects = core.handle_frame(CLIENT_ROUTE, encode(Message(MsgType.MGET, 9, {"keys": keys,
                                                                         "r": 2})), now)
    read = next(e for e in effects if isinstance(e, Send))
    # the peer refuses before our own reads ran: every key takes the single-key path
    refusal = encode(Message(MsgType.ERROR, read.message.request_id,
                             {"code": "unavailable", "message": "busy"}))
    singles = core.handle_reply(read.address, refusal, now)
    assert singles and not any(isinstance(e, Reply) for e in singles)
    assert core.tick(now) == [] and core.tick(now) == []   # the queued reads skip them all
    assert not queued(core)
    deliver(sim, core.config.address, singles)                # the single reads finish
    assert sim.run_until(lambda: 9 in sim.client_replies, 5)
    results = sim.client_replies.pop(9).body["results"]
    assert [r["value"] for r in results] == [k.encode() for k in keys]


def test_mget_keys_whose_replica_is_silent_fall_back_to_a_stand_by():
    sim = cluster_of(3)
    keys = [f"k{i}" for i in range(30)]
    sim.request("node1", MsgType.MPUT, {"items": [[k, k.encode()] for k in keys]})
    sim.down.add(sim.node("node2").config.address)   # not yet noticed by anyone
    reply = sim.request("node1", MsgType.MGET, {"keys": keys, "r": 2}, max_seconds=10)
    results = reply.body["results"]
    assert [r["value"] for r in results] == [k.encode() for k in keys]
    assert all("node2" not in r["served_by"] for r in results)


def test_mput_with_a_replica_down_takes_the_hinted_single_key_path():
    sim = cluster_of(3)
    sim.down.add(sim.node("node3").config.address)
    core = sim.node("node1")
    assert sim.run_until(lambda: not core.members.is_up("node3", sim.now), 30)
    keys = [f"k{i}" for i in range(20)]
    reply = sim.request("node1", MsgType.MPUT, {"items": [[k, b"v"] for k in keys]})
    results = reply.body["results"]
    assert all(sorted(r["stored_on"]) == ["node1", "node2"] for r in results)
    assert sum(core.store.hint_counts().values()) + sum(
        sim.node("node2").store.hint_counts().values()) >= 20   # node3's share, kept


def test_a_key_falls_back_to_the_single_path_once_and_no_reply_escapes_the_core():
    """Both replicas an MGET asks fail (one answers an error, one is silent): the key
    went to the single-key path twice, and the second answer, after the batch was
    answered, left the core as a Reply routed to a Slot (the server crashed on it)."""
    from zring.core.effects import Slot
    from zring.errors import StorageError
    sim = cluster_of(4)
    core = sim.node("node1")
    key = next(f"k{i}" for i in range(1000)
               if "node1" not in core.ring.get_nodes_at(key_position(f"k{i}"), 3))
    sim.request("node2", MsgType.PUT, {"key": key, "value": b"v"})
    first = sim.request("node1", MsgType.MGET, {"keys": [key], "r": 2}).body["results"][0]
    failing, silent = first["served_by"]
    store = sim.node(failing).store
    real_get_wire, real_get = store.get_wire, store.get

    def damaged(method):
        def read(k):
            if k == key:
                raise StorageError("damaged row", reason="damaged")
            return method(k)
        return read
    store.get_wire, store.get = damaged(real_get_wire), damaged(real_get)
    sim.down.add(sim.node(silent).config.address)
    escaped = []

    def catch_strays(address, effects):
        stray = [e for e in effects if isinstance(e, Reply) and isinstance(e.route, Slot)]
        escaped.extend(stray)
        return [e for e in effects if e not in stray]
    watch_effects(sim, catch_strays)
    single_before = core.stats["batch_keys_single_path"]
    request_id = sim.send("node1", MsgType.MGET, {"keys": [key], "r": 2})
    sim.run(6.0)
    assert request_id in sim.client_replies
    assert escaped == [] and core.stats["batch_keys_single_path"] == single_before + 1
    assert core.pending()["batches"] == 0 and core.pending()["batch_keys"] == 0


def test_a_refused_batch_leaves_nothing_open():
    sim = cluster_of(3)
    core = sim.node("node1")
    assert sim.request("node1", MsgType.MGET, {"keys": ["a"], "r": 5}).type == MsgType.ERROR
    assert sim.request("node1", MsgType.MPUT, {"items": [["a", b"1"]], "w": 9}).type == \
        MsgType.ERROR
    assert core.pending()["batches"] == 0 and core.pending()["batch_keys"] == 0


def test_mput_keys_refused_for_a_newer_version_say_which_version_is_held():
    sim = simstore_cluster_of(3)
    stamps = Stamps(sim)
    old = stamps.next()
    newer = old + (100 << 16)
    stamped_put(sim, "node1", "a", b"new", newer)
    reply = sim.request("node2", MsgType.MPUT, {"items": [["a", b"old", old],
                                                          ["b", b"fresh", stamps.next()]],
                                                "writer": WRITER})
    first, second = reply.body["results"]
    assert first["error"] == "version_conflict" and first["held"] == [newer, WRITER]
    assert second["stored_on"]


def test_a_batch_open_counts_its_keys_until_it_is_answered():
    sim = cluster_of(3)
    core, now = sim.node("node1"), sim.now
    frame = encode(Message(MsgType.MGET, 9, {"keys": ["a", "b", "c"], "r": 2}))
    effects = core.handle_frame(CLIENT_ROUTE, frame, now)
    assert core.pending()["batches"] == 1 and core.pending()["batch_keys"] == 3
    assert core.multikey.open_batches == 1 and core.multikey.open_keys == 3
    deliver(sim, core.config.address, effects)
    assert sim.run_until(lambda: 9 in sim.client_replies, 5)
    assert core.pending()["batches"] == 0 and core.pending()["batch_keys"] == 0


def test_mget_with_an_mismatched_peer_answer_takes_the_single_key_path():
    sim = cluster_of(3)
    keys = [f"k{i}" for i in range(5)]
    sim.request("node1", MsgType.MPUT, {"items": [[k, k.encode()] for k in keys]})
    core, now = sim.node("node1"), sim.now
    effects = core.handle_frame(CLIENT_ROUTE, encode(Message(MsgType.MGET, 9, {
        "keys": keys, "r": 2})), now)
    read = next(e for e in effects if isinstance(e, Send))
    single_before = core.stats["batch_keys_single_path"]
    wrong = encode(Message(MsgType.OK, read.message.request_id,
                           {"records": [["other", b"x", 5, "w"]] * len(keys)}))
    singles = core.handle_reply(read.address, wrong, now)   # records of the wrong keys
    assert core.stats["batch_keys_single_path"] == single_before + len(keys)
    deliver(sim, core.config.address, singles)
    assert sim.run_until(lambda: 9 in sim.client_replies, 5)
    results = sim.client_replies.pop(9).body["results"]
    assert [r["value"] for r in results] == [k.encode() for k in keys]


def test_encoded_bound_is_never_below_a_values_size():
    assert encoded_bound(None) == 0
    assert encoded_bound(b"abc") == 3
    assert encoded_bound("é") >= len("é".encode())
    assert encoded_bound("abc") == 12
