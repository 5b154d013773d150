"""CurveZMQ security on a real cluster: who gets in, what each key may do, and what the
loopback wire shows."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import msgpack
import pytest
import zmq
from cluster import TestCluster, free_ports, wait_for

from zring import Client
from zring.errors import Forbidden, Timeout
from zring.protocol import MsgType
from zring.security import ClientKeys, keygen

pytestmark = pytest.mark.integration

NODES = ["node1", "node2", "node3"]


def make_keys(directory: Path, nodes=NODES) -> Path:
    keygen(directory, nodes=nodes, clients=["app"], admins=["admin"])
    return directory


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    root = tmp_path_factory.mktemp("secure")
    keys = make_keys(root / "keys")
    with TestCluster(root / "cluster", nodes=3, keys_dir=keys) as cluster:
        yield cluster, keys


def counters(cluster: TestCluster, name: str) -> dict[str, int]:
    return cluster.client().node_stats(name)


def total(cluster: TestCluster, counter: str) -> int:
    return sum(counters(cluster, n).get(counter, 0) for n in NODES)


def raw_request(address: str, keys: ClientKeys, msg_type: int, body: dict) -> list:
    """One frame sent as is (no client-side checks), its decoded reply."""
    context = zmq.Context.instance()
    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    keys.connect(dealer)
    dealer.connect(address)
    try:
        dealer.send(msgpack.packb([msg_type, 7, body]))
        assert dealer.poll(5000), f"no reply to {msg_type} from {address}"
        return msgpack.unpackb(dealer.recv())
    finally:
        dealer.close()


def test_key_holders_are_served_and_each_role_does_only_its_own(secure):
    cluster, keys = secure
    app = Client(cluster.seeds, keys=ClientKeys.load(keys / "clients" / "app.key_secret"))
    try:
        assert app.put("k", b"v").stored_on
        assert app.get("k").value == b"v"
        assert [r.value for r in app.mget(["k", "nope"])] == [b"v", None]
        forbidden_before = total(cluster, "forbidden")
        with pytest.raises(Forbidden, match="REBALANCE"):
            app.rebalance(timeout=5)
        with pytest.raises(Forbidden, match="REMOVE_NODE"):
            app.remove_node("node3", wait=False)
        # a peer message from a client key: refused with a code, not obeyed
        reply = raw_request(cluster.addresses["node1"], app.keys, MsgType.FORCE_REMOVE,
                            {"node_id": "node2"})
        assert reply[0] == MsgType.ERROR and reply[2]["code"] == "forbidden"
        assert total(cluster, "forbidden") == forbidden_before + 3
    finally:
        app.close()
    admin = cluster.client()   # the admin key
    assert admin.plan("add", "node9", timeout=30)
    assert len(admin.cluster_status().members) == 3


@pytest.mark.parametrize("kind", ["no key", "unlisted key", "wrong cluster key"])
def test_clients_without_an_allowed_key_are_refused_served_nothing_and_counted(
        secure, tmp_path, kind):
    cluster, keys = secure
    if kind == "no key":
        outsider_keys = None
        reason = "no CURVE key"
    elif kind == "unlisted key":   # knows the cluster's public key, holds a key not listed
        keygen(tmp_path / "other", clients=["intruder"])
        outsider_keys = ClientKeys.load(tmp_path / "other" / "clients" / "intruder.key_secret",
                                        keys / "cluster.key")
        reason = "key not allowed"
    else:                          # a key and a cluster key of another cluster
        keygen(tmp_path / "other", clients=["app"])
        outsider_keys = ClientKeys.load(tmp_path / "other" / "clients" / "app.key_secret")
        reason = "not sealed for the cluster key"
    refused_before = total(cluster, "refused_connections")
    key = f"intruder-{uuid.uuid4().hex}"
    client = Client(cluster.seeds, timeout=0.5, retries=2, keys=outsider_keys)
    try:
        with pytest.raises(Timeout):
            client.put(key, b"should never be stored")
    finally:
        client.close()
    wait_for(lambda: total(cluster, "refused_connections") > refused_before, 10,
             "the refusal to be counted")
    assert any(reason in cluster.log_text(n) for n in NODES)
    assert not cluster.client().get(key).found   # 0 requests served


def test_a_node_whose_key_is_not_listed_never_joins(secure, tmp_path):
    cluster, keys = secure
    # its own key directory: the cluster's files plus its own node key, which the
    # cluster's directory does not list
    own_keys = tmp_path / "keys"
    shutil.copytree(keys, own_keys)
    keygen(own_keys, nodes=["rogue"])
    address, gossip = (f"tcp://127.0.0.1:{p}" for p in free_ports(2))
    refused_before = total(cluster, "refused_connections")
    log_path = tmp_path / "rogue.log"
    with open(log_path, "wb") as log:
        rogue = subprocess.Popen(
            [sys.executable, "-m", "zring.cli", "node", "--id", "rogue", "--listen", address,
             "--gossip", gossip, "--seeds", ",".join(cluster.seeds), "--memory",
             "--keys", str(own_keys), "--log-format", "json"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(
                Path(__file__).parents[2])})
    try:
        wait_for(lambda: total(cluster, "refused_connections") >= refused_before + 3, 20,
                 "every seed to refuse the rogue node")
        rogue_view = Client([address], keys=cluster.client_keys, timeout=2)
        try:
            rogue_counters = rogue_view.node_stats("rogue")
            assert rogue_counters.get("gossip_accepted", 0) == 0
            assert [m.node_id for m in rogue_view.cluster_status().members] == ["rogue"]
        finally:
            rogue_view.close()
        for name in NODES:
            status = cluster.status_from(name)
            assert status.member("rogue") is None
            assert "curve_key_refused" in cluster.log_text(name)
    finally:
        rogue.terminate()
        rogue.wait(timeout=10)


def _capture_loopback(stop: threading.Event, into: bytearray) -> threading.Thread:
    sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    sniffer.bind(("lo", 0))
    sniffer.settimeout(0.05)

    def run():
        try:
            while not stop.is_set():
                try:
                    into.extend(sniffer.recv(65535))
                except TimeoutError:
                    continue
        finally:
            sniffer.close()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def captured_during_put(cluster: TestCluster, key: str, value: bytes) -> bytes:
    stop, captured = threading.Event(), bytearray()
    thread = _capture_loopback(stop, captured)
    try:
        client = cluster.client()
        assert client.put(key, value, w=3).stored_on   # every replica's write on the wire
        assert client.get(key, r=3).value == value
    finally:
        stop.set()
        thread.join(timeout=5)
    return bytes(captured)


def _can_capture() -> bool:
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)).close()
        return True
    except (PermissionError, AttributeError, OSError):
        return False


@pytest.mark.skipif(not _can_capture(), reason="a raw loopback capture needs CAP_NET_RAW")
def test_the_wire_shows_neither_key_nor_value_with_security_on(secure, tmp_path):
    cluster, _ = secure
    key, value = f"wirekey-{uuid.uuid4().hex}", f"wirevalue-{uuid.uuid4().hex}".encode()
    wire = captured_during_put(cluster, key, value)
    assert len(wire) > 1000   # the capture saw the traffic
    assert key.encode() not in wire and value not in wire
    # the same capture of a cluster with security off shows both: the test can fail
    with TestCluster(tmp_path / "plain", nodes=1, replicas=1, write_quorum=1,
                     read_quorum=1) as plain:
        key2 = f"wirekey-{uuid.uuid4().hex}"
        stop, captured = threading.Event(), bytearray()
        thread = _capture_loopback(stop, captured)
        try:
            plain.client().put(key2, value)
        finally:
            stop.set()
            thread.join(timeout=5)
        assert key2.encode() in captured and value in captured


def reload_keys(cluster: TestCluster) -> None:
    """SIGHUP to every node (through supervisord, as `supervisorctl signal HUP` does)."""
    counts = {n: cluster.log_text(n).count("keys_reloaded") for n in NODES}
    for name in NODES:
        cluster.supervisor().signalProcess(name, "HUP")
    wait_for(lambda: all(cluster.log_text(n).count("keys_reloaded") > counts[n]
                         for n in NODES), 10, "every node to reload its keys")


def test_keys_added_or_removed_take_effect_on_sighup(secure):
    cluster, keys = secure
    keygen(keys, clients=["late"])
    late_keys = ClientKeys.load(keys / "clients" / "late.key_secret")
    late = Client(cluster.seeds, timeout=0.5, retries=1, keys=late_keys)
    try:
        with pytest.raises(Timeout):   # not yet allowed: refused like any unknown key
            late.put("late", b"1")
    finally:
        late.close()
    reload_keys(cluster)
    late = Client(cluster.seeds, timeout=5, keys=late_keys)
    try:
        assert late.put("late", b"1").stored_on
        for path in (keys / "clients").glob("late.*"):
            path.unlink()
        reload_keys(cluster)
        # its connections are still open, but every request on them is now refused
        with pytest.raises(Forbidden, match="revoked:client:late"):
            late.get("late")
    finally:
        late.close()
