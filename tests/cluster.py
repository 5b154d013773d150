"""A real zring cluster for integration tests: node processes under a private supervisord.

Each cluster gets free loopback ports, its own data and log directories and its own
supervisord (so failure tests go through tools/chaos.py and real signals, exactly as users
do). ``stop()`` always tears everything down, node processes included.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from zring import Client

ROOT = Path(__file__).resolve().parent.parent
CHAOS = ROOT / "tools" / "chaos.py"


def free_ports(count: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
        ports.append(sock.getsockname()[1])
    for sock in sockets:
        sock.close()
    return ports


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.1):
    """Poll ``condition`` until it returns a truthy value; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except Exception as exc:  # the cluster may be mid-change; keep polling until the deadline
            last_error = exc
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}"
                         + (f" (last error: {last_error!r})" if last_error else ""))


class TestCluster:
    __test__ = False  # not a pytest class

    def __init__(self, root: Path, *, nodes: int = 3, spares: int = 0, replicas: int = 3,
                 write_quorum: int = 2, read_quorum: int = 2, vnodes: int | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.root = Path(root)
        self.names = [f"node{i}" for i in range(1, nodes + spares + 1)]
        self.autostart = set(self.names[:nodes])
        ports = free_ports(2 * len(self.names))
        self.addresses = {n: f"tcp://127.0.0.1:{ports[2 * i]}" for i, n in enumerate(self.names)}
        self.gossip = {n: f"tcp://127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(self.names)}
        self.seeds = [self.addresses[n] for n in self.names[:nodes]]
        self.conf = self.root / "supervisord.conf"
        self.socket_path = self.root / "supervisor.sock"
        self.node_args = ["--replicas", str(replicas), "--write-quorum", str(write_quorum),
                          "--read-quorum", str(read_quorum), *extra_args]
        if vnodes is not None:
            self.node_args += ["--vnodes", str(vnodes)]
        self.process: subprocess.Popen | None = None
        self._clients: list[Client] = []

    # ---------------------------------------------------------------- lifecycle

    def write_conf(self) -> None:
        (self.root / "log").mkdir(parents=True, exist_ok=True)
        sections = [
            "[supervisord]",
            "nodaemon=true",
            f"logfile={self.root / 'log' / 'supervisord.log'}",
            f"pidfile={self.root / 'supervisord.pid'}",
            f"childlogdir={self.root / 'log'}",
            "",
            "[unix_http_server]",
            f"file={self.socket_path}",
            "chmod=0700",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{self.socket_path}",
            "",
        ]
        for name in self.names:
            command = [sys.executable, "-m", "zring.cli", "node", "--id", name,
                       "--listen", self.addresses[name], "--gossip", self.gossip[name],
                       "--seeds", ",".join(self.seeds), "--data-dir",
                       str(self.root / "data" / name), "--log-level", "debug",
                       *self.node_args]
            sections += [
                f"[program:{name}]",
                "command=" + " ".join(command),
                f"autostart={'true' if name in self.autostart else 'false'}",
                "autorestart=unexpected",
                "exitcodes=0",
                "startsecs=1",
                "startretries=10",
                "stopsignal=TERM",
                "stopwaitsecs=10",
                "stopasgroup=true",
                "killasgroup=true",
                "redirect_stderr=true",
                f"stdout_logfile={self.root / 'log' / (name + '.log')}",
                f"environment=PYTHONPATH=\"{ROOT}\"",
                "",
            ]
        self.conf.write_text("\n".join(sections))

    def start(self, timeout_s: float = 60) -> TestCluster:
        self.write_conf()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(self.socket_path.exists, 15, "supervisord's socket")
        self.wait_converged(sorted(self.autostart), timeout_s)
        self.wait_running(sorted(self.autostart))
        return self

    def wait_running(self, names: list[str], timeout_s: float = 30) -> None:
        """supervisord itself reports them RUNNING (past startsecs), so chaos can act."""
        wait_for(lambda: all(self.supervisor().getProcessInfo(n)["statename"] == "RUNNING"
                             for n in names), timeout_s, f"{names} RUNNING in supervisord")

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        if self.process is None:
            return
        pids = self._node_pids()
        self.process.send_signal(signal.SIGTERM)  # supervisord stops its nodes, then exits
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        for pid in pids:  # nothing outlives the test, even a node left SIGSTOPped
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
        self.process = None

    def _node_pids(self) -> list[int]:
        try:
            return [info["pid"] for info in self.supervisor().getAllProcessInfo()
                    if info["pid"]]
        except Exception:
            return []

    def __enter__(self) -> TestCluster:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ---------------------------------------------------------------- access

    def supervisor(self):
        sys.path.insert(0, str(CHAOS.parent))
        import chaos
        return chaos.connect(str(self.conf))

    def chaos(self, action: str, name: str) -> str:
        result = subprocess.run([sys.executable, str(CHAOS), action, name, "--conf",
                                 str(self.conf)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"chaos {action} {name} failed: {result.stderr}"
        return result.stdout

    def client(self, *names: str, timeout: float = 5.0) -> Client:
        seeds = [self.addresses[n] for n in names] if names else self.seeds
        client = Client(seeds, timeout=timeout)
        self._clients.append(client)
        return client

    def status_from(self, name: str):
        with Client([self.addresses[name]], timeout=2.0, retries=1) as client:
            return client.cluster_status()

    def wait_converged(self, names: list[str], timeout_s: float = 60) -> None:
        """Every listed node reports exactly these members, all normal and up."""
        wanted = sorted(names)

        def converged() -> bool:
            for name in wanted:
                members = self.status_from(name).members
                normal = sorted(m.node_id for m in members if m.status == "normal"
                                and m.liveness == "up")
                if normal != wanted:
                    return False
            return True
        wait_for(converged, timeout_s, f"members {wanted} to converge")

    def log_text(self, name: str) -> str:
        path = self.root / "log" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""
