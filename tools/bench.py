#!/usr/bin/env python3
"""Benchmark zring against Redis, side by side, in one run.

    python tools/bench.py                          # the supervisord cluster (127.0.0.1:7001..7003)
    python tools/bench.py --start-cluster          # a temporary 3-node cluster, removed after
    python tools/bench.py --ops 5000 --value-size 1000
    python tools/bench.py --workloads sync,batch   # only some of the workloads below
    python tools/bench.py --redis-port 6379        # an already running redis-server
    python tools/bench.py --no-redis               # zring alone
    python tools/bench.py --start-cluster --rounds 3   # 3 rounds, median and range of ratios
    python tools/bench.py --workloads memory       # the memory comparison alone (1M keys)
    python tools/bench.py --start-cluster --memory # every workload, then the memory comparison
    python tools/bench.py --security               # zring with CurveZMQ on vs off, no redis

Workloads (``--workloads``, default ``sync,async,batch,echo``), in one table:

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
    memory  (``--memory``) VmRSS of each node of a fresh 3-node cluster preloaded with
            --memory-keys (1,000,000) keys of --value-size bytes (N=3: every node holds all of
            them), after a pass of gets over --memory-sample random keys, beside redis-server
            holding the same keys (its VmRSS and INFO used_memory_rss). It always uses its own
            cluster and redis-server, after the other workloads are done and stopped.

For each workload: throughput (ops/s), p50 and p99 latency (ms) of both and the ratios
zring/redis; after each round, the share of the machine's CPU time its hypervisor took
(steal, from /proc/stat) meanwhile: on a shared virtual machine it swings from none to half a
core and takes every figure with it. Every loop is bounded by --ops and by --max-seconds,
and every process this tool starts (redis-server, the temporary clusters' nodes) is stopped
in a ``finally``: terminate, then kill after a deadline. zring.AsyncClient, Client.mget and
Client.mput are optional: where the installed zring lacks them, those zring cells show "-"
with a note (redis still runs).

``--security`` compares zring with itself instead: two temporary 3-node clusters, one plain
and one with CurveZMQ on every socket (``zring keygen`` keys, a client key), the sync, async
and batch workloads on each in turn (who goes first alternates), every round, and the ops/s
ratio curve/plain per row.

Redis is optional: without redis-server (``apt-get install -y redis-server``) or redis-py
(``pip install redis``) the tool prints a hint and benchmarks zring alone. Only loopback
addresses are ever used.
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
WORKLOADS = ("sync", "async", "batch", "echo", "memory")
DEFAULT_WORKLOADS = "sync,async,batch,echo"
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
        try:
            for i in range(min(WARMUP_OPS, ops)):
                client.set(f"{prefix}:warmup:{i}", value)
                client.get(f"{prefix}:warmup:{i}")
        except Exception as exc:
            raise RuntimeError(f"redis at {LOOPBACK}:{port}: {type(exc).__name__}: {exc}") \
                from None
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
        held = count * min(cluster.replicas, len(names)) // len(names)
        for name in names:
            disk = tree_size(cluster.root / "data" / name)
            rows.append(MemoryRow(f"zring {name}", held, vm_rss(pids[name]), at_start[name],
                                  f"pid {pids[name]}, store on disk {disk / MIB:,.1f} MiB"))
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
    header = ["process", "keys", "VmRSS MiB", "at start MiB", "VmRSS z/r", "notes"]
    table = [header]
    for row in rows:
        if row.process == "redis-server":
            ratio = ""
        else:
            ratio = ratio_text(row.rss, redis_rss) if row.rss is not None and redis_rss else "-"
        table.append([row.process, f"{row.keys:,}", _mib(row.rss), _mib(row.rss_start), ratio,
                      row.note])
    return layout(table, left={0, 5})


def _mib(size: int | None) -> str:
    return "-" if size is None else f"{size / MIB:,.1f}"


# ---------------------------------------------------------------------- report

def format_table(zring: dict[str, Result], redis_results: dict[str, Result] | None,
                 quorums: dict, workloads: set[str], concurrency: int = 100,
                 batch: int = 100) -> str:
    """One row per workload run; a zring side that did not run (see the notes) shows "-"."""
    fill = {"w": quorums.get("w", "?"), "r": quorums.get("r", "?"), "c": concurrency,
            "b": batch}
    header = ["workload", "zring ops/s", "p50 ms", "p99 ms"]
    if redis_results is not None:
        header += ["redis", "ops/s", "p50 ms", "p99 ms", "ops/s z/r", "p50 z/r", "p99 z/r"]
    header += ["errors", "misses"]
    table: list[list[str] | None] = [header]
    group = None
    for key, row_group, template, redis_op in ROWS:
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
                         concurrency: int = 100, batch: int = 100) -> str:
    """The ops/s ratios of every round: median, lowest and highest, per row."""
    fill = {"w": quorums.get("w", "?"), "r": quorums.get("r", "?"), "c": concurrency,
            "b": batch}
    table: list[list[str] | None] = [["workload", "rounds", "z/r median", "lowest",
                                      "highest"]]
    for key, group, template, _redis in ROWS:
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
    parser.add_argument("--no-redis", action="store_true", help="benchmark zring alone")
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
    parser.add_argument("--timeout", type=float, default=5.0, help="zring client timeout (s)")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="stop any one workload (or load) after this long")
    return parser


def run_latency(args: argparse.Namespace, workloads: set[str], use_redis: bool,
                redis_binary: str | None) -> None:
    """The sync, async and batch workloads, on one cluster and one redis-server."""
    value = os.urandom(args.value_size)
    prefix = f"bench:{os.getpid()}:{int(time.time())}"
    cluster: LocalCluster | None = None
    temp_redis: TempRedis | None = None
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

        chosen = [w for w in WORKLOADS if w in workloads]
        print(f"zring at {seeds}; {args.ops} ops per workload, {args.value_size}-byte values; "
              f"workloads: {', '.join(chosen)}", flush=True)
        if use_redis:
            import redis
            version = redis.Redis(host=LOOPBACK, port=redis_port).info("server")["redis_version"]
            started = ", started here without persistence" if temp_redis else ""
            print(f"redis {version} at {LOOPBACK}:{redis_port} "
                  f"(redis-py {redis.__version__}{started})", flush=True)
        ratios: dict[str, list[float]] = {}
        for round_number in range(1, args.rounds + 1):
            round_prefix = prefix if args.rounds == 1 else f"{prefix}:r{round_number}"
            if args.rounds > 1:
                print(f"\nround {round_number} of {args.rounds}", flush=True)
            steal_before = cpu_steal()
            zring_results, notes, quorums = bench_zring(seeds, workloads, args, value,
                                                        round_prefix)
            if round_number == 1:
                print(f"zring: {quorums['nodes']} nodes in the ring, N={quorums['n']}, "
                      f"W={quorums['w']}, R={quorums['r']}", flush=True)
            redis_results = None
            if use_redis:
                redis_results = bench_redis(redis_port, workloads, args, value, round_prefix)
                for key, ratio in round_ratios(zring_results, redis_results).items():
                    ratios.setdefault(key, []).append(ratio)
            echo_results = bench_echo(args, value) if "echo" in workloads else None
            steal = steal_note(steal_before, cpu_steal())
            print()
            print(format_table(zring_results, redis_results, quorums, workloads,
                               args.concurrency, args.batch))
            if echo_results is not None:
                print()
                print(format_echo_table(echo_results, zring_results, redis_results,
                                        args.concurrency))
            if steal is not None:
                print(steal)
        if args.rounds > 1 and ratios:
            print()
            print(format_ratio_summary(ratios, quorums, workloads, args.concurrency,
                                       args.batch))
        print()
        seen = set()
        for result in [*zring_results.values(), *(redis_results or {}).values()]:
            if result.first_error and id(result) not in seen:
                seen.add(id(result))
                print(f"first error in {result.name}: {result.first_error}")
        for line in table_notes(notes, workloads, args.concurrency, args.batch):
            print(line)
    finally:
        if temp_redis is not None:
            temp_redis.stop()
        if cluster is not None:
            harness.stop_cluster(cluster, args.keep_cluster_files)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        workloads = parse_workloads(args.workloads) | ({"memory"} if args.memory else set())
    except ValueError as exc:
        print(f"bench.py: error: {exc}", file=sys.stderr)
        return 2
    if min(args.ops, args.concurrency, args.batch, args.memory_keys, args.rounds) < 1 \
            or args.value_size < 0 or args.memory_sample < 0:
        print("bench.py: error: --ops, --concurrency, --batch, --memory-keys and --rounds "
              "must be >= 1, "
              "--value-size and --memory-sample >= 0", file=sys.stderr)
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

    status = 0
    try:
        if workloads - {"memory"}:
            try:
                run_latency(args, workloads - {"memory"}, use_redis, redis_binary)
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
                  "load (redis); at start: before those gets (zring) / empty (redis). "
                  "z/r: VmRSS divided by redis-server's.")
        return status
    except KeyboardInterrupt:
        print("bench.py: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
