"""Crash safety: kill -9 of every node at once in the middle of a write load."""

from __future__ import annotations

import threading

import pytest
from cluster import TestCluster, wait_for

pytestmark = pytest.mark.integration

ROUNDS = 20
NODES = ["node1", "node2", "node3"]


class WriteLoad(threading.Thread):
    """Overwrites a few hundred keys with ever-new values; remembers, per key, the last value
    acknowledged and every value attempted after it (outcome unknown: maybe applied)."""

    def __init__(self, cluster: TestCluster) -> None:
        super().__init__(daemon=True)
        self.client = cluster.client(*NODES, timeout=1.0)
        self.stop_event = threading.Event()
        self.acked: dict[str, bytes] = {}
        self.unsure: dict[str, set[bytes]] = {}
        self.acks = 0
        self.failures = 0

    def run(self) -> None:
        i = 0
        while not self.stop_event.is_set():
            key, value = f"crash{i % 500}", f"value-{i}".encode()
            self.unsure.setdefault(key, set()).add(value)
            try:
                self.client.put(key, value)
            except Exception:
                self.failures += 1
            else:
                self.acked[key] = value
                self.unsure[key] = set()
                self.acks += 1
            i += 1


def node_pids(cluster: TestCluster) -> list[int]:
    return [cluster.supervisor().getProcessInfo(name)["pid"] for name in NODES]


def test_no_acknowledged_write_is_lost_over_repeated_whole_cluster_crashes(tmp_path):
    with TestCluster(tmp_path, extra_args=("--fsync", "always")) as cluster:
        load = WriteLoad(cluster)
        load.start()
        try:
            for round_number in range(ROUNDS):
                acks_before = load.acks
                wait_for(lambda before=acks_before: load.acks >= before + 50, 30,
                         f"writes to resume in round {round_number}")
                pids = node_pids(cluster)
                cluster.chaos("kill", "--all")
                wait_for(lambda old_pids=pids: all(
                    new != old for new, old in zip(node_pids(cluster), old_pids, strict=True)),
                         30, "supervisord to restart every node")
                cluster.wait_running(NODES, timeout_s=60)
                cluster.wait_converged(NODES, timeout_s=60)
        finally:
            load.stop_event.set()
            load.join(timeout=30)
        print(f"{ROUNDS} crash rounds: {load.acks} writes acknowledged, "
              f"{load.failures} failed during the outages")
        reader = cluster.client("node1", timeout=5.0)
        lost = []
        for key, value in load.acked.items():
            got = reader.get(key, r=3).value
            if got != value and got not in load.unsure.get(key, ()):
                lost.append((key, value, got))
        assert lost == [], f"{len(lost)} acknowledged writes lost, e.g. {lost[:3]}"


def test_a_wiped_node_gets_every_key_back_from_zring_repair(tmp_path):
    import shutil
    import subprocess
    import sys
    with TestCluster(tmp_path) as cluster:
        client = cluster.client("node1", timeout=5.0)
        keys = [f"wipe{i}" for i in range(500)]
        for key in keys:
            client.put(key, key.encode())
        cluster.chaos("stop", "node3")
        shutil.rmtree(tmp_path / "data" / "node3")
        cluster.chaos("start", "node3")
        cluster.wait_converged(NODES, timeout_s=60)
        assert len(client.local_keys("node3")) < len(keys)
        result = subprocess.run([sys.executable, "-m", "zring.cli", "--seeds",
                                 ",".join(cluster.seeds), "repair"],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert "OK: repaired 3 replica pairs" in result.stdout
        assert set(keys) <= set(client.local_keys("node3"))
        assert client.get("wipe7", r=3).value == b"wipe7"
