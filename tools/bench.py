#!/usr/bin/env python3
"""Benchmark zring against Redis and etcd, side by side, in one run.

    python tools/bench.py                          # the supervisord cluster (127.0.0.1:7001..7003)
    python tools/bench.py --start-cluster          # a temporary 3-node cluster, removed after
    python tools/bench.py --ops 5000 --value-size 1000
    python tools/bench.py --workloads sync,batch   # only some of the workloads below
    python tools/bench.py --redis-port 6379        # an already running redis-server
    python tools/bench.py --no-redis               # zring alone (and etcd)
    python tools/bench.py --no-etcd                # without the etcd rows
    python tools/bench.py --start-cluster --workloads sync,etcd   # zring vs etcd (and redis)
    python tools/bench.py --start-cluster --rounds 3   # 3 rounds, median and range of ratios
    python tools/bench.py --workloads memory       # the memory comparison alone (1M keys)
    python tools/bench.py --start-cluster --memory # every workload, then the memory comparison
    python tools/bench.py --security               # zring with CurveZMQ on vs off, no redis

Workloads (``--workloads``, default ``sync,async,batch,echo,etcd``), in one table (etcd in
a second one, echo in a third):

    sync    one synchronous client, one request in flight (latency-bound, as a simple
            application sees it):
              put W=2          zring put(key, value) at the cluster's default W   vs  SET
              get R=2          zring get(key) at the cluster's default R          vs  GET
              get R=1          zring get(key, r=1)                                vs  GET
    async   --concurrency (100) requests in flight at once: zring.AsyncClient driven by 100
            asyncio workers  vs  redis.asyncio driven by 100 workers (a connection each):
              async 100 put / async 100 get                                       vs  SET / GET
    batch   --batch (100) keys per call on the synchronous zring.Client:
              mput 100         client.mput(100 items)    vs  a redis-py pipeline of 100 SETs
              mget 100         client.mget(100 keys)     vs  a redis-py pipeline of 100 GETs
              mget 100 R=1     client.mget(100 keys, r=1)  vs  the same pipeline
            (ops/s counts keys; the latencies are per call of 100 keys)
    echo    the ceiling: a bare pyzmq DEALER/ROUTER echo that decodes and re-encodes each
            msgpack frame (no zring), one at a time and --concurrency in flight, and the same
            echo behind a relay process that forwards each frame to it and its answer back
            (two hops one after the other, the least a write at W=2 or a read at R=2 takes
            when its coordinator must hear a peer), with their rates against redis's and
            zring's against them
    etcd    the peer a Python user would otherwise pick for a replicated store: a 3-member
            etcd cluster (Debian ``etcd-server``, Raft) on free loopback ports in a temporary
            directory, started and stopped by this tool, driven by the ``etcd3`` client
            (0.12, ``pip install -e '.[peers]'``) on the leader, beside zring's sync rows
            (etcd implies sync) and, with async, its async rows:
              put W=2          zring put            vs  etcd put (a Raft write, WAL fsynced)
              get R=2          zring get            vs  etcd linearizable get (ReadIndex)
              get R=1          zring get(r=1)       vs  etcd serializable get (local)
              async 100 put / async 100 get  vs  etcd put / linearizable get with 100 calls
                               in flight on one gRPC channel (etcd3 0.12 has no asyncio
                               API: its gRPC stubs' futures, bridged to asyncio)
            Without etcd or etcd3 the tool prints "etcd: skipped: <why>" and goes on.
    memory  (``--memory``) VmRSS of each node of a fresh 3-node cluster preloaded with
            --memory-keys (1,000,000) keys of --value-size bytes (N=3: every node holds all of
            them), after a pass of gets over --memory-sample random keys, and again after
            --memory-writes (default half of them) random overwrites through mput (a store
            holds written records in memory before it flushes them), beside redis-server
            holding the same keys (its VmRSS and INFO used_memory_rss). It always uses its own
            cluster and redis-server, after the other workloads are done and stopped.

For each workload: throughput (ops/s), p50 and p99 latency (ms) of both and the ratios
zring/redis (z/r) and zring/etcd (z/e); after each round, the share of the machine's CPU time
its hypervisor took (steal, from /proc/stat) meanwhile: on a shared virtual machine it swings
from none to half a core and takes every figure with it. Every loop is bounded by --ops and by
--max-seconds, and every process this tool starts (redis-server, the etcd members, the
temporary clusters' nodes) is stopped by its pid in a ``finally`` (also on SIGTERM):
terminate, then kill after a deadline. zring.AsyncClient, Client.mget and
Client.mput are optional: where the installed zring lacks them, those zring cells show "-"
with a note (redis still runs).

``--security`` compares zring with itself instead: two temporary 3-node clusters, one plain
and one with CurveZMQ on every socket (``zring keygen`` keys, a client key), the sync, async
and batch workloads on each in turn (who goes first alternates), every round, and the ops/s
ratio curve/plain per row.

Redis and etcd are optional: without redis-server (``apt-get install -y redis-server``) or
redis-py (``pip install redis``) the tool prints a hint and leaves redis out; without etcd
(``apt-get install -y etcd-server``) or its client it prints "etcd: skipped: <why>" and leaves
etcd out. ``pip install -e '.[peers]'`` installs both clients. Only loopback addresses are
ever used.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402 - tools/harness.py, found through the line above
from harness import (  # noqa: E402
    Result,
    layout,
    ratio_text,
    run_async_workload,
    run_workload,
)

if TYPE_CHECKING:
    from zring.localcluster import LocalCluster

DEFAULT_SEEDS = "tcp://127.0.0.1:7001,tcp://127.0.0.1:7002,tcp://127.0.0.1:7003"
LOOPBACK = "127.0.0.1"
WARMUP_OPS = 200
WORKLOADS = ("sync", "async", "batch", "echo", "etcd", "memory")
DEFAULT_WORKLOADS = "sync,async,batch,echo,etcd"
REDIS_TIMEOUT_S = 5.0
MIB = 1024 * 1024


# ---------------------------------------------------------------------- measurement

def parse_vm_rss(status_text: str) -> int | None:
    """The VmRSS of a /proc/<pid>/status text, in bytes (None if absent)."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            scale = {"kb": 1024, "mb": MIB, "gb": 1024 * MIB}.get(parts[2].lower(), 1) \
                if len(parts) > 2 else 1
            return int(parts[1]) * scale
    return None


def parse_cpu_steal(stat_text: str) -> tuple[int, int] | None:
    """(steal, total) clock ticks of all CPUs from the text of /proc/stat; None if absent."""
    for line in stat_text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(field) for field in fields[1:]]
            # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time
            # is counted in user time already
            return (ticks[7], sum(ticks[:8])) if len(ticks) >= 8 else None
    return None


def cpu_steal() -> tuple[int, int] | None:
    """This machine's CPU time taken by its hypervisor so far (see ``parse_cpu_steal``)."""
    try:
        return parse_cpu_steal(Path("/proc/stat").read_text())
    except OSError:
        return None


def steal_note(before: tuple[int, int] | None, after: tuple[int, int] | None) -> str | None:
    """What share of the CPU time between two ``cpu_steal`` readings the hypervisor took."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    share = (after[0] - before[0]) / (after[1] - before[1])
    return (f"CPU time taken by the hypervisor (steal) during this round: {share:.0%}"
            + (" (the figures above are unsteady)" if share >= 0.05 else ""))


def vm_rss(pid: int) -> int | None:
    """Resident memory of process ``pid`` in bytes, from /proc (None if it is gone)."""
    try:
        return parse_vm_rss(Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return None


def tree_size(path: Path) -> int:
    """Bytes of the regular files under ``path``."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


# ---------------------------------------------------------------------- processes

def temp_cluster(secure: bool = False) -> LocalCluster:
    """A 3-node LocalCluster (zring.localcluster) in a new temporary directory, not started;
    ``secure``: with CurveZMQ keys made for it (its clients use the key "clients/bench")."""
    if not secure:
        return harness.temp_cluster(nodes=3, log_level="warning")
    from zring.localcluster import LocalCluster
    from zring.security import keygen

    root = Path(tempfile.mkdtemp(prefix="zring-bench-"))
    keygen(root / "keys", nodes=["node1", "node2", "node3"], clients=["bench"])
    return LocalCluster(root, nodes=3, log_level="warning", keys_dir=root / "keys",
                        client_key="clients/bench")


class TempRedis:
    """``redis-server`` on a free loopback port, without persistence."""

    def __init__(self, binary: str) -> None:
        from zring.localcluster import free_ports

        self.binary = binary
        self.port = free_ports(1)[0]
        self.root = tempfile.mkdtemp(prefix="zring-bench-redis-")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 15.0) -> None:
        import redis

        from zring.localcluster import wait_for

        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", LOOPBACK, "--save", "",
             "--appendonly", "no", "--dir", self.root, "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {self.proc.returncode}")
            return redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=1).ping()
        wait_for(up, timeout_s, f"redis-server on port {self.port}", interval_s=0.05)

    def stop(self) -> None:
        if self.proc is not None:
            harness.stop_processes([self.proc])
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------------- etcd

ETCD_MEMBERS = 3
ETCD_TIMEOUT_S = 5.0
ETCD_INSTALL = "apt-get install -y etcd-server"
ETCD3_INSTALL = "pip install -e '.[peers]'"


def etcd_initial_cluster(names: list[str], peer_ports: list[int]) -> str:
    """etcd's ``--initial-cluster``: ``name=http://127.0.0.1:PEERPORT`` for each member."""
    return ",".join(f"{name}=http://{LOOPBACK}:{port}" for name, port in zip(names, peer_ports,
                                                                             strict=True))


def etcd_member_command(binary: str, name: str, data_dir: str, client_port: int,
                        peer_port: int, initial_cluster: str, token: str) -> list[str]:
    """The command line of one member of a new loopback-only etcd cluster."""
    client_url, peer_url = f"http://{LOOPBACK}:{client_port}", f"http://{LOOPBACK}:{peer_port}"
    return [binary, "--name", name, "--data-dir", data_dir,
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", initial_cluster, "--initial-cluster-token", token,
            "--initial-cluster-state", "new", "--logger", "zap", "--log-level", "warn"]


def etcd_skip_line(why: str) -> str:
    """The one line said instead of the etcd rows."""
    return f"etcd: skipped: {why}"


def import_etcd3() -> tuple[Any, str]:
    """The ``etcd3`` module, else (None, why not). etcd3 0.12's generated protobuf code
    predates protobuf 4: with a newer protobuf it needs the pure-Python implementation,
    chosen here (before protobuf is first imported) unless the environment chose one."""
    from importlib import metadata

    try:
        protobuf = metadata.version("protobuf")
    except metadata.PackageNotFoundError:
        protobuf = ""
    if protobuf and int(protobuf.split(".")[0]) >= 4:
        os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
    try:
        return importlib.import_module("etcd3"), ""
    except ImportError:
        return None, f"the etcd3 client is not installed ({ETCD3_INSTALL})"
    except Exception as exc:  # e.g. protobuf's "Descriptors cannot be created directly"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return None, f"the etcd3 client failed to import ({type(exc).__name__}: {first})"


def etcd_client_text(etcd3: Any) -> str:
    """``etcd3 0.12.0, protobuf 7.36.2 (python)``: what drives etcd, for the header."""
    from importlib import metadata

    try:
        from google.protobuf.internal import api_implementation
        kind = api_implementation.Type()
    except Exception:  # an unusual protobuf: leave the implementation out
        kind = "?"
    try:
        protobuf = metadata.version("protobuf")
    except metadata.PackageNotFoundError:
        protobuf = "?"
    return f"etcd3 {getattr(etcd3, '__version__', '?')}, protobuf {protobuf} ({kind})"


def etcd_availability(workloads: set[str], no_etcd: bool, binary: str | None,
                      client_why: str) -> tuple[bool, str | None]:
    """(run the etcd rows?, the skip line to print, if any). ``client_why``: why etcd3
    did not import ("" if it did)."""
    if "etcd" not in workloads or no_etcd:
        return False, None
    if binary is None:
        return False, etcd_skip_line(f"etcd not found on PATH ({ETCD_INSTALL})")
    if client_why:
        return False, etcd_skip_line(client_why)
    return True, None


class TempEtcd:
    """A new ``members``-member etcd cluster on free loopback ports, each member with its
    data directory in one temporary directory (removed by ``stop``)."""

    def __init__(self, binary: str, members: int = ETCD_MEMBERS) -> None:
        from zring.localcluster import free_ports

        self.binary = binary
        self.names = [f"member{i + 1}" for i in range(members)]
        ports = free_ports(2 * members)
        self.client_ports, self.peer_ports = ports[:members], ports[members:]
        self.root = Path(tempfile.mkdtemp(prefix="zring-bench-etcd-"))
        self.procs: list[subprocess.Popen] = []
        self.leader: str | None = None
        self.version = "?"

    def start(self, etcd3: Any, timeout_s: float = 30.0) -> None:
        """Start every member, then wait (up to ``timeout_s``) until each answers its
        status with the same leader; a member that exits or the deadline raise RuntimeError
        naming the logs (the caller still calls ``stop``)."""
        cluster = etcd_initial_cluster(self.names, self.peer_ports)
        token = f"zring-bench-{os.getpid()}-{self.client_ports[0]}"
        for name, client_port, peer_port in zip(self.names, self.client_ports,
                                                 self.peer_ports, strict=True):
            with open(self.root / f"{name}.log", "wb") as log:
                self.procs.append(subprocess.Popen(
                    etcd_member_command(self.binary, name, str(self.root / name), client_port,
                                        peer_port, cluster, token),
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + timeout_s
        last_error = ""
        while True:
            for name, proc in zip(self.names, self.procs, strict=True):
                if proc.poll() is not None:
                    raise RuntimeError(f"etcd member {name} exited with code "
                                       f"{proc.returncode}; log: {self.root / name}.log")
            try:
                leaders = set()
                for port in self.client_ports:
                    client = etcd3.client(host=LOOPBACK, port=port, timeout=1)
                    try:
                        status = client.status()
                    finally:
                        client.close()
                    leaders.add(status.leader.name if status.leader is not None else None)
                    self.version = status.version
                if len(leaders) == 1 and None not in leaders:
                    self.leader = leaders.pop()
                    return
                last_error = f"leaders seen: {sorted(map(str, leaders))}"
            except Exception as exc:  # not up yet: keep polling until the deadline
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise RuntimeError(f"the etcd cluster was not healthy after {timeout_s:g}s "
                                   f"({last_error}); logs in {self.root}")
            time.sleep(0.1)

    @property
    def leader_port(self) -> int:
        return self.client_ports[self.names.index(self.leader)] if self.leader \
            else self.client_ports[0]

    def stop(self, keep_files: bool = False) -> None:
        """Stop every member by its pid (TERM, then KILL after a deadline): the followers
        first, then the leader (TERMed together, a leader spends 7 s trying to hand its
        lead to a follower that is going too; alone, it stops at once)."""
        leader = self.procs[self.names.index(self.leader)] \
            if self.leader in self.names and len(self.procs) == len(self.names) else None
        harness.stop_processes([proc for proc in self.procs if proc is not leader])
        if leader is not None:
            harness.stop_processes([leader])
        if not keep_files:
            shutil.rmtree(self.root, ignore_errors=True)


def warm_up(peer: str, put: Callable, get: Callable, prefix: str, value: bytes,
            ops: int) -> None:
    """A few puts and gets before timing; a peer that fails them fails the run, named."""
    try:
        for i in range(min(WARMUP_OPS, ops)):
            put(f"{prefix}:warmup:{i}", value)
            get(f"{prefix}:warmup:{i}")
    except Exception as exc:
        raise RuntimeError(f"{peer}: {type(exc).__name__}: {exc}") from None


def bench_etcd(etcd3: Any, port: int, workloads: set[str], args: argparse.Namespace,
               value: bytes, prefix: str) -> dict[str, Result]:
    """etcd's rows on the member at ``port``: put, linearizable and serializable get one at
    a time, and (with async) put and linearizable get with ``args.concurrency`` in flight."""
    ops, max_seconds = args.ops, args.max_seconds
    results: dict[str, Result] = {}
    client = etcd3.client(host=LOOPBACK, port=port, timeout=ETCD_TIMEOUT_S)
    try:
        keys = [f"{prefix}:{i:08d}" for i in range(ops)]
        warm_up(f"etcd at {LOOPBACK}:{port}", client.put, client.get, prefix, value, ops)
        results["put"] = run_workload("etcd put", lambda i: bool(client.put(keys[i], value)),
                                      ops, max_seconds)
        results["get"] = run_workload("etcd get",
                                      lambda i: client.get(keys[i])[0] is not None,
                                      ops, max_seconds)
        results["get_r1"] = run_workload(
            "etcd get serializable",
            lambda i: client.get(keys[i], serializable=True)[0] is not None, ops, max_seconds)
        if "async" in workloads:
            results.update(asyncio.run(bench_etcd_async(etcd3, client, args, value, prefix)))
        return results
    finally:
        client.close()


async def bench_etcd_async(etcd3: Any, client: Any, args: argparse.Namespace, value: bytes,
                           prefix: str) -> dict[str, Result]:
    """put then linearizable get with ``args.concurrency`` calls in flight on the client's
    one gRPC channel: etcd3 0.12 has no asyncio API, so each call is its gRPC stub's
    ``future`` (HTTP/2 streams on one connection), settled on the event loop."""
    etcdrpc = etcd3.etcdrpc
    loop = asyncio.get_running_loop()
    keys = [f"{prefix}:async:{i:08d}".encode() for i in range(args.ops)]
    data = bytes(value)

    def call(method: Any, request: Any) -> asyncio.Future:
        settled: asyncio.Future = loop.create_future()

        def settle(done: Any) -> None:
            if settled.done():
                return
            if done.cancelled():
                settled.set_exception(RuntimeError("gRPC call cancelled"))
            elif done.exception() is not None:
                settled.set_exception(done.exception())
            else:
                settled.set_result(done.result())

        def on_done(done: Any) -> None:  # in a gRPC thread
            try:
                loop.call_soon_threadsafe(settle, done)
            except RuntimeError:  # the loop is closed: the call was given up on
                pass

        method.future(request, ETCD_TIMEOUT_S, metadata=client.metadata).add_done_callback(
            on_done)
        return settled

    async def put(i: int) -> bool:
        await call(client.kvstub.Put, etcdrpc.PutRequest(key=keys[i], value=data))
        return True

    async def get(i: int) -> bool:
        return (await call(client.kvstub.Range, etcdrpc.RangeRequest(key=keys[i]))).count > 0

    await asyncio.gather(*(call(client.kvstub.Range, etcdrpc.RangeRequest(key=keys[0]))
                           for _ in range(args.concurrency)))  # open the streams before timing
    grace_s = 2 * ETCD_TIMEOUT_S + 10
    return {
        "aput": await run_async_workload("etcd async put", put, args.ops, args.concurrency,
                                         args.max_seconds, grace_s),
        "aget": await run_async_workload("etcd async get", get, args.ops, args.concurrency,
                                         args.max_seconds, grace_s),
    }


# ---------------------------------------------------------------------- workloads

# (key, workload group, zring label, redis command), in the table's order
ROWS = (
    ("put", "sync", "put W={w}", "SET"),
    ("get", "sync", "get R={r}", "GET"),
    ("get_r1", "sync", "get R=1", "GET"),
    ("aput", "async", "async {c} put W={w}", "SET"),
    ("aget", "async", "async {c} get R={r}", "GET"),
    ("mput", "batch", "mput {b} W={w}", "pipeline SET"),
    ("mget", "batch", "mget {b} R={r}", "pipeline GET"),
    ("mget_r1", "batch", "mget {b} R=1", "pipeline GET"),
)
# the same for etcd: the rows of ROWS that map onto it, with its operation
ETCD_ROWS = (
    ("put", "sync", "put W={w}", "put"),
    ("get", "sync", "get R={r}", "get lin."),
    ("get_r1", "sync", "get R=1", "get ser."),
    ("aput", "async", "async {c} put W={w}", "put"),
    ("aget", "async", "async {c} get R={r}", "get lin."),
)


def key_batches(prefix: str, count: int, batch: int) -> list[list[str]]:
    """``ceil(count / batch)`` lists of ``batch`` distinct keys under ``prefix``."""
    calls = max(1, math.ceil(count / batch))
    return [[f"{prefix}:{c * batch + j:08d}" for j in range(batch)] for c in range(calls)]


def async_client_class() -> tuple[Any, str]:
    """``zring.AsyncClient`` (or ``zring.aio.AsyncClient``), else (None, why not)."""
    import zring

    try:
        cls = getattr(zring, "AsyncClient", None)
    except Exception as exc:  # its lazy import failed: the module is being written
        return None, f"zring.AsyncClient failed to import ({type(exc).__name__}: {exc})"
    if cls is None:
        try:
            cls = getattr(importlib.import_module("zring.aio"), "AsyncClient", None)
        except ModuleNotFoundError as exc:
            if exc.name != "zring.aio":
                return None, f"zring.aio failed to import ({exc})"
        except Exception as exc:
            return None, f"zring.aio failed to import ({type(exc).__name__}: {exc})"
    if cls is None:
        return None, "zring.AsyncClient is not available in this zring (yet)"
    return cls, ""


async def _close(client: Any) -> None:
    """``client.close()``, awaited if it is a coroutine function."""
    closing = client.close()
    if inspect.isawaitable(closing):
        await closing


def _count_ok(replies: list, batch: int, attribute: str) -> int:
    if len(replies) != batch:
        raise RuntimeError(f"{len(replies)} replies for {batch} keys")
    return sum(1 for reply in replies if getattr(reply, attribute))


def bench_zring(seeds: str, workloads: set[str], args: argparse.Namespace, value: bytes,
                prefix: str, keys: Any = None) -> tuple[dict[str, Result], dict[str, str], dict]:
    """zring's rows: (results by row key, why a row's zring side was skipped, quorums).
    ``keys``: the clients' CurveZMQ keys, for a cluster with security on."""
    from zring import Client

    ops, max_seconds = args.ops, args.max_seconds
    results: dict[str, Result] = {}
    notes: dict[str, str] = {}
    secure = {"keys": keys} if keys is not None else {}
    client = Client(seeds, timeout=args.timeout, **secure)
    try:
        try:
            state = client.ring_state()
            quorums = {"w": state.write_quorum, "r": state.read_quorum, "n": state.replicas,
                       "nodes": len(state.nodes)}
        except Exception as exc:
            raise RuntimeError(f"cannot reach the zring cluster at {seeds}: {exc}") from None
        keys = [f"{prefix}:{i:08d}" for i in range(ops)]
        try:
            for i in range(min(WARMUP_OPS, ops)):  # connect and warm both paths up
                client.put(f"{prefix}:warmup:{i}", value)
                client.get(f"{prefix}:warmup:{i}")
        except Exception as exc:
            raise RuntimeError(f"zring warm-up failed: {type(exc).__name__}: {exc}") from None
        if "sync" in workloads:
            results["put"] = run_workload("zring put", lambda i: bool(client.put(keys[i], value)),
                                          ops, max_seconds)
            results["get"] = run_workload("zring get", lambda i: client.get(keys[i]).found,
                                          ops, max_seconds)
            results["get_r1"] = run_workload("zring get r=1",
                                             lambda i: client.get(keys[i], r=1).found,
                                             ops, max_seconds)
        if "batch" in workloads:
            results_or_note = bench_zring_batch(client, args, value, prefix)
            if isinstance(results_or_note, str):
                notes["mput"] = notes["mget"] = results_or_note
            else:
                results.update(results_or_note)
    finally:
        client.close()
    if "async" in workloads:
        cls, why = async_client_class()
        if cls is None:
            notes["aput"] = notes["aget"] = why
        else:
            results_or_note = asyncio.run(bench_zring_async(cls, seeds, args, value, prefix,
                                                            secure))
            if isinstance(results_or_note, str):
                notes["aput"] = notes["aget"] = results_or_note
            else:
                results.update(results_or_note)
    return results, notes, quorums


def bench_zring_batch(client: Any, args: argparse.Namespace, value: bytes,
                      prefix: str) -> dict[str, Result] | str:
    """mput then mget of ``args.batch`` keys per call; a note instead if they are missing."""
    mput, mget = getattr(client, "mput", None), getattr(client, "mget", None)
    missing = [name for name, method in (("mput", mput), ("mget", mget)) if method is None]
    if missing:
        return f"zring.Client.{' and '.join(missing)} not available in this zring (yet)"
    batch = args.batch
    batches = key_batches(f"{prefix}:batch", args.ops, batch)
    items = [[(key, value) for key in keys] for keys in batches]
    try:
        warmup = key_batches(f"{prefix}:batch-warmup", batch, batch)[0]
        _count_ok(mput([(key, value) for key in warmup]), batch, "success")
        _count_ok(mget(warmup), batch, "found")
    except Exception as exc:
        return f"mput/mget warm-up failed: {type(exc).__name__}: {exc}"
    return {
        "mput": run_workload(f"zring mput {batch}",
                             lambda c: _count_ok(mput(items[c]), batch, "success"),
                             len(batches), args.max_seconds, batch=batch),
        "mget": run_workload(f"zring mget {batch}",
                             lambda c: _count_ok(mget(batches[c]), batch, "found"),
                             len(batches), args.max_seconds, batch=batch),
        "mget_r1": run_workload(f"zring mget {batch} r=1",
                                lambda c: _count_ok(mget(batches[c], r=1), batch, "found"),
                                len(batches), args.max_seconds, batch=batch),
    }


async def bench_zring_async(cls: Any, seeds: str, args: argparse.Namespace, value: bytes,
                            prefix: str, options: dict | None = None) -> dict[str, Result] | str:
    """put then get with ``args.concurrency`` requests in flight on one AsyncClient
    (``options``: more AsyncClient arguments)."""
    concurrency = args.concurrency
    keys = [f"{prefix}:async:{i:08d}" for i in range(args.ops)]
    grace_s = 4 * args.timeout + 10
    try:
        client = cls(seeds, timeout=args.timeout, **(options or {}))
    except Exception as exc:
        return f"AsyncClient({seeds!r}) failed: {type(exc).__name__}: {exc}"
    try:
        async def warm_up() -> None:
            for i in range(min(WARMUP_OPS, args.ops)):
                await client.put(f"{prefix}:async-warmup:{i}", value)
                await client.get(f"{prefix}:async-warmup:{i}")
            await asyncio.gather(*(client.get(f"{prefix}:async-warmup:{i % WARMUP_OPS}")
                                   for i in range(concurrency)))
        try:
            await asyncio.wait_for(warm_up(), timeout=grace_s + 60)
        except Exception as exc:  # TimeoutError included
            return f"AsyncClient warm-up failed: {type(exc).__name__}: {exc}"

        async def put(i: int) -> bool:
            return bool(await client.put(keys[i], value))

        async def get(i: int) -> bool:
            return (await client.get(keys[i])).found

        return {
            "aput": await run_async_workload("zring async put", put, args.ops, concurrency,
                                             args.max_seconds, grace_s),
            "aget": await run_async_workload("zring async get", get, args.ops, concurrency,
                                             args.max_seconds, grace_s),
        }
    finally:
        await _close(client)


# A ROUTER that answers each frame with its msgpack decode re-encoded: the least a pyzmq
# server does per request, so its rate is the ceiling of any pyzmq cluster on this machine.
ECHO_SERVER = """
import sys, msgpack, zmq
sock = zmq.Context().socket(zmq.ROUTER)
sock.bind(sys.argv[1])
while True:
    frames = sock.recv_multipart()
    sock.send_multipart([*frames[:-1], msgpack.packb(msgpack.unpackb(frames[-1]))])
"""
# A ROUTER that forwards each decoded frame to the echo (argv[2]) on a DEALER and returns
# its answer: a coordinator that only asks one peer, one request at a time.
RELAY_SERVER = """
import sys, msgpack, zmq
context = zmq.Context()
sock = context.socket(zmq.ROUTER)
sock.bind(sys.argv[1])
peer = context.socket(zmq.DEALER)
peer.connect(sys.argv[2])
while True:
    frames = sock.recv_multipart()
    peer.send(msgpack.packb(msgpack.unpackb(frames[-1])))
    sock.send_multipart([*frames[:-1], msgpack.packb(msgpack.unpackb(peer.recv()))])
"""


def bench_echo(args: argparse.Namespace, value: bytes) -> dict[str, Result]:
    """The bare pyzmq DEALER/ROUTER echo (``ECHO_SERVER`` in its own process): one request
    at a time, and ``args.concurrency`` in flight (a window kept full on one DEALER); then
    one at a time through ``RELAY_SERVER`` (a third process) in front of it."""
    import msgpack
    import zmq

    from zring.localcluster import free_ports

    endpoint, relay_endpoint = (f"tcp://{LOOPBACK}:{port}" for port in free_ports(2))
    server = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, endpoint])
    relay = subprocess.Popen([sys.executable, "-c", RELAY_SERVER, relay_endpoint, endpoint])
    sockets = []
    for _ in range(2):
        dealer = zmq.Context.instance().socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.RCVTIMEO, int(REDIS_TIMEOUT_S * 1000))
        sockets.append(dealer)
    sock, relayed = sockets
    try:
        sock.connect(endpoint)
        relayed.connect(relay_endpoint)
        frame = msgpack.packb([11, 1, {"key": "bench:echo:00000001", "value": value}])
        for _ in range(WARMUP_OPS):  # also waits for the servers to bind
            for dealer in sockets:
                dealer.send(frame)
                dealer.recv()

        def round_trip(dealer: zmq.Socket) -> Callable[[int], bool]:
            def one(i: int) -> bool:
                dealer.send(frame)
                return bool(dealer.recv())
            return one

        results = {"echo": run_workload("pyzmq echo", round_trip(sock), args.ops,
                                        args.max_seconds),
                   "relay": run_workload("pyzmq relay + echo", round_trip(relayed), args.ops,
                                         args.max_seconds)}
        window = Result(f"pyzmq echo {args.concurrency} in flight")
        clock = time.perf_counter_ns
        sent: list[int] = []
        start = clock()
        for _ in range(min(args.concurrency, args.ops)):
            sent.append(clock())
            sock.send(frame)
        done = 0
        while done < args.ops:
            sock.recv()  # FIFO: answers the oldest request in flight
            window.latencies_ns.append(clock() - sent[done])
            done += 1
            if len(sent) < args.ops:
                sent.append(clock())
                sock.send(frame)
        window.ops = done
        window.elapsed_s = (clock() - start) / 1e9
        results["echo_window"] = window
        return results
    except zmq.ZMQError as exc:
        raise RuntimeError(f"pyzmq echo at {endpoint} (relay at {relay_endpoint}): "
                           f"{exc}") from None
    finally:
        for dealer in sockets:
            dealer.close(linger=0)
        harness.stop_processes([relay, server])


def format_echo_table(echo: dict[str, Result], zring: dict[str, Result],
                      redis_results: dict[str, Result] | None, concurrency: int) -> str:
    """The echo's rows: its rate against redis's and zring's against it."""
    header = ["ceiling: bare pyzmq echo", "ops/s", "p50 ms", "p99 ms", "echo/redis",
              "zring/echo"]
    rows = (("echo", "one at a time (vs sync GET; zring get R=1)", "get", "get_r1"),
            ("echo_window", f"{concurrency} in flight (vs async GET; zring async get)", "aget",
             "aget"),
            ("relay", "two hops (vs sync GET; zring get R=2)", "get", "get"),
            ("relay", "two hops (vs sync SET; zring put W=2)", "put", "put"))
    table: list[list[str] | None] = [header]
    for key, label, redis_key, zring_key in rows:
        result = echo[key]
        redis_result = (redis_results or {}).get(redis_key)
        zring_result = zring.get(zring_key)
        table.append([label, *_cells(result),
                      ratio_text(result.ops_per_s, redis_result.ops_per_s) if redis_result else "-",
                      ratio_text(zring_result.ops_per_s, result.ops_per_s) if zring_result
                      else "-"])
    return layout(table, left={0})


def bench_redis(port: int, workloads: set[str], args: argparse.Namespace, value: bytes,
                prefix: str) -> dict[str, Result]:
    import redis

    ops, max_seconds = args.ops, args.max_seconds
    results: dict[str, Result] = {}
    client = redis.Redis(host=LOOPBACK, port=port, socket_timeout=REDIS_TIMEOUT_S)
    try:
        keys = [f"{prefix}:{i:08d}" for i in range(ops)]
        warm_up(f"redis at {LOOPBACK}:{port}", client.set, client.get, prefix, value, ops)
        if "sync" in workloads:
            results["put"] = run_workload("redis SET", lambda i: bool(client.set(keys[i], value)),
                                          ops, max_seconds)
            results["get"] = run_workload("redis GET",
                                          lambda i: client.get(keys[i]) is not None,
                                          ops, max_seconds)
            results["get_r1"] = results["get"]
        if "batch" in workloads:
            batch = args.batch
            batches = key_batches(f"{prefix}:batch", ops, batch)

            def pipe_set(c: int) -> int:
                pipe = client.pipeline(transaction=False)
                for key in batches[c]:
                    pipe.set(key, value)
                return sum(1 for ok in pipe.execute() if ok)

            def pipe_get(c: int) -> int:
                pipe = client.pipeline(transaction=False)
                for key in batches[c]:
                    pipe.get(key)
                return sum(1 for found in pipe.execute() if found is not None)

            results["mput"] = run_workload(f"redis pipeline {batch} SET", pipe_set, len(batches),
                                           max_seconds, batch=batch)
            results["mget"] = run_workload(f"redis pipeline {batch} GET", pipe_get, len(batches),
                                           max_seconds, batch=batch)
            results["mget_r1"] = results["mget"]
        if "async" in workloads:
            results.update(asyncio.run(bench_redis_async(port, args, value, prefix)))
        return results
    finally:
        try:  # leave a shared redis as it was
            doomed = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            for start in range(0, len(doomed), 1000):
                client.delete(*doomed[start:start + 1000])
        except Exception as exc:
            print(f"warning: could not delete the benchmark's keys {prefix}:* from redis: {exc}",
                  file=sys.stderr)
        client.close()


async def bench_redis_async(port: int, args: argparse.Namespace, value: bytes,
                            prefix: str) -> dict[str, Result]:
    """SET then GET with ``args.concurrency`` commands in flight (redis.asyncio: a pooled
    connection per worker)."""
    from redis import asyncio as aioredis

    concurrency = args.concurrency
    keys = [f"{prefix}:async:{i:08d}" for i in range(args.ops)]
    client = aioredis.Redis(host=LOOPBACK, port=port, socket_timeout=REDIS_TIMEOUT_S)
    try:
        await asyncio.wait_for(asyncio.gather(*(client.ping() for _ in range(concurrency))),
                               timeout=60)  # open the pool's connections before timing

        async def put(i: int) -> bool:
            return bool(await client.set(keys[i], value))

        async def get(i: int) -> bool:
            return await client.get(keys[i]) is not None

        grace_s = 2 * REDIS_TIMEOUT_S + 10
        return {
            "aput": await run_async_workload("redis async SET", put, args.ops, concurrency,
                                             args.max_seconds, grace_s),
            "aget": await run_async_workload("redis async GET", get, args.ops, concurrency,
                                             args.max_seconds, grace_s),
        }
    finally:
        closing = getattr(client, "aclose", None) or client.close
        await closing()


# ---------------------------------------------------------------------- memory

@dataclass
class MemoryRow:
    process: str
    keys: int
    rss: int | None                 # bytes: after the warm-up gets (zring) / the load (redis)
    rss_start: int | None           # bytes: right after start (zring) / empty (redis)
    note: str = ""
    rss_writes: int | None = None   # bytes: after the overwrites (zring)


def preload_value(size: int) -> bytes:
    """A value like LocalCluster.preload's: random hex digits, ``size`` bytes."""
    return os.urandom(size // 2 + 1).hex().encode()[:size].ljust(size, b"0")


def bench_memory(args: argparse.Namespace, use_redis: bool,
                 redis_binary: str | None) -> list[MemoryRow]:
    """Resident memory of each node of a fresh preloaded 3-node cluster, then of a fresh
    redis-server holding the same keys (the cluster is stopped first)."""
    from zring import Client

    count = args.memory_keys
    rows: list[MemoryRow] = []
    cluster = harness.temp_cluster("zring-bench-memory-", nodes=3, log_level="warning")
    temp_redis: TempRedis | None = None
    try:
        print(f"memory: preloading {count:,} keys of {args.value_size}-byte values into "
              f"{cluster.root} ...", flush=True)
        began = time.monotonic()
        keys = cluster.preload(count, value_size=args.value_size)
        print(f"  preloaded in {time.monotonic() - began:.1f}s", flush=True)
        harness.start_cluster(cluster, timeout_s=max(60.0, count / 10_000))
        names = sorted(cluster.autostart)
        pids = {name: int(cluster.supervisor().getProcessInfo(name)["pid"]) for name in names}
        at_start = {name: vm_rss(pid) for name, pid in pids.items()}
        sample = random.Random(1).sample(keys, min(args.memory_sample, count))
        del keys
        read_quorum = min(cluster.replicas, len(names))  # every replica reads every sampled key
        client = Client(cluster.seeds, timeout=args.timeout)
        try:
            warm = run_workload("zring warm-up gets",
                                lambda i: client.get(sample[i], r=read_quorum).found,
                                len(sample), args.max_seconds)
        finally:
            client.close()
        print(f"  {warm.ops:,} gets (R={read_quorum}) of random keys in {warm.elapsed_s:.1f}s: "
              f"{warm.misses} misses, {warm.errors} errors"
              + (f" (first: {warm.first_error})" if warm.first_error else ""), flush=True)
        after_gets = {name: vm_rss(pid) for name, pid in pids.items()}
        writes = count // 2 if args.memory_writes is None else args.memory_writes
        if writes:
            rng = random.Random(2)
            value = preload_value(args.value_size)
            client = Client(cluster.seeds, timeout=args.timeout)
            try:
                wrote = run_workload(
                    "zring overwrites", lambda i: len(client.mput(
                        {f"key{rng.randrange(count):08d}": value for _ in range(args.batch)})),
                    -(-writes // args.batch), args.max_seconds, batch=args.batch)
            finally:
                client.close()
            print(f"  {wrote.ops * args.batch:,} overwrites (mput of {args.batch}) in "
                  f"{wrote.elapsed_s:.1f}s: {wrote.errors} errors"
                  + (f" (first: {wrote.first_error})" if wrote.first_error else ""), flush=True)
        held = count * min(cluster.replicas, len(names)) // len(names)
        for name in names:
            disk = tree_size(cluster.root / "data" / name)
            rows.append(MemoryRow(f"zring {name}", held, after_gets[name], at_start[name],
                                  f"pid {pids[name]}, store on disk {disk / MIB:,.1f} MiB",
                                  vm_rss(pids[name]) if writes else None))
        harness.stop_cluster(cluster, args.keep_cluster_files)  # before loading redis: 2 cores

        if use_redis and redis_binary is None:
            redis_binary = shutil.which("redis-server")
        if not use_redis or redis_binary is None:
            if use_redis:
                print("  no redis-server (apt-get install -y redis-server): zring alone")
            return rows
        import redis

        temp_redis = TempRedis(redis_binary)
        temp_redis.start()
        pid = temp_redis.proc.pid
        empty = vm_rss(pid)
        client = redis.Redis(host=LOOPBACK, port=temp_redis.port, socket_timeout=60)
        try:
            print(f"  loading {count:,} keys into redis-server (pid {pid}) with pipelines ...",
                  flush=True)
            began = time.monotonic()
            for start in range(0, count, 10_000):
                pipe = client.pipeline(transaction=False)
                for i in range(start, min(count, start + 10_000)):
                    pipe.set(f"key{i:08d}", preload_value(args.value_size))
                pipe.execute()
                if time.monotonic() - began > args.max_seconds:
                    print(f"  redis load stopped at {min(count, start + 10_000):,} keys "
                          f"(--max-seconds {args.max_seconds})", flush=True)
                    break
            loaded = client.dbsize()
            info = client.info("memory")
            print(f"  loaded {loaded:,} keys in {time.monotonic() - began:.1f}s", flush=True)
        finally:
            client.close()
        rows.append(MemoryRow(
            "redis-server", loaded, vm_rss(pid), empty,
            f"pid {pid}, used_memory_rss {info['used_memory_rss'] / MIB:,.1f} MiB, "
            f"used_memory {info['used_memory'] / MIB:,.1f} MiB"))
        return rows
    finally:
        if temp_redis is not None:
            temp_redis.stop()
        harness.stop_cluster(cluster, args.keep_cluster_files)


def format_memory_table(rows: list[MemoryRow]) -> str:
    """The memory rows with the ratio of each VmRSS to redis-server's (if measured)."""
    redis_rss = next((row.rss for row in rows if row.process == "redis-server"), None)
    header = ["process", "keys", "VmRSS MiB", "at start MiB", "after writes MiB",
              "VmRSS z/r", "notes"]
    table = [header]
    for row in rows:
        if row.process == "redis-server":
            ratio = ""
        else:
            ratio = ratio_text(row.rss, redis_rss) if row.rss is not None and redis_rss else "-"
        table.append([row.process, f"{row.keys:,}", _mib(row.rss), _mib(row.rss_start),
                      _mib(row.rss_writes), ratio, row.note])
    return layout(table, left={0, 6})


def _mib(size: int | None) -> str:
    return "-" if size is None else f"{size / MIB:,.1f}"


# ---------------------------------------------------------------------- report

def format_table(zring: dict[str, Result], redis_results: dict[str, Result] | None,
                 quorums: dict, workloads: set[str], concurrency: int = 100,
                 batch: int = 100, *, peer: str = "redis", rows: tuple = ROWS) -> str:
    """One row per workload run; a zring side that did not run (see the notes) shows "-".
    ``peer``, ``rows``: the system beside zring (its ratios are z/ and its first letter) and
    its rows (``ROWS``, ``ETCD_ROWS``)."""
    fill = {"w": quorums.get("w", "?"), "r": quorums.get("r", "?"), "c": concurrency,
            "b": batch}
    tag = f"z/{peer[0]}"
    header = ["workload", "zring ops/s", "p50 ms", "p99 ms"]
    if redis_results is not None:
        header += [peer, "ops/s", "p50 ms", "p99 ms", f"ops/s {tag}", f"p50 {tag}",
                   f"p99 {tag}"]
    header += ["errors", "misses"]
    table: list[list[str] | None] = [header]
    group = None
    for key, row_group, template, redis_op in rows:
        if row_group not in workloads:
            continue
        if group is not None and row_group != group:
            table.append(None)  # a rule between workload groups
        group = row_group
        z = zring.get(key)
        row = [template.format(**fill)]
        row += _cells(z)
        errors = [str(z.errors) if z else "-"]
        misses = [str(z.misses) if z else "-"]
        if redis_results is not None:
            r = redis_results.get(key)
            row += [redis_op if r else "-", *_cells(r)]
            if z and r:
                row += [ratio_text(z.ops_per_s, r.ops_per_s),
                        ratio_text(z.percentile_ms(0.50), r.percentile_ms(0.50)),
                        ratio_text(z.percentile_ms(0.99), r.percentile_ms(0.99))]
            else:
                row += ["-", "-", "-"]
            errors.append(str(r.errors) if r else "-")
            misses.append(str(r.misses) if r else "-")
        row += ["/".join(errors), "/".join(misses)]
        table.append(row)
    return layout(table, left={0, 4} if redis_results is not None else {0})


def round_ratios(zring: dict[str, Result], redis_results: dict[str, Result]) -> dict[str, float]:
    """Each row's ops/s ratio zring/redis in one round (rows either side lacks: none)."""
    return {key: zring[key].ops_per_s / redis_results[key].ops_per_s
            for key, *_ in ROWS
            if key in zring and key in redis_results and redis_results[key].ops_per_s > 0}


def format_ratio_summary(ratios: dict[str, list[float]], quorums: dict, workloads: set[str],
                         concurrency: int = 100, batch: int = 100, *, peer: str = "redis",
                         rows: tuple = ROWS) -> str:
    """The ops/s ratios of every round: median, lowest and highest, per row (zring against
    ``peer``, on its ``rows``)."""
    fill = {"w": quorums.get("w", "?"), "r": quorums.get("r", "?"), "c": concurrency,
            "b": batch}
    table: list[list[str] | None] = [["workload", "rounds", f"z/{peer[0]} median", "lowest",
                                      "highest"]]
    for key, group, template, _redis in rows:
        if group in workloads and ratios.get(key):
            values = sorted(ratios[key])
            table.append([template.format(**fill), str(len(values)),
                          f"{statistics.median(values):.2f}x", f"{values[0]:.2f}x",
                          f"{values[-1]:.2f}x"])
    return layout(table, left={0})


def _cells(result: Result | None) -> list[str]:
    if result is None:
        return ["-", "-", "-"]
    return [f"{result.ops_per_s:,.0f}", f"{result.percentile_ms(0.50):.3f}",
            f"{result.percentile_ms(0.99):.3f}"]


def table_notes(notes: dict[str, str], workloads: set[str], concurrency: int,
                batch: int) -> list[str]:
    """The lines printed under the table: skipped zring sides, then what the rows mean."""
    lines = []
    seen = set()
    for key, group, _template, _redis in ROWS:
        if group in workloads and key in notes and (group, notes[key]) not in seen:
            seen.add((group, notes[key]))
            lines.append(f"note: {group} rows: zring side skipped: {notes[key]}")
    lines.append("z/r: zring divided by redis (ops/s: below 1 is slower; p50, p99: above 1 is "
                 "slower). errors/misses: zring/redis.")
    if "async" in workloads:
        lines.append(f"async {concurrency}: {concurrency} requests in flight at once "
                     f"(zring.AsyncClient / redis.asyncio, {concurrency} asyncio workers); "
                     "latency per request.")
    if "batch" in workloads:
        lines.append(f"batch: zring mput/mget of {batch} keys per call vs a redis-py pipeline "
                     f"of {batch} (transaction=False); ops/s and misses count keys, latency "
                     "is per call.")
    return lines


def etcd_table_notes(workloads: set[str], concurrency: int) -> list[str]:
    """The lines printed under the etcd table."""
    lines = ["z/e: zring divided by etcd (ops/s: below 1 is slower; p50, p99: above 1 is "
             "slower). errors/misses: zring/etcd.",
             "etcd: put is a Raft write (the leader's WAL fsynced before the reply: etcd has "
             "no other mode); get lin. a linearizable get (ReadIndex: the leader confirms its lead "
             "with a quorum first); "
             "get ser. a serializable get (the member's own copy, maybe stale); the client "
             "talks to the leader."]
    if "async" in workloads:
        lines.append(f"etcd async {concurrency}: {concurrency} calls in flight on the etcd3 "
                     "client's one gRPC channel through its stubs' futures (etcd3 0.12 has "
                     "no asyncio API).")
    return lines


# ---------------------------------------------------------------------- security


def run_security(args: argparse.Namespace, workloads: set[str]) -> None:
    """The sync, async and batch workloads on a plain cluster and on a CurveZMQ one, in
    turn each round; the ops/s ratio curve/plain per row."""
    value = os.urandom(args.value_size)
    prefix = f"bench:{os.getpid()}:{int(time.time())}"
    clusters: list[LocalCluster] = []
    try:
        plain, curve = temp_cluster(), temp_cluster(secure=True)
        clusters += [plain, curve]
        for cluster in clusters:
            harness.start_cluster(cluster)
        print(f"{args.ops} ops per workload, {args.value_size}-byte values; plain cluster "
              f"vs CurveZMQ cluster (both up throughout)", flush=True)
        ratios: dict[str, list[float]] = {}
        for round_number in range(1, args.rounds + 1):
            round_prefix = f"{prefix}:r{round_number}"
            results = {}
            # who goes first alternates: a drift in the machine's speed favours neither
            order = [plain, curve] if round_number % 2 else [curve, plain]
            for cluster in order:
                results[cluster is curve] = bench_zring(
                    ",".join(cluster.seeds), workloads, args, value, round_prefix,
                    keys=cluster.client_keys)
            (plain_results, _, quorums), (curve_results, _, _) = results[False], results[True]
            print()
            print(f"round {round_number} of {args.rounds}")
            print(format_security_table(plain_results, curve_results, quorums, workloads,
                                        args.concurrency, args.batch))
            for key, ratio in round_ratios(curve_results, plain_results).items():
                ratios.setdefault(key, []).append(ratio)
        if args.rounds > 1:
            print()
            summary = format_ratio_summary(ratios, quorums, workloads, args.concurrency,
                                           args.batch)
            print(summary.replace("z/r median", "c/p median"))
    finally:
        for cluster in clusters:
            harness.stop_cluster(cluster, args.keep_cluster_files)


def format_security_table(plain: dict[str, Result], curve: dict[str, Result], quorums: dict,
                          workloads: set[str], concurrency: int, batch: int) -> str:
    fill = {"w": quorums.get("w", "?"), "r": quorums.get("r", "?"), "c": concurrency,
            "b": batch}
    table: list[list[str] | None] = [["workload", "plain ops/s", "p50 ms", "p99 ms",
                                      "curve ops/s", "p50 ms", "p99 ms", "ops/s c/p",
                                      "errors"]]
    for key, group, template, _redis in ROWS:
        if group not in workloads or key not in plain or key not in curve:
            continue
        p, c = plain[key], curve[key]
        table.append([template.format(**fill), *_cells(p), *_cells(c),
                      ratio_text(c.ops_per_s, p.ops_per_s), f"{p.errors}/{c.errors}"])
    return layout(table, left={0})


# ---------------------------------------------------------------------- CLI

def parse_workloads(text: str) -> set[str]:
    """``sync,async,batch,echo,memory`` (any of them, comma-separated) or ``all``."""
    names = {name.strip().lower() for name in text.split(",") if name.strip()}
    if "all" in names:
        names = (names - {"all"}) | set(WORKLOADS)
    unknown = sorted(names - set(WORKLOADS))
    if unknown or not names:
        raise ValueError(f"--workloads: unknown {', '.join(unknown)}" if unknown
                         else "--workloads: name at least one")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default=None,
                        help=f"zring seed endpoints (default: {DEFAULT_SEEDS}, the "
                             "supervisord cluster)")
    parser.add_argument("--start-cluster", action="store_true",
                        help="start a temporary 3-node cluster on free loopback ports and "
                             "stop it afterwards")
    parser.add_argument("--keep-cluster-files", action="store_true",
                        help="with --start-cluster or --memory: keep their data and logs")
    parser.add_argument("--redis-port", type=int, default=None,
                        help="use a redis-server already listening on 127.0.0.1:PORT "
                             "(default: start one on a free port; --memory always starts its "
                             "own)")
    parser.add_argument("--no-redis", action="store_true", help="leave redis out")
    parser.add_argument("--no-etcd", action="store_true",
                        help="leave etcd out (same as dropping etcd from --workloads)")
    parser.add_argument("--security", action="store_true",
                        help="instead of redis: zring with CurveZMQ on vs off, on two "
                             "temporary clusters (the sync, async and batch workloads)")
    parser.add_argument("--workloads", default=DEFAULT_WORKLOADS,
                        help=f"comma-separated, of {', '.join(WORKLOADS)} or all "
                             f"(default: {DEFAULT_WORKLOADS})")
    parser.add_argument("--memory", action="store_true",
                        help="also compare resident memory holding --memory-keys keys "
                             "(same as adding memory to --workloads)")
    parser.add_argument("--ops", type=int, default=20000,
                        help="operations per workload (batch workloads: keys, in calls of "
                             "--batch)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every workload on both systems this many times (fresh keys "
                             "each round) and add the median and range of each ratio: this "
                             "machine's speed drifts from one minute to the next")
    parser.add_argument("--value-size", type=int, default=100, help="value size in bytes")
    parser.add_argument("--concurrency", type=int, default=100,
                        help="requests in flight in the async workloads")
    parser.add_argument("--batch", type=int, default=100,
                        help="keys per call in the batch workloads")
    parser.add_argument("--memory-keys", type=int, default=1_000_000,
                        help="keys preloaded for the memory comparison")
    parser.add_argument("--memory-sample", type=int, default=20_000,
                        help="random keys read once before measuring zring's memory")
    parser.add_argument("--memory-writes", type=int, default=None,
                        help="random keys overwritten (mput) before measuring zring's memory "
                             "again (default: half of --memory-keys; 0: none)")
    parser.add_argument("--timeout", type=float, default=5.0, help="zring client timeout (s)")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="stop any one workload (or load) after this long")
    return parser


def zring_workloads(workloads: set[str]) -> set[str]:
    """The row groups zring runs for ``workloads``: etcd's rows set etcd against zring's
    sync rows, so etcd implies sync."""
    return (workloads - {"etcd"}) | ({"sync"} if "etcd" in workloads else set())


def run_latency(args: argparse.Namespace, workloads: set[str], use_redis: bool,
                redis_binary: str | None, etcd_binary: str | None = None,
                etcd3: Any = None) -> None:
    """The sync, async and batch workloads, on one cluster and one redis-server; with
    ``etcd_binary`` and ``etcd3`` (the client module), on a temporary etcd cluster too."""
    value = os.urandom(args.value_size)
    prefix = f"bench:{os.getpid()}:{int(time.time())}"
    cluster: LocalCluster | None = None
    temp_redis: TempRedis | None = None
    temp_etcd: TempEtcd | None = None
    use_etcd = etcd_binary is not None and etcd3 is not None and "etcd" in workloads
    rows_of = zring_workloads(workloads)
    try:
        seeds = args.seeds or DEFAULT_SEEDS
        if args.start_cluster:
            cluster = temp_cluster()
            harness.start_cluster(cluster)
            seeds = ",".join(cluster.seeds)
        redis_port = args.redis_port
        if use_redis and redis_port is None:
            temp_redis = TempRedis(redis_binary)
            temp_redis.start()
            redis_port = temp_redis.port

        if use_etcd:
            temp_etcd = TempEtcd(etcd_binary)
            try:
                temp_etcd.start(etcd3)
            except (RuntimeError, OSError) as exc:
                print(etcd_skip_line(str(exc)), flush=True)
                temp_etcd.stop(keep_files=True)  # its logs say why
                temp_etcd, use_etcd = None, False

        chosen = [w for w in WORKLOADS if w in workloads]
        print(f"zring at {seeds}; {args.ops} ops per workload, {args.value_size}-byte values; "
              f"workloads: {', '.join(chosen)}", flush=True)
        if use_redis:
            import redis
            version = redis.Redis(host=LOOPBACK, port=redis_port).info("server")["redis_version"]
            started = ", started here without persistence" if temp_redis else ""
            print(f"redis {version} at {LOOPBACK}:{redis_port} "
                  f"(redis-py {redis.__version__}{started})", flush=True)
        if temp_etcd is not None:
            print(f"etcd {temp_etcd.version}: {len(temp_etcd.names)} members at {LOOPBACK}:"
                  f"{','.join(map(str, temp_etcd.client_ports))}, started here in "
                  f"{temp_etcd.root}; the client on the leader ({temp_etcd.leader}, port "
                  f"{temp_etcd.leader_port}); {etcd_client_text(etcd3)}", flush=True)
        ratios: dict[str, list[float]] = {}
        etcd_ratios: dict[str, list[float]] = {}
        etcd_results: dict[str, Result] | None = None
        for round_number in range(1, args.rounds + 1):
            round_prefix = prefix if args.rounds == 1 else f"{prefix}:r{round_number}"
            if args.rounds > 1:
                print(f"\nround {round_number} of {args.rounds}", flush=True)
            steal_before = cpu_steal()
            zring_results, notes, quorums = bench_zring(seeds, rows_of, args, value,
                                                        round_prefix)
            if round_number == 1:
                print(f"zring: {quorums['nodes']} nodes in the ring, N={quorums['n']}, "
                      f"W={quorums['w']}, R={quorums['r']}", flush=True)
            redis_results = None
            if use_redis:
                redis_results = bench_redis(redis_port, rows_of, args, value, round_prefix)
                for key, ratio in round_ratios(zring_results, redis_results).items():
                    ratios.setdefault(key, []).append(ratio)
            if temp_etcd is not None:
                etcd_results = bench_etcd(etcd3, temp_etcd.leader_port, rows_of, args, value,
                                          round_prefix)
                for key, ratio in round_ratios(zring_results, etcd_results).items():
                    etcd_ratios.setdefault(key, []).append(ratio)
            echo_results = bench_echo(args, value) if "echo" in workloads else None
            steal = steal_note(steal_before, cpu_steal())
            print()
            print(format_table(zring_results, redis_results, quorums, rows_of,
                               args.concurrency, args.batch))
            if etcd_results is not None:
                print()
                print(format_table(zring_results, etcd_results, quorums,
                                   rows_of & {"sync", "async"}, args.concurrency, args.batch,
                                   peer="etcd", rows=ETCD_ROWS))
            if echo_results is not None:
                print()
                print(format_echo_table(echo_results, zring_results, redis_results,
                                        args.concurrency))
            if steal is not None:
                print(steal)
        if args.rounds > 1 and ratios:
            print()
            print(format_ratio_summary(ratios, quorums, rows_of, args.concurrency,
                                       args.batch))
        if args.rounds > 1 and etcd_ratios:
            print()
            print(format_ratio_summary(etcd_ratios, quorums, rows_of, args.concurrency,
                                       args.batch, peer="etcd", rows=ETCD_ROWS))
        print()
        seen = set()
        for result in [*zring_results.values(), *(redis_results or {}).values(),
                       *(etcd_results or {}).values()]:
            if result.first_error and id(result) not in seen:
                seen.add(id(result))
                print(f"first error in {result.name}: {result.first_error}")
        for line in table_notes(notes, rows_of, args.concurrency, args.batch):
            print(line)
        if etcd_results is not None:
            for line in etcd_table_notes(rows_of, args.concurrency):
                print(line)
    finally:
        if temp_etcd is not None:
            temp_etcd.stop(args.keep_cluster_files)
        if temp_redis is not None:
            temp_redis.stop()
        if cluster is not None:
            harness.stop_cluster(cluster, args.keep_cluster_files)


def etcd_setup(workloads: set[str], no_etcd: bool) -> tuple[str | None, Any]:
    """(etcd's binary, the etcd3 module) when the etcd rows are wanted and can run; else
    (None, None), having printed the skip line if they were wanted."""
    if "etcd" not in workloads or no_etcd:
        return None, None
    binary = shutil.which("etcd")
    etcd3, why = import_etcd3() if binary else (None, "")
    run, skip = etcd_availability(workloads, no_etcd, binary, why)
    if skip:
        print(skip, flush=True)
    return (binary, etcd3) if run else (None, None)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        workloads = parse_workloads(args.workloads) | ({"memory"} if args.memory else set())
    except ValueError as exc:
        print(f"bench.py: error: {exc}", file=sys.stderr)
        return 2
    if min(args.ops, args.concurrency, args.batch, args.memory_keys, args.rounds) < 1 \
            or args.value_size < 0 or args.memory_sample < 0 \
            or (args.memory_writes or 0) < 0:
        print("bench.py: error: --ops, --concurrency, --batch, --memory-keys and --rounds "
              "must be >= 1, "
              "--value-size, --memory-sample and --memory-writes >= 0", file=sys.stderr)
        return 2
    if args.start_cluster and args.seeds:
        print("bench.py: error: --seeds and --start-cluster exclude each other", file=sys.stderr)
        return 2
    try:
        import zring  # noqa: F401
    except ImportError:
        print("bench.py: error: zring is not importable; run `pip install -e .` in this "
              "environment first", file=sys.stderr)
        return 2

    if args.security:
        if args.seeds or args.start_cluster:
            print("bench.py: error: --security starts its own clusters", file=sys.stderr)
            return 2
        try:
            run_security(args, workloads & {"sync", "async", "batch"})
        except (RuntimeError, OSError) as exc:
            print(f"bench.py: error: {exc}", file=sys.stderr)
            return 1
        return 0

    use_redis = not args.no_redis
    redis_binary = None
    if use_redis:
        try:
            import redis  # noqa: F401
        except ImportError:
            print("note: redis-py is not installed (pip install redis); "
                  "benchmarking zring alone")
            use_redis = False
    needs_binary = "memory" in workloads or args.redis_port is None
    if use_redis and needs_binary:
        redis_binary = shutil.which("redis-server")
        if redis_binary is None and args.redis_port is None:
            print("note: redis-server not found (apt-get install -y redis-server); "
                  "benchmarking zring alone")
            use_redis = False

    etcd_binary, etcd3 = etcd_setup(workloads, args.no_etcd)
    if args.no_etcd:
        workloads.discard("etcd")

    status = 0
    try:
        if workloads - {"memory"}:
            try:
                run_latency(args, workloads - {"memory"}, use_redis, redis_binary, etcd_binary,
                            etcd3)
            except (RuntimeError, OSError) as exc:
                print(f"bench.py: error: {exc}", file=sys.stderr)
                status = 1
        if "memory" in workloads:
            if workloads - {"memory"}:
                print()
            try:
                rows = bench_memory(args, use_redis, redis_binary)
            except (RuntimeError, OSError) as exc:
                print(f"bench.py: error: memory: {exc}", file=sys.stderr)
                return 1
            print()
            print(format_memory_table(rows))
            print("\nVmRSS: after start and a pass of gets over the sample (zring) / after the "
                  "load (redis); at start: before those gets (zring) / empty (redis); "
                  "after writes: after the overwrites that followed (zring). "
                  "z/r: VmRSS divided by redis-server's.")
        return status
    except KeyboardInterrupt:
        print("bench.py: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    harness.exit_on_sigterm()  # SIGTERM runs the finally clauses: every process is stopped
    sys.exit(main())
