"""core/clocks.py: clock offsets measured against the peers, the verdict on our own clock,
and the hybrid clock's ceiling kept on disk."""

from __future__ import annotations

import pytest
from coresim import Stamps, get, part_context, simstore_cluster_of, stamped_put

from zring.core.clocks import SAMPLE_TTL_S, ClockOffsets, NodeClock
from zring.core.effects import Reply
from zring.errors import ClockSkew
from zring.protocol import Message, MsgType, encode
from zring.versions import timestamp_bound

NOW = 1000.0


def test_a_node_whose_clock_is_off_refuses_to_coordinate_writes_and_says_by_how_much():
    sim = simstore_cluster_of(3, clock_check_interval_s=0.25)
    sim.offsets[sim.node("node1").config.address] = 300.0
    sim.run(1.0)   # the next clock checks measure it
    reply = stamped_put(sim, "node1", "k", b"v", Stamps(sim).next())
    assert reply.type == MsgType.ERROR and reply.body["code"] == "clock_skew"
    assert reply.body["details"]["offset_s"] == pytest.approx(300, abs=0.1)
    assert reply.body["details"]["node"] == "node1"
    assert stamped_put(sim, "node2", "k", b"v", Stamps(sim).next()).type == MsgType.OK
    rows = {r["node_id"]: r for r in sim.request("node2", MsgType.CLUSTER_STATUS,
                                                 {}).body["members"]}
    assert rows["node1"]["clock_ok"] is False and rows["node2"]["clock_ok"] is True
    assert rows["node1"]["clock_offset_s"] == pytest.approx(300, abs=0.1)
    sim.offsets[sim.node("node1").config.address] = 0.0   # fixed (NTP)
    sim.run(1.0)
    assert stamped_put(sim, "node1", "k2", b"v", Stamps(sim).next()).type == MsgType.OK


def test_timestamps_from_beyond_the_maximum_offset_are_refused_and_counted():
    sim = simstore_cluster_of(3)
    core = sim.node("node2")
    ahead = int((sim.now + 5) * 1000) << 16   # a clock 5 s ahead
    effects = core.handle_frame((b"node1",), encode(Message(MsgType.REPLICA_WRITE, 7, {
        "records": [["k", b"v", ahead, "node1"]], "cond": True})), sim.now)
    reply = next(e for e in effects if isinstance(e, Reply)).message
    assert reply.type == MsgType.ERROR and reply.body["code"] == "clock_skew"
    assert core.stats["future_timestamps_refused"] == 1 and core.store.get("k") is None
    assert core.clock.last < ahead   # never observed
    client_write = stamped_put(sim, "node1", "k", b"v", ahead)   # a client whose clock is ahead
    assert client_write.body["code"] == "clock_skew" and "client" in \
        client_write.body["message"]


def test_the_hybrid_clock_never_goes_back_across_a_restart():
    sim = simstore_cluster_of(3)
    before = sim.node("node1").clock.last
    for i in range(20):   # writes without a client stamp: the node's own clock stamps them
        assert sim.request("node1", MsgType.PUT, {"key": f"k{i}", "value": b"v"}).type == \
            MsgType.OK
    issued = sim.node("node1").clock.last
    assert issued > before
    sim.run(0.5)   # its ceiling is saved with a loop cycle
    address = sim.node("node1").config.address
    sim.offsets[address] = -300.0   # restarted with its clock behind
    restarted = sim.restart("node1")
    assert restarted.clock.last >= issued


def test_a_node_restarted_with_its_clock_far_ahead_stamps_nothing_from_the_future():
    sim = simstore_cluster_of(3, clock_check_interval_s=0.25)
    address = sim.node("node1").config.address
    sim.offsets[address] = 365 * 86400.0   # a year ahead
    sim.restart("node1")
    sim.run(1.0)
    for i in range(5):
        reply = sim.request("node1", MsgType.PUT, {"key": f"y{i}", "value": b"v"})
        assert reply.body.get("code") == "clock_skew"
    sim.offsets[address] = 0.0   # fixed, and restarted
    sim.restart("node1")
    sim.run(1.0)
    stamps = Stamps(sim)
    for i in range(5):   # new writes of those keys are taken and read back
        assert stamped_put(sim, "node2", f"y{i}", b"new", stamps.next()).type == MsgType.OK
        assert get(sim, "node1", f"y{i}").body["value"] == b"new"
    assert max(c.clock.last for c in sim.cores.values()) < int((sim.now + 1) * 1000) << 16


def test_an_offset_is_measured_from_the_middle_of_the_round_trip():
    offsets = ClockOffsets(max_offset_s=0.5)
    offsets.record("b", sent=NOW, received=NOW + 0.02, peer_clock=NOW + 0.31)
    sample = offsets.sample("b", NOW + 0.02)
    assert sample.offset_s == pytest.approx(0.30) and sample.error_s == pytest.approx(0.01)


def test_a_sample_too_noisy_or_from_a_stepped_clock_is_not_kept():
    offsets = ClockOffsets(max_offset_s=0.4)
    offsets.record("b", sent=NOW, received=NOW + 0.3, peer_clock=NOW)   # +-0.15 > 0.1
    offsets.record("c", sent=NOW, received=NOW - 0.1, peer_clock=NOW)   # went backwards
    assert offsets.sample("b", NOW) is None and offsets.sample("c", NOW) is None


def test_a_sample_counts_only_while_it_is_recent():
    offsets = ClockOffsets(max_offset_s=0.5)
    offsets.record("b", NOW, NOW, NOW + 5)
    assert offsets.sample("b", NOW + SAMPLE_TTL_S) is not None
    assert offsets.sample("b", NOW + SAMPLE_TTL_S + 0.1) is None
    assert offsets.verdict(["b"], NOW + SAMPLE_TTL_S + 0.1).measured == 0


def test_our_clock_is_off_when_most_peers_we_measured_are_far():
    offsets = ClockOffsets(max_offset_s=0.5)
    for peer in ("b", "c", "d"):
        offsets.record(peer, NOW, NOW, NOW - 2.0)    # every peer 2 s behind: we are ahead
    verdict = offsets.verdict(["b", "c", "d"], NOW)
    assert not verdict.ok and verdict.far == 3 and verdict.offset_s == pytest.approx(2.0)
    assert "+2.000 s" in verdict.describe("a", 0.5)


def test_one_far_peer_among_several_is_that_peers_problem():
    offsets = ClockOffsets(max_offset_s=0.5)
    offsets.record("b", NOW, NOW, NOW + 30)
    offsets.record("c", NOW, NOW, NOW + 0.01)
    offsets.record("d", NOW, NOW, NOW - 0.01)
    verdict = offsets.verdict(["b", "c", "d"], NOW)
    assert verdict.ok and verdict.far == 1 and verdict.measured == 3
    assert offsets.verdict([], NOW).ok


def test_with_one_peer_measured_far_neither_side_can_tell_so_both_stop():
    offsets = ClockOffsets(max_offset_s=0.5)
    offsets.record("b", NOW, NOW, NOW + 30)
    assert not offsets.verdict(["b"], NOW).ok


def test_a_peer_timestamp_beyond_our_clock_plus_the_maximum_offset_is_refused():
    ctx = part_context()
    clock = NodeClock(ctx, NOW)
    bound = timestamp_bound(NOW, ctx.config.max_clock_offset_s)
    clock.check_peer_timestamp(bound, NOW)
    with pytest.raises(ClockSkew):
        clock.check_peer_timestamp(bound + (1 << 20), NOW)
    assert ctx.stats["future_timestamps_refused"] == 1


def test_a_clock_request_is_answered_with_our_wall_clock():
    clock = NodeClock(part_context(), NOW)
    [reply] = clock.handlers[MsgType.CLOCK]((b"x",), Message(MsgType.CLOCK, 5, {}), NOW + 1)
    assert reply.message.body == {"now": NOW + 1} and reply.only_reads


def test_the_clock_ceiling_is_saved_ahead_and_a_new_clock_starts_above_it():
    ctx = part_context()
    clock = NodeClock(ctx, NOW)
    clock.note_stamp(5 << 30)
    clock.save_ceiling(NOW)
    saved = int.from_bytes(ctx.store.get_meta("clock"), "big")
    assert saved > 5 << 30
    again = NodeClock(ctx, NOW)
    assert again.hlc.last >= saved


def test_a_ceiling_whose_commit_failed_is_owed_again():
    ctx = part_context()
    clock = NodeClock(ctx, NOW)
    clock.note_stamp(5 << 30)
    clock.save_ceiling(NOW)
    ctx.store.set_meta("clock", b"")        # the commit was undone
    clock.commit_failed(ctx.ticks, NOW)
    clock.note_stamp(5 << 30)
    clock.save_ceiling(NOW)
    assert int.from_bytes(ctx.store.get_meta("clock"), "big") > 5 << 30
