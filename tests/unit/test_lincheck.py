"""tools/lincheck.py on hand-made histories: the linearizability search, its budget, and the
real-time anomalies, all judged by values and real time (no sockets)."""

from __future__ import annotations

import itertools
import random
from functools import cache

import pytest

from zring.localcluster import load_tool

lincheck = load_tool("lincheck")
Op = lincheck.Op


def w(value, invoke, complete, outcome="ok", process=0, key="k"):
    return Op(key, "write", value, invoke, complete, outcome, process)


def r(value, invoke, complete, outcome="ok", process=1, key="k"):
    return Op(key, "read", value, invoke, complete, outcome, process)


def verdict(ops):
    return lincheck.check_key("k", ops)


def kinds(ops):
    return [a["anomaly"] for a in lincheck.real_time_anomalies(ops)]


# ---------------------------------------------------------------- linearizable histories

def test_sequential_writes_and_reads():
    ops = [r(None, 0, 1), w("a", 2, 3), r("a", 4, 5), w("b", 6, 7), r("b", 8, 9)]
    assert verdict(ops).linearizable and kinds(ops) == []


def test_reads_concurrent_with_a_write_may_see_either_value_once_each():
    ops = [w("a", 0, 1), w("b", 2, 10), r("a", 3, 4), r("b", 5, 6), r("b", 7, 8)]
    assert verdict(ops).linearizable and kinds(ops) == []


def test_ops_that_touch_in_time_count_as_concurrent():
    # the read begins exactly when the write completes: it may still come first
    ops = [w("a", 0, 1), w("b", 2, 3), r("a", 3, 4)]
    assert verdict(ops).linearizable and kinds(ops) == []


def test_a_write_that_timed_out_may_take_effect_long_after_its_client_gave_up():
    ops = [w("a", 0, 1), w("b", 2, None, "info"), r("a", 3, 4), r("b", 50, 51),
           r("b", 60, 61)]
    assert verdict(ops).linearizable and kinds(ops) == []


def test_a_failed_write_may_have_taken_effect_and_one_nobody_read_may_never():
    ops = [w("a", 0, 1), w("b", 2, 3, "fail"), r("b", 4, 5), w("c", 6, 7, "info"),
           r("b", 8, 9)]
    assert verdict(ops).linearizable and kinds(ops) == []


def test_failed_reads_tell_nothing():
    ops = [w("a", 0, 1), r("zzz", 2, 3, "fail"), r(None, 4, None, "info")]
    assert verdict(ops).linearizable and kinds(ops) == []


def test_deletes_write_none_and_an_unacknowledged_one_may_explain_a_read_of_none():
    assert verdict([w("a", 0, 1), w(None, 2, 3), r(None, 4, 5)]).linearizable
    ops = [w("a", 0, 1), w(None, 2, None, "info"), r(None, 4, 5), r(None, 6, 7)]
    assert verdict(ops).linearizable and kinds(ops) == []


# ---------------------------------------------------------------- not linearizable

def test_a_stale_read_is_caught_with_a_counterexample():
    ops = [w("a", 0, 1), w("b", 2, 3), r("a", 4, 5)]
    result = verdict(ops)
    assert not result.linearizable and not result.exhausted
    assert result.stuck_at == ops[2]
    assert result.counterexample["values_before"] == ["b"]
    assert result.counterexample["stuck_at"]["value"] == "a"
    assert kinds(ops) == ["stale"]


def test_a_lost_write_is_a_stale_read_of_nothing():
    ops = [w("a", 0, 1), r(None, 2, 3)]
    assert not verdict(ops).linearizable and kinds(ops) == ["stale"]


def test_a_read_that_went_back_after_another_read_saw_the_newer_value():
    # b's write is still open, so reading a is not stale by itself: but b was seen before
    ops = [w("a", 0, 1), w("b", 2, 10), r("b", 3, 4), r("a", 5, 6, process=2)]
    assert not verdict(ops).linearizable and kinds(ops) == ["went-back"]


def test_a_read_of_nothing_after_a_value_was_seen_went_back():
    ops = [w("a", 0, None, "info"), r("a", 1, 2), r(None, 3, 4)]
    assert not verdict(ops).linearizable and kinds(ops) == ["went-back"]


def test_values_never_written_or_written_after_the_read_are_from_the_future():
    assert kinds([r("ghost", 0, 1)]) == ["future"]
    ops = [r("a", 0, 1), w("a", 2, 3)]
    assert not verdict(ops).linearizable and kinds(ops) == ["future"]


def test_non_linearizable_without_a_real_time_anomaly_is_found_by_the_search():
    # two concurrent writes seen as a, b, a: each read alone is fine, the three are not
    ops = [w("a", 0, 10), w("b", 0, 10, process=3), r("a", 1, 2), r("b", 3, 4),
           r("a", 5, 6)]
    assert not verdict(ops).linearizable and kinds(ops) == []


def test_each_key_is_judged_on_its_own():
    ops = [w("a", 0, 1, key="x"), r("a", 2, 3, key="x"), w("a", 0, 1, key="y"),
           w("b", 2, 3, key="y"), r("a", 4, 5, key="y")]
    summary = lincheck.summarize(ops)
    assert summary["keys"] == 2 and not summary["linearizable"]
    assert summary["nonlinearizable_keys"] == ["y"] and summary["undecided_keys"] == []
    assert summary["counterexamples"][0]["key"] == "y"
    assert (summary["stale"], summary["went_back"], summary["future"]) == (1, 0, 0)


# ---------------------------------------------------------------- versions are not evidence

def _fine_by_versions(ops, versions) -> bool:
    """What a checker trusting versions says: every read returns a version at least as new
    as every write acknowledged before the read began."""
    for read in (op for op in ops if op.f == "read"):
        acked = [versions[op.value] for op in ops
                 if op.f == "write" and op.acknowledged and op.complete < read.invoke]
        if acked and versions[read.value] < max(acked):
            return False
    return True


def test_a_newest_version_read_can_still_be_stale():
    # the first writer's clock ran ahead: its write carries the highest version, yet a
    # write begun after it was acknowledged was acknowledged before the read began
    ops = [w("a", 0, 1), w("b", 2, 3, process=2), r("a", 4, 5)]
    versions = {"a": (30, "client-1"), "b": (20, "client-2")}
    assert _fine_by_versions(ops, versions)
    assert not verdict(ops).linearizable and kinds(ops) == ["stale"]


def test_an_older_version_read_can_be_linearizable():
    # concurrent writes: b may take effect last although its version is lower
    ops = [w("a", 0, 2), w("b", 1, 3, process=2), r("b", 4, 5), r("b", 6, 7)]
    versions = {"a": (30, "client-1"), "b": (20, "client-2")}
    assert not _fine_by_versions(ops, versions)
    assert verdict(ops).linearizable and kinds(ops) == []


# ---------------------------------------------------------------- the search budget

def _tangle(width: int) -> list:
    """``width`` concurrent writes, then a read of the last one's value: the search tries
    orders of the writes before it finds one that ends with it."""
    ops = [w(f"v{i}", 0, 100, process=i) for i in range(width)]
    return [*ops, r(f"v{width - 1}", 101, 102, process=99)]


def test_an_exhausted_search_is_undecided_never_a_pass():
    ops = _tangle(8)
    small = lincheck.check_key("k", ops, max_states=5)
    assert not small.linearizable and small.exhausted
    summary = lincheck.summarize(ops, max_states=5)
    assert summary["linearizable"] is False
    assert summary["undecided_keys"] == ["k"] and summary["nonlinearizable_keys"] == []
    assert lincheck.check_key("k", ops).linearizable   # with the default budget: decided


def test_a_long_history_is_cut_into_pieces():
    ops, clock = [], 0.0
    for i in range(3000):
        ops.append(w(f"v{i}", clock, clock + 1.5, process=0))
        ops.append(r(f"v{i - 1}" if i else None, clock + 0.5, clock + 1.0, process=1))
        clock += 2.0
    result = lincheck.check_key("k", ops)
    assert result.linearizable and result.ops == 6000


# ---------------------------------------------------------------- against brute force

def _brute_force(ops) -> bool:
    """Every order of the ops that respects real time, the unacknowledged writes anywhere
    after their invoke or nowhere: does one explain every read?"""
    ops = [op for op in ops if op.acknowledged or op.f == "write"]
    required = [op.acknowledged for op in ops]

    @cache
    def extend(done: int, value) -> bool:
        if all(done >> i & 1 for i in range(len(ops)) if required[i]):
            return True
        for i, op in enumerate(ops):
            if done >> i & 1 or (op.f == "read" and op.value != value):
                continue
            if any(required[j] and not done >> j & 1 and ops[j].complete < op.invoke
                   for j in range(len(ops))):
                continue   # an op that completed before this one began is still to come
            if extend(done | 1 << i, op.value if op.f == "write" else value):
                return True
        return False
    return extend(0, None)


def _random_history(rng: random.Random) -> list:
    ops, written = [], itertools.count(1)
    for process in range(rng.randint(1, 3)):
        clock = rng.uniform(0, 3)
        for _ in range(rng.randint(1, 4)):
            took = rng.choice([0.5, 1, 2, 3])
            outcome = rng.choice(["ok"] * 4 + ["info", "fail"])
            complete = clock + took if outcome == "ok" or rng.random() < 0.5 else None
            if rng.random() < 0.5:
                value = rng.choice([f"v{next(written)}"] * 5 + [None])
                ops.append(w(value, clock, complete, outcome, process))
            else:
                value = rng.choice([None, *(f"v{i}" for i in range(1, 8))])
                ops.append(r(value, clock, complete, outcome, process))
            clock += took + rng.choice([0, 0.1, 0.5])
    return ops


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_brute_force_and_anomalies_only_on_failures(seed):
    rng = random.Random(seed)
    for _ in range(300):
        ops = _random_history(rng)
        expected = _brute_force(ops)
        assert verdict(ops).linearizable == expected, ops
        if kinds(ops):
            assert not expected, ops
