"""The Jepsen-style checker of tools/jepsen.py on hand-made histories (no sockets, no root)."""

from __future__ import annotations

import json

import pytest

from zring.localcluster import load_tool

jepsen = load_tool("jepsen")
Op = jepsen.Op


def add(key: str, kind: str = "ok", at: float = 1.0) -> Op:
    return Op(0, "add", key, key, at, at + 0.1, kind)


def write(key: str, value: str, invoke: float, complete: float, version: tuple | None,
          kind: str = "ok") -> Op:
    return Op(1, "write", key, value, invoke, complete, kind, version)


def read(key: str, value: str | None, invoke: float, complete: float,
         version: tuple | None, kind: str = "ok") -> Op:
    return Op(2, "read", key, value, invoke, complete, kind, version)


# ---------------------------------------------------------------- set

def test_set_all_present_is_valid():
    adds = [add("a"), add("b"), add("c", "info")]
    result = jepsen.check_set(adds, {"a": "a", "b": "b", "c": None}, {"a", "b"})
    assert result == {"attempted": 3, "acknowledged": 2, "lost": [], "unread": [],
                      "recovered": 0, "unexpected": []}


def test_set_reports_lost_recovered_unexpected_and_unread():
    adds = [add("a"), add("b"), add("c", "info"), add("d"), add("e")]
    final = {"a": "a", "b": None, "c": "c", "e": "not-e"}   # d could not be read
    result = jepsen.check_set(adds, final, listed={"a", "c", "zz"})
    assert result["lost"] == ["b"]
    assert result["recovered"] == 1              # c: unacknowledged, yet present
    assert result["unread"] == ["d"]
    assert result["unexpected"] == ["e", "zz"]   # a wrong value; a key never attempted


# ---------------------------------------------------------------- register

def test_register_read_of_latest_acked_write_is_fine():
    ops = [write("k", "w1", 0.0, 1.0, (10, "n1")), write("k", "w2", 2.0, 3.0, (20, "n2")),
           read("k", "w2", 4.0, 4.5, (20, "n2"))]
    assert jepsen.check_register(ops)["stale"] == 0


def test_register_read_older_than_acked_write_is_stale():
    ops = [write("k", "w1", 0.0, 1.0, (10, "n1")), write("k", "w2", 2.0, 3.0, (20, "n2")),
           read("k", "w1", 4.0, 4.5, (10, "n1"))]
    result = jepsen.check_register(ops)
    assert result["stale"] == 1 and result["examples"][0]["anomaly"] == "stale"


def test_register_not_found_after_acked_write_is_stale():
    ops = [write("k", "w1", 0.0, 1.0, (10, "n1")), read("k", None, 2.0, 2.1, None)]
    assert jepsen.check_register(ops)["stale"] == 1


def test_register_read_concurrent_with_write_may_see_either():
    ops = [write("k", "w1", 0.0, 1.0, (10, "n1")), write("k", "w2", 2.0, 5.0, (20, "n2")),
           read("k", "w1", 3.0, 3.5, (10, "n1")), read("k", "w2", 3.0, 3.5, (20, "n2"))]
    assert jepsen.check_register(ops) == {"reads": 2, "stale": 0, "unexpected": 0,
                                          "examples": []}


def test_register_indeterminate_write_may_be_read_later():
    ops = [write("k", "w1", 0.0, 1.0, None, kind="info"), read("k", "w1", 9.0, 9.1, (10, "n1"))]
    assert jepsen.check_register(ops)["unexpected"] == 0


def test_register_value_never_written_or_written_later_is_unexpected():
    ops = [read("k", "ghost", 1.0, 1.1, (5, "n1")),
           read("k", "w9", 1.0, 1.1, (5, "n1")), write("k", "w9", 2.0, 3.0, (30, "n1")),
           write("k", "w3", 0.0, 0.5, (7, "n1")), read("k", "w3", 1.0, 1.1, (8, "n1"))]
    assert jepsen.check_register(ops)["unexpected"] == 3


def test_failed_reads_are_not_judged():
    ops = [write("k", "w1", 0.0, 1.0, (10, "n1")), read("k", None, 2.0, 3.0, None, kind="fail")]
    assert jepsen.check_register(ops)["reads"] == 0


# ---------------------------------------------------------------- history, partitions

def test_load_history_pairs_invokes_and_keeps_unfinished_ops_as_info():
    lines = [
        {"p": 0, "f": "add", "key": "a", "value": "a", "type": "invoke", "time": 1.0},
        {"p": 0, "f": "add", "key": "a", "value": "a", "type": "ok", "time": 1.5,
         "version": [3, "n1"]},
        {"p": 0, "f": "add", "key": "b", "value": "b", "type": "invoke", "time": 2.0},
    ]
    ops = jepsen.load_history(json.dumps(line) for line in lines)
    assert ops == [Op(0, "add", "a", "a", 1.0, 1.5, "ok", (3, "n1")),
                   Op(0, "add", "b", "b", 2.0, None, "info")]


def test_majority_ring_gives_every_node_a_different_majority():
    nodes = ["n1", "n2", "n3", "n4", "n5"]
    groups = jepsen._majority_ring(nodes)
    assert all(len(g) == 3 and node in g for node, g in groups.items())
    assert len({frozenset(g) for g in groups.values()}) == 5
    assert groups["n1"] == {"n5", "n1", "n2"}


@pytest.mark.parametrize("cut", [["n2"], ["n1", "n4"]])
def test_split_cuts_the_named_nodes_off_from_the_rest(cut):
    nodes = ["n1", "n2", "n3", "n4", "n5"]
    groups = jepsen._split(nodes, cut)
    for node in nodes:
        assert groups[node] == (set(cut) if node in cut else set(nodes) - set(cut))


def test_availability_counts_ops_inside_fault_windows():
    ops = [add("a", at=1.0), add("b", "info", at=2.5), add("c", at=9.0)]
    table = jepsen.availability(ops, [("kill", 2.0, 3.0), ("kill", 5.0, 6.0)])
    assert table == {"kill": {"events": 2, "ops": 1, "ok": 0}}
