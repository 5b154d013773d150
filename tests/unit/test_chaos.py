"""zring.chaos and tools/chaos.py without supervisord: config parsing, random picks and
actions on a fake proxy, the tool's default config and CLI."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path

import pytest

from zring import chaos
from zring.localcluster import load_tool

ROOT = Path(__file__).resolve().parents[2]

tool = load_tool("chaos")   # the user's command-line tool over zring.chaos


class FakeSupervisor:
    """The ``supervisor.*`` namespace of supervisord's XML-RPC interface, in memory."""

    def __init__(self, states: dict[str, str], pids: dict[str, int] | None = None) -> None:
        self.states = dict(states)
        self.pids = pids or {name: 0 for name in states}
        self.calls: list[tuple] = []

    def _info(self, name: str) -> dict:
        if name not in self.states:
            raise xmlrpc.client.Fault(10, f"BAD_NAME: {name}")
        state = self.states[name]
        return {"name": name, "group": name, "statename": state,
                "pid": self.pids.get(name, 0) if state == "RUNNING" else 0,
                "description": f"{state.lower()} desc"}

    def getState(self):
        return {"statename": "RUNNING", "statecode": 1}

    def getAllProcessInfo(self):
        return [self._info(name) for name in reversed(list(self.states))]

    def getProcessInfo(self, name):
        return self._info(name)

    def signalProcess(self, name, sig):
        self.calls.append(("signal", name, sig))
        if self._info(name)["statename"] != "RUNNING":
            raise xmlrpc.client.Fault(70, f"NOT_RUNNING: {name}")
        if sig == "KILL":
            self.states[name] = "STARTING"  # supervisord restarts it
        return True

    def stopProcess(self, name, wait):
        self.calls.append(("stop", name, wait))
        self._info(name)
        self.states[name] = "STOPPED"
        return True

    def startProcess(self, name, wait):
        self.calls.append(("start", name, wait))
        if self._info(name)["statename"] == "RUNNING":
            raise xmlrpc.client.Fault(60, f"ALREADY_STARTED: {name}")
        self.states[name] = "RUNNING"
        self.pids[name] = 4242
        return True


@pytest.fixture
def no_pauses(monkeypatch):
    monkeypatch.setattr(chaos, "is_paused", lambda pid: False)


# ------------------------------------------------------------------ config


def _write_conf(path: Path, serverurl: str) -> Path:
    path.write_text("[supervisord]\nlogfile=%(here)s/var/log/supervisord.log\n\n"
                    "[unix_http_server]\nfile=%(here)s/var/supervisor.sock\n\n"
                    f"[supervisorctl]\nserverurl={serverurl}\n")
    return path


def test_serverurl_expands_here_to_the_conf_directory(tmp_path):
    conf = _write_conf(tmp_path / "supervisord.conf", "unix://%(here)s/var/supervisor.sock")
    assert chaos.read_serverurl(str(conf)) == f"unix://{tmp_path}/var/supervisor.sock"


def test_serverurl_of_a_relative_conf_path_is_absolute(tmp_path, monkeypatch):
    _write_conf(tmp_path / "supervisord.conf", "unix://%(here)s/var/supervisor.sock")
    monkeypatch.chdir(tmp_path)
    assert chaos.read_serverurl("supervisord.conf") == f"unix://{tmp_path}/var/supervisor.sock"


def test_serverurl_expands_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("ZRING_CHAOS_TEST_DIR", str(tmp_path / "sockets"))
    conf = _write_conf(tmp_path / "s.conf", "unix://%(ENV_ZRING_CHAOS_TEST_DIR)s/s.sock")
    assert chaos.read_serverurl(str(conf)) == f"unix://{tmp_path}/sockets/s.sock"


def test_repo_conf_serverurl_is_a_unix_socket_under_var():
    assert tool.read_serverurl(tool.DEFAULT_CONF) == f"unix://{ROOT}/var/supervisor.sock"


def test_missing_conf_is_a_clear_error(tmp_path):
    with pytest.raises(chaos.ChaosError, match="no supervisord config"):
        chaos.read_serverurl(str(tmp_path / "nope.conf"))


def test_conf_without_supervisorctl_section_is_a_clear_error(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("[supervisord]\nlogfile=/dev/null\n")
    with pytest.raises(chaos.ChaosError, match="supervisorctl"):
        chaos.read_serverurl(str(conf))


def test_connect_without_supervisord_says_it_is_not_running(tmp_path):
    conf = _write_conf(tmp_path / "supervisord.conf", "unix://%(here)s/absent.sock")
    with pytest.raises(chaos.ChaosError, match="supervisord is not running"):
        chaos.connect(str(conf))


def test_main_exits_nonzero_with_a_message_when_supervisord_is_down(tmp_path, capsys):
    conf = _write_conf(tmp_path / "supervisord.conf", "unix://%(here)s/absent.sock")
    assert tool.main(["kill", "node2", "--conf", str(conf)]) == 1
    assert "supervisord is not running" in capsys.readouterr().err


def test_main_needs_a_name_or_random():
    with pytest.raises(SystemExit) as exc:
        tool.main(["kill"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        tool.main(["kill", "node1", "--random"])


def test_package_cli_needs_the_config_named(capsys):
    with pytest.raises(SystemExit) as exc:
        chaos.main(["kill", "node1"])
    assert exc.value.code == 2 and "--conf" in capsys.readouterr().err


# ------------------------------------------------------------------ random picks


def test_pick_random_running_only_picks_running_nodes(no_pauses):
    proxy = FakeSupervisor({"node1": "RUNNING", "node2": "STOPPED", "node3": "RUNNING",
                            "node4": "FATAL", "node5": "STARTING"})
    picks = {chaos.pick_random_running(proxy, random.Random(seed)) for seed in range(50)}
    assert picks == {"node1", "node3"}


def test_pick_random_running_is_reproducible_with_a_seeded_rng(no_pauses):
    proxy = FakeSupervisor({f"node{i}": "RUNNING" for i in range(1, 6)})
    first = [chaos.pick_random_running(proxy, random.Random(7)) for _ in range(3)]
    assert len(set(first)) == 1


def test_pick_random_running_skips_paused_nodes(monkeypatch):
    proxy = FakeSupervisor({"node1": "RUNNING", "node2": "RUNNING"},
                           pids={"node1": 11, "node2": 22})
    monkeypatch.setattr(chaos, "is_paused", lambda pid: pid == 11)
    assert {chaos.pick_random_running(proxy, random.Random(s)) for s in range(20)} == {"node2"}
    assert chaos.pick_random(proxy, "resume", random.Random(1)) == "node1"


def test_pick_random_with_nothing_running_is_an_error(no_pauses):
    proxy = FakeSupervisor({"node1": "STOPPED", "node2": "EXITED"})
    with pytest.raises(chaos.ChaosError, match="no running node"):
        chaos.pick_random_running(proxy)


def test_pick_random_for_start_picks_a_stopped_node(no_pauses):
    proxy = FakeSupervisor({"node1": "RUNNING", "node4": "STOPPED", "node5": "STOPPED"})
    picks = {chaos.pick_random(proxy, "start", random.Random(s)) for s in range(50)}
    assert picks == {"node4", "node5"}
    with pytest.raises(chaos.ChaosError, match="no paused node"):
        chaos.pick_random(proxy, "resume")


# ------------------------------------------------------------------ actions


def test_kill_sends_sigkill_and_reports_the_pid(no_pauses):
    proxy = FakeSupervisor({"node2": "RUNNING"}, pids={"node2": 1234})
    line = chaos.kill(proxy, "node2")
    assert proxy.calls == [("signal", "node2", "KILL")]
    assert "node2" in line and "1234" in line and "SIGKILL" in line


def test_pause_and_resume_send_stop_and_cont(no_pauses):
    proxy = FakeSupervisor({"node3": "RUNNING"}, pids={"node3": 99})
    chaos.pause(proxy, "node3")
    chaos.resume(proxy, "node3")
    assert proxy.calls == [("signal", "node3", "STOP"), ("signal", "node3", "CONT")]


def test_stop_resumes_a_paused_node_first(monkeypatch):
    proxy = FakeSupervisor({"node3": "RUNNING"}, pids={"node3": 99})
    monkeypatch.setattr(chaos, "is_paused", lambda pid: True)
    chaos.stop(proxy, "node3")
    assert proxy.calls == [("signal", "node3", "CONT"), ("stop", "node3", True)]


def test_restart_stops_then_starts(no_pauses):
    proxy = FakeSupervisor({"node1": "RUNNING"}, pids={"node1": 5})
    line = chaos.restart(proxy, "node1")
    assert proxy.calls == [("stop", "node1", True), ("start", "node1", True)]
    assert "restarted node1" in line and proxy.states["node1"] == "RUNNING"


def test_start_of_a_running_node_is_not_an_error(no_pauses):
    proxy = FakeSupervisor({"node1": "RUNNING"}, pids={"node1": 5})
    assert "already running" in chaos.start(proxy, "node1")
    assert proxy.calls == []


def test_unknown_node_is_a_clear_error(no_pauses):
    proxy = FakeSupervisor({"node1": "RUNNING"})
    with pytest.raises(chaos.ChaosError, match="unknown node 'node9'"):
        chaos.kill(proxy, "node9")


def test_killing_a_stopped_node_is_an_error(no_pauses):
    proxy = FakeSupervisor({"node4": "STOPPED"})
    with pytest.raises(chaos.ChaosError, match="not running"):
        chaos.kill(proxy, "node4")
    assert proxy.calls == []


def test_status_lists_nodes_sorted_and_marks_paused(monkeypatch):
    proxy = FakeSupervisor({"node2": "RUNNING", "node1": "RUNNING", "node4": "STOPPED"},
                           pids={"node1": 1, "node2": 2})
    monkeypatch.setattr(chaos, "is_paused", lambda pid: pid == 2)
    lines = chaos.status_lines(proxy)
    assert [line.split()[0] for line in lines] == ["node1", "node2", "node4"]
    assert [line.split()[1] for line in lines] == ["RUNNING", "PAUSED", "STOPPED"]


def test_is_paused_reads_proc_state():
    assert chaos.is_paused(0) is False
    assert chaos.is_paused(os.getpid()) is False  # this process is running
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        os.kill(child.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not chaos.is_paused(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert chaos.is_paused(child.pid)
        os.kill(child.pid, signal.SIGCONT)
        deadline = time.monotonic() + 5
        while chaos.is_paused(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not chaos.is_paused(child.pid)
    finally:
        child.kill()
        child.wait(timeout=10)
