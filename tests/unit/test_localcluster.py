"""zring.localcluster without starting anything: config, helpers, logs."""

from __future__ import annotations

import configparser
import shlex
import sys

import pytest

from zring import localcluster
from zring.localcluster import (
    LocalCluster,
    LocalClusterError,
    faketime_library,
    free_ports,
    wait_for,
)


def programs(cluster: LocalCluster) -> dict[str, dict[str, str]]:
    cluster.write_conf()
    parser = configparser.RawConfigParser()
    parser.read(cluster.conf)
    return {s.split(":", 1)[1]: dict(parser[s]) for s in parser.sections()
            if s.startswith("program:")}


def test_conf_has_seeds_autostarted_and_spares_stopped(tmp_path):
    cluster = LocalCluster(tmp_path, nodes=3, spares=1, replicas=2, vnodes=64,
                           log_level="info")
    progs = programs(cluster)
    assert sorted(progs) == ["node1", "node2", "node3", "node4"]
    assert [progs[n]["autostart"] for n in cluster.names] == ["true"] * 3 + ["false"]
    shell = shlex.split(progs["node4"]["command"])
    assert shell[:2] == ["/bin/sh", "-c"]   # it execs the node (with a clock, if set)
    argv = shlex.split(shell[2].split("exec ", 1)[1])
    assert argv[:4] == [sys.executable, "-m", "zring.cli", "node"]
    assert argv[argv.index("--seeds") + 1] == ",".join(cluster.seeds)
    assert cluster.addresses["node4"] not in cluster.seeds
    assert argv[argv.index("--log-level") + 1] == "info"
    assert argv[argv.index("--replicas") + 1] == "2"
    assert argv[argv.index("--vnodes") + 1] == "64"
    assert progs["node2"]["stdout_logfile"] == str(cluster.log_path("node2"))
    ports = {a.rsplit(":", 1)[1] for a in [*cluster.addresses.values(),
                                           *cluster.gossip.values()]}
    assert len(ports) == 8


def test_restart_delay_wraps_the_node_in_a_shell_that_execs_it(tmp_path):
    cluster = LocalCluster(tmp_path, nodes=1, restart_delay_s=2.5)
    argv = shlex.split(programs(cluster)["node1"]["command"])
    assert argv[:2] == ["/bin/sh", "-c"]
    script = argv[2]
    assert "sleep 2.5" in script and "exec " + sys.executable in script
    assert (tmp_path / "data").is_dir()  # where the "started before" marker goes


def test_log_text_joins_rotated_parts_oldest_first(tmp_path):
    cluster = LocalCluster(tmp_path, nodes=1)
    cluster.log_dir.mkdir(parents=True)
    assert cluster.log_text("node1") == ""
    (cluster.log_dir / "node1.log.2").write_text("a\n")
    (cluster.log_dir / "node1.log.1").write_text("b\n")
    (cluster.log_dir / "node1.log").write_text("c\n")
    assert cluster.log_text("node1") == "a\nb\nc\n"


def test_wait_for_returns_the_value_or_times_out_naming_the_wait():
    assert wait_for(lambda: 42, 1, "the answer") == 42
    with pytest.raises(TimeoutError, match="the impossible.*ValueError"):
        wait_for(lambda: int("x"), 0.2, "the impossible", interval_s=0.05)


def test_free_ports_are_distinct():
    ports = free_ports(20)
    assert len(set(ports)) == 20


def test_chaos_comes_from_the_package_not_the_checkout(tmp_path, monkeypatch):
    # an installed zring has no tools/: its faults must not need tools/chaos.py
    monkeypatch.setattr(localcluster, "ROOT", tmp_path / "site-packages")
    cluster = LocalCluster(tmp_path, nodes=1)
    cluster.write_conf()
    with pytest.raises(LocalClusterError, match="supervisord is not running"):
        cluster.chaos("kill", "node1", in_process=True)
    with pytest.raises(LocalClusterError, match="supervisord is not running"):
        cluster.chaos("kill", "node1")   # the CLI: python -m zring.chaos


def test_load_tool_needs_a_source_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr(localcluster, "ROOT", tmp_path)
    with pytest.raises(LocalClusterError, match="source checkout"):
        localcluster.load_tool("no_such_tool")


def test_stop_without_start_is_a_no_op(tmp_path):
    LocalCluster(tmp_path, nodes=1).stop()


def test_set_clock_preloads_faketime_with_the_offset_from_the_next_start(tmp_path):
    cluster = LocalCluster(tmp_path, nodes=1)
    if faketime_library() is None:
        pytest.skip("libfaketime not installed (apt-get install faketime)")
    cluster.set_clock("node1", 300)
    lines = (tmp_path / "data" / "node1.clock").read_text().splitlines()
    assert lines == [faketime_library(), "+300.000"]
    script = shlex.split(programs(cluster)["node1"]["command"])[2]
    assert "LD_PRELOAD" in script and "FAKETIME" in script
    cluster.set_clock("node1", 0)
    assert not (tmp_path / "data" / "node1.clock").exists()
