"""Batches on the simulated network: MGET/MPUT, peer BATCH frames, and reads asking only r
replicas (no sockets)."""

from __future__ import annotations

from simnet import SimCluster
from test_rebalance_core import cluster_of

from zring.core.batching import MAX_BATCH_KEYS, coalesce_sends
from zring.core.effects import Publish, Reply, Send
from zring.errors import StorageError
from zring.hashing import key_position
from zring.protocol import Message, MsgType, encode
from zring.versions import LOGICAL_BITS

CLIENT = (b"client",)


def count_sends(sim: SimCluster, node_id: str) -> list[Message]:
    """Record every Send the node's effects carry (after coalescing, as they leave)."""
    sent: list[Message] = []
    original = sim._apply
    address = sim.node(node_id).config.address

    def apply(source, effects):
        effects = list(effects)
        if source == address:
            sent.extend(e.message for e in coalesce_sends(effects) if isinstance(e, Send))
        return original(source, effects)
    sim._apply = apply
    return sent


# ---------------------------------------------------------------- coalescing

def test_coalesce_merges_batchable_sends_per_peer_and_keeps_the_rest_in_place():
    write = Message(MsgType.REPLICA_WRITE, 1, {"records": []})
    read = Message(MsgType.REPLICA_READ, 2, {"key": "k"})
    pull = Message(MsgType.RANGE_PULL, 3, {"intervals": [], "limit": 1})
    gossip = Publish(Message(MsgType.GOSSIP, 0, {"sender": "a", "members": []}))
    effects = [Send("a", write), gossip, Send("b", read), Send("a", read), Send("a", pull)]
    merged = coalesce_sends(effects)
    assert [type(e).__name__ for e in merged] == ["Send", "Publish", "Send", "Send"]
    batch = merged[0]
    assert batch.address == "a" and batch.message.type == MsgType.BATCH
    assert [w[1] for w in batch.message.body["messages"]] == [1, 2]
    assert merged[2].message is read and merged[3].message is pull  # alone: left as is


def test_coalesce_leaves_single_sends_untouched():
    effects = [Send("a", Message(MsgType.REPLICA_READ, 1, {"key": "k"})),
               Send("b", Message(MsgType.REPLICA_READ, 2, {"key": "k"}))]
    assert coalesce_sends(effects) is effects


# ---------------------------------------------------------------- MPUT / MGET

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


def assert_own_work_fails_batch_9(core, now: float) -> None:
    """The batch's own reads or writes wait for the next cycle, run, fail: one error reply
    to the client's batch (request 9), and nothing of it stays open."""
    assert core.tick(now) == []
    failed = core.tick(now)
    assert [e.message.type for e in failed] == [MsgType.ERROR]
    assert failed[0].message.body["code"] == "storage" and failed[0].message.request_id == 9
    assert core.pending()["batch_keys"] == 0 and core.pending()["batches"] == 0


def test_a_store_failing_in_a_deferred_own_read_fails_the_batch_not_the_node():
    sim = cluster_of(3)
    keys = [f"k{i}" for i in range(20)]
    sim.request("node1", MsgType.MPUT, {"items": [[k, k.encode()] for k in keys]})
    core, now = sim.node("node1"), sim.now

    def broken(keys):
        raise StorageError("disk I/O error", path="x", reason="error")
    core.store.get_wire_many = broken
    effects = core.handle_frame(CLIENT, encode(Message(MsgType.MGET, 9, {"keys": keys,
                                                                         "r": 2})), now)
    assert any(isinstance(e, Send) for e in effects) and core.pending()["batch_keys"] == 20
    assert_own_work_fails_batch_9(core, now)
    del core.store.get_wire_many     # the store recovers: the node serves on
    reply = sim.request("node1", MsgType.MGET, {"keys": keys, "r": 2})
    assert [r["value"] for r in reply.body["results"]] == [k.encode() for k in keys]


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


def test_mput_sends_its_peers_their_writes_before_writing_its_own_copies():
    sim = cluster_of(3)
    core, now = sim.node("node1"), sim.now
    items = [[f"k{i}", b"v%d" % i] for i in range(20)]
    effects = core.handle_frame(CLIENT, encode(Message(MsgType.MPUT, 9, {"items": items})),
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
    effects = core.handle_frame(CLIENT, encode(Message(MsgType.MPUT, 9, {"items": items})),
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


def queued(core) -> int:
    """Own reads and writes of batches waiting for the next loop cycle."""
    return core.pending()["own_work"]


def test_own_work_queued_during_a_tick_runs_in_the_next_cycle():
    sim = cluster_of(3)
    core = sim.restart("node1")   # just restarted: requests wait until it hears its peers
    now = sim.now
    # client-stamped: a restarted node has not measured its clock yet to stamp writes
    items = [[f"k{i}", b"v", int(now * 1000) << LOGICAL_BITS] for i in range(10)]
    body = {"items": items, "writer": "client-1"}
    assert core.handle_frame(CLIENT, encode(Message(MsgType.MPUT, 9, body)), now) == []
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
    core.handle_frame(CLIENT, encode(Message(MsgType.MPUT, 9, {"items": items})), now)
    assert queued(core) and all(core.store.get(k) is None for k, _ in items)
    assert core.finish_own_work(now) == [] and not queued(core)   # no quorum yet: no reply
    assert all(core.store.get(k).value == b"v" for k, _ in items)


def test_answered_peer_calls_do_not_wake_the_loop_at_their_old_deadlines():
    sim = cluster_of(3)
    core, now = sim.node("node1"), sim.now
    peers = {c.config.address: c for c in sim.cores.values()}
    for i in range(20):   # each write asks both peers; every peer answers at once
        frame = encode(Message(MsgType.PUT, 100 + i, {"key": f"k{i}", "value": b"v"}))
        for send in [e for e in core.handle_frame(CLIENT, frame, now) if isinstance(e, Send)]:
            answer = peers[send.address].handle_frame((b"node1",), encode(send.message), now)
            core.handle_reply(send.address, encode(answer[0].message), now)
    stale = now + core.config.request_timeout_s   # each call's deadline, answered since
    assert core.pending()["calls"] == 0 and core.next_deadline() != stale


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
    effects = core.handle_frame(CLIENT, frame, now)
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
    effects = core.handle_frame(CLIENT, encode(Message(MsgType.MGET, 9, {"keys": keys,
                                                                         "r": 2})), now)
    read = next(e for e in effects if isinstance(e, Send))
    # the peer refuses before our own reads ran: every key takes the single-key path
    refusal = encode(Message(MsgType.ERROR, read.message.request_id,
                             {"code": "unavailable", "message": "busy"}))
    singles = core.handle_reply(read.address, refusal, now)
    assert singles and not any(isinstance(e, Reply) for e in singles)
    assert core.tick(now) == [] and core.tick(now) == []   # the queued reads skip them all
    assert not queued(core)
    sim._apply(core.config.address, singles)                # the single reads finish
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


# ---------------------------------------------------------------- peer BATCH frames

def test_a_batch_answers_each_message_and_refuses_what_cannot_be_batched():
    sim = cluster_of(3)
    core = sim.node("node1")
    wires = [[int(MsgType.REPLICA_READ), 7, {"key": "a"}],
             [int(MsgType.RANGE_PULL), 8, {"intervals": [], "limit": 1}],
             [int(MsgType.REPLICA_READ), 9, {"key": 5}],
             "junk"]
    effects = core.handle_frame(CLIENT, encode(Message(MsgType.BATCH, 0, {"messages": wires})),
                                sim.now)
    replies = [e for e in effects if isinstance(e, Reply)]
    assert len(replies) == 1 and replies[0].message.type == MsgType.BATCH
    answers = replies[0].message.body["messages"]
    assert [a[0] for a in answers] == [int(MsgType.OK), int(MsgType.ERROR),
                                       int(MsgType.ERROR), int(MsgType.ERROR)]
    assert [a[1] for a in answers[:3]] == [7, 8, 9]


# ---------------------------------------------------------------- reads ask r replicas

def test_reads_ask_only_r_replicas_the_coordinator_first():
    sim = cluster_of(3)
    sim.request("node1", MsgType.PUT, {"key": "k", "value": b"v"})
    sent = count_sends(sim, "node1")
    assert sim.request("node1", MsgType.GET, {"key": "k", "r": 1}).body["found"]
    assert [m for m in sent if m.type == MsgType.REPLICA_READ] == []
    assert sim.request("node1", MsgType.GET, {"key": "k", "r": 2}).body["found"]
    assert len([m for m in sent if m.type == MsgType.REPLICA_READ]) == 1


def test_a_replica_that_does_not_answer_is_replaced_by_a_stand_by():
    sim = cluster_of(3)
    sim.request("node1", MsgType.PUT, {"key": "k", "value": b"v"})
    core = sim.node("node1")
    others = [x for x in core.ring.get_nodes_at(key_position("k"), 3) if x != "node1"]
    # the replica node1 asks first stops answering before anyone can notice: its request
    # times out, then the stand-by is asked
    sim.down.add(sim.node(others[0]).config.address)
    reply = sim.request("node1", MsgType.GET, {"key": "k", "r": 2}, max_seconds=10)
    assert reply.type == MsgType.OK and reply.body["found"]
    assert sorted(reply.body["served_by"]) == sorted(["node1", others[1]])


# ---------------------------------------------------------------- review regressions

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
    escaped, original = [], sim._apply

    def apply(address, effects):
        effects = list(effects)
        stray = [e for e in effects if isinstance(e, Reply) and isinstance(e.route, Slot)]
        escaped.extend(stray)
        original(address, [e for e in effects if e not in stray])
    sim._apply = apply
    single_before = core.stats["batch_keys_single_path"]
    request_id = sim.send("node1", MsgType.MGET, {"keys": [key], "r": 2})
    sim.run(6.0)
    assert request_id in sim.client_replies
    assert escaped == [] and core.stats["batch_keys_single_path"] == single_before + 1
    assert core.pending()["batches"] == 0 and core.pending()["batch_keys"] == 0


def test_coalescing_cuts_batches_by_size_so_every_frame_is_deliverable():
    from zring.protocol import MAX_FRAME_BYTES
    value = b"x" * (4 * 1024 * 1024)
    sends = [Send("tcp://peer", Message(MsgType.REPLICA_WRITE, i,
                                        {"records": [[f"k{i}", value, 1, "n1"]]}))
             for i in range(17)]
    batches = coalesce_sends(sends)
    assert len(batches) >= 2
    assert all(len(encode(b.message)) < MAX_FRAME_BYTES for b in batches)
    assert sum(len(b.message.body["messages"]) if b.message.type == MsgType.BATCH else 1
               for b in batches) == 17


def test_a_refused_batch_leaves_nothing_open():
    sim = cluster_of(3)
    core = sim.node("node1")
    assert sim.request("node1", MsgType.MGET, {"keys": ["a"], "r": 5}).type == MsgType.ERROR
    assert sim.request("node1", MsgType.MPUT, {"items": [["a", b"1"]], "w": 9}).type == \
        MsgType.ERROR
    assert core.pending()["batches"] == 0 and core.pending()["batch_keys"] == 0


def test_batch_keys_count_towards_the_pending_limit():
    sim = cluster_of(3, max_pending_requests=50)
    reply = sim.request("node1", MsgType.MGET, {"keys": [f"k{i}" for i in range(51)]})
    assert reply.type == MsgType.ERROR and reply.body["code"] == "unavailable"
    reply = sim.request("node1", MsgType.MGET, {"keys": [f"k{i}" for i in range(50)]})
    assert reply.type == MsgType.OK
