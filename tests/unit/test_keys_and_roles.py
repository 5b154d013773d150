"""Security without sockets: key files, roles, and what the core does with a sender's role."""

from __future__ import annotations

import configparser
import stat
from pathlib import Path

import msgpack
import pytest
from simnet import CLIENT, SimCluster

from zring import cli
from zring.core.effects import Reply
from zring.errors import InvalidRequest
from zring.localcluster import LocalCluster
from zring.protocol import (
    ADMIN_TYPES,
    CLIENT_TYPES,
    PEER_TYPES,
    Message,
    MsgType,
    encode,
    permitted,
)
from zring.security import ClientKeys, NodeKeys, keygen


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_writes_private_files_for_every_role(tmp_path):
    written = keygen(tmp_path / "k", nodes=["n1", "n2"], clients=["app"], admins=["ops"])
    names = sorted(p.relative_to(tmp_path / "k").as_posix() for p in written)
    assert names == sorted(["cluster.key", "cluster.key_secret", "nodes/n1.key",
                            "nodes/n1.key_secret", "nodes/n2.key", "nodes/n2.key_secret",
                            "clients/app.key", "clients/app.key_secret", "admin/ops.key",
                            "admin/ops.key_secret"])
    assert {mode(p) for p in written} == {0o600}
    assert {mode(tmp_path / "k" / d) for d in ("nodes", "clients", "admin")} == {0o700}


def test_keygen_keeps_existing_keys_unless_forced(tmp_path):
    keygen(tmp_path, nodes=["n1"])
    cluster_key = (tmp_path / "cluster.key").read_bytes()
    node_key = (tmp_path / "nodes" / "n1.key").read_bytes()
    keygen(tmp_path, nodes=["n2"])   # a new node later: the cluster keypair stays
    assert (tmp_path / "cluster.key").read_bytes() == cluster_key
    with pytest.raises(InvalidRequest, match="exists"):
        keygen(tmp_path, nodes=["n3", "n1"])
    assert not (tmp_path / "nodes" / "n3.key").exists()   # checked before anything is written
    (tmp_path / "nodes" / "n1.key_secret").chmod(0o644)
    keygen(tmp_path, nodes=["n1"], force=True)
    assert (tmp_path / "nodes" / "n1.key").read_bytes() != node_key
    assert mode(tmp_path / "nodes" / "n1.key_secret") == 0o600


@pytest.mark.parametrize("name", ["", "a/b", ".hidden"])
def test_keygen_refuses_names_that_are_not_file_names(tmp_path, name):
    with pytest.raises(InvalidRequest):
        keygen(tmp_path, clients=[name])


def test_a_node_loads_its_keys_and_the_allowed_keys_with_their_roles(tmp_path):
    keygen(tmp_path, nodes=["n1", "n2"], clients=["app"], admins=["ops"])
    keys = NodeKeys.load(tmp_path, "n1")
    assert sorted(keys.allowed.values()) == ["admin:ops", "client:app", "node:n1", "node:n2"]
    app = ClientKeys.load(tmp_path / "clients" / "app.key_secret")
    assert keys.allowed[app.public] == "client:app"
    assert app.server_public == keys.server_public   # found beside the key's directory
    assert keys.own.server_public == keys.server_public
    with pytest.raises(InvalidRequest, match="cannot read"):
        NodeKeys.load(tmp_path, "n9")
    with pytest.raises(InvalidRequest, match="no secret"):
        ClientKeys.load(tmp_path / "clients" / "app.key")


def test_each_role_may_send_only_its_own_requests():
    for msg_type in CLIENT_TYPES - ADMIN_TYPES:
        assert permitted("client:app", msg_type) and permitted("admin:ops", msg_type)
    for msg_type in ADMIN_TYPES:
        assert permitted("admin:ops", msg_type)
        assert not permitted("client:app", msg_type) and not permitted("node:n1", msg_type)
    for msg_type in PEER_TYPES:
        assert permitted("node:n1", msg_type)
        assert not permitted("client:app", msg_type) and not permitted("admin:ops", msg_type)
    assert not permitted("anonymous", MsgType.GET) and not permitted("", MsgType.PING)
    assert ADMIN_TYPES == {MsgType.ADD_NODE, MsgType.REMOVE_NODE, MsgType.REBALANCE,
                           MsgType.REPAIR, MsgType.PLAN}


@pytest.fixture
def sim():
    cluster = SimCluster()
    for i in range(1, 4):
        cluster.add(f"node{i}")
    assert cluster.run_until(lambda: cluster.converged(), 10)
    return cluster


def test_the_core_refuses_what_the_senders_role_does_not_allow(sim):
    core = sim.node("node1")
    frame = encode(Message(MsgType.FORCE_REMOVE, 5, {"node_id": "node2"}))
    [reply] = core.handle_frame((CLIENT,), frame, sim.now, "client:app")
    assert isinstance(reply, Reply) and reply.message.request_id == 5
    assert reply.message.type == MsgType.ERROR and reply.message.body["code"] == "forbidden"
    assert "client:app" in reply.message.body["message"]
    assert core.stats["forbidden"] == 1
    assert "node2" in core.members   # not obeyed
    ping = encode(Message(MsgType.PING, 6, {}))
    [reply] = core.handle_frame((CLIENT,), ping, sim.now, "client:app")
    assert reply.message.type == MsgType.OK


def test_stats_reports_the_counters(sim):
    core = sim.node("node1")
    core.handle_frame((CLIENT,), b"\xc1", sim.now)
    reply = sim.request("node1", MsgType.STATS, {})
    assert reply.type == MsgType.OK and reply.body["node_id"] == "node1"
    assert reply.body["counters"]["bad_frames"] == 1
    assert reply.body["counters"]["gossip_accepted"] > 0
    msgpack.packb(reply.body)   # plain types only


def test_the_cli_loads_the_client_key_without_clashing_with_a_key_argument(tmp_path,
                                                                           monkeypatch):
    keygen(tmp_path, clients=["app"])
    made = []
    monkeypatch.setattr("zring.client.Client", lambda seeds, timeout, keys: made.append(
        keys) or pytest.fail("stop here"))
    args = cli.build_parser().parse_args(
        ["--key", str(tmp_path / "clients" / "app.key_secret"), "put", "the-key", "v"])
    assert args.key == "the-key" and args.value == "v"
    with pytest.raises(pytest.fail.Exception):
        cli._client_from_args(args)
    assert made[0].public == ClientKeys.load(tmp_path / "clients" / "app.key_secret").public
    monkeypatch.setenv("ZRING_KEY_FILE", str(tmp_path / "clients" / "app.key_secret"))
    with pytest.raises(pytest.fail.Exception):
        cli._client_from_args(cli.build_parser().parse_args(["get", "k"]))
    assert made[1] == made[0]


def test_keygen_command_and_node_options(tmp_path, capsys):
    assert cli.main(["keygen", "--dir", str(tmp_path), "--nodes", "n1,n2",
                     "--admins", "ops"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 8
    assert cli.main(["keygen", "--dir", str(tmp_path), "--nodes", "n1"]) == 1
    args = cli.build_parser().parse_args(
        ["node", "--id", "n1", "--listen", "tcp://127.0.0.1:7001", "--memory", "--keys",
         str(tmp_path), "--max-key-bytes", "100", "--max-value-bytes", "1000"])
    config = cli.node_config_from_args(args)
    assert (config.keys_dir, config.max_key_bytes, config.max_value_bytes) == (
        str(tmp_path), 100, 1000)
    args = cli.build_parser().parse_args(
        ["node", "--id", "n1", "--listen", "tcp://127.0.0.1:7001", "--memory",
         "--max-value-bytes", str(1 << 40)])
    with pytest.raises(ValueError, match="frame limit"):
        cli.node_config_from_args(args)


def supervisord_sections(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.read_string(text)
    return parser


@pytest.mark.parametrize("source", ["repository", "localcluster"])
def test_supervisords_xmlrpc_listens_on_a_private_unix_socket_only(source, tmp_path):
    if source == "repository":
        text = (Path(__file__).parents[2] / "supervisord.conf").read_text()
    else:
        cluster = LocalCluster(tmp_path, nodes=1)
        cluster.write_conf()
        text = cluster.conf.read_text()
    conf = supervisord_sections(text)
    assert conf.get("unix_http_server", "chmod") == "0700"
    assert conf.get("supervisorctl", "serverurl").startswith("unix://")
    for section in conf.sections():   # an inet server, if any, on loopback alone
        if section == "inet_http_server":
            assert conf.get(section, "port").startswith("127.0.0.1:")


def test_forcing_named_keys_keeps_the_cluster_keypair(tmp_path):
    keygen(tmp_path, clients=["app"])
    cluster_secret = (tmp_path / "cluster.key_secret").read_bytes()
    keygen(tmp_path, clients=["app"], force=True)   # rotating one client's key
    assert (tmp_path / "cluster.key_secret").read_bytes() == cluster_secret
    keygen(tmp_path, force=True)                    # no names: the cluster keypair itself
    assert (tmp_path / "cluster.key_secret").read_bytes() != cluster_secret


def test_user_ids_name_the_key_and_a_key_removed_meanwhile_is_never_an_error(tmp_path):
    import zmq
    from zmq.utils import z85

    from zring.security import KeyAuthenticator, user_ids
    keygen(tmp_path, nodes=["n1"], clients=["app"])
    keys = NodeKeys.load(tmp_path, "n1")
    app = ClientKeys.load(tmp_path / "clients" / "app.key_secret")
    auth = KeyAuthenticator(zmq.Context.instance(), keys.allowed, ["router"], "n1")
    raw = z85.decode(app.public)
    assert auth.callback("router", app.public)
    assert auth.curve_user_id(raw) == f"client:app:{app.public[:8].decode()}"
    assert auth.curve_user_id(raw) in user_ids(keys.allowed)
    auth.allowed = {}   # a reload removed it between the two calls
    assert auth.curve_user_id(raw).startswith("revoked:")
    assert not auth.callback("router", app.public)
    assert repr(app.secret) not in repr(app) and repr(keys.server_secret) not in repr(keys)


def test_a_node_weight_past_the_ring_cap_is_refused():
    args = cli.build_parser().parse_args(
        ["node", "--id", "n1", "--listen", "tcp://127.0.0.1:7001", "--memory",
         "--weight", "64"])
    with pytest.raises(ValueError, match="lower --vnodes"):
        cli.node_config_from_args(args)
