"""The `zring` command: argument parsing, output formatting, exit codes, store checks.

Nothing here starts a cluster; client commands run against a FakeClient.
"""

from __future__ import annotations

import re
import socket
import sqlite3
from typing import ClassVar

import pytest

import zring
from zring import cli
from zring.client import DEFAULT_SEEDS, ClusterStatus, GetResult, MemberInfo, PutResult
from zring.clientcore.results import RingNode, RingState, Transfer
from zring.errors import InvalidRequest, NotMember, Timeout, Unavailable
from zring.versions import Version

pytestmark = pytest.mark.timeout(30)


def member(node_id="n1", status="normal", liveness="up", keys=10, ownership=0.5, weight=1.0,
           **more):
    more = {"figures": "exact", "bytes": 2048, "clock_offset_s": 0.0012, "clock_ok": True,
            **more}
    return MemberInfo(node_id, f"tcp://127.0.0.1:700{node_id[-1]}", status, liveness, keys,
                      ownership, weight, **more)


# ------------------------------------------------------------------ `zring node` arguments


def node_args(*extra):
    return cli.build_parser().parse_args(["node", "--id", "node1", "--listen",
                                          "tcp://127.0.0.1:7001", *extra])


def test_node_config_defaults(monkeypatch):
    monkeypatch.delenv("ZRING_SEEDS", raising=False)
    config = cli.node_config_from_args(node_args("--data-dir", "/tmp/d"))
    assert config.node_id == "node1"
    assert config.address == "tcp://127.0.0.1:7001"
    assert config.gossip_address == "tcp://127.0.0.1:8001"
    assert config.seeds == list(DEFAULT_SEEDS)
    assert config.data_dir == "/tmp/d"
    assert (config.replicas, config.write_quorum, config.read_quorum) == (3, 2, 2)
    assert config.weight == 1.0


def test_node_config_from_every_option(monkeypatch):
    monkeypatch.setenv("ZRING_SEEDS", "tcp://ignored:1")
    config = cli.node_config_from_args(node_args(
        "--gossip", "tcp://127.0.0.1:9999", "--seeds", "tcp://a:1,tcp://b:2", "--memory",
        "--replicas", "5", "--write-quorum", "3", "--read-quorum", "4", "--vnodes", "128",
        "--weight", "2.5"))
    assert config.gossip_address == "tcp://127.0.0.1:9999"
    assert config.seeds == ["tcp://a:1", "tcp://b:2"]
    assert config.data_dir is None
    assert (config.replicas, config.write_quorum, config.read_quorum) == (5, 3, 4)
    assert (config.vnodes, config.weight) == (128, 2.5)


def test_node_seeds_from_env_and_global_flag(monkeypatch):
    monkeypatch.setenv("ZRING_SEEDS", "tcp://e:1,tcp://e:2")
    assert cli.node_config_from_args(node_args("--memory")).seeds == ["tcp://e:1", "tcp://e:2"]
    args = cli.build_parser().parse_args(["--seeds", "tcp://g:1", "node", "--id", "x",
                                          "--listen", "tcp://h:1", "--memory"])
    assert cli.node_config_from_args(args).seeds == ["tcp://g:1"]


def test_default_gossip_address():
    assert cli.default_gossip_address("tcp://10.1.2.3:7005") == "tcp://10.1.2.3:8005"
    assert cli.default_gossip_address("tcp://*:7001", offset=5) == "tcp://*:7006"
    for listen in ("ipc:///tmp/x", "tcp://host", "tcp://h:65000"):
        with pytest.raises(ValueError):
            cli.default_gossip_address(listen)


@pytest.mark.parametrize("argv", [
    ["node", "--id", "n", "--listen", "tcp://h:1"],                               # no store
    ["node", "--id", "n", "--listen", "tcp://h:1", "--memory", "--data-dir", "d"],  # both
    ["node", "--listen", "tcp://h:1", "--memory"],                                # no id
    ["node", "--id", "n", "--listen", "ipc:///x", "--memory"],                    # no gossip
    ["node", "--id", "n", "--listen", "tcp://h:1", "--memory", "--write-quorum", "4"],
    ["node", "--id", "n", "--listen", "tcp://h:1", "--memory", "--log-format", "xml"],
    ["node", "--id", "n", "--listen", "tcp://h:1", "--memory", "--weight", "0"],
    ["put", "only-key"], ["get"], ["frobnicate"], [], ["get", "k", "--timeout", "-1"],
])
def test_usage_errors_exit_2(argv, capsys):
    assert cli.main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_node_command_runs_the_server(monkeypatch):
    started = []
    monkeypatch.setattr("zring.server.run_node", lambda config: started.append(config) or 0)
    monkeypatch.setattr("zring.log.configure_logging", lambda level, fmt: started.append(
        (level, fmt)))
    assert cli.main(["node", "--id", "n", "--listen", "tcp://h:1", "--memory",
                     "--log-format", "console", "--log-level", "debug"]) == 0
    assert started[0] == ("debug", "console")
    assert started[1].node_id == "n" and started[1].data_dir is None


# ------------------------------------------------------------------ output formatting


def test_format_status_table():
    status = ClusterStatus(members=[
        member("n1", ownership=0.3333), member("n2", liveness="down", keys=12345),
        member("n3", status="joining", ownership=0.0), member("n4", status="leaving"),
        member("n5", status="left", liveness="down")], answered_by="n1", fingerprint=255)
    lines = cli.format_status(status).splitlines()
    assert lines[0] == "Status=Up/Suspect/Down"
    assert lines[2].split() == ["--", "Node", "Address", "Keys", "Data", "Hints", "Owns",
                                "Weight", "Ring", "Clock"]
    rows = [line.split() for line in lines[3:7]]
    assert rows[0] == ["UN", "n1", "tcp://127.0.0.1:7001", "10", "2.0kB", "0", "33.3%", "1",
                       "00000000", "+1ms"]
    assert rows[1][:4] == ["DN", "n2", "tcp://127.0.0.1:7002", "12345"]
    assert [r[0] for r in rows] == ["UN", "DN", "UJ", "UL"]
    assert "n5" not in "\n".join(lines[3:7]) and "1 left member hidden" in lines[7]
    assert lines[-1] == "as seen by n1, ring fingerprint 00000000000000ff"
    # columns line up: every row's Address starts where the header's does
    column = lines[2].index("Address")
    assert all(line[column:].startswith("tcp://") for line in lines[3:7])
    shown = cli.format_status(status, show_left=True)
    assert "DX  n5" in shown and "hidden" not in shown


def test_format_status_says_which_figures_are_gossiped_and_which_clock_is_off():
    status = ClusterStatus(members=[
        member("n1"), member("n2", figures="gossip"),
        member("n3", clock_offset_s=300.25, clock_ok=False)])
    text = cli.format_status(status)
    assert "off +300250ms" in text
    assert "(keys, data and hints of n2 as last gossiped: no answer in time)" in text
    assert "n3's clock is +300.250 s from its peers': it coordinates no writes" in text


def test_format_status_lists_transfers_in_flight():
    joining = MemberInfo("n4", "tcp://127.0.0.1:7004", "joining", "up", 0, 0.0, 1.0,
                         ring_version=0xABCDEF0123456789,
                         transfer=Transfer("join", 250_000, 1_000_000, 27_500_000, -1))
    text = cli.format_status(ClusterStatus(members=[member("n1"), joining]))
    assert "abcdef01" in text
    lines = text.splitlines()
    start = lines.index("Transfers in flight:")
    assert lines[start + 1].split() == ["Node", "Kind", "Keys", "Bytes", "Done"]
    row = lines[start + 2]
    assert row.split()[:2] == ["n4", "join"]
    assert "250,000 / 1,000,000" in row and "27.5 MB / ?" in row and row.endswith("25%")
    assert "Transfers" not in cli.format_status(ClusterStatus(members=[member("n1")]))


def test_format_plan_shows_flows_and_balance():
    plan = {"action": "add", "node_id": "n4", "replicas": 3,
            "nodes": [{"node_id": "n1", "records_before": 1000, "bytes_before": 110_000,
                       "send_records": 250, "send_bytes": 27_500, "receive_records": 0,
                       "receive_bytes": 0, "records_after": 750, "bytes_after": 82_500},
                      {"node_id": "n4", "records_before": 0, "bytes_before": 0,
                       "send_records": 0, "send_bytes": 0, "receive_records": 250,
                       "receive_bytes": 27_500, "records_after": 250, "bytes_after": 27_500}],
            "balance_before": 1.0, "balance_after": 1.5, "moved_records": 250,
            "moved_bytes": 27_500, "optimal_records": 250}
    text = cli.format_plan(plan)
    assert text.startswith("Plan: add n4 (N=3); nothing has moved")
    n1 = next(line for line in text.splitlines() if line.startswith("n1"))
    assert "1,000 (110.0 kB)" in n1 and "250 (27.5 kB)" in n1 and "750 (82.5 kB)" in n1
    assert "moves 250 records, 27.5 kB = 1.000x the optimum of 250" in text
    assert "1.000 now, 1.500 after" in text


def test_transfer_bar_follows_the_reported_transfer():
    import io
    out = io.StringIO()
    bar = cli.TransferBar(out)
    joining = MemberInfo("n4", "a", "joining", "up", 0, 0.0, 1.0,
                         transfer=Transfer("join", 10, -1, 1000, -1))
    bar(joining)
    assert bar.bar.total is None and bar.bar.n == 10
    bar(MemberInfo("n4", "a", "joining", "up", 0, 0.0, 1.0,
                   transfer=Transfer("join", 600, 1000, 60_000, 100_000)))
    assert bar.bar.total == 1000 and bar.bar.n == 600
    bar(MemberInfo("n4", "a", "normal", "up", 0, 0.0, 1.0))  # done: no transfer reported
    bar.close()
    text = out.getvalue()
    assert "n4 join" in text and "keys" in text and "60.0 kB/100.0 kB" in text


def test_state_codes():
    assert [cli.state_code(liveness, status) for liveness, status in [
        ("up", "normal"), ("down", "normal"), ("up", "joining"), ("up", "leaving"),
        ("down", "left"), ("suspect", "normal")]] == ["UN", "DN", "UJ", "UL", "DX", "SN"]


def test_format_ring():
    state = RingState(64, 3, 2, 2, 0xABC, (RingNode("n1", 1.0, "tcp://h:1"),
                                           RingNode("n2", 0.5, "tcp://h:2")),
                      (member("n1", ownership=0.6667), member("n2", ownership=0.3333)))
    text = cli.format_ring(state)
    assert "nodes        2" in text and "vnodes       64" in text
    assert "N=3 W=2 R=2" in text and "0000000000000abc" in text
    assert "66.67%" in text and "33.33%" in text
    assert text.splitlines()[-1].split() == ["n2", "tcp://h:2", "0.5", "32", "33.33%"]


# ------------------------------------------------------------------ client commands


class FakeClient:
    """Stands in for zring.client.Client in `zring` commands."""

    raise_on_call: ClassVar[BaseException | None] = None
    created: ClassVar[list[FakeClient]] = []

    def __init__(self, seeds, timeout=5.0, retries=3, keys=None):
        self.seeds, self.timeout, self.keys = seeds, timeout, keys
        FakeClient.created.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def _maybe_raise(self):
        if FakeClient.raise_on_call is not None:
            raise FakeClient.raise_on_call

    def get(self, key, r=None, replicas=None):
        self._maybe_raise()
        if key == "missing":
            return GetResult(None, False, ("n1", "n2"), None)
        return GetResult(b"\xffraw" if key == "bin" else "hello", True, ("n1",), None)

    def put(self, key, value, w=None, replicas=None):
        self._maybe_raise()
        self.put_args = (key, value, w, replicas)
        return PutResult(True, ("n1", "n2"), ("n1", "n2", "n3"), None)

    def cluster_status(self):
        self._maybe_raise()
        return ClusterStatus(members=(member("n1"),))


@pytest.fixture
def fake_client(monkeypatch):
    monkeypatch.setattr("zring.client.Client", FakeClient)
    FakeClient.raise_on_call = None
    FakeClient.created = []
    return FakeClient


def test_get_prints_value(fake_client, capsys):
    assert cli.main(["get", "k"]) == 0
    assert capsys.readouterr().out == "hello\n"


def test_get_writes_bytes_values_raw(fake_client, capsysbinary):
    assert cli.main(["get", "bin"]) == 0
    assert capsysbinary.readouterr().out == b"\xffraw\n"


def test_get_not_found_exits_1(fake_client, capsys):
    assert cli.main(["get", "missing"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "not found: missing" in captured.err


def test_put_passes_options(fake_client, capsys):
    assert cli.main(["put", "k", "v", "--w", "3", "--replicas", "4"]) == 0
    assert fake_client.created[0].put_args == ("k", "v", 3, 4)
    assert "n1, n2" in capsys.readouterr().out


def test_status_prints_table(fake_client, capsys):
    assert cli.main(["status"]) == 0
    assert "UN  n1" in capsys.readouterr().out


def test_seeds_and_timeout_before_or_after_the_command(fake_client, monkeypatch):
    monkeypatch.setenv("ZRING_SEEDS", "tcp://env:1")
    cli.main(["status"])
    cli.main(["--seeds", "tcp://a:1,tcp://b:1", "--timeout", "2", "status"])
    cli.main(["status", "--seeds", "tcp://c:1", "--timeout", "0.5"])
    cli.main(["--seeds", "tcp://d:1", "status"])
    assert [(c.seeds, c.timeout) for c in fake_client.created] == [
        (["tcp://env:1"], 5.0), (["tcp://a:1", "tcp://b:1"], 2.0), (["tcp://c:1"], 0.5),
        (["tcp://d:1"], 5.0)]


@pytest.mark.parametrize("exc", [Unavailable("write reached 1 of w=2 replicas"),
                                 Timeout("no reply to GET"), NotMember("n9 is not a member"),
                                 InvalidRequest("key too large")])
def test_zring_errors_exit_1_with_message(fake_client, capsys, exc):
    fake_client.raise_on_call = exc
    assert cli.main(["get", "k"]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"error: {exc.message}\n"
    assert "Traceback" not in captured.err


def test_interrupt_exits_130(fake_client, capsys):
    fake_client.raise_on_call = KeyboardInterrupt()
    assert cli.main(["status"]) == 130


def test_unexpected_errors_are_not_hidden(fake_client):
    fake_client.raise_on_call = RuntimeError("bug")
    with pytest.raises(RuntimeError):
        cli.main(["status"])


def test_help_and_version_exit_0(capsys):
    assert cli.main(["--help"]) == 0
    assert cli.main(["--version"]) == 0
    assert zring.__version__ in capsys.readouterr().out


# ------------------------------------------------------------------ `zring check`, damaged stores


def make_store(data_dir, count=100):
    """A node store in ``data_dir`` with ``count`` keys, every 10th deleted."""
    from zring.hashing import key_position
    from zring.storage import Record, SQLiteStore
    path = data_dir / cli.STORE_FILE
    with SQLiteStore(path) as store:
        store.put_many(Record(f"k{i}", None if i % 10 == 0 else f"v{i}", Version(i + 1, "n1"),
                              key_position(f"k{i}")) for i in range(count))
        store.set_meta("members", b"saved membership")
    return path


def damage_store(path):
    """Overwrite two pages' worth in the middle of the file with junk."""
    with open(path, "r+b") as file:
        file.seek(path.stat().st_size // 2)
        file.write(b"\xab" * 8192)


def moved_aside(data_dir):
    return sorted(p.name for p in data_dir.iterdir() if ".damaged-" in p.name)


def test_check_healthy_store(tmp_path, capsys):
    path = make_store(tmp_path)
    assert cli.main(["check", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"ok: {path}, 90 keys, 10 tombstones, format 2\n"


def test_check_rebuild_leaves_a_healthy_store_alone(tmp_path, capsys):
    path = make_store(tmp_path)
    before = path.read_bytes()
    assert cli.main(["check", "--data-dir", str(tmp_path), "--rebuild"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: ") and "nothing to rebuild" in out
    assert path.read_bytes() == before and moved_aside(tmp_path) == []


def test_check_without_a_store_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "no-such-dir"
    for extra in ([], ["--rebuild"]):
        assert cli.main(["check", "--data-dir", str(missing), *extra]) == 1
        assert f"error: no store at {missing / cli.STORE_FILE}" in capsys.readouterr().err
    assert not missing.exists()


@pytest.mark.parametrize("how", ["garbage", "overwritten"])
def test_check_reports_a_damaged_store_and_leaves_it(tmp_path, capsys, how):
    path = tmp_path / cli.STORE_FILE
    if how == "garbage":
        path.write_bytes(b"not a database at all " * 300)
    else:
        damage_store(make_store(tmp_path, count=2000))
    before = path.read_bytes()
    assert cli.main(["check", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"damaged: {path}\n  ")
    assert "--rebuild" in out and "zring repair" in out
    assert path.read_bytes() == before and moved_aside(tmp_path) == []


@pytest.mark.parametrize("how", ["garbage", "overwritten"])
def test_check_rebuild_moves_a_damaged_store_aside(tmp_path, capsys, how):
    from zring.storage import SQLiteStore
    path = tmp_path / cli.STORE_FILE
    if how == "garbage":
        path.write_bytes(b"not a database at all " * 300)
    else:
        damage_store(make_store(tmp_path, count=2000))
    # a stale shared-memory file (SQLite ignores it: the store uses exclusive locking); a
    # write-ahead log, SQLite would recover on open, as the node does, so it is not faked
    (tmp_path / f"{cli.STORE_FILE}-shm").write_bytes(b"shared memory")
    damaged = path.read_bytes()
    assert cli.main(["check", "--data-dir", str(tmp_path), "--rebuild"]) == 0
    out = capsys.readouterr().out
    assert "damaged: " in out and "EMPTY" in out and "zring repair" in out
    base, shm = moved_aside(tmp_path)
    assert re.fullmatch(r"zring\.db\.damaged-\d{8}T\d{6}Z", base) and shm == f"{base}-shm"
    assert (tmp_path / base).read_bytes() == damaged  # kept, byte for byte
    assert (tmp_path / shm).read_bytes() == b"shared memory"
    assert f"moved {path} -> {tmp_path / base}" in out
    assert f"moved {path}-shm -> {tmp_path / shm}" in out
    assert sorted(p.name for p in tmp_path.glob(f"{cli.STORE_FILE}*")) == [base, shm]
    with SQLiteStore(path) as fresh:  # what the node will find: an empty store
        assert fresh.count(include_tombstones=True) == 0 and fresh.get_meta("members") is None
    assert cli.main(["check", "--data-dir", str(tmp_path)]) == 0


def test_check_rebuild_refuses_a_store_in_use(tmp_path, capsys):
    from zring.storage import SQLiteStore
    path = make_store(tmp_path)
    with SQLiteStore(path):  # a running node holds it
        assert cli.main(["check", "--data-dir", str(tmp_path), "--rebuild"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "locked" in err and "only a damaged store" in err
    assert path.exists() and moved_aside(tmp_path) == []


def test_check_rebuild_refuses_a_store_of_another_format(tmp_path, capsys):
    from zring.storage import SQLiteStore
    path = make_store(tmp_path)
    with SQLiteStore(path) as store:
        store.set_meta("format", b"999")  # written by a newer zring: upgrade, do not discard
    assert cli.main(["check", "--data-dir", str(tmp_path), "--rebuild"]) == 1
    assert "format" in capsys.readouterr().err
    assert path.exists() and moved_aside(tmp_path) == []


def test_check_rebuild_of_orphaned_companions(tmp_path, capsys):
    # the database file is gone but its write-ahead log is not: a new store must not get it
    (tmp_path / f"{cli.STORE_FILE}-wal").write_bytes(b"log")
    assert cli.main(["check", "--data-dir", str(tmp_path)]) == 1
    assert "missing" in capsys.readouterr().out
    assert cli.main(["check", "--data-dir", str(tmp_path), "--rebuild"]) == 0
    assert [name[-4:] for name in moved_aside(tmp_path)] == ["-wal"]
    assert list(tmp_path.glob(f"{cli.STORE_FILE}-wal")) == []


def test_move_store_aside_takes_the_companions_along(tmp_path):
    path = tmp_path / cli.STORE_FILE
    files = {"": b"db", "-wal": b"log", "-shm": b"shm"}
    for suffix, content in files.items():
        (tmp_path / f"{cli.STORE_FILE}{suffix}").write_bytes(content)
    moved = cli.move_store_aside(str(path))
    assert [source for source, _ in moved] == [f"{path}-wal", f"{path}-shm", str(path)]
    target = moved[-1][1]
    assert re.fullmatch(r".*/zring\.db\.damaged-\d{8}T\d{6}Z", target)
    for suffix, content in files.items():
        assert (tmp_path / f"{target}{suffix}").read_bytes() == content
    assert not any((tmp_path / f"{cli.STORE_FILE}{suffix}").exists() for suffix in files)


def test_move_store_aside_never_overwrites(tmp_path):
    path = tmp_path / cli.STORE_FILE
    for content in (b"first", b"second", b"third"):
        path.write_bytes(content)
        cli.move_store_aside(str(path))
    kept = sorted((tmp_path / name).read_bytes() for name in moved_aside(tmp_path))
    assert kept == [b"first", b"second", b"third"]


def free_endpoints():
    """Two loopback endpoints nobody listens on (in case the node binds before failing)."""
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    return [f"tcp://127.0.0.1:{port}" for port in ports]


def run_node_on(data_dir, monkeypatch):
    monkeypatch.setattr("zring.log.configure_logging", lambda level, fmt: None)
    listen, gossip = free_endpoints()
    return cli.main(["node", "--id", "n1", "--listen", listen, "--gossip", gossip,
                     "--seeds", listen, "--data-dir", str(data_dir), "--store", "sqlite"])


@pytest.mark.parametrize("how", ["garbage", "foreign"])
def test_node_on_a_damaged_store_exits_1_with_what_to_do(tmp_path, capsys, monkeypatch, how):
    path = tmp_path / cli.STORE_FILE
    if how == "garbage":
        path.write_bytes(b"not a database at all " * 300)
    else:
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE something (x)")
        conn.close()
    assert run_node_on(tmp_path, monkeypatch) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ")
    assert str(path) in captured.err
    assert f"run `zring check --data-dir {tmp_path}` (and --rebuild" in captured.err
    assert "Traceback" not in captured.err


def test_node_on_a_store_in_use_says_so_without_the_rebuild_hint(tmp_path, capsys,
                                                                 monkeypatch):
    from zring.storage import SQLiteStore
    path = make_store(tmp_path)
    with SQLiteStore(path):
        assert run_node_on(tmp_path, monkeypatch) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: store {path} is locked") and "--rebuild" not in err


def test_store_error_hint_quotes_the_directory():
    from zring.errors import StorageError
    exc = StorageError("file is not a database", reason="damaged")
    message = cli._store_error_message(exc, "/var/my node")
    assert message.startswith("store /var/my node/zring.db: file is not a database; ")
    assert "`zring check --data-dir '/var/my node'`" in message
    assert cli._store_error_message(exc, None) == "file is not a database"
