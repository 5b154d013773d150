"""core/calls.py: requests to peers, completed by their reply or their deadline."""

from __future__ import annotations

from collections import defaultdict

import structlog
from coresim import CLIENT_ROUTE, cluster_of

from zring.core.calls import Calls
from zring.core.effects import Send
from zring.protocol import Message, MsgType, encode

NOW = 1000.0
ADDRESSES = {"b": "tcp://b:1", "c": "tcp://c:1"}


class Answers:
    """A callback that records what it was given."""

    def __init__(self, effects=()) -> None:
        self.calls: list[tuple[str, Message | None, float]] = []
        self.effects = list(effects)

    def __call__(self, node_id, reply, now):
        self.calls.append((node_id, reply, now))
        return list(self.effects)


def new_calls(timeout_s: float = 2.0):
    stats: dict[str, int] = defaultdict(int)
    return Calls(ADDRESSES.get, timeout_s, stats, structlog.get_logger("test")), stats


def ok(request_id: int) -> Message:
    return Message(MsgType.OK, request_id, {})


def test_a_call_sends_to_the_members_address_with_a_fresh_request_id():
    calls, _ = new_calls()
    [first] = calls.call("b", MsgType.REPLICA_READ, {"key": "k"}, Answers(), NOW)
    [second] = calls.call("c", MsgType.REPLICA_READ, {"key": "k"}, Answers(), NOW)
    assert isinstance(first, Send) and first.address == "tcp://b:1"
    assert first.message.type == MsgType.REPLICA_READ and first.message.body == {"key": "k"}
    assert first.message.request_id != second.message.request_id and len(calls) == 2


def test_a_call_to_an_unknown_member_fails_at_once():
    calls, _ = new_calls()
    answers = Answers(effects=["failed"])
    assert calls.call("ghost", MsgType.REPLICA_READ, {}, answers, NOW) == ["failed"]
    assert answers.calls == [("ghost", None, NOW)] and len(calls) == 0


def test_a_reply_completes_its_call_once():
    calls, _ = new_calls()
    answers = Answers(effects=["answered"])
    [send] = calls.call("b", MsgType.REPLICA_READ, {}, answers, NOW)
    reply = ok(send.message.request_id)
    assert calls.complete(reply, NOW + 0.1) == ["answered"]
    assert answers.calls == [("b", reply, NOW + 0.1)] and len(calls) == 0
    assert calls.complete(reply, NOW + 0.2) is None          # a duplicate: ignored
    assert calls.complete(ok(9999), NOW) is None              # unknown: ignored
    assert len(answers.calls) == 1


def test_a_reply_of_neither_ok_nor_error_counts_as_none():
    calls, _ = new_calls()
    answers = Answers()
    [send] = calls.call("b", MsgType.REPLICA_READ, {}, answers, NOW)
    calls.complete(Message(MsgType.GOSSIP, send.message.request_id, {}), NOW)
    error = Message(MsgType.ERROR, 0, {"code": "x", "message": "y"})
    [send2] = calls.call("b", MsgType.REPLICA_READ, {}, answers, NOW)
    calls.complete(Message(error.type, send2.message.request_id, error.body), NOW)
    assert answers.calls[0][1] is None and answers.calls[1][1].type == MsgType.ERROR


def test_a_call_expires_at_its_deadline_and_a_late_reply_is_ignored():
    calls, stats = new_calls(timeout_s=2.0)
    answers = Answers(effects=["timed out"])
    [send] = calls.call("b", MsgType.REPLICA_READ, {}, answers, NOW)
    assert calls.next_deadline() == NOW + 2.0
    assert calls.expire(NOW + 1.99) == [] and answers.calls == []
    assert calls.expire(NOW + 2.0) == ["timed out"]
    assert answers.calls == [("b", None, NOW + 2.0)] and stats["peer_timeouts"] == 1
    assert calls.complete(ok(send.message.request_id), NOW + 2.5) is None
    assert len(answers.calls) == 1 and calls.next_deadline() is None


def test_a_call_may_have_its_own_timeout():
    calls, _ = new_calls(timeout_s=2.0)
    calls.call("b", MsgType.REPAIR_TREE, {}, Answers(), NOW, timeout_s=600.0)
    assert calls.next_deadline() == NOW + 600.0


def test_a_callback_that_fails_on_expiry_is_counted_and_the_others_still_expire():
    calls, stats = new_calls()

    def broken(node_id, reply, now):
        raise RuntimeError("boom")
    answers = Answers(effects=["second"])
    calls.call("b", MsgType.REPLICA_READ, {}, broken, NOW)
    calls.call("c", MsgType.REPLICA_READ, {}, answers, NOW)
    assert calls.expire(NOW + 5) == ["second"]
    assert stats["handler_errors"] == 1 and stats["peer_timeouts"] == 2 and len(calls) == 0


def test_answered_calls_do_not_keep_the_loop_awake():
    calls, _ = new_calls(timeout_s=2.0)
    sends = [calls.call("b", MsgType.REPLICA_READ, {}, Answers(), NOW)[0] for _ in range(3)]
    [late] = calls.call("c", MsgType.REPLICA_READ, {}, Answers(), NOW + 1)
    for send in sends:
        calls.complete(ok(send.message.request_id), NOW + 0.1)
    assert calls.next_deadline() == NOW + 3.0      # the one call still waiting
    calls.complete(ok(late.message.request_id), NOW + 0.2)
    assert calls.next_deadline() is None


def test_a_clock_stepped_back_keeps_each_call_the_time_it_had_left():
    calls, _ = new_calls(timeout_s=2.0)
    answers = Answers()
    calls.call("b", MsgType.REPLICA_READ, {}, answers, NOW)
    calls.shift(10.0)                # the wall clock now reads 10 s less
    assert calls.next_deadline() == NOW - 8.0
    assert calls.expire(NOW - 8.01) == [] and answers.calls == []
    calls.expire(NOW - 8.0)
    assert [c[1] for c in answers.calls] == [None]


def test_a_nodes_pending_calls_end_with_their_replies():
    sim = cluster_of(3)
    core, now = sim.node("node1"), sim.now
    peers = {c.config.address: c for c in sim.cores.values()}
    frame = encode(Message(MsgType.PUT, 5, {"key": "k", "value": b"v"}))
    sends = [e for e in core.handle_frame(CLIENT_ROUTE, frame, now) if isinstance(e, Send)]
    assert core.pending()["calls"] == len(sends) == 2
    for send in sends:
        answer = peers[send.address].handle_frame((b"node1",), encode(send.message), now)
        core.handle_reply(send.address, encode(answer[0].message), now)
    assert core.pending()["calls"] == 0 and core.pending()["operations"] == 0


def test_answered_peer_calls_do_not_wake_the_loop_at_their_old_deadlines():
    sim = cluster_of(3)
    core, now = sim.node("node1"), sim.now
    peers = {c.config.address: c for c in sim.cores.values()}
    for i in range(20):   # each write asks both peers; every peer answers at once
        frame = encode(Message(MsgType.PUT, 100 + i, {"key": f"k{i}", "value": b"v"}))
        for send in [e for e in core.handle_frame(CLIENT_ROUTE, frame, now) if isinstance(e, Send)]:
            answer = peers[send.address].handle_frame((b"node1",), encode(send.message), now)
            core.handle_reply(send.address, encode(answer[0].message), now)
    stale = now + core.config.request_timeout_s   # each call's deadline, answered since
    assert core.pending()["calls"] == 0 and core.next_deadline() != stale
