"""The client core without sockets or clocks: seeds, results, retry policy, routing with
``now`` passed in, batch cut and merge, per-key errors, write stamps, and the commands driven
over a scripted network (``Scripted``: each request answered by a function, time simulated).
"""

from __future__ import annotations

import pytest
from clients import first_seed

import zring
from zring.clientcore import batches, session
from zring.clientcore.batches import (
    BATCH_MAX_BYTES,
    BATCH_MAX_KEYS,
    ENTRY_OVERHEAD,
    cut,
    cut_indexes,
    entry_bytes,
    merge,
)
from zring.clientcore.commands import Commands
from zring.clientcore.options import DEFAULT_SEEDS, Seeds, parse_seeds, seeds_from_env
from zring.clientcore.requests import Command, Exchange, Gossip, Sleep
from zring.clientcore.results import (
    ClusterStatus,
    GetResult,
    MemberInfo,
    PutResult,
    RingNode,
    RingState,
    batch_results,
    unwrap,
)
from zring.clientcore.retry import ExponentialBackoff, NoBackoff, Retry
from zring.clientcore.routing import AVOID_S, GOSSIP_CHECK_S, GOSSIP_SILENCE_S, RoutingTable
from zring.clientcore.stamps import CONFLICT_RETRIES, WriteStamps, restampable
from zring.errors import (
    ClockSkew,
    InvalidRequest,
    NotMember,
    ProtocolError,
    Timeout,
    Unavailable,
    VersionConflict,
    ZringError,
)
from zring.protocol import Message, MsgType, decode
from zring.versions import Version

S1, S2 = "tcp://s:1", "tcp://s:2"


class Scripted(Commands):
    """The client core over a scripted network: ``answer(endpoint, request)`` returns a
    reply body, a ZringError (sent as an ERROR reply) or None (silence: the try's whole
    timeout passes). Sleeps pass simulated time too."""

    def __init__(self, answer=None, seeds=(S1,), *, token_aware=False, timeout=5.0,
                 retries=3):
        self.now = 1000.0
        self._monotonic = lambda: self.now
        self._wall_ms = lambda: 1_700_000_000_000 + int(self.now * 1000)
        with first_seed(0):   # deterministic: start at seeds[0]
            super().__init__(list(seeds), timeout, retries, token_aware=token_aware)
        self.answer = answer or (lambda endpoint, request: {})
        self.sent: list[tuple[str, Message]] = []
        self.slept: list[float] = []
        self.listened: list[list[str]] = []

    def _run(self, steps):
        return Command(steps).run(self._perform)

    def _perform(self, effect):
        if isinstance(effect, Sleep):
            self.slept.append(effect.seconds)
            self.now += effect.seconds
            return None
        if isinstance(effect, Gossip):
            self.listened.append(effect.endpoints)
            return None
        assert isinstance(effect, Exchange)
        replies = []
        for request in effect.requests:
            message = decode(request.frame)
            self.sent.append((request.endpoint, message))
            out = self.answer(request.endpoint, message)
            if out is None:
                self.now += effect.timeout
                replies.append(None)
            elif isinstance(out, ZringError):
                replies.append(Message(MsgType.ERROR, message.request_id, {
                    "code": out.code, "message": out.message, "details": out.details}))
            else:
                replies.append(Message(MsgType.OK, message.request_id, out))
        return replies

    def bodies(self):
        return [(m.type, {k: v for k, v in m.body.items() if k != "ts"}) for _, m in self.sent]


def ring_body(nodes=("n1", "n2", "n3"), fingerprint=1):
    return {"vnodes": 64, "replicas": 3, "write_quorum": 2, "read_quorum": 2,
            "fingerprint": fingerprint,
            "nodes": [{"node_id": n, "weight": 1.0, "address": f"tcp://h:{i}"}
                      for i, n in enumerate(nodes)],
            "members": [{"node_id": n, "address": f"tcp://h:{i}", "status": "normal",
                         "liveness": "up", "gossip_address": f"tcp://g:{i}"}
                        for i, n in enumerate(nodes)]}


def status_body(*members):
    return {"node_id": "n1", "fingerprint": 1, "members": [
        {"node_id": m, "address": f"tcp://h:{m}", "status": s, "liveness": "up",
         "keys_count": 0, "ownership": 0.0, "weight": 1.0} for m, s in members]}


# ------------------------------------------------------------------ seeds and options


def test_parse_seeds_accepts_str_and_list_and_adds_tcp():
    assert parse_seeds("tcp://a:1, b:2,,") == ["tcp://a:1", "tcp://b:2"]
    assert parse_seeds(["tcp://a:1", " ipc:///tmp/x "]) == ["tcp://a:1", "ipc:///tmp/x"]
    assert parse_seeds("") == []
    with pytest.raises(InvalidRequest):
        parse_seeds([1])


def test_seeds_from_env_or_default():
    assert seeds_from_env({"ZRING_SEEDS": "tcp://h:1,tcp://h:2"}) == ["tcp://h:1", "tcp://h:2"]
    assert seeds_from_env({}) == list(DEFAULT_SEEDS)
    assert seeds_from_env({"ZRING_SEEDS": " "}) == list(DEFAULT_SEEDS)
    assert DEFAULT_SEEDS == ("tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002",
                             "tcp://127.0.0.1:7003")


def test_the_current_seed_moves_only_off_a_silent_one():
    seeds = Seeds(["a", "b", "c"], 1)
    assert seeds.current == "b" and seeds.from_current() == ["b", "c", "a"]
    seeds.move_off("a")          # not the current one: another request already moved
    assert seeds.current == "b"
    seeds.move_off("b")
    seeds.move_off("c")
    assert seeds.current == "a"


@pytest.mark.parametrize("call", [
    lambda c: c.put(1, b"v"), lambda c: c.put(b"k", b"v"), lambda c: c.put("k", 1),
    lambda c: c.put("k", bytearray(b"v")), lambda c: c.put("k", "v", w="2"),
    lambda c: c.put("k", "v", replicas=True), lambda c: c.get(None), lambda c: c.get("k", r=1.0),
    lambda c: c.delete(3), lambda c: c.get_nodes(1, 2), lambda c: c.local_keys(7),
    lambda c: c.mget("abc"), lambda c: c.mget(["a", 1]), lambda c: c.mput("ab"),
    lambda c: c.mput(5), lambda c: c.mput([("k",)]), lambda c: c.mput({"k": 3}),
    lambda c: c.plan("grow", "n1"), lambda c: c.plan("add", "n1", weight="2"),
    lambda c: c.add_node("n4", 4), lambda c: c.node_stats(None),
])
def test_arguments_are_checked_before_anything_is_sent(call):
    client = Scripted()
    with pytest.raises(InvalidRequest):
        call(client)
    assert client.sent == []


# ------------------------------------------------------------------ results and errors


def test_ring_state_and_cluster_status_decoding():
    row = {"node_id": "n1", "address": "tcp://h:1", "gossip_address": "tcp://h:2",
           "status": "normal", "liveness": "up", "keys_count": 5, "ownership": 0.25,
           "weight": 2.0}
    body = ring_body() | {"members": [row]}
    client = Scripted(lambda e, m: body if m.type == MsgType.RING_STATE else
                      {"node_id": "n1", "members": [row], "fingerprint": 7})
    state = client.ring_state()
    assert (state.vnodes, state.replicas, state.write_quorum, state.read_quorum) == (64, 3, 2, 2)
    assert state.nodes[0] == RingNode("n1", 1.0, "tcp://h:0")
    status = client.cluster_status()
    assert status.members == (MemberInfo("n1", "tcp://h:1", "normal", "up", 5, 0.25, 2.0,
                                         "tcp://h:2"),)
    assert (status.answered_by, status.fingerprint) == ("n1", 7)
    assert status.member("n1").keys_count == 5 and status.member("zz") is None
    assert isinstance(status, ClusterStatus)


def test_an_error_reply_becomes_its_exception_with_its_details():
    reply = Message(MsgType.ERROR, 1, {"code": "unavailable", "message": "too few",
                                       "details": {"acked": ["n1"], "message": "x"}})
    with pytest.raises(Unavailable, match="too few") as raised:
        unwrap(reply, MsgType.PUT)
    assert raised.value.details == {"acked": ["n1"]}
    with pytest.raises(ProtocolError, match="unexpected PUT reply to GET"):
        unwrap(Message(MsgType.PUT, 1, {}), MsgType.GET)


def test_a_batch_raises_its_first_key_error_with_the_key_index_and_entry_details():
    entries = [{"found": False}, {"error": "version_conflict", "message": "held newer",
                                  "held": [5, "w"], "all_refused": False},
               {"error": "unavailable", "message": "later"}]
    with pytest.raises(VersionConflict, match="held newer") as raised:
        batch_results(entries, ["a", "b", "c"], GetResult.from_body)
    assert raised.value.details == {"held": [5, "w"], "all_refused": False, "key": "b",
                                    "index": 1}
    with pytest.raises(ProtocolError, match="batch result 0 is not a map"):
        batch_results([None], ["a"], GetResult.from_body)


# ------------------------------------------------------------------ retry policy


def test_backoff_doubles_up_to_its_cap():
    backoff = ExponentialBackoff(base=0.05, cap=1.0)
    assert [backoff.compute(n) for n in range(1, 8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    retry = Retry(3)
    assert retry.attempts == 4 and retry.delay(0) == 0.0 and retry.delay(2) == 0.1
    assert retry.with_retries(None) is retry and retry.with_retries(0).retries == 0
    assert retry.with_retries(0).backoff is retry.backoff
    assert Retry(2, NoBackoff()).delay(2) == 0.0
    with pytest.raises(InvalidRequest):
        Retry(-1)


def test_silence_resends_the_same_request_to_the_next_seed_after_the_backoff():
    client = Scripted(lambda endpoint, m: None if endpoint == S1 else {"node_id": "n2"},
                      seeds=(S1, S2), timeout=0.5)
    assert client.ping() == {"node_id": "n2"}
    (first_at, first), (second_at, second) = client.sent
    assert (first_at, second_at) == (S1, S2) and first.request_id == second.request_id
    assert client.slept == [0.05] and client.seed == S2   # it stays with S2


def test_silence_everywhere_raises_timeout_after_every_try():
    client = Scripted(lambda e, m: None, seeds=(S1, S2), timeout=0.5, retries=3)
    with pytest.raises(Timeout, match=r"no reply to PING within 0.5s from tcp://s:1, "
                                      r"tcp://s:2 \(4 tries\)"):
        client.ping()
    assert client.slept == [0.05, 0.1, 0.2] and len(client.sent) == 4


def test_an_error_reply_is_not_retried():
    client = Scripted(lambda e, m: Unavailable("nope", acked=["n1"]), seeds=(S1, S2))
    with pytest.raises(Unavailable, match="nope"):
        client.put("k", "v")
    assert len(client.sent) == 1


def test_long_operations_are_sent_once_with_their_own_timeout():
    client = Scripted(lambda e, m: None, timeout=5.0, retries=3)
    with pytest.raises(Timeout, match=r"REBALANCE within 42s .*\(1 tries\)"):
        client.rebalance(timeout=42)
    assert client.now == 1042.0 and client.slept == []


# ------------------------------------------------------------------ routing (now passed in)


def routed(nodes=("n1", "n2", "n3", "n4", "n5"), now=0.0) -> RoutingTable:
    table = RoutingTable()
    table.update(RingState.from_body(ring_body(nodes)), now)
    return table


def test_a_silent_endpoint_is_tried_last_until_its_time_is_up():
    table = routed()
    key = "user:1"
    replicas = table.routing.endpoints(key)
    assert table.owner_endpoint(key, "seed", now=1.0) == replicas[0]
    table.silent(replicas[0], now=1.0)
    assert table.stale
    assert table.owner_endpoint(key, "seed", now=1.0 + AVOID_S / 2) == replicas[1]
    assert table.endpoints_for(key, ["seed"], now=2.0) == [*replicas[1:], replicas[0], "seed"]
    # gossip heard from everyone keeps them fresh once the avoidance ends
    for node in ("n1", "n2", "n3", "n4", "n5"):
        table.heard({"sender": node, "members": []}, now=1.0 + AVOID_S)
    assert table.owner_endpoint(key, "seed", now=1.0 + AVOID_S + 0.1) == replicas[0]


def test_a_node_not_heard_gossiping_is_tried_last():
    table = routed(now=0.0)
    key = "user:2"
    owner = table.routing.endpoints(key)[0]
    owner_id = table.routing.node_of[owner]
    later = GOSSIP_SILENCE_S + 1.0
    for node in ("n1", "n2", "n3", "n4", "n5"):
        if node != owner_id:
            table.heard({"sender": node, "members": []}, now=later - 0.1)
    assert table.owner_endpoint(key, "seed", now=1.0) == owner   # listening only just began
    assert table.owner_endpoint(key, "seed", now=later) != owner


def test_gossip_from_a_node_on_another_ring_makes_ours_stale_and_the_refetch_waits():
    table = routed(now=0.0)
    assert not table.wants_ring(now=0.1)
    table.heard({"sender": "n1", "members": [{"node_id": "n1", "ring": 99}]}, now=0.2)
    assert table.stale and table.wants_ring(now=0.6)
    assert not table.wants_ring(now=0.7)            # at most every RING_REFRESH_GAP_S
    table.note_reply({"ring": 1})
    assert table.gossip_due(now=5.0) and not table.gossip_due(now=5.0 + GOSSIP_CHECK_S / 2)
    assert table.gossip_due(now=5.0 + 2 * GOSSIP_CHECK_S)


def test_routed_refusals_move_to_the_next_replica_only_while_tries_remain():
    table = routed()
    refusal = Message(MsgType.ERROR, 1, {"code": "not_member", "message": "left"})
    assert table.unwrap("tcp://h:1", refusal, MsgType.GET, may_retry=True, now=1.0) is None
    with pytest.raises(NotMember):
        table.unwrap("tcp://h:1", refusal, MsgType.GET, may_retry=False, now=1.0)
    skewed = Message(MsgType.ERROR, 2, {"code": "clock_skew", "message": "off",
                                        "details": {"node": "n2"}})
    assert table.unwrap("tcp://h:2", skewed, MsgType.PUT, may_retry=True, now=1.0) is None
    ours = Message(MsgType.ERROR, 3, {"code": "clock_skew", "message": "yours"})
    with pytest.raises(ClockSkew):
        table.unwrap("tcp://h:2", ours, MsgType.PUT, may_retry=True, now=1.0)


def test_batch_groups_keys_by_owner_and_skips_an_avoided_owner():
    table = routed()
    ring, addresses = table.routing.ring, table.routing.addresses
    keys = [f"user:{i}" for i in range(200)]
    groups = table.group(keys, "tcp://seed:1", now=1.0)
    assert sorted(i for group in groups.values() for i in group) == list(range(200))
    for endpoint, indexes in groups.items():
        assert all(addresses[ring.get_node(keys[i])] == endpoint for i in indexes)
    # an owner that went silent: its keys go to their next replica instead
    table.avoid_for_now(addresses["n1"], now=1.0)
    moved = table.group(keys, "tcp://seed:1", now=1.0)
    assert addresses["n1"] not in moved
    for endpoint, indexes in moved.items():
        assert all(endpoint == addresses[ring.get_nodes(keys[i], 3)[
            ring.get_nodes(keys[i], 3)[0] == "n1"]] for i in indexes)
    # no more nodes than replicas: every key to one node
    table.update(RingState.from_body(ring_body(("n1", "n2", "n3"), fingerprint=2)), now=1.0)
    assert [len(group) for group in table.group(keys, "tcp://seed:1", 1.0).values()] == [200]
    assert table.group([], "tcp://seed:1", 1.0) == {}


def test_a_silent_owner_is_followed_by_the_other_replicas_in_order():
    ring = ring_body()
    client = Scripted(lambda e, m: ring if m.type == MsgType.RING_STATE else None,
                      token_aware=True, timeout=0.05, retries=3)
    with pytest.raises(Timeout):
        client.get("key", r=1)   # one replica's copy: no quorum the client coordinates
    state = RingState.from_body(ring)
    address = {node.node_id: node.address for node in state.nodes}
    replicas = [address[n] for n in state.hash_ring().get_nodes("key", state.replicas)]
    assert client.ring_fingerprint == state.fingerprint
    tried = [endpoint for endpoint, m in client.sent if m.type == MsgType.GET]
    assert tried[:3] == replicas and tried[3] == replicas[0]
    assert client.listened == [[], ["tcp://g:0", "tcp://g:1", "tcp://g:2"]]


def test_get_nodes_matches_the_hash_ring_and_rebuilds_it_only_when_it_changes(monkeypatch):
    built = []
    hash_ring = RingState.hash_ring

    def counted(state):
        built.append(state.fingerprint)
        return hash_ring(state)
    monkeypatch.setattr(RingState, "hash_ring", counted)
    bodies = [ring_body()]
    client = Scripted(lambda e, m: bodies[-1])
    expected = zring.HashRing(["n1", "n2", "n3"], vnodes=64)
    assert client.get_nodes("user:1", 2) == expected.get_nodes("user:1", 2)
    assert client.get_nodes("user:1") == expected.get_nodes("user:1", 3)  # default N
    assert client.get_node("user:9") == expected.get_node("user:9")
    client.get_node("other")
    assert built == [1] and len(client.sent) == 4   # one ring built for four requests
    bodies.append(ring_body(("n1", "n2"), fingerprint=2))
    assert client.get_node("user:9") == zring.HashRing(["n1", "n2"], vnodes=64).get_node(
        "user:9")
    assert built == [1, 2]
    bodies.append(ring_body(nodes=(), fingerprint=3))
    with pytest.raises(Unavailable):
        client.get_node("k")


# ------------------------------------------------------------------ batches


def test_batches_are_cut_by_count_and_by_bytes_measured_one_way():
    assert entry_bytes("k") == 1 + ENTRY_OVERHEAD
    assert entry_bytes("é", "ü") == 2 + 2 + ENTRY_OVERHEAD and entry_bytes("k", b"xy") == 19
    sizes = [entry_bytes(f"k{i}", b"v") for i in range(2500)]
    assert [len(c) for c in cut_indexes(list(range(2500)), sizes)] == \
        [BATCH_MAX_KEYS] * 2 + [500]
    big = [1 << 20] * 20
    chunks = cut_indexes(list(range(20)), big)
    assert len(chunks) >= 3 and all(len(c) * (1 << 20) <= BATCH_MAX_BYTES for c in chunks)
    assert [i for c in chunks for i in c] == list(range(20))
    assert cut([5, 50, 5, 5], lambda n: n, 10, 40) == [[5], [50], [5, 5]]
    assert cut_indexes([], []) == []


def test_merge_puts_results_back_in_key_order_and_checks_their_number():
    assert merge(3, [[2, 0], [1]], [{"results": ["c", "a"]}, {"results": ["b"]}],
                 "MGET", "keys") == ["a", "b", "c"]
    with pytest.raises(ProtocolError, match="MGET reply has 1 results for 2 keys"):
        merge(2, [[0, 1]], [{"results": ["a"]}], "MGET", "keys")


def test_mget_and_mput_cut_by_bytes_keep_key_order(monkeypatch):
    monkeypatch.setattr(batches, "BATCH_MAX_BYTES", 150)

    def answer(endpoint, m):
        if m.type == MsgType.MPUT:
            return {"results": [{"stored_on": ["n1"], "replicated_to": ["n1"],
                                 "version": [3, k]} for k, *_ in m.body["items"]]}
        return {"results": [{"found": True, "value": k, "version": [1, "n1"],
                             "served_by": ["n1"]} for k in m.body["keys"]]}
    client = Scripted(answer)
    items = [(f"k{i}", b"x" * 40) for i in range(5)] + [("big", b"y" * 500)]
    puts = client.mput(items, w=1)
    assert [p.version.node_id for p in puts] == ["k0", "k1", "k2", "k3", "k4", "big"]
    assert [[k for k, *_ in m.body["items"]] for _, m in client.sent] == \
        [["k0", "k1"], ["k2", "k3"], ["k4"], ["big"]]
    first = client.sent[0][1].body
    assert (first["w"], first["n"], first["writer"]) == (1, None, client.writer)
    assert [r.value for r in client.mget(["a", "b"], r=2)] == ["a", "b"]
    assert client.sent[-1][1].body == {"keys": ["a", "b"], "r": 2, "n": None}
    assert client.mget([]) == [] and client.mput({}) == []


# ------------------------------------------------------------------ write stamps


def test_stamps_follow_the_wall_clock_and_stay_above_what_was_seen():
    stamps = WriteStamps("w1")
    first = stamps.next(1_000)
    assert first >> 16 == 1_000 and stamps.next(1_000) > first
    stamps.observe_body({"version": [5_000 << 16, "other"]})
    assert stamps.next(1_000) > 5_000 << 16
    stamps.observe("junk")   # ignored
    conflict = VersionConflict("held", held=[9_000 << 16, "x"], all_refused=True)
    assert stamps.stamp_again(conflict, 0, unanswered=False)
    assert stamps.next(1_000) > 9_000 << 16
    assert not stamps.stamp_again(conflict, 0, unanswered=True)
    assert not stamps.stamp_again(conflict, CONFLICT_RETRIES, unanswered=False)
    assert not stamps.stamp_again(VersionConflict("h", held=[1, "x"], all_refused=False), 0,
                                  unanswered=False)
    results = [{"error": "version_conflict", "all_refused": True},
               {"error": "version_conflict", "all_refused": False}, {"version": [1, "n"]},
               {"error": "version_conflict", "all_refused": True}]
    assert restampable(results, uncertain={3}) == [0]


def test_request_bodies_and_results():
    version = [123 << 16, "n1"]
    replies = {
        MsgType.PUT: {"version": version, "stored_on": ["n1", "n2"],
                      "replicated_to": ["n1", "n2", "n3"]},
        MsgType.GET: {"found": True, "value": b"v", "version": version, "served_by": ["n2"]},
        MsgType.DELETE: {"version": version, "stored_on": ["n1"], "replicated_to": ["n1"]},
    }
    client = Scripted(lambda e, m: replies[m.type])
    put = client.put("k", b"v", replicas=3, w=2)
    assert put == PutResult(True, ("n1", "n2"), ("n1", "n2", "n3"), Version(123 << 16, "n1"))
    assert client.get("k", r=1) == GetResult(b"v", True, ("n2",), Version(123 << 16, "n1"))
    assert client.delete("k").stored_on == ("n1",)
    stamp = {"writer": client.writer}
    assert client.bodies() == [
        (MsgType.PUT, {"key": "k", "value": b"v", "n": 3, "w": 2, **stamp}),
        (MsgType.GET, {"key": "k", "n": None, "r": 1}),
        (MsgType.DELETE, {"key": "k", "n": None, "w": None, **stamp}),
    ]
    # each write stamped by the client's hybrid clock, later than every version it saw
    put_ts, delete_ts = client.sent[0][1].body["ts"], client.sent[2][1].body["ts"]
    assert 123 << 16 < put_ts < delete_ts


def refusing_once(all_refused: bool, held_ts: int, silent_first: bool = False):
    """PUT answers: silence (optionally), a version conflict, then OK."""
    answers: list[str] = []

    def answer(endpoint, m):
        answers.append(m.type.name)
        if silent_first and len(answers) == 1:
            return None
        if answers.count("PUT") == 1 + silent_first:
            return VersionConflict("held newer", held=[held_ts, "other"], acked=[],
                                   all_refused=all_refused)
        return {"version": [held_ts + 1, "me"], "stored_on": ["n1", "n2"],
                "replicated_to": ["n1", "n2", "n3"]}
    return answer


def test_a_write_every_replica_refused_is_stamped_again_above_the_newer_version():
    held = (1_700_000_000_000 + 1_000_050) << 16    # another client's clock, 50 ms ahead
    client = Scripted(refusing_once(True, held))
    assert client.put("k", b"v").success
    first, second = (m.body["ts"] for _, m in client.sent)
    assert first < held < second


@pytest.mark.parametrize("silent_first", [False, True])
def test_a_write_that_may_have_been_applied_is_not_stamped_again(silent_first):
    # some replica may hold it (or a copy went unanswered): a second stamp could bring it
    # back after a newer write
    held = (1_700_000_000_000 + 1_000_050) << 16
    client = Scripted(refusing_once(silent_first, held, silent_first), seeds=(S1, S2))
    with pytest.raises(VersionConflict):
        client.put("k", b"v")
    assert len(client.sent) == 1 + silent_first
    client.put("k", b"again")   # the caller's own retry is a new write, stamped above
    assert client.sent[-1][1].body["ts"] > held


def test_mput_stamps_again_only_the_items_applied_nowhere():
    held = (1_700_000_000_000 + 1_000_050) << 16
    rounds: list[list[str]] = []

    def answer(endpoint, m):
        keys = [k for k, *_ in m.body["items"]]
        rounds.append(keys)
        if len(rounds) > 1:
            return {"results": [{"version": [held + 1, k]} for k in keys]}
        return {"results": [{"error": "version_conflict", "message": "held", "held": [held, "o"],
                             "all_refused": k == "a"} if k != "c" else {"version": [1, k]}
                            for k in keys]}
    client = Scripted(answer)
    with pytest.raises(VersionConflict) as raised:
        client.mput({"a": b"1", "b": b"2", "c": b"3"})
    assert rounds == [["a", "b", "c"], ["a"]]
    assert raised.value.details["key"] == "b"
    assert client.sent[1][1].body["items"][0][2] > held


# ------------------------------------------------------------------ membership


def test_local_keys_and_node_stats_ask_the_node_directly():
    asked = []

    def answer(endpoint, m):
        asked.append((endpoint, m.type))
        if m.type == MsgType.CLUSTER_STATUS:
            return status_body(("n1", "normal"), ("n2", "left"))
        return {"keys": ["a", "b"], "counters": {"overloads": 2}}
    client = Scripted(answer)
    assert client.local_keys("n1", limit=5) == ["a", "b"]
    assert client.node_stats("n1") == {"overloads": 2}
    assert asked == [(S1, MsgType.CLUSTER_STATUS), ("tcp://h:n1", MsgType.LOCAL_KEYS),
                     (S1, MsgType.CLUSTER_STATUS), ("tcp://h:n1", MsgType.STATS)]
    assert client.sent[1][1].body == {"limit": 5}
    for unknown in ("n9", "n2"):  # never a member, or gone
        with pytest.raises(NotMember):
            client.local_keys(unknown)


def test_add_node_waits_until_normal(monkeypatch):
    monkeypatch.setattr(session, "WAIT_POLL_S", 0.001)
    seen = iter(["joining", "joining", "normal", "normal"])

    def answer(endpoint, m):
        if m.type == MsgType.ADD_NODE:
            return {"node_id": "n4", "status": "joining"}
        return status_body(("n4", next(seen)))
    client = Scripted(answer)
    progress = []
    result = client.add_node("n4", "tcp://h:4", progress=progress.append)
    assert (result.node_id, result.status) == ("n4", "normal")
    assert client.bodies()[0] == (MsgType.ADD_NODE, {"node_id": "n4", "address": "tcp://h:4"})
    polled = [endpoint for endpoint, m in client.sent[1:]]
    # the joiner itself while it streams (live progress), then one other member confirms
    assert polled[:3] == ["tcp://h:4"] * 3 and polled[3] == S1
    assert [m.status for m in progress] == ["joining", "joining", "normal", "normal"]
    assert client.add_node("n4", "tcp://h:4", wait=False).status == "joining"


def test_add_node_wait_times_out():
    client = Scripted(lambda e, m: {"node_id": "n4", "status": "joining"}
                      if m.type == MsgType.ADD_NODE else status_body(("n4", "joining")))
    with pytest.raises(Timeout, match="n4 is still joining"):
        client.add_node("n4", "tcp://h:4", timeout=0.5)


def test_remove_node_polls_other_nodes_until_left():
    seen = iter(["leaving", "left"])

    def answer(endpoint, m):
        if m.type == MsgType.REMOVE_NODE:
            return {"node_id": "n2", "status": "leaving"}
        if endpoint == "tcp://h:n2":
            return None
        if len([x for x in client.sent if x[1].type == MsgType.CLUSTER_STATUS]) == 1:
            return status_body(("n1", "normal"), ("n2", "normal"))
        return status_body(("n2", next(seen, "left")))
    client = Scripted(answer, seeds=("tcp://h:n1", "tcp://h:n2"))   # n1 asked first
    assert client.remove_node("n2", graceful=False).status == "left"
    assert (MsgType.REMOVE_NODE, {"node_id": "n2", "graceful": False}) in client.bodies()
    assert "tcp://h:n2" not in [endpoint for endpoint, _ in client.sent]
    with pytest.raises(NotMember):
        client.remove_node("n9")


def test_remove_node_moves_off_the_seed_that_leaves():
    client = Scripted(lambda e, m: {"node_id": "n2", "status": "leaving"}
                      if m.type == MsgType.REMOVE_NODE else
                      status_body(("n1", "normal"), ("n2", "normal")),
                      seeds=("tcp://h:n2", "tcp://h:n1"))
    client.remove_node("n2", wait=False)
    assert client.seed == "tcp://h:n1"


# ------------------------------------------------------------------ client-coordinated quorums


def replicas_of(key, ring=None):
    state = RingState.from_body(ring or ring_body())
    address = {node.node_id: node.address for node in state.nodes}
    nodes = state.hash_ring().get_nodes(key, state.replicas)
    return nodes, [address[n] for n in nodes]


def direct_cluster(on_write=None, on_read=None, ring=None, on_read_many=None,
                   on_write_many=None):
    """A token-aware client over a settled 3-node ring whose replicas answer client-
    coordinated requests with ``on_write(endpoint, body)`` / ``on_read(endpoint, body)``;
    nodes coordinating (PUT/GET) answer as a node would."""
    ring = ring or ring_body()

    def answer(endpoint, message):
        if message.type == MsgType.RING_STATE:
            return ring
        if message.type == MsgType.DIRECT_WRITE:
            return on_write(endpoint, message.body) if on_write else {"stored": True}
        if message.type == MsgType.DIRECT_READ:
            return on_read(endpoint, message.body) if on_read else {"record": None}
        if message.type == MsgType.DIRECT_READ_MANY:
            if on_read_many:
                return on_read_many(endpoint, message.body)
            return {"records": [[k, k.encode(), 5, "w"] for k in message.body["keys"]]}
        if message.type == MsgType.DIRECT_WRITE_MANY:
            if on_write_many:
                return on_write_many(endpoint, message.body)
            return {"received": len(message.body["items"])}
        if message.type == MsgType.MPUT:
            return {"results": [{"version": [item[2], message.body["writer"]],
                                 "stored_on": ["n1", "n2"], "replicated_to": ["n1", "n2", "n3"]}
                                for item in message.body["items"]]}
        if message.type == MsgType.MGET:
            return {"results": [{"found": True, "value": b"from-node", "version": [6, "w"],
                                 "served_by": ["n1"]} for _ in message.body["keys"]]}
        if message.type in (MsgType.PUT, MsgType.DELETE):
            return {"version": [message.body["ts"], message.body["writer"]],
                    "stored_on": ["n1", "n2"], "replicated_to": ["n1", "n2", "n3"]}
        if message.type == MsgType.GET:
            return {"found": True, "value": b"from-node", "version": [5, "w"],
                    "served_by": ["n1", "n2"]}
        raise AssertionError(message.type)
    return Scripted(answer, token_aware=True, timeout=0.05)


def sent_types(client):
    return [m.type for _, m in client.sent if m.type != MsgType.RING_STATE]


def test_a_token_aware_put_goes_to_every_replica_and_needs_w_stored():
    nodes, endpoints = replicas_of("key")
    client = direct_cluster(on_write=lambda e, body: {"stored": e != endpoints[2]})
    result = client.put("key", b"v")
    assert result.stored_on == tuple(nodes[:2]) and result.replicated_to == tuple(nodes)
    writes = [(e, m.body) for e, m in client.sent if m.type == MsgType.DIRECT_WRITE]
    assert [e for e, _ in writes] == endpoints
    assert {(b["ts"], b["writer"], b["n"], b["ring"]) for _, b in writes} == \
        {(result.version.timestamp, client.writer, 3, 1)}
    assert sent_types(client) == [MsgType.DIRECT_WRITE] * 3   # no node coordinated it


def test_a_client_coordinated_write_every_replica_refused_is_stamped_again():
    held = [(1_800_000_000_000 << 16), "other"]
    seen = []

    def on_write(endpoint, body):
        seen.append(body["ts"])
        return {"stored": False, "newer": held} if body["ts"] <= held[0] else {"stored": True}
    client = direct_cluster(on_write=on_write)
    result = client.put("key", b"v")
    assert result.version.timestamp > held[0]
    assert len(set(seen)) == 2 and sent_types(client) == [MsgType.DIRECT_WRITE] * 6


def test_a_write_refused_by_some_replicas_only_is_a_node_s_to_finish_with_its_stamp():
    nodes, endpoints = replicas_of("key")
    held = [(1_800_000_000_000 << 16), "other"]

    def on_write(endpoint, body):
        return {"stored": True} if endpoint == endpoints[0] else {"stored": False,
                                                                  "newer": held}
    client = direct_cluster(on_write=on_write)
    client.put("key", b"v")
    [put] = [m.body for _, m in client.sent if m.type == MsgType.PUT]
    [direct_ts] = {m.body["ts"] for _, m in client.sent if m.type == MsgType.DIRECT_WRITE}
    assert put["ts"] == direct_ts   # the same write, not a new one


def test_a_replica_that_will_not_be_coordinated_sends_the_write_to_a_node():
    from zring.errors import NotCoordinated
    client = direct_cluster(on_write=lambda e, body: NotCoordinated("a ring change"))
    client.put("key", b"v")
    assert sent_types(client) == [MsgType.DIRECT_WRITE] * 3 + [MsgType.PUT]
    assert client.ring_stale   # refetched before the next request


def test_a_silent_replica_is_avoided_and_the_write_goes_through_a_node():
    nodes, endpoints = replicas_of("key")
    client = direct_cluster(on_write=lambda e, body: {"stored": True}
                            if e == endpoints[0] else None)
    client.put("key", b"v")
    assert sent_types(client)[:3] == [MsgType.DIRECT_WRITE] * 3
    assert MsgType.PUT in sent_types(client)
    client.sent.clear()
    client.put("key", b"w")   # its replicas seem down now: a node coordinates (and hints)
    assert MsgType.DIRECT_WRITE not in sent_types(client)


def test_a_read_asks_r_replicas_and_returns_the_newest_version():
    nodes, endpoints = replicas_of("key")
    record = ["key", b"v", 7 << 16, "w"]
    client = direct_cluster(on_read=lambda e, body: {"record": record})
    result = client.get("key")
    assert (result.value, result.found, result.version) == (b"v", True, Version(7 << 16, "w"))
    assert [e for e, m in client.sent if m.type == MsgType.DIRECT_READ] == endpoints[:2]
    assert sent_types(client) == [MsgType.DIRECT_READ] * 2


def test_replicas_that_disagree_get_the_newest_written_back_before_the_read_answers():
    nodes, endpoints = replicas_of("key")
    newer, older = ["key", b"new", 9 << 16, "w"], ["key", b"old", 3 << 16, "w"]
    client = direct_cluster(on_read=lambda e, body: {
        "record": newer if e == endpoints[0] else older})
    assert client.get("key").value == b"new"
    backs = [(e, m.body) for e, m in client.sent if m.type == MsgType.DIRECT_WRITE]
    assert [e for e, _ in backs] == endpoints[1:]   # every replica that may lack it
    assert all(b["cond"] is False and b["ts"] == 9 << 16 and b["value"] == b"new"
               for _, b in backs)
    # a tombstone is newest: not found, and still written back
    client = direct_cluster(on_read=lambda e, body: {
        "record": ["key", None, 9 << 16, "w"] if e == endpoints[0] else None})
    assert client.get("key").found is False
    assert MsgType.DIRECT_WRITE in sent_types(client)


def test_a_read_whose_write_back_fails_is_a_node_s_to_coordinate():
    nodes, endpoints = replicas_of("key")
    newer, older = ["key", b"new", 9 << 16, "w"], ["key", b"old", 3 << 16, "w"]
    client = direct_cluster(on_read=lambda e, body: {
        "record": newer if e == endpoints[0] else older},
        on_write=lambda e, body: Unavailable("disk full"))
    assert client.get("key").value == b"from-node"
    assert sent_types(client)[-1] == MsgType.GET


def test_nodes_coordinate_while_the_ring_changes_and_for_one_replica_reads():
    ring = ring_body()
    ring["members"][2]["status"] = "leaving"
    client = direct_cluster(ring=ring)
    client.put("key", b"v")
    client.get("key")
    assert sent_types(client) == [MsgType.PUT, MsgType.GET]
    client = direct_cluster()
    client.get("key", r=1)
    assert sent_types(client) == [MsgType.GET]
    client = Scripted(direct_cluster().answer, token_aware=False)
    client.put("key", b"v")
    assert sent_types(client) == [MsgType.PUT]


def test_a_token_aware_mget_reads_r_replicas_of_every_key_in_one_frame_each():
    client = direct_cluster()
    keys = [f"k{i}" for i in range(50)]
    results = client.mget(keys)
    assert [r.value for r in results] == [k.encode() for k in keys]
    reads = [(e, m.body) for e, m in client.sent if m.type == MsgType.DIRECT_READ_MANY]
    assert len({e for e, _ in reads}) == 2 and all(b["keys"] == keys for _, b in reads)
    assert sent_types(client) == [MsgType.DIRECT_READ_MANY] * 2   # no node coordinated


def test_keys_whose_replicas_disagree_or_fail_are_read_by_a_node():
    asked = []

    def disagreeing(endpoint, body):   # the first replica asked holds an older k3
        asked.append(endpoint)
        older = len(asked) == 1
        return {"records": [[k, b"x", 4 if k == "k3" and older else 5, "w"]
                            for k in body["keys"]]}
    client = direct_cluster(on_read_many=disagreeing)
    keys = [f"k{i}" for i in range(6)]
    assert [r.value for r in client.mget(keys)] == [b"x"] * 3 + [b"from-node"] + [b"x"] * 2
    mgets = [m.body["keys"] for _, m in client.sent if m.type == MsgType.MGET]
    assert mgets == [["k3"]]   # a node reads it (and writes the newest back first)

    from zring.errors import NotCoordinated
    client = direct_cluster(on_read_many=lambda e, body: NotCoordinated("a ring change"))
    assert [r.value for r in client.mget(keys)] == [b"from-node"] * 6
    assert client.ring_stale


def test_a_token_aware_mput_writes_every_replica_itself():
    client = direct_cluster()
    pairs = {f"k{i}": b"v" for i in range(40)}
    results = client.mput(pairs)
    assert all(len(r.stored_on) == 3 for r in results)
    writes = [m.body for _, m in client.sent if m.type == MsgType.DIRECT_WRITE_MANY]
    assert len(writes) == 3 and all([i[0] for i in b["items"]] == list(pairs) for b in writes)
    assert sent_types(client) == [MsgType.DIRECT_WRITE_MANY] * 3


def test_mput_keys_short_of_w_go_to_a_node_with_their_stamps_and_refused_ones_restamp():
    held = [1 << 62, "other"]
    asked = []

    def refusing(endpoint, body):
        asked.append(endpoint)
        # k0: refused by every replica (restamped); k1: refused by two (a node finishes it)
        newer = [[0, *held]] + ([[1, *held]] if len(asked) <= 2 else [])
        return {"received": len(body["items"]) - len(newer), "newer": newer}
    client = direct_cluster(on_write_many=refusing)
    results = client.mput({"k0": b"a", "k1": b"b", "k2": b"c"})
    stamps = {i[0]: i[2] for _, m in client.sent if m.type == MsgType.DIRECT_WRITE_MANY
              for i in m.body["items"]}
    mputs = [m.body["items"] for _, m in client.sent if m.type == MsgType.MPUT]
    assert [[i[0] for i in items] for items in mputs] == [["k1"], ["k0"]]
    assert mputs[0][0][2] == stamps["k1"]                 # the same write, not a new one
    assert mputs[1][0][2] > held[0] > stamps["k0"]        # stamped again above the newer
    assert results[2].stored_on and len(results) == 3


def test_a_replica_the_cluster_sees_down_is_a_node_s_to_write_until_its_gossip_is_heard():
    ring = ring_body()
    ring["members"][1]["liveness"] = "down"
    client = direct_cluster(ring=ring)
    nodes, _ = replicas_of("key")
    client.put("key", b"v")   # every key has all 3 nodes as replicas: n2 among them
    assert sent_types(client) == [MsgType.PUT]
    client._routes.heard({"sender": "n2", "members": []}, client.now)
    client.sent.clear()
    client.put("key", b"w")
    assert sent_types(client) == [MsgType.DIRECT_WRITE] * 3


def test_a_seed_that_left_sends_the_request_to_the_next_seed():
    def answer(endpoint, message):
        if endpoint == S1:
            return NotMember("n1 has left the cluster", left="n1")
        return {"pong": True}
    client = Scripted(answer, seeds=(S1, S2))
    assert client.ping() == {"pong": True}
    assert [e for e, _ in client.sent] == [S1, S2] and client.seed == S2
    # a NotMember about another node (an operator's request) is the answer itself
    client = Scripted(lambda e, m: NotMember("n9 is not a member"), seeds=(S1, S2))
    with pytest.raises(NotMember, match="n9"):
        client.ping()
    assert len(client.sent) == 1
