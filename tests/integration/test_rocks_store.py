"""One real node on the RocksDB store: put, get, restart, get (``zring node --store rocksdb``).

Started directly (no supervisord) to stay short; ``zring check`` then reads the stopped
node's RocksDB directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cluster import ROOT, free_ports, wait_for

from zring.client import Client
from zring.storage import ROCKS_DIR, STORE_FILE

pytestmark = pytest.mark.integration


def start_node(data_dir: Path, listen: str, gossip: str, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "zring.cli", "node", "--id", "solo", "--listen", listen,
               "--gossip", gossip, "--seeds", listen, "--data-dir", str(data_dir),
               "--store", "rocksdb", "--fsync", "always", "--replicas", "1",
               "--write-quorum", "1", "--read-quorum", "1", "--log-format", "json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def stop_node(node: subprocess.Popen) -> None:
    node.send_signal(signal.SIGTERM)
    try:
        assert node.wait(timeout=10) == 0
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()


def test_a_node_on_rocksdb_keeps_its_data_across_a_restart(tmp_path):
    data_dir = tmp_path / "data"
    listen, gossip = (f"tcp://127.0.0.1:{port}" for port in free_ports(2))
    log = tmp_path / "node.log"
    node = start_node(data_dir, listen, gossip, log)
    try:
        with Client([listen], timeout=2.0) as client:
            wait_for(lambda: client.put("warm", b"up"), 20, "the node to take a write")
            client.put("k", b"value")
            client.put("text", "ünïcødé")
            client.delete("warm")
            assert client.get("k").value == b"value"
    finally:
        stop_node(node)
    assert (data_dir / ROCKS_DIR / "CURRENT").exists() and not (data_dir / STORE_FILE).exists()

    node = start_node(data_dir, listen, gossip, log)
    try:
        with Client([listen], timeout=2.0) as client:
            held = wait_for(lambda: client.get("k"), 20, "the restarted node to answer")
            assert held.value == b"value"
            assert client.get("text").value == "ünïcødé"
            assert not client.get("warm").found
    finally:
        stop_node(node)

    checked = subprocess.run([sys.executable, "-m", "zring.cli", "check", "--data-dir",
                              str(data_dir)], capture_output=True, text=True, timeout=30,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith(f"ok: {data_dir / ROCKS_DIR}, 2 keys, 1 tombstones")
