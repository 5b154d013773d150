"""core/plan.py: counting what ranges hold a slice per loop cycle: PLAN, RANGE_STATS."""

from __future__ import annotations

import pytest
from coresim import CLIENT_ROUTE, cluster_of, normal_everywhere, put

from zring.core.plan import ring_slices, stats_figures
from zring.protocol import Message, MsgType, encode


def test_plan_predicts_the_join_exactly_and_moves_nothing():
    sim = cluster_of(3)
    for i in range(400):
        put(sim, "node1", f"k{i}")
    before = {c.config.node_id: c.store.count() for c in sim.cores.values()}
    plan = sim.request("node2", MsgType.PLAN, {"action": "add", "node_id": "node4"}).body
    assert {c.config.node_id: c.store.count() for c in sim.cores.values()} == before
    rows = {r["node_id"]: r for r in plan["nodes"]}
    assert rows["node1"]["records_before"] == 400
    sim.add("node4", seed=False)
    assert sim.run_until(lambda: normal_everywhere(sim, "node4") and sim.converged(), 30)
    sim.run(3)
    after = {c.config.node_id: c.store.count() for c in sim.cores.values()}
    assert after == {x: r["records_after"] for x, r in rows.items()}
    assert plan["moved_records"] == after["node4"]
    assert plan["balance_after"] == pytest.approx(max(after.values()) / (1200 / 4), abs=1e-3)


def test_plan_of_a_removal_and_bad_plans():
    sim = cluster_of(4)
    for i in range(400):
        put(sim, "node1", f"k{i}")
    plan = sim.request("node1", MsgType.PLAN, {"action": "remove", "node_id": "node2"}).body
    rows = {r["node_id"]: r for r in plan["nodes"]}
    assert rows["node2"]["records_after"] == 0
    assert rows["node2"]["send_records"] == rows["node2"]["records_before"]
    assert plan["moved_records"] == rows["node2"]["records_before"] == plan["optimal_records"]
    assert sum(r["records_after"] for r in rows.values()) == 1200
    for body, code in [({"action": "add", "node_id": "node1"}, "invalid"),
                       ({"action": "remove", "node_id": "nodeX"}, "not_member"),
                       ({"action": "move", "node_id": "node1"}, "invalid")]:
        reply = sim.request("node1", MsgType.PLAN, body)
        assert reply.type == MsgType.ERROR and reply.body["code"] == code, body


def test_ring_slices_cover_the_ring_in_equal_adjacent_parts():
    slices = ring_slices(8)
    assert len(slices) == 8 and slices[0][0] == 0 and slices[-1][1] == (1 << 64) - 1
    assert all(a[1] + 1 == b[0] for a, b in zip(slices, slices[1:]))
    assert len({high - low for low, high in slices}) == 1


def test_stats_figures_takes_only_sane_counts():
    assert stats_figures(Message(MsgType.OK, 1, {"records": 3, "bytes": 40})) == (3, 40)
    assert stats_figures(None) is None
    assert stats_figures(Message(MsgType.ERROR, 1, {"code": "x", "message": "y"})) is None
    for body in ({"records": 3.0, "bytes": 40}, {"records": -1, "bytes": 0},
                 {"records": 1 << 62, "bytes": 0}, {"records": 3}, {"records": True,
                                                                     "bytes": 1}):
        assert stats_figures(Message(MsgType.OK, 1, body)) is None, body


def test_range_stats_are_counted_in_the_tick_and_answered_when_done():
    sim = cluster_of(3)
    for i in range(30):
        put(sim, "node1", f"k{i}")
    sim.run(0.5)
    core = sim.node("node1")
    half = [[0, (1 << 63) - 1]]
    frame = encode(Message(MsgType.RANGE_STATS, 5, {"intervals": half}))
    assert core.handle_frame(CLIENT_ROUTE, frame, sim.now) == []
    assert core.next_deadline() <= sim.now           # more counting due at once
    replies = [e for e in core.tick(sim.now) if getattr(e, "route", None) == CLIENT_ROUTE]
    records, size = core.store.range_stats(0, (1 << 63) - 1)
    assert [r.message.body for r in replies] == [{"records": records, "bytes": size}]
    assert 0 < records < 30


@pytest.mark.parametrize("intervals", [[[0]], [[0, -1]], [[0, 1.5]], [[0, 1, 2]]])
def test_range_stats_of_bad_intervals_are_refused(cluster, intervals):
    reply = cluster.request("node1", MsgType.RANGE_STATS, {"intervals": intervals})
    assert reply.type == MsgType.ERROR and reply.body["code"] == "invalid"
