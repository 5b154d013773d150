"""Client and AsyncClient over real ZeroMQ sockets, against scripted nodes: the same tests
run against both transports (``connect`` gives one kind or the other).

Each scripted node is a ROUTER on ``inproc://`` in this process (the clients use the shared
ZMQ context), so no port is needed.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import zmq
from clients import KINDS, Connector, first_seed

import zring
from zring import AsyncClient, Client
from zring.client import DEFAULT_SEEDS
from zring.errors import (
    InvalidRequest,
    MembershipConflict,
    NotMember,
    ProtocolError,
    Timeout,
    Unavailable,
    ZringError,
)
from zring.protocol import Message, MsgType, decode, encode

pytestmark = pytest.mark.timeout(30)


class FakeNode:
    """A ROUTER on inproc that answers each request with ``script(message)``: a list of
    Messages to send back (possibly none: silence)."""

    _count = 0

    def __init__(self, script):
        FakeNode._count += 1
        self.endpoint = f"inproc://zring-fake-{FakeNode._count}"
        self.script = script
        self.received: list[Message] = []
        self._router = zmq.Context.instance().socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.bind(self.endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            if not self._router.poll(20):
                continue
            route, frame = self._router.recv_multipart()
            message = decode(frame)
            self.received.append(message)
            for reply in self.script(message):
                self._router.send_multipart([route, encode(reply)])

    def close(self):
        self._stop.set()
        self._thread.join()
        self._router.close(linger=0)


@pytest.fixture
def fake_nodes():
    nodes = []

    def start(script):
        node = FakeNode(script)
        nodes.append(node)
        return node
    yield start
    for node in nodes:
        node.close()


@pytest.fixture(params=KINDS)
def connect(request):
    connector = Connector(request.param)
    yield connector
    connector.close()


def ok(request, body):
    return Message(MsgType.OK, request.request_id, body)


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize("args", [
    {"seeds": []}, {"seeds": " , "}, {"seeds": [1]}, {"timeout": 0}, {"timeout": -1},
    {"timeout": True}, {"timeout": "5"}, {"retries": -1}, {"retries": 1.0},
    {"retries": True},
])
def test_both_clients_reject_bad_settings_with_the_same_message(args):
    args = {"seeds": ["tcp://a:1"], **args}
    with pytest.raises(InvalidRequest) as sync_error:
        Client(**args)
    with pytest.raises(InvalidRequest) as async_error:
        AsyncClient(**args)
    assert str(async_error.value) == str(sync_error.value)


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_seeds_are_parsed_and_default_from_the_environment(monkeypatch, cls):
    client = cls("a:1, tcp://b:2", timeout=2, retries=0)
    assert client.seeds == ["tcp://a:1", "tcp://b:2"]
    assert client.timeout == 2.0 and isinstance(client.timeout, float) and client.retries == 0
    monkeypatch.setenv("ZRING_SEEDS", "tcp://10.0.0.1:7001,tcp://10.0.0.2:7001")
    assert cls().seeds == ["tcp://10.0.0.1:7001", "tcp://10.0.0.2:7001"]
    assert "tcp://10.0.0.1:7001" in repr(cls())
    monkeypatch.delenv("ZRING_SEEDS")
    assert cls().seeds == list(DEFAULT_SEEDS)


def test_async_client_has_every_public_method_of_client():
    public = {name for name in dir(Client) if not name.startswith("_")}
    assert public - set(dir(AsyncClient)) == set()
    assert {name for name in dir(AsyncClient) if not name.startswith("_")} - public == \
        {"aclose"}


# ------------------------------------------------------------------ requests and replies


def test_stale_replies_are_ignored(fake_nodes, connect):
    node = fake_nodes(lambda m: [Message(MsgType.OK, m.request_id + 1000, {"node_id": "old"}),
                                 ok(m, {"node_id": "n1", "status": "normal"})])
    client = connect([node.endpoint], timeout=2)
    assert client.ping() == {"node_id": "n1", "status": "normal"}
    assert client.ping()["node_id"] == "n1"


def test_silence_fails_over_to_the_next_seed(fake_nodes, connect):
    silent = fake_nodes(lambda m: [])
    alive = fake_nodes(lambda m: [ok(m, {"node_id": "n2"})])
    with first_seed(0):
        client = connect([silent.endpoint, alive.endpoint], timeout=0.1, retries=2)
    assert client.seed == silent.endpoint
    assert client.ping() == {"node_id": "n2"}
    assert client.seed == alive.endpoint  # sticks to the one that answered
    assert client.ping() == {"node_id": "n2"}
    assert len(silent.received) == 1 and len(alive.received) == 2
    assert silent.received[0].request_id == alive.received[0].request_id  # same request


def test_timeout_after_bounded_tries(fake_nodes, connect):
    silent = fake_nodes(lambda m: [])
    client = connect([silent.endpoint], timeout=0.05, retries=2)
    with pytest.raises(Timeout, match=r"no reply to PING within 0.05s .* \(3 tries\)"):
        client.ping()
    assert len(silent.received) == 3


@pytest.mark.parametrize("code, exc_type", [
    ("unavailable", Unavailable), ("invalid", InvalidRequest), ("not_member", NotMember),
    ("conflict", MembershipConflict), ("protocol", ProtocolError), ("new-code", ZringError)])
def test_error_replies_raise_and_are_not_retried(fake_nodes, connect, code, exc_type):
    node = fake_nodes(lambda m: [Message(MsgType.ERROR, m.request_id, {
        "code": code, "message": "nope", "details": {"acked": ["n1"], "message": "x"}})])
    client = connect([node.endpoint, node.endpoint], timeout=2, retries=3, token_aware=False)
    with pytest.raises(exc_type, match="nope") as raised:
        client.put("k", "v")
    assert type(raised.value) is exc_type
    assert raised.value.details == {"acked": ["n1"]}
    assert len(node.received) == 1


def test_node_requests_go_to_the_node_itself(fake_nodes, connect):
    target = fake_nodes(lambda m: [ok(m, {"node_id": "n7", "keys": ["x"],
                                          "counters": {"overloads": 1}})])
    seed = fake_nodes(lambda m: [ok(m, {"node_id": "n1", "fingerprint": 1, "members": [
        {"node_id": "n7", "address": target.endpoint, "status": "normal",
         "liveness": "up"}]})])
    client = connect([seed.endpoint], timeout=1)
    assert client.local_keys("n7", limit=3) == ["x"]
    assert client.node_stats("n7") == {"overloads": 1}
    assert [m.type for m in target.received] == [MsgType.LOCAL_KEYS, MsgType.STATS]
    assert target.received[0].body == {"limit": 3}


def test_batches_round_trip_in_key_order_through_a_seed(fake_nodes, connect):
    def answer(m):
        if m.type == MsgType.MPUT:
            return [ok(m, {"results": [{"stored_on": ["n1"], "replicated_to": ["n1"],
                                        "version": [1, k]} for k, *_ in m.body["items"]]})]
        return [ok(m, {"results": [{"found": True, "value": k, "version": [1, "n1"],
                                    "served_by": ["n1"]} for k in m.body["keys"]]})]
    node = fake_nodes(answer)
    client = connect([node.endpoint], timeout=2, token_aware=False)
    keys = [f"k{i}" for i in range(2500)]
    assert [r.version.node_id for r in client.mput({k: b"v" for k in keys})] == keys
    assert [r.value for r in client.mget(keys)] == keys
    assert [len(m.body.get("items") or m.body["keys"]) for m in node.received] == \
        [1000, 1000, 500] * 2


def test_close_stops_listening_to_gossip_and_the_client_stays_usable(fake_nodes, connect):
    def answer(m):
        if m.type == MsgType.RING_STATE:
            return [ok(m, {"vnodes": 8, "replicas": 1, "write_quorum": 1, "read_quorum": 1,
                           "fingerprint": 7, "nodes": [{"node_id": "n1", "weight": 1.0,
                                                        "address": node.endpoint}],
                           "members": [{"node_id": "n1", "address": node.endpoint,
                                        "status": "normal", "liveness": "up",
                                        "gossip_address": "inproc://zring-no-gossip"}]})]
        return [ok(m, {"node_id": "n1", "found": False})]
    node = fake_nodes(answer)
    client = connect([node.endpoint], timeout=1)
    assert client.ring_fingerprint is None and not client.listening_to_gossip
    assert not client.get("k").found   # routed: the ring fetched, its gossip subscribed to
    assert client.ring_fingerprint == 7 and client.listening_to_gossip
    assert not client.ring_stale
    client.close()
    assert client.ring_stale and not client.listening_to_gossip
    assert client.ping()["node_id"] == "n1"


# ------------------------------------------------------------------ package


def test_package_exports():
    for name in ("Client", "AsyncClient", "PutResult", "GetResult", "DeleteResult",
                 "RingState", "ClusterStatus", "MemberInfo", "HashRing", "ZringError",
                 "ProtocolError", "InvalidRequest", "Unavailable", "Timeout", "NotMember",
                 "MembershipConflict", "StorageError"):
        assert name in zring.__all__ and getattr(zring, name) is not None
    assert zring.Client is Client and zring.__version__ == "0.1.0"
    with pytest.raises(AttributeError):
        zring.NoSuchThing  # noqa: B018


def test_import_zring_is_light_and_the_clients_need_no_node_code():
    code = ("import sys, zring; heavy = [m for m in ('zmq', 'numpy', 'zring.server', "
            "'zring.client', 'zring.ring') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
    code = ("import sys, zring.client, zring.aio; "
            "print([m for m in sys.modules if m.startswith('zring.core')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
