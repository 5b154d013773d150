"""A real cluster: node processes under supervisord, talking ZeroMQ on loopback."""

from __future__ import annotations

import statistics
import subprocess
import sys

import msgpack
import pytest
import zmq
from cluster import TestCluster, wait_for

from zring import InvalidRequest, Unavailable
from zring.protocol import MsgType

pytestmark = pytest.mark.integration

KEYS = 10_000


@pytest.fixture
def cluster(tmp_path):
    """A private cluster for tests that kill, stop, add or remove nodes."""
    with TestCluster(tmp_path, nodes=3, spares=1) as running:
        yield running


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One cluster for the tests that only read and write (each uses its own keys)."""
    with TestCluster(tmp_path_factory.mktemp("shared")) as running:
        yield running


def local_placements(cluster: TestCluster, names) -> dict[str, set[str]]:
    client = cluster.client()
    return {name: set(client.local_keys(name)) for name in names}


def test_put_get_delete_through_every_node(shared):
    client = shared.client("node1")
    result = client.put("greeting", "hello")
    assert result.success and len(result.stored_on) >= 2
    assert sorted(result.replicated_to) == ["node1", "node2", "node3"]
    for name in ("node1", "node2", "node3"):
        got = shared.client(name).get("greeting")
        assert got.found and got.value == "hello"
    client.put("blob", b"\x00\x01")
    assert shared.client("node2").get("blob").value == b"\x00\x01"
    assert client.delete("greeting").success
    assert not shared.client("node3").get("greeting").found
    assert client.get_node("blob") == client.get_nodes("blob", 3)[0]
    assert sorted(m.node_id for m in client.cluster_status().members) == \
        ["node1", "node2", "node3"]


def test_cli_round_trip(shared):
    seeds = ["--seeds", ",".join(shared.seeds)]

    def zring(*args):
        return subprocess.run([sys.executable, "-m", "zring.cli", *seeds, *args],
                              capture_output=True, text=True, timeout=60)
    assert zring("put", "cli-key", "cli-value").returncode == 0
    got = zring("get", "cli-key")
    assert got.returncode == 0 and got.stdout.strip() == "cli-value"
    status = zring("status")
    assert status.returncode == 0 and all(f"node{i}" in status.stdout for i in (1, 2, 3))
    missing = zring("get", "no-such-key")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    bad = zring("put", "x" * 5000, "v")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "error" in bad.stderr


def test_rf1_spreads_keys_evenly_over_three_nodes(shared):
    client = shared.client()
    for i in range(KEYS):
        client.put(f"rf1_{i}", b"v", replicas=1, w=1)
    placements = local_placements(shared, ["node1", "node2", "node3"]).values()
    counts = [sum(key.startswith("rf1_") for key in keys) for keys in placements]
    assert sum(counts) == KEYS
    assert statistics.pstdev(counts) < 0.10 * statistics.mean(counts), counts


def test_n3_spreads_replicas_evenly_over_five_nodes(tmp_path):
    with TestCluster(tmp_path, nodes=5) as five:
        client = five.client()
        for i in range(KEYS):
            client.put(f"key_{i}", b"v")
        wait_for(lambda: sum(len(k) for k in local_placements(five, five.names).values())
                 == 3 * KEYS, 30, "all replicas written")
        counts = [len(k) for k in local_placements(five, five.names).values()]
        assert statistics.pstdev(counts) < 0.10 * statistics.mean(counts), counts


def test_adding_a_node_moves_about_the_optimum(cluster):
    client = cluster.client()
    for i in range(KEYS):
        client.put(f"key_{i}", b"v")
    old = ["node1", "node2", "node3"]
    wait_for(lambda: all(len(k) == KEYS for k in local_placements(cluster, old).values()),
             30, "every key on all three nodes")
    before = local_placements(cluster, old)
    cluster.chaos("start", "node4")
    cluster.wait_converged(old + ["node4"], timeout_s=120)
    everyone = old + ["node4"]
    wait_for(lambda: sum(len(k) for k in local_placements(cluster, everyone).values())
             == 3 * KEYS, 60, "old replicas to drop what node4 took over")
    after = local_placements(cluster, everyone)
    moved = sum(len(after[n] - before.get(n, set())) for n in everyone)
    optimum = 3 * KEYS / 4
    assert 0.8 * optimum <= moved <= 1.2 * optimum, moved
    for i in range(0, KEYS, 97):
        key = f"key_{i}"
        assert sorted(n for n in everyone if key in after[n]) == \
            sorted(client.get_nodes(key, 3))
        assert client.get(key).value == b"v"


def test_get_after_kill_minus_nine_of_a_replica(cluster):
    client = cluster.client("node1")
    client.put("survivor", b"still here")
    victim = next(n for n in client.get_nodes("survivor", 3) if n != "node1")
    cluster.chaos("kill", victim)
    other = next(n for n in ("node1", "node2", "node3") if n != victim)
    got = cluster.client(other).get("survivor")
    assert got.found and got.value == b"still here"


def test_restarted_node_serves_what_it_acknowledged(cluster):
    client = cluster.client("node2")
    for i in range(200):
        client.put(f"durable_{i}", f"value {i}", w=3)
    cluster.chaos("kill", "node2")
    wait_for(lambda: cluster.status_from("node2"), 30, "node2 to be restarted")
    keys = set(cluster.client().local_keys("node2"))
    assert {f"durable_{i}" for i in range(200)} <= keys
    got = cluster.client("node2").get("durable_7", r=1)
    assert got.value == "value 7"


def test_graceful_removal_keeps_every_key(cluster):
    cluster.chaos("start", "node4")
    cluster.wait_converged(["node1", "node2", "node3", "node4"], timeout_s=120)
    client = cluster.client("node1")
    for i in range(500):
        client.put(f"stay_{i}", b"v")
    client.remove_node("node2", graceful=True, wait=True, timeout=120)
    remaining = ["node1", "node3", "node4"]
    placements = local_placements(cluster, remaining)
    for i in range(500):
        assert sum(f"stay_{i}" in placements[n] for n in remaining) == 3
        assert client.get(f"stay_{i}").value == b"v"


def test_unavailable_is_an_error_not_a_silent_success(cluster):
    client = cluster.client("node1")
    cluster.chaos("stop", "node2")
    cluster.chaos("stop", "node3")
    with pytest.raises(Unavailable):
        client.put("lonely", b"v")
    with pytest.raises(InvalidRequest):
        client.put("k", b"v", w=4)


def raw_request(address: str, *frames: bytes, timeout_ms: int = 3000):
    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        sock.send_multipart(list(frames))
        if not sock.poll(timeout_ms):
            return None
        return msgpack.unpackb(sock.recv_multipart()[-1], raw=False)
    finally:
        sock.close()


@pytest.mark.parametrize("frame, code", [
    (b"\xff\xfe garbage", "protocol"),
    (msgpack.packb([999, 5, {}]), "protocol"),                          # unknown type
    (msgpack.packb([10, 6, {"key": 1, "value": b"v"}]), "protocol"),    # wrong field type
    (msgpack.packb([10, 7, {"key": "k" * 10_000, "value": b"v"}]), "invalid"),  # key too big
    (msgpack.packb([10, 8, {"key": "k", "value": b"v" * (5 << 20)}]), "invalid"),  # value
    (msgpack.packb([11, 9]), "protocol"),                               # truncated message
    (msgpack.packb([[[[[[[[[[[]]]]]]]]]]]), "protocol"),                # nested junk
])
def test_bad_frames_get_an_error_reply_and_the_node_keeps_serving(shared, frame, code):
    reply = raw_request(shared.addresses["node1"], frame)
    assert reply is not None and reply[0] == 2 and reply[2]["code"] == code, reply
    assert shared.client("node1").put("after-bad-frame", b"ok").success


def test_a_request_of_too_many_parts_gets_a_protocol_error(shared):
    reply = raw_request(shared.addresses["node1"], b"a", b"b", b"c", b"d", b"e",
                        timeout_ms=2000)
    assert reply[0] == MsgType.ERROR and reply[1] == 0 and reply[2]["code"] == "protocol"
    assert shared.client("node1").get("anything").found is False


def test_add_node_admits_a_returning_node_and_rebalance_restores_placement(cluster):
    client = cluster.client("node1")
    cluster.chaos("start", "node4")
    cluster.wait_converged(["node1", "node2", "node3", "node4"], timeout_s=120)
    # it joined by itself: admitting it again is a no-op
    assert client.add_node("node4", cluster.addresses["node4"]).status == "normal"
    client.remove_node("node4", graceful=True, wait=True, timeout=120)
    wait_for(lambda: cluster.supervisor().getProcessInfo("node4")["statename"] == "EXITED",
             30, "node4 to exit after leaving")
    # restarted, a node that left stays out until it is admitted
    cluster.chaos("start", "node4")
    assert "node4" not in client.get_nodes("any", 4)
    client.add_node("node4", cluster.addresses["node4"], wait=True, timeout=120)
    cluster.wait_converged(["node1", "node2", "node3", "node4"], timeout_s=60)
    everyone = ["node1", "node2", "node3", "node4"]
    for i in range(300):
        client.put(f"rb_{i}", b"v", replicas=1, w=1)
    client.rebalance()
    placements = local_placements(cluster, everyone)
    for i in range(0, 300, 7):
        key = f"rb_{i}"
        assert sorted(n for n in everyone if key in placements[n]) == \
            sorted(client.get_nodes(key, 3))
