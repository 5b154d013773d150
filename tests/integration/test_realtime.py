"""Real-time safety on real node processes (issue 17): late retries, clock skew, a forming
cluster, a full disk, status figures. tools/safetycases.py measures the same failures."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time

import pytest
from cluster import TestCluster, wait_for

from zring import Client, StorageError, Unavailable, ZringError
from zring.localcluster import faketime_library, load_tool

pytestmark = pytest.mark.integration


def direct(cluster: TestCluster, name: str) -> Client:
    """A client whose requests ``name`` coordinates."""
    return Client([cluster.addresses[name]], timeout=2.0, retries=0, token_aware=False)


def test_a_late_copy_of_a_retried_put_never_overwrites_a_later_put(tmp_path):
    with TestCluster(tmp_path) as cluster:
        client = cluster.client(timeout=1.0)   # the default client, with a shorter timeout
        key = next(k for k in (f"late{i}" for i in range(1000)) if client.get_node(k) == "node3")
        client.put(key, b"zero")   # the client is connected to the key's owner
        cluster.chaos("pause", "node3", in_process=True)
        client.put(key, b"first")    # queued at the paused owner, timed out, resent elsewhere
        client.put(key, b"second")
        cluster.chaos("resume", "node3", in_process=True)
        wait_for(lambda: cluster.status_from("node3"), 10, "node3 to answer again")
        wait_for(lambda: cluster.status_from("node1").member("node3").liveness == "up", 10,
                 "node1 to see node3 up")
        reader = cluster.client()
        deadline = time.monotonic() + 1.5   # the copy node3 had queued has been dealt with
        while time.monotonic() < deadline:
            assert reader.get(key, r=3).value == b"second"
            time.sleep(0.1)


@pytest.mark.skipif(faketime_library() is None, reason="needs libfaketime (apt-get install "
                    "faketime) to run a node with its clock ahead")
def test_a_node_whose_clock_is_ahead_refuses_to_coordinate_writes(tmp_path):
    cluster = TestCluster(tmp_path)
    cluster.set_clock("node3", 300)
    with cluster, direct(cluster, "node3") as skewed:

        def refused() -> ZringError | None:
            try:
                skewed.put("probe", b"v")
            except ZringError as exc:
                return exc if exc.code == "clock_skew" else None
            return None
        error = wait_for(refused, 10, "node3 to refuse writes for its clock")
        # the offset as measured from heartbeats: +300 s, give or take a few ms
        assert "node3" in error.message and re.search(r"\+(299\.9|300\.0)", error.message), \
            error.message
        assert abs(error.details["offset_s"] - 300) < 5, error.details
        wait_for(lambda: '"event": "clock_offset_exceeded"' in cluster.log_text("node3"), 10,
                 "clock_offset_exceeded in node3's log")
        member = cluster.status_from("node1").member("node3")
        assert member.clock_ok is False and abs(member.clock_offset_s - 300) < 5, member

        client = cluster.client()   # routes round node3 when node3 refuses
        for i in range(10):
            key = f"skew{i}"
            client.put(key, b"earlier")
            with pytest.raises(ZringError, match="clock"):
                skewed.put(key, b"skewed")
            client.put(key, b"later")
            assert client.get(key, r=3).value == b"later"


def test_five_seeds_started_apart_under_writes_lose_nothing_acknowledged(tmp_path):
    names = [f"node{i}" for i in range(1, 6)]
    cluster = TestCluster(tmp_path, nodes=5, log_level="info")
    cluster.autostart = set()   # started one at a time below, as on a loaded machine
    acked: dict[str, bytes] = {}
    stop = threading.Event()

    def write() -> None:
        with Client(cluster.seeds, timeout=0.5) as client:
            i = 0
            while not stop.is_set():
                key, value = f"form{i}", f"v{i}".encode()
                try:
                    client.put(key, value)
                    acked[key] = value
                except ZringError:
                    time.sleep(0.01)   # the cluster may say it is forming: retry later
                i += 1
    writer = threading.Thread(target=write, daemon=True)
    with cluster:
        cluster.supervisor().startProcess("node1", False)
        wait_for(lambda: cluster.status_from("node1"), 10, "node1 to answer")
        writer.start()
        try:
            for name in names[1:]:
                cluster.supervisor().startProcess(name, False)
                time.sleep(0.5)
            cluster.wait_converged(names, timeout_s=60)
            wait_for(lambda: len(acked) >= 500, 30, "writes to go through")
        finally:
            stop.set()
            writer.join(10)
        reader = cluster.client()
        unreadable = [k for k, v in acked.items() if reader.get(k).value != v]
        assert not unreadable, f"{len(unreadable)} of {len(acked)} acknowledged writes lost"


# fills a file system with one file, as tools/safetycases.py's disk-full case does
fill = load_tool("safetycases").fill


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs that fills up")
def test_a_full_disk_fails_only_the_writes_that_hit_it(tmp_path):
    data = tmp_path / "data" / "node2"
    data.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(data)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"could not mount a tmpfs: {mounted.stderr.strip()}")
    try:
        with (TestCluster(tmp_path) as cluster, direct(cluster, "node2") as full,
              direct(cluster, "node1") as other):
            for i in range(20):
                full.put(f"stored{i}", b"v")
            pid = cluster.supervisor().getProcessInfo("node2")["pid"]
            fill(data)
            # each value below is larger than a page: writing it needs a page the full tmpfs
            # cannot give (a few bytes may still fit in the last page of a file a store
            # appends to, RocksDB's write-ahead log: a tiny put need not hit the full disk)
            big = b"x" * 8192
            for i in range(5):   # w=3 needs node2's own copy: refused at once, no timeout
                with pytest.raises((StorageError, Unavailable)):
                    full.put(f"refused{i}", big, w=3)
            acked = {f"stored{i}": b"v" for i in range(20)}
            for i in range(5):   # at W=2 the other two replicas take it without node2
                assert "node2" not in full.put(f"taken{i}", big).stored_on
                acked[f"taken{i}"] = big
            for i in range(20):   # node2 is a replica of every key: the others make W=2
                other.put(f"elsewhere{i}", big)
                acked[f"elsewhere{i}"] = big
            failed_reads = []
            for i in range(20):
                try:
                    full.get(f"stored{i}")
                except ZringError as exc:
                    failed_reads.append(exc)
            assert cluster.supervisor().getProcessInfo("node2")["pid"] == pid
            (data / "filler").unlink()
            wait_for(lambda: full.put("again", big, w=3), 10, "node2 to take writes again")
            for i in range(20):   # nothing it failed on is still held against it
                assert "node2" in full.put(f"after{i}", big, w=3).stored_on
                acked[f"after{i}"] = big
                assert full.get(f"stored{i}").value == b"v"
            assert not failed_reads, (f"{len(failed_reads)} of 20 reads through the full node "
                                      f"failed: {failed_reads[0]}")
            lost = [key for key, value in acked.items() if other.get(key, r=2).value != value]
            assert not lost, f"{len(lost)} of {len(acked)} acknowledged writes lost: {lost[:5]}"
            assert cluster.supervisor().getProcessInfo("node2")["pid"] == pid
    finally:
        subprocess.run(["umount", "-l", str(data)], capture_output=True)


def test_status_figures_are_exact_right_after_a_batch_of_puts(tmp_path):
    with TestCluster(tmp_path) as cluster:
        client = cluster.client()
        client.mput({f"status{i:05d}": b"v" * 10 for i in range(3000)})

        def exact() -> bool:   # the third replica's copy may land a moment after the ack
            members = client.cluster_status().members
            return len(members) == 3 and all(m.keys_count == 3000 and m.figures == "exact"
                                             for m in members)
        wait_for(exact, 2, "every node to show its 3000 keys")
