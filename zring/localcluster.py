"""A throwaway zring cluster on this machine, under its own supervisord (like Cassandra's ccm).

    from zring.localcluster import LocalCluster

    with LocalCluster("/tmp/mycluster", nodes=3, spares=1) as cluster:
        client = cluster.client()
        client.put("k", b"v")
        cluster.chaos("kill", "node2")          # SIGKILL; supervisord restarts it
        cluster.chaos("start", "node4")         # a spare joins
        cluster.wait_converged(["node1", "node2", "node3", "node4"])

Every cluster gets free loopback ports, its own data and log directories under ``root``
(``data/nodeN``, ``log/nodeN.log`` with each node's JSON log lines, ``log/supervisord.log``)
and its own supervisord, so faults go through ``zring.chaos`` (what ``tools/chaos.py`` runs)
and real signals exactly as users inject them. ``stop()`` always tears everything down, node
processes included (even a SIGSTOPped one); it leaves the files under ``root`` to the caller.

The first ``nodes`` nodes start with the cluster and are its seeds; ``spares`` more are
configured but only start when asked (``chaos("start", name)``), joining the cluster.

supervisord restarts a killed node within about a second (its next loop tick), so the node is
often heartbeating again before its peers' failure detector (~2 s) declares it down.
``restart_delay_s`` makes every start of a node after its first one wait that long first,
like a crashed machine that takes a while to reboot, so that a kill is seen as a failure.

``set_clock(name, offset_s)`` gives a node a wall clock that far off (Debian's libfaketime,
preloaded into the node from its next start: ``chaos("restart", name)``), as a machine whose
clock is wrong; ``set_clock(name, 0)`` fixes it at the next start.

Everything here works from an installed package: faults come from ``zring.chaos``. Only
``load_tool`` needs a source checkout (``tools/`` is not installed with the package).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import zring
from zring import chaos as chaos_actions
from zring.client import Client, ClusterStatus
from zring.security import ClientKeys

__all__ = ["CHAOS", "ROOT", "LocalCluster", "LocalClusterError", "faketime_library",
           "free_ports", "load_tool", "wait_for"]

ROOT = Path(zring.__file__).resolve().parents[1]   # the source checkout (or site-packages)
CHAOS = ROOT / "tools" / "chaos.py"   # the user's command-line tool (not loaded from here)
# Debian's faketime package; the MT build is safe for the node's threads (ZeroMQ's, ZAP's)
FAKETIME_LIBRARY_GLOB = "/usr/lib/*/faketime/libfaketimeMT.so.1"

T = TypeVar("T")


class LocalClusterError(RuntimeError):
    """The local cluster could not do what was asked (the message says why)."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports the kernel hands out right now (bound together)."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
            ports.append(sock.getsockname()[1])
    finally:
        for sock in sockets:
            sock.close()
    return ports


def wait_for(condition: Callable[[], T], timeout_s: float, what: str,
             interval_s: float = 0.1) -> T:
    """Poll ``condition`` until it returns a truthy value (returned); TimeoutError naming
    ``what`` at the deadline. Exceptions from ``condition`` count as "not yet"."""
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
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}"
                       + (f" (last error: {last_error!r})" if last_error else ""))


class LocalCluster:
    """``nodes`` seed nodes (node1..) plus ``spares`` stopped ones, under a private supervisord
    whose config, socket, data and logs live in ``root``."""

    def __init__(self, root: str | os.PathLike, *, nodes: int = 3, spares: int = 0,
                 replicas: int = 3, write_quorum: int = 2, read_quorum: int = 2,
                 vnodes: int | None = None, extra_args: tuple[str, ...] = (),
                 log_level: str = "debug", restart_delay_s: float = 0.0,
                 keys_dir: str | os.PathLike | None = None,
                 client_key: str = "admin/admin", store: str | None = None) -> None:
        self.root = Path(root)
        self.names = [f"node{i}" for i in range(1, nodes + spares + 1)]
        self.autostart = set(self.names[:nodes])
        ports = free_ports(2 * len(self.names))
        self.addresses = {n: f"tcp://127.0.0.1:{ports[2 * i]}" for i, n in enumerate(self.names)}
        self.gossip = {n: f"tcp://127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(self.names)}
        self.seeds = [self.addresses[n] for n in self.names[:nodes]]
        self.conf = self.root / "supervisord.conf"
        self.socket_path = self.root / "supervisor.sock"
        self.log_dir = self.root / "log"
        self.log_level = log_level
        self.restart_delay_s = restart_delay_s
        self.replicas = replicas
        self.vnodes = vnodes
        self.node_args = ["--replicas", str(replicas), "--write-quorum", str(write_quorum),
                          "--read-quorum", str(read_quorum), *extra_args]
        if vnodes is not None:
            self.node_args += ["--vnodes", str(vnodes)]
        # the nodes' store ("rocksdb" or "sqlite"; None: the node's default); preload writes it
        self.store = store
        if store is not None:
            self.node_args += ["--store", store]
        # security on: every node gets --keys; clients here use ``client_key`` (a key of
        # ``keys_dir``, "role dir/name")
        self.client_keys: ClientKeys | None = None
        if keys_dir is not None:
            self.node_args += ["--keys", str(keys_dir)]
            self.client_keys = ClientKeys.load(Path(keys_dir) / f"{client_key}.key_secret")
        self.process: subprocess.Popen | None = None
        self._clients: list[Client] = []
        self._supervisor = None

    # ---------------------------------------------------------------- lifecycle

    def write_conf(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        sections = [
            "[supervisord]",
            "nodaemon=true",
            f"logfile={self.log_dir / 'supervisord.log'}",
            f"pidfile={self.root / 'supervisord.pid'}",
            f"childlogdir={self.log_dir}",
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
            sections += [
                f"[program:{name}]",
                "command=" + self._node_command(name),
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
                f"stdout_logfile={self.log_path(name)}",
                f"environment=PYTHONPATH=\"{ROOT}\"",
                "",
            ]
        self.conf.write_text("\n".join(sections))

    def _node_command(self, name: str) -> str:
        command = [sys.executable, "-m", "zring.cli", "node", "--id", name,
                   "--listen", self.addresses[name], "--gossip", self.gossip[name],
                   "--seeds", ",".join(self.seeds), "--data-dir",
                   str(self.root / "data" / name), "--log-format", "json",
                   "--log-level", self.log_level, *self.node_args]
        # The shell execs the node, so supervisord's pid (and chaos's signals) stay the node's.
        # A clock file (set_clock) preloads libfaketime with its offset; the monotonic clock
        # shifts by the same constant, so the node's timers stay consistent.
        clock = shlex.quote(str(self._clock_file(name)))
        script = (f"if [ -s {clock} ]; then export LD_PRELOAD=\"$(sed -n 1p {clock})\" "
                  f"FAKETIME=\"$(sed -n 2p {clock})\"; fi; ")
        if self.restart_delay_s:
            marker = shlex.quote(str(self.root / "data" / f"{name}.started"))
            script += (f"if [ -e {marker} ]; then sleep {self.restart_delay_s:g}; fi; "
                       f": > {marker}; ")
        return shlex.join(["/bin/sh", "-c", script + f"exec {shlex.join(command)}"])

    def _clock_file(self, name: str) -> Path:
        return self.root / "data" / f"{name}.clock"

    def set_clock(self, name: str, offset_s: float) -> None:
        """From ``name``'s next start, its wall clock runs ``offset_s`` seconds off (ahead
        if positive); 0 puts it right again. Needs Debian's faketime package."""
        path = self._clock_file(name)
        if not offset_s:
            path.unlink(missing_ok=True)
            return
        library = faketime_library()
        if library is None:
            raise LocalClusterError("libfaketime not found (apt-get install faketime)")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{library}\n{offset_s:+.3f}\n")

    def preload(self, count: int, *, value_size: int = 100, prefix: str = "key",
                batch: int = 50_000) -> list[str]:
        """Before ``start()``: write ``count`` keys (``f"{prefix}{i:08d}"``, values of
        ``value_size`` bytes) straight into the stores of the seed nodes, each on the
        replicas the seeds' ring gives it, as if they had been put through the cluster.
        Loading a million keys through a client takes many minutes; this takes seconds.
        Returns the keys."""
        if self.process is not None:
            raise LocalClusterError("preload writes the stores directly: call it before start()")
        from zring.hashing import key_position
        from zring.ring import DEFAULT_VNODES, HashRing
        from zring.storage import DEFAULT_STORE, open_store
        from zring.storage.base import Record
        from zring.versions import LOGICAL_BITS, Version

        seeds = sorted(self.autostart)
        ring = HashRing({name: 1.0 for name in seeds}, vnodes=self.vnodes or DEFAULT_VNODES)
        version = Version(int(time.time() * 1000) << LOGICAL_BITS, seeds[0])
        keys = [f"{prefix}{i:08d}" for i in range(count)]
        stores = {}
        try:
            for name in seeds:
                directory = self.root / "data" / name
                directory.mkdir(parents=True, exist_ok=True)
                stores[name] = open_store(str(directory), self.store or DEFAULT_STORE)
            for start in range(0, count, batch):
                placed: dict[str, list[Record]] = {name: [] for name in seeds}
                for key in keys[start:start + batch]:
                    position = key_position(key)
                    value = os.urandom(value_size // 2).hex().encode()[:value_size]
                    record = Record(key, value.ljust(value_size, b"0"), version, position)
                    for name in ring.get_nodes_at(position, self.replicas):
                        placed[name].append(record)
                for name, records in placed.items():
                    stores[name].put_many(records)
        finally:
            for store in stores.values():
                store.close()
        return keys

    def start(self, timeout_s: float = 60) -> LocalCluster:
        """Start supervisord and wait until the autostarted nodes form one cluster."""
        self.write_conf()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for(self.socket_path.exists, 15, "supervisord's socket")
            self.wait_converged(sorted(self.autostart), timeout_s)
            self.wait_running(sorted(self.autostart))
        except BaseException:
            self.stop()  # nothing may outlive a failed start (callers use `with` or finally)
            raise
        return self

    def wait_running(self, names: list[str], timeout_s: float = 30) -> None:
        """supervisord itself reports them RUNNING (past startsecs), so chaos can act."""
        wait_for(lambda: all(self.supervisor().getProcessInfo(n)["statename"] == "RUNNING"
                             for n in names), timeout_s, f"{names} RUNNING in supervisord")

    def stop(self) -> None:
        """Stop supervisord and every node process; safe to call twice."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self.process is None:
            return
        pids = self._node_pids()
        self.process.send_signal(signal.SIGTERM)  # supervisord stops its nodes, then exits
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        for pid in pids:  # nothing outlives the cluster, even a node left SIGSTOPped
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
        self.process = None
        self._supervisor = None

    def _node_pids(self) -> list[int]:
        try:
            return [info["pid"] for info in self.supervisor().getAllProcessInfo()
                    if info["pid"]]
        except Exception:  # supervisord already gone: nothing to collect
            return []

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- access

    def supervisor(self) -> Any:
        """supervisord's ``supervisor.*`` XML-RPC namespace (``getProcessInfo(name)``...)."""
        if self._supervisor is None:
            try:
                self._supervisor = chaos_actions.connect(str(self.conf))
            except chaos_actions.ChaosError as exc:
                raise LocalClusterError(str(exc)) from None
        return self._supervisor

    def chaos(self, action: str, name: str, *, in_process: bool = False) -> str:
        """Run the chaos CLI (``python -m zring.chaos ACTION NAME``, what ``tools/chaos.py``
        runs) on this cluster (kill, stop, start, pause, resume, restart), as a user would;
        its output, or LocalClusterError.

        ``in_process``: call chaos's function for ACTION directly instead of its CLI (the
        same code, without starting a Python: the fault happens ~0.1 s sooner and the call
        returns right after it, for callers that time what follows)."""
        if in_process:
            try:
                return chaos_actions.ACTIONS[action](self.supervisor(), name)
            except chaos_actions.ChaosError as exc:
                raise LocalClusterError(f"chaos {action} {name} failed: {exc}") from None
        result = subprocess.run([sys.executable, "-m", "zring.chaos", action, name, "--conf",
                                 str(self.conf)], capture_output=True, text=True, timeout=60,
                                env=_with_root_on_path(os.environ))
        if result.returncode != 0:
            raise LocalClusterError(f"chaos {action} {name} failed: {result.stderr.strip()}")
        return result.stdout

    def client(self, *names: str, timeout: float = 5.0) -> Client:
        """A client on the named nodes (default: the seeds), closed by ``stop()``."""
        seeds = [self.addresses[n] for n in names] if names else self.seeds
        client = Client(seeds, timeout=timeout, keys=self.client_keys)
        self._clients.append(client)
        return client

    def status_from(self, name: str, timeout: float = 2.0) -> ClusterStatus:
        """``name``'s own view of the cluster (one retry on silence)."""
        with Client([self.addresses[name]], timeout=timeout, retries=1,
                    keys=self.client_keys) as client:
            return client.cluster_status()

    def wait_converged(self, names: list[str], timeout_s: float = 60) -> None:
        """Every listed node reports exactly these members, all normal and up, and all
        routing by the same ring (the change has settled)."""
        wanted = sorted(names)

        def converged() -> bool:
            for name in wanted:
                members = self.status_from(name).members
                normal = sorted(m.node_id for m in members if m.status == "normal"
                                and m.liveness == "up")
                if normal != wanted:
                    return False
                if len({m.ring_version for m in members if m.node_id in wanted}) != 1:
                    return False
            return True
        wait_for(converged, timeout_s, f"members {wanted} to converge")

    def log_path(self, name: str) -> Path:
        """Where supervisord writes ``name``'s output (its JSON log lines)."""
        return self.log_dir / f"{name}.log"

    def log_text(self, name: str) -> str:
        """``name``'s log so far, including any parts supervisord rotated away (oldest first)."""
        current = self.log_path(name)
        rotated = sorted(current.parent.glob(current.name + ".*"),
                         key=lambda p: int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0,
                         reverse=True)
        return "".join(p.read_text(errors="replace") for p in [*rotated, current] if p.exists())


def faketime_library() -> str | None:
    """The path of libfaketime (multi-threaded build), or None if it is not installed."""
    found = sorted(glob.glob(FAKETIME_LIBRARY_GLOB))
    return found[0] if found else None


def _with_root_on_path(environ: os._Environ | dict) -> dict:
    """``environ`` with this zring's directory first on PYTHONPATH, so a child Python imports
    this very zring even where it is not installed."""
    paths = [str(ROOT), *filter(None, environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**environ, "PYTHONPATH": os.pathsep.join(paths)}


def load_tool(name: str, path: Path | None = None) -> ModuleType:
    """``tools/<name>.py`` (or ``path``) of a source checkout imported as a module, once,
    without touching sys.path (tests load bench, jepsen and the other tools this way)."""
    module_name = f"zring_tools_{name}"
    module = sys.modules.get(module_name)
    if module is None:
        path = ROOT / "tools" / f"{name}.py" if path is None else path
        if not path.is_file():
            raise LocalClusterError(f"{path} not found: {name} needs a source checkout of "
                                    "zring (tools/ is not installed with the package)")
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return module
