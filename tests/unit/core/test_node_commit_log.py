"""A store that refuses every commit (a full disk) fails each loop cycle: the node logs the
first failure, then a count every few seconds, then the recovery, not one event a cycle."""

from __future__ import annotations

from structlog.testing import capture_logs

from zring.config import NodeConfig
from zring.core.node import NodeCore
from zring.errors import StorageError
from zring.storage import MemoryStore


def test_failed_commits_are_logged_once_then_counted_then_their_recovery():
    config = NodeConfig(node_id="a", address="tcp://a:1", gossip_address="tcp://a:2",
                        seeds=["tcp://a:1"], vnodes=16)
    with capture_logs() as logs:
        core = NodeCore(config, MemoryStore(), 1000.0)
        now = 1000.0
        for _ in range(12_000):   # 12 s of a full disk, a thousand cycles a second
            now += 0.001
            core.commit_failed([], StorageError("disk full"), now)
        core.tick(now + 0.5)      # still within a second of the last failure
        core.tick(now + 1.5)      # a second without one: recovered
    events = [e["event"] for e in logs if e["event"].startswith("commit_")]
    assert events == ["commit_failed", "commit_still_failing", "commit_still_failing",
                      "commit_recovered"]
    counted = sum(e["failures"] for e in logs if e["event"] == "commit_still_failing")
    assert 9_990 <= counted <= 10_010   # the failures of the two 5 s summaries
    assert [e for e in logs if e["event"] == "commit_recovered"][0]["failures"] == 12_000
    assert core.stats["commits_failed"] == 12_000
