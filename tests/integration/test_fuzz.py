"""A short run of tools/fuzz.py: malformed and random frames at a live node's ROUTER and at its
gossip SUB. The node must not crash, hang or bloat, and must serve correctly afterwards.

The long run is ``python tools/fuzz.py --frames 100000 --seed 1``.
"""

from __future__ import annotations

import pytest

from zring.localcluster import load_tool
from zring.protocol import MsgType

pytestmark = pytest.mark.integration

fuzz = load_tool("fuzz")


def test_a_node_survives_a_short_fuzz(tmp_path):
    # 4000 frames take ~5 s; a node that stalls is given 30 s in all, then fails
    options = fuzz.FuzzOptions(frames=4000, seed=1, workdir=tmp_path, big_every=1000,
                               max_big_mib=2, recover_timeout_s=5, rss_limit_mib=400,
                               rss_kill_mib=800, max_seconds=30, quiet=True)
    report = fuzz.fuzz(options)
    summary = "\n".join(report.lines())
    assert report.crashes == 0, summary
    assert report.hangs == 0, summary
    assert report.peak_rss_mib < options.rss_limit_mib, summary
    assert report.post_checks and set(report.post_checks.values()) == {"ok"}, summary
    assert not report.failures, summary
    # both targets really got their share, every kind of frame included
    assert min(report.sent["router"], report.sent["gossip"]) > 1000, summary
    kinds = {name.split("/")[1] for name in report.kinds}
    assert {"wrong_types", "forged_members", "huge_length", "nested", "multipart",
            "absurd_valid", "big"} <= kinds, summary


def test_the_guard_keeps_forged_frames_on_loopback_and_the_node_in_the_cluster():
    own = "tcp://127.0.0.1:5"
    ctx = fuzz.FuzzContext("fuzz-target", own_generation=3, own_status=2, peer_id="fuzz-peer",
                           endpoints=(own,))

    def member(**fields):
        record = {"node_id": "fz-1", "address": own, "gossip_address": own, "status": 2,
                  "generation": 1, "heartbeat": 1}
        return {**record, **fields}

    def gossip(*members):
        return [fuzz.pack([int(MsgType.GOSSIP), 0, {"sender": "fz-0", "members": members}])]

    assert fuzz.unsafe_reason(gossip(member()), ctx) is None
    assert fuzz.unsafe_reason(gossip(member(node_id="fuzz-target", generation=2,
                                            status=4)), ctx) is None   # stale: ignored
    assert fuzz.unsafe_reason(gossip(member(address="not-an-endpoint")), ctx) is None
    for unsafe in (member(address="tcp://10.0.0.1:7001"),
                   member(gossip_address="tcp://localhost:7001"),
                   member(node_id="fuzz-target", generation=4),
                   member(node_id="fuzz-target", generation=3, status=4),
                   member(node_id="fuzz-peer", status=4)):
        assert fuzz.unsafe_reason(gossip(unsafe), ctx), unsafe
    assert fuzz.unsafe_reason([fuzz.pack([int(MsgType.LEAVE), 1, {}])], ctx)
    assert fuzz.unsafe_reason([fuzz.pack([int(MsgType.REMOVE_NODE), 1,
                                          {"node_id": "fuzz-target"}])], ctx)
    assert fuzz.unsafe_reason([fuzz.pack([int(MsgType.ADMIT), 1,
                                          {"seed": "tcp://192.168.1.1:1"}])], ctx)
    # what the node itself cannot decode cannot hurt it
    assert fuzz.unsafe_reason([b"\x93\x2d\x01"], ctx) is None
