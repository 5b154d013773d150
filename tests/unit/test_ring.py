"""HashRing: placement rules, edges, and the ring diff (pure, no sockets)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zring.hashing import RING_SIZE, key_position, node_tokens
from zring.ring import HashRing, RangeChange, RingDiff, ring_changes

SMALL_VNODES = 32  # property tests build many rings; placement rules do not depend on vnodes

node_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.:", min_size=1, max_size=12)
member_sets = st.lists(node_ids, min_size=1, max_size=8, unique=True)
keys = st.one_of(st.text(max_size=20), st.binary(max_size=20))


def sample_keys(count: int = 2000) -> list[str]:
    return [f"key_{i}" for i in range(count)]


# ------------------------------------------------------------------ hashing contract


def test_key_position_is_fixed_xxh3_of_utf8():
    # Pinned values: the position is a wire and disk contract and must never drift.
    assert key_position("") == 0x2D06800538D394C2
    assert key_position("key_0") == key_position(b"key_0")
    assert key_position("ключ") == key_position("ключ".encode())
    assert 0 <= key_position("anything") < RING_SIZE


def test_node_tokens_prefix_is_stable():
    assert list(node_tokens("node1", 8)) == list(node_tokens("node1", 16))[:8]
    assert list(node_tokens("node1", 4)) != list(node_tokens("node2", 4))


def test_placement_is_the_same_in_another_process():
    code = ("from zring.ring import HashRing; r = HashRing(['a', 'b', 'c'], vnodes=64); "
            "print([r.get_nodes(f'k{i}', 2) for i in range(50)])")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2")}
    ring = HashRing(["a", "b", "c"], vnodes=64)
    assert runs == {str([ring.get_nodes(f"k{i}", 2) for i in range(50)]) + "\n"}


# ------------------------------------------------------------------ edges


def test_empty_ring():
    ring = HashRing(vnodes=SMALL_VNODES)
    assert ring.get_node("k") is None
    assert ring.get_nodes("k", 3) == []
    assert ring.get_node_at(123) is None
    assert len(ring) == 0 and ring.nodes == []
    assert ring.primary_shares() == {}


def test_one_node_owns_everything():
    ring = HashRing(["only"], vnodes=SMALL_VNODES)
    assert {ring.get_node(k) for k in sample_keys(200)} == {"only"}
    assert ring.get_nodes("k", 3) == ["only"]
    assert ring.primary_shares() == pytest.approx({"only": 1.0})


def test_one_vnode_one_node():
    ring = HashRing(["solo"], vnodes=1)
    assert ring.get_nodes("x", 1) == ["solo"]
    assert ring.get_node_at(RING_SIZE - 1) == "solo"


def test_count_larger_than_nodes_returns_each_node_once():
    ring = HashRing(["a", "b", "c"], vnodes=SMALL_VNODES)
    for key in sample_keys(100):
        nodes = ring.get_nodes(key, 10)
        assert sorted(nodes) == ["a", "b", "c"]
        assert nodes[0] == ring.get_node(key)
    assert ring.get_nodes("k", 0) == []


def test_remove_unknown_node_raises_key_error_and_leaves_ring_intact():
    ring = HashRing(["a", "b"], vnodes=SMALL_VNODES)
    before = [ring.get_node(k) for k in sample_keys(100)]
    with pytest.raises(KeyError, match="ghost"):
        ring.remove_node("ghost")
    assert [ring.get_node(k) for k in sample_keys(100)] == before


def test_adding_a_node_twice_is_a_no_op():
    ring = HashRing(["a", "b"], vnodes=SMALL_VNODES)
    before = [ring.get_node(k) for k in sample_keys(100)]
    ring.add_node("a")
    assert len(ring) == 2 and ring.token_count() == 2 * SMALL_VNODES
    assert [ring.get_node(k) for k in sample_keys(100)] == before


def test_re_adding_with_a_new_weight_updates_it():
    ring = HashRing(["a", "b"], vnodes=SMALL_VNODES)
    ring.add_node("a", weight=2)
    assert ring.weight("a") == 2 and ring.token_count("a") == 2 * SMALL_VNODES


def test_str_and_bytes_keys_agree():
    ring = HashRing(["a", "b", "c"], vnodes=SMALL_VNODES)
    for key in ["key_1", "ключ", "", "🙂"]:
        assert ring.get_node(key) == ring.get_node(key.encode())
        assert ring.get_nodes(key, 2) == ring.get_nodes(key.encode(), 2)


@pytest.mark.parametrize("bad", ["", None, 3, b"node"])
def test_bad_node_ids_are_rejected(bad):
    with pytest.raises(ValueError):
        HashRing(vnodes=SMALL_VNODES).add_node(bad)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), True, "2"])
def test_bad_weights_are_rejected(bad):
    with pytest.raises(ValueError):
        HashRing(vnodes=SMALL_VNODES).add_node("a", weight=bad)


def test_bad_vnodes_are_rejected():
    with pytest.raises(ValueError):
        HashRing(vnodes=0)


def test_membership_views():
    ring = HashRing({"b": 1, "a": 2}, vnodes=SMALL_VNODES)
    assert ring.nodes == ["a", "b"] and list(ring) == ["a", "b"]
    assert "a" in ring and "z" not in ring
    assert ring.weights == {"a": 2, "b": 1}
    assert ring == HashRing({"a": 2, "b": 1}, vnodes=SMALL_VNODES)
    assert ring.fingerprint() == HashRing({"a": 2, "b": 1}, vnodes=SMALL_VNODES).fingerprint()
    assert ring.fingerprint() != HashRing({"a": 1, "b": 1}, vnodes=SMALL_VNODES).fingerprint()
    assert ring.memory_bytes() > 0


def test_lookup_matches_a_plain_bisect_over_tokens():
    ring = HashRing(["a", "b", "c", "d"], vnodes=SMALL_VNODES)
    layout = sorted((t, n) for n in ring.nodes for t in node_tokens(n, SMALL_VNODES))
    for key in sample_keys(500) + ["edge"]:
        position = key_position(key)
        owner = next((n for t, n in layout if t >= position), layout[0][1])
        assert ring.get_node(key) == owner
    # positions exactly on a token belong to that token; past the last token wrap to the first
    first_token, first_owner = layout[0]
    assert ring.get_node_at(first_token) == first_owner
    assert ring.get_node_at(RING_SIZE - 1) == first_owner or layout[-1][0] == RING_SIZE - 1


def test_weight_two_owns_twice_the_keys():
    ring = HashRing(vnodes=4096)
    for i in range(1, 6):
        ring.add_node(f"node{i}", weight=2 if i == 1 else 1)
    shares = ring.primary_shares()
    mean_single = sum(shares[f"node{i}"] for i in range(2, 6)) / 4
    assert shares["node1"] / mean_single == pytest.approx(2.0, rel=0.05)


def test_default_ring_is_balanced():
    ring = HashRing([f"node{i}" for i in range(1, 11)])
    shares = ring.primary_shares().values()
    assert max(shares) / (1 / 10) <= 1.03


# ------------------------------------------------------------------ properties


@settings(max_examples=60, deadline=None)
@given(members=member_sets, data=st.data())
def test_placement_ignores_insertion_order(members, data):
    shuffled = data.draw(st.permutations(members))
    forward = HashRing(members, vnodes=SMALL_VNODES)
    backward = HashRing(vnodes=SMALL_VNODES)
    for node in shuffled:
        backward.add_node(node)
    # adding and removing an extra node must leave no trace either
    backward.add_node("extra-node")
    backward.remove_node("extra-node")
    for key in data.draw(st.lists(keys, min_size=1, max_size=30)):
        assert forward.get_nodes(key, 3) == backward.get_nodes(key, 3)


@settings(max_examples=60, deadline=None)
@given(members=member_sets, joiner=node_ids, probe=st.lists(keys, min_size=1, max_size=60))
def test_join_moves_keys_only_to_the_new_node(members, joiner, probe):
    if joiner in members:
        return
    before = HashRing(members, vnodes=SMALL_VNODES)
    after = before.copy()
    after.add_node(joiner)
    for key in probe:
        old, new = before.get_nodes(key, 3), after.get_nodes(key, 3)
        assert new[0] in (old[0], joiner)
        # at most one member changes: the joiner enters, the last of the old list drops out
        assert [n for n in new if n != joiner] == old[: len(new) - (joiner in new)]


@settings(max_examples=60, deadline=None)
@given(members=st.lists(node_ids, min_size=2, max_size=8, unique=True), data=st.data())
def test_leave_moves_only_the_leaving_nodes_keys(members, data):
    leaver = data.draw(st.sampled_from(members))
    before = HashRing(members, vnodes=SMALL_VNODES)
    after = before.copy()
    after.remove_node(leaver)
    for key in data.draw(st.lists(keys, min_size=1, max_size=60)):
        old, new = before.get_nodes(key, 3), after.get_nodes(key, 3)
        if old[0] != leaver:
            assert new[0] == old[0]
        assert [n for n in old if n != leaver] == new[: len(old) - (leaver in old)]


@settings(max_examples=40, deadline=None)
@given(members=member_sets, joiners=st.lists(node_ids, max_size=2, unique=True),
       leavers=st.integers(min_value=0, max_value=2), count=st.integers(1, 4),
       probe=st.lists(keys, min_size=1, max_size=80))
def test_ring_changes_cover_exactly_the_keys_whose_replicas_change(members, joiners, leavers,
                                                                   count, probe):
    old = HashRing(members, vnodes=SMALL_VNODES)
    new = old.copy()
    for node in joiners:
        new.add_node(node, weight=2 if node in members else 1)
    for node in members[:leavers]:
        if node in new and len(new) > 1:
            new.remove_node(node)
    changes = ring_changes(old, new, count)
    positions = [key_position(k) for k in probe] + [c.end for c in changes]
    for position in positions:
        before, after = old.get_nodes_at(position, count), new.get_nodes_at(position, count)
        holding = [c for c in changes if c.contains(position)]
        if before == after:
            assert holding == []
        else:
            assert len(holding) == 1
            assert holding[0].old_nodes == tuple(before)
            assert holding[0].new_nodes == tuple(after)


def test_ring_changes_of_a_join_name_gainers_and_losers():
    old = HashRing([f"n{i}" for i in range(5)], vnodes=SMALL_VNODES)
    new = old.copy()
    new.add_node("n5")
    changes = ring_changes(old, new, 3)
    assert changes, "a join must change some ranges"
    for change in changes:
        assert change.gained == ("n5",)
        assert len(change.lost) == 1 and change.lost[0] in change.old_nodes
    assert ring_changes(old, old.copy(), 3) == []


def test_ring_changes_from_an_empty_ring_cover_everything():
    new = HashRing(["a", "b"], vnodes=4)
    changes = ring_changes(HashRing(vnodes=4), new, 2)
    covered = sum((c.end - c.start) % RING_SIZE or RING_SIZE for c in changes)
    assert covered == RING_SIZE
    assert all(c.old_nodes == () for c in changes)


def test_range_change_intervals():
    plain = RangeChange(10, 20, ("a",), ("b",))
    assert plain.intervals() == [(11, 20)] and plain.contains(20) and not plain.contains(10)
    wrapping = RangeChange(RING_SIZE - 5, 3, ("a",), ("b",))
    assert wrapping.intervals() == [(0, 3), (RING_SIZE - 4, RING_SIZE - 1)]
    assert wrapping.contains(0) and wrapping.contains(RING_SIZE - 1) and not wrapping.contains(4)
    whole = RangeChange(7, 7, ("a",), ("b",))
    assert whole.contains(7) and whole.contains(8) and whole.wraps


def test_join_moves_about_one_eleventh():
    ring = HashRing([f"node{i}" for i in range(1, 11)])
    grown = ring.copy()
    grown.add_node("node11")
    moved = Counter(ring.get_node(k) != grown.get_node(k) for k in sample_keys(20000))
    assert moved[True] <= 1.05 * 20000 / 11 * 1.1  # sampling slack on 20k keys


def _merged(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(intervals):
        if merged and low == merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], high)
        else:
            merged.append((low, high))
    return merged


@settings(max_examples=60, deadline=None)
@given(members=member_sets, joiners=st.lists(node_ids, max_size=3, unique=True),
       leavers=st.integers(min_value=0, max_value=2), count=st.integers(1, 4), data=st.data())
def test_the_numpy_filters_match_filtering_every_change(members, joiners, leavers, count, data):
    old = HashRing(members, vnodes=SMALL_VNODES)
    new = old.copy()
    for node in joiners:
        new.add_node(node)
    for node in members[:leavers]:
        if node in new and len(new) > 1:
            new.remove_node(node)
    every = ring_changes(old, new, count)
    node = data.draw(st.sampled_from(sorted(set(old.nodes) | set(new.nodes))))
    to = set(data.draw(st.lists(st.sampled_from(sorted(new.nodes)), max_size=3)))
    assert ring_changes(old, new, count, gained_by=node) == [
        c for c in every if node in c.gained]
    diff = RingDiff(old, new, count)
    expected = [i for c in every if node in c.lost and c.gained and set(c.gained) <= to
                for i in c.intervals()]
    assert _merged(diff.handed_over(node, to)) == _merged(expected)
    # what a node gains, per old holder, leaving out ranges someone in `to` loses
    sources = sorted(old.nodes)
    gained = diff.gained_from(node, sources, unless_lost_by=to)
    for source in sources:
        expected = [i for c in every if node in c.gained and not set(c.lost) & to
                    and source in c.old_nodes for i in c.intervals()]
        assert _merged(gained.get(source, [])) == _merged(expected)
