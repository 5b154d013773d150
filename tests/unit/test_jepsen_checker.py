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
# judged by values and real time (tools/lincheck.py); the versions the replies carried are
# in the history for a person to read and deliberately misleading in some tests here

def verdict(ops: list[Op]) -> dict:
    return jepsen.check_register(ops)


def test_register_read_of_latest_acked_write_is_linearizable():
    ops = [write("k", "w1", 0.0, 1.0, (10, "n1")), write("k", "w2", 2.0, 3.0, (20, "n2")),
           read("k", "w2", 4.0, 4.5, (20, "n2"))]
    result = verdict(ops)
    assert result["linearizable"] and result["keys"] == 1 and result["reads"] == 1
    assert (result["stale"], result["went_back"], result["future"]) == (0, 0, 0)


def test_register_stale_read_is_not_linearizable_whatever_its_version():
    # w1's client clock ran ahead: the read has the highest version, and is still stale
    ops = [write("k", "w1", 0.0, 1.0, (99, "c1")), write("k", "w2", 2.0, 3.0, (20, "c2")),
           read("k", "w1", 4.0, 4.5, (99, "c1"))]
    result = verdict(ops)
    assert not result["linearizable"] and result["nonlinearizable_keys"] == ["k"]
    assert result["stale"] == 1 and result["anomalies"][0]["anomaly"] == "stale"
    assert result["counterexamples"][0]["stuck_at"]["value"] == "w1"


def test_register_read_that_went_back():
    ops = [write("k", "w1", 0.0, 1.0, (10, "n1")), write("k", "w2", 2.0, 9.0, (20, "n2")),
           read("k", "w2", 3.0, 3.5, (20, "n2")), read("k", "w1", 4.0, 4.5, (10, "n1"))]
    result = verdict(ops)
    assert not result["linearizable"]
    assert result["went_back"] == 1 and result["stale"] == 0


def test_register_lost_write_read_as_absent():
    ops = [write("k", "w1", 0.0, 1.0, (10, "n1")), read("k", None, 2.0, 2.1, None)]
    result = verdict(ops)
    assert not result["linearizable"] and result["stale"] == 1


def test_register_concurrent_history_with_a_lower_version_read_last_is_linearizable():
    # concurrent writes: w2 may take effect last although its version is older
    ops = [write("k", "w1", 0.0, 2.0, (30, "n1")), write("k", "w2", 1.0, 3.0, (20, "n2")),
           read("k", "w1", 1.5, 1.8, (30, "n1")), read("k", "w2", 4.0, 4.5, (20, "n2"))]
    result = verdict(ops)
    assert result["linearizable"] and result["anomalies"] == []


def test_register_indeterminate_write_may_be_read_later():
    ops = [write("k", "w1", 0.0, 1.0, (10, "n1")), write("k", "w2", 2.0, 7.0, None, "info"),
           read("k", "w1", 3.0, 3.1, (10, "n1")), read("k", "w2", 9.0, 9.1, (12, "n1")),
           read("k", "w2", 10.0, 10.1, (12, "n1"))]
    result = verdict(ops)
    assert result["linearizable"] and result["writes_indeterminate"] == 1
    assert (result["stale"], result["went_back"], result["future"]) == (0, 0, 0)


def test_register_value_never_written_or_written_later_is_from_the_future():
    ops = [read("k", "ghost", 1.0, 1.1, (5, "n1")),
           read("k", "w9", 1.0, 1.1, (5, "n1")), write("k", "w9", 2.0, 3.0, (30, "n1"))]
    result = verdict(ops)
    assert not result["linearizable"] and result["future"] == 2


def test_failed_reads_are_not_judged():
    ops = [write("k", "w1", 0.0, 1.0, (10, "n1")), read("k", None, 2.0, 3.0, None, kind="fail")]
    result = verdict(ops)
    assert result["linearizable"] and result["reads"] == 0 and result["reads_failed"] == 1


def test_an_undecided_register_or_a_nemesis_problem_is_not_valid():
    good_set = {"lost": [], "unexpected": [], "unread": []}
    ops = [write("k", "w1", 0.0, 1.0, None), read("k", "w1", 2.0, 3.0, None)]
    assert jepsen.verdict_valid(good_set, verdict(ops), [])
    undecided = jepsen.check_register(ops, max_states=1)
    assert undecided["undecided_keys"] == ["k"] and not undecided["linearizable"]
    assert not jepsen.verdict_valid(good_set, undecided, [])
    assert not jepsen.verdict_valid(good_set, verdict(ops), ["node2 coordinated a write"])
    assert not jepsen.verdict_valid({**good_set, "lost": ["set-0-1"]}, verdict(ops), [])


# ---------------------------------------------------------------- nemesis

def test_long_pause_outlasts_the_client_timeout_whatever_the_interval():
    assert jepsen.Nemesis.hold_seconds("pause-long", 0.7) >= 6.5
    assert jepsen.Nemesis.hold_seconds("pause-long", 7.0) > 7.0
    assert jepsen.Nemesis.hold_seconds("pause", 3.5) == 3.5


def test_fault_kinds_skip_what_the_machine_lacks(monkeypatch):
    monkeypatch.setattr(jepsen, "delay_available", lambda: False)
    monkeypatch.setattr(jepsen, "clock_available", lambda: False)
    kinds, skipped = jepsen.available_kinds()
    assert "delay" not in kinds and not set(jepsen.CLOCK_KINDS) & set(kinds)
    assert {"kill", "pause", "pause-long", "loss"} <= set(kinds) and len(skipped) == 3
    monkeypatch.setattr(jepsen, "delay_available", lambda: True)
    monkeypatch.setattr(jepsen, "clock_available", lambda: True)
    assert jepsen.available_kinds() == (list(jepsen.FAULT_KINDS), [])


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


def test_report_says_undecided_apart_from_not_linearizable():
    ops = [write("k", "w1", 0.0, 1.0, None), read("k", "w1", 2.0, 3.0, None)]
    result = {"faults": 1, "nodes": 5, "interval_s": 5.0, "skipped": [], "dir": "/tmp/x",
              "set": {"attempted": 1, "acknowledged": 1, "lost": [], "recovered": 0,
                      "unexpected": [], "unread": []},
              "availability": {"kill": {"events": 1, "ops": 2, "ok": 2}},
              "healthy_ok": {"ops": 0, "ok": 0}, "nemesis_problems": [],
              "nemesis_warnings": [], "valid": False}
    undecided = jepsen.format_report({**result, "register": jepsen.check_register(
        ops, max_states=1)})
    assert "UNDECIDED" in undecided and "not a pass" in undecided
    stale = ops + [write("k", "w2", 4.0, 5.0, None), read("k", "w1", 6.0, 7.0, None)]
    report = jepsen.format_report({**result, "register": jepsen.check_register(stale)})
    assert "NOT linearizable (keys k)" in report and "counterexample" in report


def test_load_history_takes_a_torn_last_line_as_unfinished_and_refuses_a_torn_middle():
    invoke = {"p": 1, "f": "write", "key": "k", "value": "a", "type": "invoke", "time": 1.0}
    done = {**invoke, "type": "ok", "time": 2.0}
    second = {**invoke, "value": "b", "time": 3.0}
    lines = [json.dumps(invoke), json.dumps(done), json.dumps(second),
             json.dumps({**second, "type": "ok", "time": 4.0})[:29]]
    ops = jepsen.load_history(lines)
    assert [(op.value, op.type) for op in ops] == [("a", "ok"), ("b", "info")]
    with pytest.raises(ValueError, match="line 2 of 4 is damaged"):
        jepsen.load_history([lines[0], lines[3], lines[1], lines[2]])

