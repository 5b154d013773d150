#!/usr/bin/env python3
"""A Jepsen-style test of zring: real node processes on hosts made of network namespaces.

    # once, as root: iptables for partitions and loss, libnetfilter-queue for delays,
    # faketime for clock faults
    apt-get install -y iptables libnetfilter-queue-dev faketime
    .venv/bin/pip install -e '.[jepsen]'
    .venv/bin/python tools/jepsen.py                     # 30 faults, one every 10 s (~6 min)
    .venv/bin/python tools/jepsen.py --faults 10 --interval 5 --json result.json
    .venv/bin/python tools/jepsen.py cleanup             # namespaces a killed run left behind

Each node runs in its own network namespace (``zj<pid>-n1``...), with a veth pair to a bridge
in a switch namespace; the clients run in one more. Nothing is added to the machine's own
network namespace. supervisord runs the nodes (``ip netns exec <ns> zring node ...``) and the
nemesis kills, pauses and restarts them through tools/chaos.py, as users do.

The nemesis starts a fault every ``--interval`` seconds, holds it for 70% of the interval and
heals it, cycling through: ``kill`` (SIGKILL; supervisord restarts the node when the fault
ends), ``pause`` (SIGSTOP, then SIGCONT), ``partition-one`` (one node cut off from the other
nodes), ``partition-minority`` (two nodes from three), ``partition-majority-ring`` (each node
reaches only its ring neighbours: every node sees a majority, no two the same), ``loss``
(``--loss`` of packets dropped both ways on every node), ``delay`` (every packet a node
sends held ``--delay-ms`` +- ``--jitter-ms``, so they reorder), ``clock-skew-small`` (one
node restarted with its wall clock 0.1 to 0.4 s off, within max_clock_offset_s: it keeps
serving), ``clock-skew-large`` (5 to 120 s off, beyond it: the node must refuse to coordinate
writes, which the nemesis checks by writing through it; healing restarts it with the clock
right) and ``pause-long`` (SIGSTOP for longer than the client's 5 s timeout, at least 6.5 s
whatever the interval, so the client retries elsewhere and the node answers late).
Partitions and loss are iptables rules in the nodes' namespaces; the delay is an NFQUEUE
that a small process per node releases late (this kernel has no netem); clocks are Debian's
libfaketime (LocalCluster.set_clock). Clients keep reaching every node throughout.

Two workloads run meanwhile, each op recorded with its invoke and complete times (the
client's default timeout and retries; an op that raises is ``info`` for a write, which may
have taken effect, and ``fail`` for a read):

- set: unique keys are inserted; after the faults heal, every node's keys are listed and
  every attempted key read at quorum. Like Jepsen's set checker it reports attempted,
  acknowledged, lost (acknowledged but gone), recovered (unacknowledged but present),
  unexpected (present but never attempted, or with a value never written) and unread.
- register: a few keys take unique writes and reads, judged by tools/lincheck.py by values
  and real time only (the version a reply carried is kept in the history, never judged):
  a linearizability search per key (Wing-Gong-Lowe; an unacknowledged write may take effect
  any time after its invoke), with a counterexample for a key that fails and the keys whose
  search ran out of budget (undecided: not a pass), and the real-time anomalies (stale,
  went-back, future reads) that explain a failure.

The exit status is 0 when nothing acknowledged was lost, nothing unexpected was read, the
register history is linearizable and every node whose clock was far off refused to
coordinate writes; 1 otherwise. The history (JSON lines per client) and the node logs stay
in ``--dir``.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import heapq
import importlib.util
import json
import os
import random
import select
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402 - tools/harness.py, found through the line above

ROOT = Path(__file__).resolve().parents[1]
SUBNET = "10.213.0"          # private addresses, only inside this run's namespaces
NODE_PORT, GOSSIP_PORT = 7000, 7100
CLIENT_HOST = "client"
FAULT_KINDS = ("kill", "pause", "partition-one", "partition-minority",
               "partition-majority-ring", "loss", "delay", "clock-skew-small",
               "clock-skew-large", "pause-long")
CLOCK_KINDS = ("clock-skew-small", "clock-skew-large")
SMALL_SKEW_S = (0.1, 0.4)      # within the nodes' max_clock_offset_s (0.5 s)
LARGE_SKEW_S = (5.0, 120.0)    # far beyond it
PAUSE_LONG_MIN_S = 6.5         # longer than the client's default timeout (5 s)
PROBE_WAIT_S = 20.0            # how long the nemesis waits for a node to act on its clock
_CLONE_NEWNET = 0x40000000
_NFQUEUE_NUM = 7


class JepsenError(RuntimeError):
    """The test could not be set up or run (the message says why)."""


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise JepsenError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result


def preflight() -> list[str]:
    """Why this machine cannot run the test (empty: it can; without NetfilterQueue it runs
    all but the delay fault, see ``delay_available``)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("needs root (ip netns, iptables)")
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} not found (apt-get install iproute2 iptables)")
    if not problems:  # may we make namespaces here (a container may forbid it)?
        probe = f"zj{os.getpid()}-probe"
        made = _run("ip", "netns", "add", probe, check=False)
        if made.returncode != 0:
            problems.append(f"cannot create network namespaces: {made.stderr.strip()}")
        else:
            _run("ip", "netns", "del", probe, check=False)
    return problems


def delay_available() -> bool:
    return importlib.util.find_spec("netfilterqueue") is not None


def clock_available() -> bool:
    return _localcluster().faketime_library() is not None


def available_kinds() -> tuple[list[str], list[str]]:
    """The fault kinds this machine can run, and why the others are skipped."""
    kinds, skipped = [], []
    for kind in FAULT_KINDS:
        if kind == "delay" and not delay_available():
            skipped.append("delay (NetfilterQueue not installed)")
        elif kind in CLOCK_KINDS and not clock_available():
            skipped.append(f"{kind} (faketime not installed)")
        else:
            kinds.append(kind)
    return kinds, skipped


# ------------------------------------------------------------------ the network

class Network:
    """Hosts (network namespaces) on one bridge; faults are iptables rules inside them.

    Every host gets ``eth0`` with ``10.213.0.<i>/24``; ``setns`` moves the calling thread
    (and every process and thread it starts afterwards) into a host."""

    def __init__(self, tag: str, hosts: Sequence[str]) -> None:
        self.tag = tag
        self.hosts = list(hosts)
        self.ips = {host: f"{SUBNET}.{i + 1}" for i, host in enumerate(self.hosts)}
        self.switch = f"zj{tag}-sw"
        self.created: list[str] = []
        self.delayers: dict[str, subprocess.Popen] = {}

    def namespace(self, host: str) -> str:
        return f"zj{self.tag}-{host}"

    def create(self) -> None:
        try:
            self._add_namespace(self.switch)
            _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", self.switch, "link", "set", "br0", "up")
            for index, host in enumerate(self.hosts):
                ns = self.namespace(host)
                port = f"p{index}"
                self._add_namespace(ns)
                _run("ip", "link", "add", "name", "eth0", "netns", ns, "type", "veth",
                     "peer", "name", port, "netns", self.switch)
                _run("ip", "-n", self.switch, "link", "set", port, "master", "br0")
                _run("ip", "-n", self.switch, "link", "set", port, "up")
                _run("ip", "-n", ns, "addr", "add", f"{self.ips[host]}/24", "dev", "eth0")
                _run("ip", "-n", ns, "link", "set", "eth0", "up")
                _run("ip", "-n", ns, "link", "set", "lo", "up")
                if host != CLIENT_HOST:
                    for chain, hook in (("ZJ_IN", "INPUT"), ("ZJ_OUT", "OUTPUT")):
                        self._iptables(host, "-N", chain)
                        self._iptables(host, "-A", hook, "-j", chain)
        except BaseException:
            self.destroy()
            raise

    def _add_namespace(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self.created.append(name)

    def _iptables(self, host: str, *rule: str) -> None:
        _run("ip", "netns", "exec", self.namespace(host), "iptables", "-w", *rule)

    def node_hosts(self) -> list[str]:
        return [h for h in self.hosts if h != CLIENT_HOST]

    def setns(self, host: str) -> None:
        """Move this thread into ``host``'s network namespace (children inherit it)."""
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/var/run/netns/{self.namespace(host)}", os.O_RDONLY)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                raise JepsenError(f"setns into {host}: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(fd)

    # -------------------------------------------------------------- faults

    def partition(self, groups: dict[str, set[str]]) -> None:
        """Each node reaches only the nodes in ``groups[node]`` (and every client)."""
        for host, reachable in groups.items():
            for other in self.node_hosts():
                if other != host and other not in reachable:
                    self._iptables(host, "-A", "ZJ_IN", "-s", self.ips[other], "-j", "DROP")
                    self._iptables(host, "-A", "ZJ_OUT", "-d", self.ips[other], "-j", "DROP")

    def loss(self, probability: float) -> None:
        for host in self.node_hosts():
            for chain in ("ZJ_IN", "ZJ_OUT"):
                self._iptables(host, "-A", chain, "-m", "statistic", "--mode", "random",
                               "--probability", f"{probability:g}", "-j", "DROP")

    def delay(self, delay_ms: float, jitter_ms: float) -> None:
        """Hold every packet the nodes send for delay +- jitter ms (an NFQUEUE released late
        by a process per node; --queue-bypass lets packets through if it dies)."""
        for host in self.node_hosts():
            self.delayers[host] = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace(host), sys.executable, __file__, "delay",
                 "--ms", str(delay_ms), "--jitter-ms", str(jitter_ms)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for host, process in self.delayers.items():
            # it prints "ready" once its queue is bound: only then may packets go to it
            ready, _, _ = select.select([process.stdout], [], [], 10)
            if not ready or process.stdout.readline().strip() != "ready":
                process.kill()
                raise JepsenError(f"delayer on {host} did not start: "
                                  f"{process.stderr.read().strip()}")
            self._iptables(host, "-A", "ZJ_OUT", "-j", "NFQUEUE", "--queue-num",
                           str(_NFQUEUE_NUM), "--queue-bypass")

    def heal(self) -> None:
        for host in self.node_hosts():
            for chain in ("ZJ_IN", "ZJ_OUT"):
                self._iptables(host, "-F", chain)
        for process in self.delayers.values():
            process.terminate()  # after the rules are gone: it releases what it holds first
        for process in self.delayers.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.delayers.clear()

    def destroy(self) -> None:
        """Kill whatever still runs in the namespaces and delete them; safe to call twice."""
        for process in self.delayers.values():
            process.kill()
        self.delayers.clear()
        for name in reversed(self.created):
            _kill_namespace_processes(name)
            _run("ip", "netns", "del", name, check=False)
        self.created.clear()


def _kill_namespace_processes(name: str) -> None:
    pids = _run("ip", "netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        if pid == str(os.getpid()):
            continue  # the driver lives in the client namespace
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(int(pid), sig)
            except (ProcessLookupError, ValueError):
                break


def cleanup_stale() -> list[str]:
    """Delete the namespaces of runs whose driver is gone (``zj<pid>-...``)."""
    removed = []
    for line in _run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith("zj") or "-" not in name:
            continue
        pid = name[2:].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _kill_namespace_processes(name)
            _run("ip", "netns", "del", name, check=False)
            removed.append(name)
    return removed


# ------------------------------------------------------------------ delayer (per node)

def run_delayer(delay_ms: float, jitter_ms: float) -> None:
    """Bind the NFQUEUE and accept each packet delay +- jitter ms after it arrived; on
    SIGTERM release everything still held and exit."""
    from netfilterqueue import NetfilterQueue

    held: list[tuple[float, int, object]] = []
    sequence = iter(range(1 << 62))
    rng = random.Random()
    stopping = False

    def hold(packet) -> None:
        packet.retain()
        release = time.monotonic() + max(0.0, delay_ms + rng.uniform(-jitter_ms, jitter_ms)) / 1e3
        heapq.heappush(held, (release, next(sequence), packet))

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    queue = NetfilterQueue()
    queue.bind(_NFQUEUE_NUM, hold, max_len=65536)
    sock = socket.fromfd(queue.get_fd(), socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    print("ready", flush=True)
    try:
        while not stopping:
            timeout = max(0.0, held[0][0] - time.monotonic()) if held else 0.5
            if selector.select(timeout):
                queue.run(block=False)
            now = time.monotonic()
            while held and held[0][0] <= now:
                heapq.heappop(held)[2].accept()
    finally:
        while held:
            heapq.heappop(held)[2].accept()
        queue.unbind()


# ------------------------------------------------------------------ workload clients

def run_worker(kind: str, worker_id: int, seeds: list[str], out: str, keys: int,
               rate: float, seed: int) -> None:
    """Issue ops until SIGTERM, appending one JSON line per invoke and per completion."""
    from zring.client import Client

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    rng = random.Random(seed)
    # one token-aware client with the default timeout and retries, as users run it: a
    # write that raises may still have taken effect (info), a read that raises tells nothing
    client = Client(seeds)
    period = 1.0 / rate
    with open(out, "a", buffering=1) as history:
        for sequence in range(1 << 62):
            if stopping:
                break
            started = time.monotonic()
            if kind == "set":
                f, key = "add", f"set-{worker_id}-{sequence}"
                value = key
            else:
                key = f"reg-{rng.randrange(keys)}"
                f = rng.choice(("write", "read"))
                value = f"w{worker_id}-{sequence}" if f == "write" else None
            op = {"p": worker_id, "f": f, "key": key, "value": value}
            history.write(json.dumps({**op, "type": "invoke", "time": time.monotonic()}) + "\n")
            try:
                if f == "read":
                    result = client.get(key)
                    op["value"] = result.value if result.found else None
                    if isinstance(op["value"], bytes):
                        op["value"] = op["value"].decode()
                else:
                    result = client.put(key, value)
                # the version is kept for a person reading the history, never judged
                op["version"] = list(result.version) if result.version else None
                op["type"] = "ok"
            except Exception as exc:  # a failed or silent op: indeterminate for writes
                op["type"] = "fail" if f == "read" else "info"
                op["error"] = f"{type(exc).__name__}: {exc}"[:200]
            history.write(json.dumps({**op, "time": time.monotonic()}) + "\n")
            time.sleep(max(0.0, period - (time.monotonic() - started)))
    client.close()


# ------------------------------------------------------------------ history and checker

@dataclasses.dataclass(frozen=True, slots=True)
class Op:
    process: int
    f: str               # add | write | read
    key: str
    value: str | None    # written, or read (None: not found)
    invoke: float
    complete: float | None   # None: never completed (the client died mid-op)
    type: str            # ok | info | fail
    version: tuple | None = None   # what the reply carried: information only, never judged


def load_history(lines: Iterable[str]) -> list[Op]:
    """Pair each completion with its process's invoke (a worker runs one op at a time); an
    invoke without a completion (the worker died mid-op) is an ``info`` op."""
    invokes: dict[int, dict] = {}
    ops = []
    lines = [line for line in lines if line.strip()]
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if number < len(lines):
                raise ValueError(f"history line {number} of {len(lines)} is damaged: "
                                 f"{line[:80]!r}") from None
            # the last line, torn by the worker dying as it wrote it: a torn invoke was
            # never sent (the line is written first); a torn completion leaves its op info
            break
        if entry["type"] == "invoke":
            invokes[entry["p"]] = entry
            continue
        invoke = invokes.pop(entry["p"], entry)
        version = tuple(entry["version"]) if entry.get("version") else None
        ops.append(Op(entry["p"], entry["f"], entry["key"], entry["value"], invoke["time"],
                      entry["time"], entry["type"], version))
    for entry in invokes.values():
        ops.append(Op(entry["p"], entry["f"], entry["key"], entry["value"], entry["time"],
                      None, "info"))
    return sorted(ops, key=lambda op: op.invoke)


def check_set(adds: Sequence[Op], final: dict[str, str | None],
              listed: set[str] | None = None) -> dict:
    """Jepsen's set checker over unique-key inserts. ``final``: the quorum read after
    healing of every attempted key (value, None if absent; a key missing from ``final``
    could not be read); ``listed``: every set key any node holds."""
    attempted = {op.key: op.value for op in adds}
    acknowledged = {op.key for op in adds if op.type == "ok"}
    present = {key for key, value in final.items() if value is not None}
    wrong_value = {key for key in present if final[key] != attempted.get(key)}
    never_attempted = (listed or set()) - attempted.keys()
    unread = acknowledged - final.keys()
    return {
        "attempted": len(attempted),
        "acknowledged": len(acknowledged),
        "lost": sorted(acknowledged - present - unread),
        "unread": sorted(unread),
        "recovered": len(present - acknowledged),
        "unexpected": sorted(wrong_value | never_attempted),
    }


def check_register(ops: Sequence[Op], max_states: int = 2_000_000) -> dict:
    """The register history judged by tools/lincheck.py, by values and real time only:
    linearizable per key (undecided keys, whose search ran out of ``max_states``, are not
    a pass), a counterexample per failing key, and the real-time anomalies (stale,
    went-back, future reads). Versions are not looked at."""
    lincheck = _lincheck()
    history = [lincheck.Op(op.key, op.f, op.value, op.invoke, op.complete, op.type,
                           op.process) for op in ops if op.f in ("write", "read")]
    summary = lincheck.summarize(history, max_states=max_states)
    writes = [op for op in ops if op.f == "write"]
    reads = [op for op in ops if op.f == "read"]
    return {
        "ops": len(history),
        "writes": len(writes),
        "writes_acknowledged": sum(op.type == "ok" for op in writes),
        "writes_indeterminate": sum(op.type != "ok" for op in writes),
        "reads": sum(op.type == "ok" for op in reads),
        "reads_failed": sum(op.type != "ok" for op in reads),
        **summary,
    }


def _lincheck():
    """tools/lincheck.py next to this file, loaded once whether this runs as a script or
    was loaded by ``load_tool`` (tools/ is not a package)."""
    return _localcluster().load_tool("lincheck", Path(__file__).with_name("lincheck.py"))


def availability(ops: Sequence[Op], windows: Sequence[tuple[str, float, float]]) -> dict:
    """Per fault kind: ops invoked while such a fault was active, and the share that
    succeeded."""
    table: dict[str, dict] = {}
    starts = sorted(windows, key=lambda w: w[1])
    for kind, _start, _end in starts:
        row = table.setdefault(kind, {"events": 0, "ops": 0, "ok": 0})
        row["events"] += 1
    for op in ops:
        for kind, start, end in starts:
            if start <= op.invoke < end:
                row = table[kind]
                row["ops"] += 1
                row["ok"] += op.type == "ok"
                break
    return table


# ------------------------------------------------------------------ the run

def _localcluster():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import zring.localcluster
    return zring.localcluster


def make_cluster(network: Network, root: Path, hold_s: float, write_quorum: int = 2,
                 read_quorum: int = 2):
    """A LocalCluster whose nodes run inside their namespaces at their hosts' addresses."""
    LocalCluster = _localcluster().LocalCluster

    class NetCluster(LocalCluster):
        def __init__(self) -> None:
            super().__init__(root, nodes=len(network.node_hosts()), log_level="info",
                             restart_delay_s=hold_s, write_quorum=write_quorum,
                             read_quorum=read_quorum)
            self.addresses = {n: f"tcp://{network.ips[n]}:{NODE_PORT}" for n in self.names}
            self.gossip = {n: f"tcp://{network.ips[n]}:{GOSSIP_PORT}" for n in self.names}
            self.seeds = [self.addresses[n] for n in self.names]

        def _node_command(self, name: str) -> str:
            # ip netns exec execs the /bin/sh wrapper, which reads the clock file
            # (set_clock) and execs the node: one pid throughout, as signals need
            return f"ip netns exec {network.namespace(name)} " + super()._node_command(name)

        def restart_now(self, name: str) -> None:
            """Restart ``name`` at once: a clock fault is not a crash, so without the
            reboot wait (restart_delay_s) that a kill gets."""
            (self.root / "data" / f"{name}.started").unlink(missing_ok=True)
            self.chaos("restart", name)

    return NetCluster()


class Nemesis:
    """Starts one fault, later heals it; remembers every window for the report."""

    def __init__(self, network: Network, cluster, rng: random.Random, loss: float,
                 delay_ms: float, jitter_ms: float) -> None:
        self.network = network
        self.cluster = cluster
        self.rng = rng
        self.loss_probability = loss
        self.delay_ms, self.jitter_ms = delay_ms, jitter_ms
        self.nodes = network.node_hosts()
        self.windows: list[tuple[str, float, float]] = []
        self.events: list[dict] = []
        self.problems: list[str] = []   # a node did what it must not (the run is invalid)
        self.warnings: list[str] = []   # a node did not do what it should (availability)
        self._active: tuple[str, list[str], float, dict] | None = None
        self._probes = 0

    @staticmethod
    def hold_seconds(kind: str, hold_s: float) -> float:
        """How long ``kind`` is held: 70% of the interval, but a long pause always outlasts
        the client's timeout."""
        return max(PAUSE_LONG_MIN_S, 1.5 * hold_s) if kind == "pause-long" else hold_s

    def start(self, kind: str) -> None:
        nodes = self.nodes
        targets: list[str] = []
        detail: dict = {}
        began = time.monotonic()
        if kind == "kill":
            targets = [self.rng.choice(nodes)]
            self.cluster.chaos("kill", targets[0])
        elif kind in ("pause", "pause-long"):
            targets = [self.rng.choice(nodes)]
            self.cluster.chaos("pause", targets[0])
        elif kind == "partition-one":
            targets = [self.rng.choice(nodes)]
            self.network.partition(_split(nodes, targets))
        elif kind == "partition-minority":
            targets = self.rng.sample(nodes, (len(nodes) - 1) // 2)
            self.network.partition(_split(nodes, targets))
        elif kind == "partition-majority-ring":
            shuffled = self.rng.sample(nodes, len(nodes))
            self.network.partition(_majority_ring(shuffled))
            targets = shuffled
        elif kind == "loss":
            self.network.loss(self.loss_probability)
        elif kind == "delay":
            self.network.delay(self.delay_ms, self.jitter_ms)
        elif kind in CLOCK_KINDS:
            targets = [self.rng.choice(nodes)]
            low, high = SMALL_SKEW_S if kind == "clock-skew-small" else LARGE_SKEW_S
            offset = round(self.rng.choice((-1, 1)) * self.rng.uniform(low, high), 3)
            detail["offset_s"] = offset
            self.cluster.set_clock(targets[0], offset)
            self.cluster.restart_now(targets[0])
            if kind == "clock-skew-large":
                # it must find its clock off against its peers' and stop coordinating
                detail.update(self._probe(targets[0], until="refused"))
                if not detail["refused"]:
                    self.problems.append(
                        f"{targets[0]}, its clock {offset:+g} s off, did not refuse to "
                        f"coordinate writes within {PROBE_WAIT_S:g} s: {detail}")
            else:   # within the maximum: it keeps coordinating (availability, not safety)
                detail.update(self._probe(targets[0], until="ok"))
                if not detail["coordinates"]:
                    self.warnings.append(f"{targets[0]}, its clock {offset:+g} s off (within "
                                         f"the maximum), did not coordinate writes: {detail}")
        else:
            raise JepsenError(f"unknown fault {kind!r}")
        detail["start_s"] = round(time.monotonic() - began, 2)
        self._active = (kind, targets, began, detail)

    def _probe(self, node: str, until: str) -> dict:
        """Write through ``node`` alone (no routing, no retries) until it refuses for its
        own clock (``until="refused"``) or acknowledges (``"ok"``), at most PROBE_WAIT_S.
        Probe keys are apart from the workloads' keys."""
        from zring.client import Client
        from zring.errors import ClockSkew, ZringError

        tally = {"ok": 0, "refused_clock": 0, "refused_timestamp": 0, "other": 0}
        began = time.monotonic()
        reached, last_error = None, None
        with Client([self.cluster.addresses[node]], timeout=2.0, retries=0,
                    token_aware=False) as client:
            while time.monotonic() - began < PROBE_WAIT_S:
                self._probes += 1
                try:
                    client.put(f"probe-{self._probes}", node)
                    tally["ok"] += 1
                    if until == "ok":
                        reached = time.monotonic() - began
                        break
                except ClockSkew as exc:
                    last_error = str(exc)[:200]
                    if exc.details.get("node") == node:
                        tally["refused_clock"] += 1
                        if until == "refused":
                            reached = time.monotonic() - began
                            break
                    else:   # a timestamp ahead of its clock: refused, yet not by the check
                        tally["refused_timestamp"] += 1
                except ZringError as exc:   # not up yet, not in the cluster yet...
                    tally["other"] += 1
                    last_error = f"{type(exc).__name__}: {exc}"[:200]
                time.sleep(0.3)
        key = "refused" if until == "refused" else "coordinates"
        return {key: reached is not None,
                f"{key}_after_s": None if reached is None else round(reached, 2),
                "probes": tally, **({"last_error": last_error} if last_error else {})}

    def heal(self) -> None:
        if self._active is None:
            return
        kind, targets, started, detail = self._active
        self._active = None
        if kind in ("pause", "pause-long"):
            self.cluster.chaos("resume", targets[0])
        self.network.heal()
        if kind in CLOCK_KINDS:
            self.cluster.set_clock(targets[0], 0)
            self.cluster.restart_now(targets[0])
            if kind == "clock-skew-large":   # with its clock right it coordinates again
                after = self._probe(targets[0], until="ok")
                detail["after_heal"] = after
                if not after["coordinates"]:
                    self.warnings.append(
                        f"{targets[0]} did not coordinate writes within {PROBE_WAIT_S:g} s "
                        f"of its clock being fixed: {after}")
        # a killed node restarts by itself (supervisord, after restart_delay_s)
        ended = time.monotonic()
        self.windows.append((kind, started, ended))
        self.events.append({"fault": kind, "targets": targets, "start": started,
                            "seconds": round(ended - started, 2), **detail})


def _split(nodes: Sequence[str], cut: Sequence[str]) -> dict[str, set[str]]:
    cut_set = set(cut)
    return {n: (cut_set if n in cut_set else set(nodes) - cut_set) for n in nodes}


def _majority_ring(nodes: Sequence[str]) -> dict[str, set[str]]:
    """Each node reaches its neighbours on a ring of ``nodes``: with 5 nodes, the two next to
    it, so each sees a majority (itself and them) and no two see the same one."""
    count = len(nodes)
    reach = count // 2 // 2 or 1
    return {node: {nodes[(i + d) % count] for d in range(-reach, reach + 1)}
            for i, node in enumerate(nodes)}


def run(args: argparse.Namespace) -> dict:
    problems = preflight()
    if problems:
        raise JepsenError("; ".join(problems))
    kinds, skipped = available_kinds()
    nodes = [f"node{i}" for i in range(1, args.nodes + 1)]
    network = Network(str(os.getpid()), [*nodes, CLIENT_HOST])
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="zring-jepsen-"))
    workdir.mkdir(parents=True, exist_ok=True)
    hold_s = args.interval * 0.7
    cluster = None
    workers: list[subprocess.Popen] = []
    try:
        network.create()
        network.setns(CLIENT_HOST)  # every socket of this process and its children lives here
        cluster = make_cluster(network, workdir, hold_s, args.write_quorum, args.read_quorum)
        cluster.start(timeout_s=90)
        history_files = []
        for index in range(args.set_workers + args.register_workers):
            kind = "set" if index < args.set_workers else "register"
            path = workdir / f"history-{kind}-{index}.jsonl"
            history_files.append((kind, path))
            workers.append(subprocess.Popen(
                [sys.executable, __file__, "worker", "--kind", kind, "--id", str(index),
                 "--seeds", ",".join(cluster.seeds), "--out", str(path), "--keys",
                 str(args.keys), "--rate", str(args.rate), "--seed", str(args.seed + index)],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}))
        rng = random.Random(args.seed)
        nemesis = Nemesis(network, cluster, rng, args.loss, args.delay_ms, args.jitter_ms)
        calm_s = args.interval * 0.3
        time.sleep(calm_s)  # a calm start: the history opens with a healthy cluster
        schedule = [kinds[i % len(kinds)] for i in range(args.faults)]
        fault_start = time.monotonic()
        for kind in schedule:
            time.sleep(max(0.0, fault_start - time.monotonic()))
            nemesis.start(kind)   # a clock fault returns once the node runs on its clock
            time.sleep(nemesis.hold_seconds(kind, hold_s))
            nemesis.heal()
            # one every interval, but never without a calm after a fault that ran long
            fault_start = max(fault_start + args.interval, time.monotonic() + calm_s)
        time.sleep(calm_s)
        cluster.wait_running(nodes, timeout_s=60)
        cluster.wait_converged(nodes, timeout_s=90)
        # an op in flight may take the client's retries (4 tries of 5 s); a worker killed
        # after that leaves its last op an invoke: info
        harness.stop_processes(workers, term_wait_s=60)
        ops_by_kind: dict[str, list[Op]] = defaultdict(list)
        for kind, path in history_files:
            ops_by_kind[kind] += load_history(path.read_text().splitlines())
        coordinated = _client_coordinated(cluster, nodes)
        set_result = _final_set_check(cluster, nodes, ops_by_kind["set"])
        register_result = check_register(ops_by_kind["register"])
        all_ops = ops_by_kind["set"] + ops_by_kind["register"]
        result = {
            "faults": len(nemesis.events), "fault_kinds": kinds, "skipped": skipped,
            "nodes": len(nodes), "interval_s": args.interval, "set": set_result,
            "register": register_result,
            "availability": availability(all_ops, nemesis.windows),
            "healthy_ok": _healthy_ok(all_ops, nemesis.windows),
            "client_coordinated": coordinated,
            "events": nemesis.events, "nemesis_problems": nemesis.problems,
            "nemesis_warnings": nemesis.warnings, "dir": str(workdir),
        }
        result["valid"] = verdict_valid(set_result, register_result, nemesis.problems)
        return result
    finally:
        harness.stop_processes(workers, term_wait_s=0)
        if cluster is not None:
            cluster.stop()
        network.destroy()


def verdict_valid(set_result: dict, register_result: dict, problems: Sequence[str]) -> bool:
    """Nothing acknowledged lost, nothing unexpected, nothing unread; the register history
    shown linearizable (no key failed or undecided) without a real-time anomaly; no node
    did what it must not under a fault."""
    return (not set_result["lost"] and not set_result["unexpected"]
            and not set_result["unread"] and register_result["linearizable"]
            and not register_result["nonlinearizable_keys"]
            and not register_result["undecided_keys"]
            and not (register_result["stale"] or register_result["went_back"]
                     or register_result["future"])
            and not problems)


def _client_coordinated(cluster, nodes: list[str]) -> dict:
    """Replica copies the workers' clients coordinated themselves (token-aware clients on a
    settled ring), from the nodes' counters (since each last started: a lower bound)."""
    totals = {"writes": 0, "reads": 0, "refused": 0}
    with cluster.client(timeout=5.0) as client:
        for name in nodes:
            try:
                stats = client.node_stats(name)
            except Exception:  # noqa: BLE001 - a node that does not answer adds nothing
                continue
            totals["writes"] += stats.get("direct_writes", 0)
            totals["reads"] += stats.get("direct_reads", 0)
            totals["refused"] += stats.get("direct_refused", 0)
    return totals


def _final_set_check(cluster, nodes: list[str], adds: list[Op]) -> dict:
    client = cluster.client(timeout=5.0)
    listed: set[str] = set()
    for name in nodes:
        listed.update(k for k in client.local_keys(name) if k.startswith("set-"))
    final: dict[str, str | None] = {}
    for op in adds:
        for _attempt in range(5):
            try:
                result = client.get(op.key)
            except Exception:  # noqa: BLE001 - retried, then reported as unread
                time.sleep(0.5)
                continue
            value = result.value.decode() if isinstance(result.value, bytes) else result.value
            final[op.key] = value if result.found else None
            break
    return check_set(adds, final, listed)


def _healthy_ok(ops: Sequence[Op], windows: Sequence[tuple[str, float, float]]) -> dict:
    healthy = [op for op in ops if not any(s <= op.invoke < e for _, s, e in windows)]
    return {"ops": len(healthy), "ok": sum(op.type == "ok" for op in healthy)}


def format_report(result: dict) -> str:
    s, r = result["set"], result["register"]
    if r["linearizable"]:
        verdict = "linearizable"
    else:
        verdict = "NOT linearizable" if r["nonlinearizable_keys"] else "UNDECIDED"
        if r["nonlinearizable_keys"]:
            verdict += f" (keys {', '.join(r['nonlinearizable_keys'])})"
        if r["undecided_keys"]:
            verdict += (f"; search budget exhausted on {', '.join(r['undecided_keys'])}: "
                        "not a pass")
    lines = [
        f"{result['faults']} faults on {result['nodes']} nodes, one every "
        f"{result['interval_s']:g} s" + (f"; skipped: {', '.join(result['skipped'])}"
                                         if result["skipped"] else ""),
        "",
        "set: attempted {attempted}, acknowledged {acknowledged}, lost {lost}, recovered "
        "{recovered}, unexpected {unexpected}, unread {unread}".format(
            attempted=s["attempted"], acknowledged=s["acknowledged"], lost=len(s["lost"]),
            recovered=s["recovered"], unexpected=len(s["unexpected"]), unread=len(s["unread"])),
        f"register: {r['ops']} ops on {r['keys']} keys ({r['writes_acknowledged']} writes "
        f"acknowledged, {r['writes_indeterminate']} indeterminate, {r['reads']} reads, "
        f"{r['reads_failed']} failed): {verdict}; stale reads {r['stale']}, went back "
        f"{r['went_back']}, future {r['future']}",
    ]
    coordinated = result.get("client_coordinated")
    if coordinated:
        lines.append(f"client-coordinated replica copies: {coordinated['writes']} writes, "
                     f"{coordinated['reads']} reads ({coordinated['refused']} refused: a "
                     "node coordinated those)")
    for example in r["counterexamples"][:2]:
        lines.append(f"  counterexample: {json.dumps(example)[:1500]}")
    for anomaly in r["anomalies"][:3]:
        lines.append(f"  anomaly: {json.dumps(anomaly)}")
    for problem in result.get("nemesis_problems", []):
        lines.append(f"nemesis: {problem}")
    for warning in result.get("nemesis_warnings", []):
        lines.append(f"nemesis (warning): {warning}")
    lines += ["", f"{'fault':<26}{'events':>7}{'ops':>8}{'ok':>8}{'ok %':>7}"]
    rows = dict(result["availability"])
    rows["(no fault)"] = {"events": 0, **result["healthy_ok"]}
    for kind, row in rows.items():
        share = 100.0 * row["ok"] / row["ops"] if row["ops"] else 0.0
        lines.append(f"{kind:<26}{row['events']:>7}{row['ops']:>8}{row['ok']:>8}{share:>6.1f}%")
    lines += ["", "VALID" if result["valid"] else "INVALID: see " + result["dir"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    parser.add_argument("--faults", type=int, default=30, help="fault events (default 30)")
    parser.add_argument("--interval", type=float, default=10.0,
                        help="seconds between faults; each is held 70%% of it (default 10)")
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--set-workers", type=int, default=2)
    parser.add_argument("--register-workers", type=int, default=2)
    parser.add_argument("--keys", type=int, default=8, help="register keys (default 8)")
    parser.add_argument("--rate", type=float, default=40.0, help="ops/s per worker")
    parser.add_argument("--loss", type=float, default=0.1, help="loss fault: drop probability")
    parser.add_argument("--delay-ms", type=float, default=100.0)
    parser.add_argument("--jitter-ms", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--write-quorum", type=int, default=2,
                        help="W of the nodes (N is 3); 1 shows what the checker catches")
    parser.add_argument("--read-quorum", type=int, default=2, help="R of the nodes")
    parser.add_argument("--dir", help="keep history and logs here (default: a temp dir)")
    parser.add_argument("--json", help="also write the result here")
    worker = sub.add_parser("worker", help="(internal) one workload client")
    worker.add_argument("--kind", choices=("set", "register"), required=True)
    worker.add_argument("--id", type=int, required=True)
    worker.add_argument("--seeds", required=True)
    worker.add_argument("--out", required=True)
    worker.add_argument("--keys", type=int, default=8)
    worker.add_argument("--rate", type=float, default=40.0)
    worker.add_argument("--seed", type=int, default=1)
    delayer = sub.add_parser("delay", help="(internal) hold a node's packets")
    delayer.add_argument("--ms", type=float, required=True)
    delayer.add_argument("--jitter-ms", type=float, default=0.0)
    sub.add_parser("cleanup", help="delete namespaces of runs that are gone")
    args = parser.parse_args(argv)
    if args.command == "worker":
        run_worker(args.kind, args.id, args.seeds.split(","), args.out, args.keys, args.rate,
                   args.seed)
        return 0
    if args.command == "delay":
        run_delayer(args.ms, args.jitter_ms)
        return 0
    if args.command == "cleanup":
        for name in cleanup_stale():
            print(f"removed {name}")
        return 0
    try:
        result = run(args)
    except JepsenError as exc:
        print(f"jepsen: {exc}", file=sys.stderr)
        return 2
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(format_report(result))
    return 0 if result["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
