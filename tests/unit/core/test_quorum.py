"""core/quorum.py: pure quorum accounting (joint replica sets, stand-ins) and the shapes of
replicas' answers."""

from __future__ import annotations

from coresim import CLIENT

from zring.core.quorum import (
    Quorum,
    batch_write_outcome,
    quorum_in_each,
    write_outcome,
    write_quorum_state,
)
from zring.protocol import Message, MsgType, is_read_wire, newest_of, read_body, wire_read_body
from zring.storage.base import Record
from zring.versions import Version


def quorum(sets, acks=(), failed=(), counted=None, hinted_for=None):
    counted = counted or sorted({x for s in sets for x in s})
    return Quorum((CLIENT,), 1, MsgType.PUT, "k", 2, list(counted), sets=sets,
                   acks=list(acks), failed=list(failed), hinted_for=hinted_for or {})


def test_a_write_during_a_change_needs_a_quorum_in_both_rings():
    sets = [["a", "b", "c"], ["d", "b", "c"]]   # d joins, displacing a
    assert write_quorum_state(quorum(sets, acks=["a", "d"])) == (False, True)
    assert write_quorum_state(quorum(sets, acks=["a", "b"])) == (False, True)
    assert write_quorum_state(quorum(sets, acks=["a", "b", "d"]))[0]
    assert write_quorum_state(quorum(sets, acks=["b", "c"]))[0]
    # b and c failed: the new ring can no longer reach two
    assert write_quorum_state(quorum(sets, acks=["a", "d"], failed=["b", "c"])) \
        == (False, False)
    # a stand-in's ack counts for the replica it covers, in every set holding it
    assert write_quorum_state(quorum(
        sets, acks=["x", "c"], counted=["a", "x", "c", "d"], hinted_for={"x": "b"}))[0]


def test_with_one_replica_set_acks_and_failures_are_counted():
    sets = [["a", "b", "c"]]
    assert write_quorum_state(quorum(sets, acks=["a"])) == (False, True)
    assert write_quorum_state(quorum(sets, acks=["a", "c"])) == (True, True)
    assert write_quorum_state(quorum(sets, acks=["a"], failed=["b", "c"])) == (False, False)
    assert write_quorum_state(quorum(sets, failed=["b"])) == (False, True)
    # only counted replicas can still answer: a write asked of two has no spare
    assert write_quorum_state(quorum(sets, failed=["b"], counted=["a", "b"])) \
        == (False, False)


def test_a_smaller_replica_set_needs_at_most_its_size():
    sets = [["a", "b", "c"], ["d"]]     # a ring whose list for the key has one node left
    assert write_quorum_state(quorum(sets, acks=["a", "b"])) == (False, True)
    assert write_quorum_state(quorum(sets, acks=["a", "b", "d"]))[0]
    assert write_quorum_state(quorum(sets, acks=["a", "b"], failed=["d"])) == (False, False)


def test_a_failed_stand_in_no_longer_covers_its_replica():
    sets = [["a", "b", "c"]]
    op = quorum(sets, acks=["a"], failed=["x"], counted=["a", "x", "c"],
                hinted_for={"x": "b"})
    assert write_quorum_state(op) == (False, True)        # c may still answer
    op = quorum(sets, acks=["a"], failed=["x", "c"], counted=["a", "x", "c"],
                hinted_for={"x": "b"})
    assert write_quorum_state(op) == (False, False)


def test_quorum_in_each_needs_every_set():
    sets = [["a", "b", "c"], ["d", "b", "c"]]
    assert quorum_in_each(sets, {"b", "c"}, 2)
    assert not quorum_in_each(sets, {"a", "b"}, 2)
    assert quorum_in_each(sets, {"a", "b", "d"}, 2)
    assert quorum_in_each([["a"], ["b", "c", "d"]], {"a", "b", "c"}, 2)   # capped at 1
    assert not quorum_in_each([["a"], ["b", "c"]], {"b", "c"}, 2)


def reply(body: dict, kind: MsgType = MsgType.OK) -> Message:
    return Message(kind, 1, body)


def test_write_outcome_reads_a_replicas_answer():
    assert write_outcome(None) == (False, None)
    assert write_outcome(reply({"code": "x", "message": "y"}, MsgType.ERROR)) == (False, None)
    assert write_outcome(reply({"received": 1})) == (True, None)
    assert write_outcome(reply({"received": 0, "newer": [[0, 5, "w"]]})) == (False, [5, "w"])
    for malformed in ([[0, "5", "w"]], [[0, 5]], [[0, -1, "w"]], [[0, 1 << 63, "w"]],
                      [[0, 5, 7]], ["junk"]):
        assert write_outcome(reply({"newer": malformed})) == (False, None), malformed


def test_batch_write_outcome_maps_each_refusal_to_its_record():
    assert batch_write_outcome(None, 3) == (False, {})
    assert batch_write_outcome(reply({"received": 3}), 3) == (True, {})
    assert batch_write_outcome(reply({"newer": [[2, 7, "w"], [0, 9, "v"]]}), 3) == (
        True, {2: [7, "w"], 0: [9, "v"]})
    # an index past the batch, or a malformed item: the whole answer is a failure
    assert batch_write_outcome(reply({"newer": [[3, 7, "w"]]}), 3) == (False, {})
    assert batch_write_outcome(reply({"newer": [[-1, 7, "w"]]}), 3) == (False, {})
    assert batch_write_outcome(reply({"newer": [[0, 7, "w"], "x"]}), 3) == (False, {})


def test_is_read_wire_checks_a_batch_reads_answer_for_its_key():
    assert is_read_wire(["k", b"v", 5, "w"], "k")
    assert is_read_wire(["k", None, 5, "w"], "k")          # a tombstone
    assert is_read_wire(["k", "text", 0, "w"], "k")
    assert not is_read_wire(["j", b"v", 5, "w"], "k")      # another key's record
    assert not is_read_wire(["k", b"v", -1, "w"], "k")
    assert not is_read_wire(["k", b"v", 1 << 64, "w"], "k")
    assert not is_read_wire(["k", 5, 5, "w"], "k")
    assert not is_read_wire(["k", b"v", 5], "k")
    assert not is_read_wire(("k", b"v", 5, "w"), "k")


def test_newest_of_skips_missing_answers():
    old = Record("k", b"old", Version(1, "w"), 0)
    new = Record("k", b"new", Version(2, "w"), 0)
    assert newest_of([None, old, new, None]) is new
    assert newest_of([new, old]) is new
    assert newest_of([None, None]) is None


def test_read_bodies_tell_values_tombstones_and_absence_apart():
    assert read_body(b"v", [5, "w"], ["a"]) == {"found": True, "value": b"v",
                                                "version": [5, "w"], "served_by": ["a"]}
    tombstone = read_body(None, [5, "w"], ["a"])
    assert tombstone["found"] is False and tombstone["version"] == [5, "w"]
    assert read_body(None, None, []) == {"found": False, "value": None, "version": None,
                                         "served_by": []}
    assert wire_read_body(["k", b"v", 5, "w"], ["a"]) == read_body(b"v", [5, "w"], ["a"])
    assert wire_read_body(None, ["a"]) == read_body(None, None, ["a"])
