#!/usr/bin/env python3
"""A Jepsen-style test of zring: real node processes on hosts made of network namespaces.

    # once, as root: iptables for partitions and loss, libnetfilter-queue for delays
    apt-get install -y iptables libnetfilter-queue-dev && .venv/bin/pip install -e '.[jepsen]'
    .venv/bin/python tools/jepsen.py                     # 24 faults, one every 10 s (~5 min)
    .venv/bin/python tools/jepsen.py --faults 8 --interval 5 --json result.json
    .venv/bin/python tools/jepsen.py cleanup             # namespaces a killed run left behind

Each node runs in its own network namespace (``zj<pid>-n1``...), with a veth pair to a bridge
in a switch namespace; the clients run in one more. Nothing is added to the machine's own
network namespace. supervisord runs the nodes (``ip netns exec <ns> zring node ...``) and the
nemesis kills and pauses them through tools/chaos.py, as users do.

The nemesis starts a fault every ``--interval`` seconds, holds it for 70% of the interval and
heals it, cycling through: ``kill`` (SIGKILL; supervisord restarts the node when the fault
ends), ``pause`` (SIGSTOP, then SIGCONT), ``partition-one`` (one node cut off from the other
nodes), ``partition-minority`` (two nodes from three), ``partition-majority-ring`` (each node
reaches only its ring neighbours: every node sees a majority, no two the same), ``loss``
(``--loss`` of packets dropped both ways on every node) and ``delay`` (every packet a node
sends held ``--delay-ms`` +- ``--jitter-ms``, so they reorder). Partitions and loss are
iptables rules in the nodes' namespaces; the delay is an NFQUEUE that a small process per node
releases late (this kernel has no netem). Clients keep reaching every node throughout.

Two workloads run meanwhile, each op recorded with its invoke and complete times:

- set: unique keys are inserted; after the faults heal, every node's keys are listed and
  every attempted key read at quorum. Like Jepsen's set checker it reports attempted,
  acknowledged, lost (acknowledged but gone), recovered (unacknowledged but present) and
  unexpected (present but never attempted, or with a value never written).
- register: a few keys take unique writes and reads. A read is stale if it returns an older
  version than a write acknowledged before the read began (quorums must overlap), and
  unexpected if it returns a value nobody wrote.

The exit status is 0 when nothing acknowledged was lost and nothing unexpected or stale was
read, 1 otherwise. The history (JSON lines per client) and the node logs stay in ``--dir``.
"""

from __future__ import annotations

import argparse
import bisect
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

ROOT = Path(__file__).resolve().parents[1]
SUBNET = "10.213.0"          # private addresses, only inside this run's namespaces
NODE_PORT, GOSSIP_PORT = 7000, 7100
CLIENT_HOST = "client"
FAULT_KINDS = ("kill", "pause", "partition-one", "partition-minority",
               "partition-majority-ring", "loss", "delay")
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
    # one token-aware client: each op goes straight to a replica of its key; no retries,
    # so every op is sent once and an unanswered write stays indeterminate
    client = Client(seeds, timeout=1.0, retries=0)
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
    version: tuple | None = None


def load_history(lines: Iterable[str]) -> list[Op]:
    """Pair each completion with its process's invoke (a worker runs one op at a time); an
    invoke without a completion (the worker died mid-op) is an ``info`` op."""
    invokes: dict[int, dict] = {}
    ops = []
    for line in lines:
        if not line.strip():
            continue
        entry = json.loads(line)
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


def check_register(ops: Sequence[Op]) -> dict:
    """Reads against writes per key: stale (older than a write acknowledged before the read
    began) and unexpected (a value never written, or with another write's version)."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    reads = stale = unexpected = 0
    examples: list[dict] = []
    for key, key_ops in by_key.items():
        writes = {op.value: op for op in key_ops if op.f == "write"}
        acked = sorted((op for op in writes.values() if op.type == "ok" and op.version),
                       key=lambda op: op.complete)
        completes = [op.complete for op in acked]
        newest_before: list[tuple] = []   # newest acked version among acked[:i + 1]
        for op in acked:
            newest_before.append(max(op.version, newest_before[-1]) if newest_before
                                 else op.version)
        for read in key_ops:
            if read.f != "read" or read.type != "ok":
                continue
            reads += 1
            write = writes.get(read.value) if read.value is not None else None
            if read.value is not None and (write is None or write.invoke > read.complete or (
                    write.version and read.version and write.version != read.version)):
                unexpected += 1
                examples.append({"anomaly": "unexpected", "key": key, "read": read.value,
                                 "at": read.invoke})
                continue
            index = bisect.bisect_left(completes, read.invoke)
            if index and (read.version is None or read.version < newest_before[index - 1]):
                stale += 1
                examples.append({"anomaly": "stale", "key": key, "read": read.value,
                                 "read_version": read.version,
                                 "newer_acked": newest_before[index - 1], "at": read.invoke})
    return {"reads": reads, "stale": stale, "unexpected": unexpected, "examples": examples[:10]}


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

def _load_localcluster():
    sys.path.insert(0, str(ROOT))
    from zring.localcluster import LocalCluster
    return LocalCluster


def make_cluster(network: Network, root: Path, hold_s: float, write_quorum: int = 2,
                 read_quorum: int = 2):
    """A LocalCluster whose nodes run inside their namespaces at their hosts' addresses."""
    LocalCluster = _load_localcluster()

    class NetCluster(LocalCluster):
        def __init__(self) -> None:
            super().__init__(root, nodes=len(network.node_hosts()), log_level="info",
                             restart_delay_s=hold_s, write_quorum=write_quorum,
                             read_quorum=read_quorum)
            self.addresses = {n: f"tcp://{network.ips[n]}:{NODE_PORT}" for n in self.names}
            self.gossip = {n: f"tcp://{network.ips[n]}:{GOSSIP_PORT}" for n in self.names}
            self.seeds = [self.addresses[n] for n in self.names]

        def _node_command(self, name: str) -> str:
            return f"ip netns exec {network.namespace(name)} " + super()._node_command(name)

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
        self._active: tuple[str, list[str], float] | None = None

    def start(self, kind: str) -> None:
        nodes = self.nodes
        targets: list[str] = []
        if kind == "kill":
            targets = [self.rng.choice(nodes)]
            self.cluster.chaos("kill", targets[0])
        elif kind == "pause":
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
        else:
            raise JepsenError(f"unknown fault {kind!r}")
        self._active = (kind, targets, time.monotonic())

    def heal(self) -> None:
        if self._active is None:
            return
        kind, targets, started = self._active
        self._active = None
        if kind == "pause":
            self.cluster.chaos("resume", targets[0])
        self.network.heal()
        # a killed node restarts by itself (supervisord, after restart_delay_s)
        ended = time.monotonic()
        self.windows.append((kind, started, ended))
        self.events.append({"fault": kind, "targets": targets, "start": started,
                            "seconds": round(ended - started, 2)})


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
    kinds = [k for k in FAULT_KINDS if k != "delay" or delay_available()]
    skipped = [] if "delay" in kinds else ["delay (NetfilterQueue not installed)"]
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
        time.sleep(args.interval * 0.3)  # a calm start: the history opens with a healthy cluster
        schedule = [kinds[i % len(kinds)] for i in range(args.faults)]
        began = time.monotonic()
        for number, kind in enumerate(schedule):
            fault_start = began + number * args.interval
            time.sleep(max(0.0, fault_start - time.monotonic()))
            nemesis.start(kind)
            time.sleep(max(0.0, fault_start + hold_s - time.monotonic()))
            nemesis.heal()
        time.sleep(args.interval * 0.3)
        cluster.wait_running(nodes, timeout_s=60)
        cluster.wait_converged(nodes, timeout_s=90)
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=30)
        ops_by_kind: dict[str, list[Op]] = defaultdict(list)
        for kind, path in history_files:
            ops_by_kind[kind] += load_history(path.read_text().splitlines())
        set_result = _final_set_check(cluster, nodes, ops_by_kind["set"])
        register_result = check_register(ops_by_kind["register"])
        all_ops = ops_by_kind["set"] + ops_by_kind["register"]
        result = {
            "faults": len(nemesis.events), "fault_kinds": kinds, "skipped": skipped,
            "nodes": len(nodes), "interval_s": args.interval, "set": set_result,
            "register": register_result,
            "availability": availability(all_ops, nemesis.windows),
            "healthy_ok": _healthy_ok(all_ops, nemesis.windows),
            "events": nemesis.events, "dir": str(workdir),
        }
        result["valid"] = (not set_result["lost"] and not set_result["unexpected"]
                           and not set_result["unread"] and not register_result["stale"]
                           and not register_result["unexpected"])
        return result
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        if cluster is not None:
            cluster.stop()
        network.destroy()


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
    lines = [
        f"{result['faults']} faults on {result['nodes']} nodes, one every "
        f"{result['interval_s']:g} s" + (f"; skipped: {', '.join(result['skipped'])}"
                                         if result["skipped"] else ""),
        "",
        "set: attempted {attempted}, acknowledged {acknowledged}, lost {lost}, recovered "
        "{recovered}, unexpected {unexpected}, unread {unread}".format(
            attempted=s["attempted"], acknowledged=s["acknowledged"], lost=len(s["lost"]),
            recovered=s["recovered"], unexpected=len(s["unexpected"]), unread=len(s["unread"])),
        f"register: {r['reads']} reads, {r['stale']} stale, {r['unexpected']} unexpected",
        "",
        f"{'fault':<26}{'events':>7}{'ops':>8}{'ok':>8}{'ok %':>7}",
    ]
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
    parser.add_argument("--faults", type=int, default=24, help="fault events (default 24)")
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
