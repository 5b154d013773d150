"""Faults on a real cluster, injected through tools/chaos.py with real signals."""

from __future__ import annotations

import time

import pytest
from cluster import TestCluster, wait_for

pytestmark = pytest.mark.integration

NODES = ["node1", "node2", "node3"]


@pytest.fixture
def cluster(tmp_path):
    with TestCluster(tmp_path, nodes=3, spares=1) as running:
        yield running


def liveness(cluster: TestCluster, observer: str, node: str) -> str:
    members = {m.node_id: m for m in cluster.status_from(observer).members}
    return members[node].liveness


def run_load(client, seconds: float, acked: dict[str, bytes], prefix: str,
             fault=None, fault_after_s: float = 1.0) -> dict[str, int]:
    """Writes (fresh keys and overwrites) and reads for ``seconds``; ``fault`` runs once."""
    counts = {"ops": 0, "failed": 0}
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < seconds:
        if fault is not None and time.monotonic() - started >= fault_after_s:
            fault()
            fault = None
        key = f"{prefix}{i % 300}"
        value = f"{prefix}{i}".encode()
        counts["ops"] += 2
        try:
            client.put(key, value)
            acked[key] = value
        except Exception:
            counts["failed"] += 1
        try:
            got = client.get(f"{prefix}{(i * 7) % 300}")
            expected = acked.get(f"{prefix}{(i * 7) % 300}")
            if expected is not None:
                assert got.value == expected, "a read returned an older value than acknowledged"
        except AssertionError:
            raise
        except Exception:
            counts["failed"] += 1
        i += 1
    return counts


def assert_all_readable(client, acked: dict[str, bytes]) -> None:
    for key, value in acked.items():
        got = client.get(key)
        assert got.found and got.value == value, (key, got)


def test_kill_minus_nine_under_load_loses_no_acknowledged_write(cluster, record_property):
    client = cluster.client(*NODES, timeout=3.0)
    acked: dict[str, bytes] = {}
    run_load(client, 2, acked, "warm")
    counts = run_load(client, 8, acked, "k", fault=lambda: cluster.chaos("kill", "node2"))
    record_property("ops", counts["ops"])
    record_property("failed", counts["failed"])
    print(f"kill -9 under load: {counts['failed']} of {counts['ops']} operations failed")
    assert counts["failed"] == 0, counts
    cluster.wait_converged(NODES, timeout_s=60)  # node2 was restarted by supervisord
    assert_all_readable(cluster.client("node2"), acked)


def test_a_paused_node_is_marked_down_then_gets_its_hints(cluster):
    client = cluster.client("node1", "node2", timeout=3.0)
    cluster.chaos("pause", "node3")
    wait_for(lambda: liveness(cluster, "node1", "node3") == "down"
             and liveness(cluster, "node2", "node3") == "down", 10, "node3 marked down")
    acked: dict[str, bytes] = {}
    for i in range(200):
        client.put(f"paused{i}", f"v{i}".encode())
        acked[f"paused{i}"] = f"v{i}".encode()
    wait_for(lambda: sum(m.hints for m in cluster.status_from("node1").members) >= 200, 10,
             "the hints for node3 to show in status")
    cluster.chaos("resume", "node3")
    wait_for(lambda: liveness(cluster, "node1", "node3") == "up", 10, "node3 back up")
    wait_for(lambda: set(acked) <= set(cluster.client("node1").local_keys("node3")), 30,
             "node3 to receive its hints")
    wait_for(lambda: all(m.hints == 0 for m in cluster.status_from("node1").members), 15,
             "hints to be cleared once delivered")
    assert_all_readable(cluster.client("node3"), acked)


def test_removing_a_dead_node_restores_the_replication_factor(cluster):
    everyone = NODES + ["node4"]
    cluster.chaos("start", "node4")
    cluster.wait_converged(everyone, timeout_s=120)
    client = cluster.client("node1", timeout=5.0)
    keys = [f"rf{i}" for i in range(2000)]
    for key in keys:
        client.put(key, b"v")
    cluster.chaos("stop", "node4")
    wait_for(lambda: liveness(cluster, "node1", "node4") == "down", 10, "node4 marked down")
    client.remove_node("node4", graceful=False, wait=True, timeout=60)

    def replicas_restored() -> bool:
        placed = {n: set(client.local_keys(n)) for n in NODES}
        return all(sum(key in placed[n] for n in NODES) == 3 for key in keys)
    wait_for(replicas_restored, 60, "every key back on 3 nodes")
    assert all(client.get(key).value == b"v" for key in keys[::50])
