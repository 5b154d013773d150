#!/usr/bin/env python3
"""Benchmark zring against Redis, side by side, in one run.

    python tools/bench.py                          # the supervisord cluster (127.0.0.1:7001..7003)
    python tools/bench.py --start-cluster          # a temporary 3-node cluster, removed after
    python tools/bench.py --ops 5000 --value-size 1000
    python tools/bench.py --redis-port 6379        # an already running redis-server
    python tools/bench.py --no-redis               # zring alone

Workloads, each run synchronously by one client (one request in flight, so the numbers are
latency-bound, as a simple application sees them):

    put          zring put(key, value) at the cluster's default W   vs  redis SET
    get          zring get(key) at the cluster's default R          vs  redis GET
    get R=1      zring get(key, r=1)                                vs  redis GET

For each: throughput (ops/s), zring's mean latency, p50 and p99 latency (ms) and the ratio
zring/redis of both.
Every loop is bounded by --ops and by --max-seconds, and every process this tool starts
(redis-server, the temporary cluster's nodes) is stopped in a ``finally``: terminate, then
kill after a deadline.

Redis is optional: without redis-server (``apt-get install -y redis-server``) or redis-py
(``pip install redis``) the tool prints a hint and benchmarks zring alone. Only loopback
addresses are ever used.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zring.localcluster import LocalCluster

DEFAULT_SEEDS = "tcp://127.0.0.1:7001,tcp://127.0.0.1:7002,tcp://127.0.0.1:7003"
LOOPBACK = "127.0.0.1"
WARMUP_OPS = 200


# ---------------------------------------------------------------------- measurement

@dataclass
class Result:
    name: str
    ops: int = 0
    errors: int = 0
    misses: int = 0
    elapsed_s: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    first_error: str = ""

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def mean_ms(self) -> float:
        if not self.latencies_ns:
            return float("nan")
        return sum(self.latencies_ns) / len(self.latencies_ns) / 1e6

    def percentile_ms(self, q: float) -> float:
        """Nearest-rank percentile of the successful operations' latencies."""
        if not self.latencies_ns:
            return float("nan")
        ordered = sorted(self.latencies_ns)
        rank = min(len(ordered), max(1, math.ceil(q * len(ordered))))
        return ordered[rank - 1] / 1e6


def run_workload(name: str, op: Callable[[int], bool], count: int, max_seconds: float) -> Result:
    """Call ``op(i)`` for i in 0..count-1, one at a time, timing each call.

    ``op`` returns False for a miss (a get that found nothing); an exception is an error.
    Stops early (and says so) if ``max_seconds`` pass.
    """
    result = Result(name)
    latencies = result.latencies_ns
    clock = time.perf_counter_ns
    start = clock()
    deadline = start + int(max_seconds * 1e9)
    for i in range(count):
        t0 = clock()
        try:
            found = op(i)
        except Exception as exc:  # a benchmark counts failures instead of stopping on them
            result.errors += 1
            if not result.first_error:
                result.first_error = f"{type(exc).__name__}: {exc}"
        else:
            latencies.append(clock() - t0)
            if found is False:
                result.misses += 1
        result.ops = i + 1
        if clock() > deadline:
            print(f"  {name}: stopped after {result.ops} ops (--max-seconds {max_seconds})",
                  flush=True)
            break
    result.elapsed_s = (clock() - start) / 1e9
    result.ops -= result.errors  # throughput counts completed operations only
    return result


# ---------------------------------------------------------------------- processes

def stop_processes(procs: list[subprocess.Popen], term_wait_s: float = 10.0,
                   kill_wait_s: float = 5.0) -> None:
    """TERM every process, wait up to ``term_wait_s`` for all, then KILL the rest."""
    for proc in procs:
        if proc.poll() is None:
            try:
                proc.terminate()
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + term_wait_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            try:
                proc.wait(timeout=kill_wait_s)
            except subprocess.TimeoutExpired:
                print(f"warning: pid {proc.pid} survived SIGKILL", file=sys.stderr)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str,
               interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception as exc:  # not up yet: keep polling until the deadline
            last_error = exc
        time.sleep(interval_s)
    raise RuntimeError(f"timed out after {timeout_s:.0f}s waiting for {what}"
                       + (f" (last error: {last_error})" if last_error else ""))


def temp_cluster() -> LocalCluster:
    """A 3-node LocalCluster (zring.localcluster) in a new temporary directory, not started."""
    from zring.localcluster import LocalCluster

    return LocalCluster(tempfile.mkdtemp(prefix="zring-bench-"), nodes=3, log_level="warning")


def start_temp_cluster(cluster: LocalCluster) -> None:
    print(f"starting a temporary 3-node cluster in {cluster.root} ...", flush=True)
    try:
        cluster.start()
    except Exception as exc:  # LocalCluster.start has already stopped whatever it started
        raise RuntimeError(f"{exc}; node logs: {cluster.log_dir}") from None


def stop_temp_cluster(cluster: LocalCluster, keep_files: bool) -> None:
    cluster.stop()
    if not keep_files:
        shutil.rmtree(cluster.root, ignore_errors=True)


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

        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", LOOPBACK, "--save", "",
             "--appendonly", "no", "--dir", self.root, "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {self.proc.returncode}")
            return redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=1).ping()
        wait_until(up, timeout_s, f"redis-server on port {self.port}", interval_s=0.05)

    def stop(self) -> None:
        if self.proc is not None:
            stop_processes([self.proc])
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------------- workloads

def bench_zring(seeds: str, ops: int, value: bytes, timeout: float, max_seconds: float,
                prefix: str) -> tuple[dict[str, Result], dict]:
    from zring import Client

    client = Client(seeds, timeout=timeout)
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
        results = {
            "put": run_workload("zring put", lambda i: bool(client.put(keys[i], value)),
                                ops, max_seconds),
            "get": run_workload("zring get", lambda i: client.get(keys[i]).found,
                                ops, max_seconds),
            "get_r1": run_workload("zring get r=1", lambda i: client.get(keys[i], r=1).found,
                                   ops, max_seconds),
        }
        return results, quorums
    finally:
        client.close()


def bench_redis(port: int, ops: int, value: bytes, max_seconds: float,
                prefix: str) -> dict[str, Result]:
    import redis

    client = redis.Redis(host=LOOPBACK, port=port, socket_timeout=5)
    try:
        keys = [f"{prefix}:{i:08d}" for i in range(ops)]
        try:
            for i in range(min(WARMUP_OPS, ops)):
                client.set(f"{prefix}:warmup:{i}", value)
                client.get(f"{prefix}:warmup:{i}")
        except Exception as exc:
            raise RuntimeError(f"redis at {LOOPBACK}:{port}: {type(exc).__name__}: {exc}") \
                from None
        put = run_workload("redis SET", lambda i: bool(client.set(keys[i], value)),
                           ops, max_seconds)
        get = run_workload("redis GET", lambda i: client.get(keys[i]) is not None,
                           ops, max_seconds)
        written = keys[:put.ops + put.errors] + [f"{prefix}:warmup:{i}"
                                                 for i in range(min(WARMUP_OPS, ops))]
        for start in range(0, len(written), 1000):  # leave a shared redis as it was
            client.delete(*written[start:start + 1000])
        return {"put": put, "get": get, "get_r1": get}
    finally:
        client.close()


# ---------------------------------------------------------------------- report

def format_table(zring: dict[str, Result], redis_results: dict[str, Result] | None,
                 quorums: dict) -> str:
    labels = {"put": f"put (W={quorums.get('w', '?')})",
              "get": f"get (R={quorums.get('r', '?')})",
              "get_r1": "get (R=1)"}
    redis_names = {"put": "SET", "get": "GET", "get_r1": "GET"}
    header = ["workload", "zring ops/s", "mean ms", "p50 ms", "p99 ms"]
    if redis_results:
        header += ["redis op", "ops/s", "p50 ms", "p99 ms", "ops/s z/r", "p50 z/r"]
    header += ["errors", "misses"]
    rows = [header]
    for key, label in labels.items():
        z = zring[key]
        row = [label, f"{z.ops_per_s:,.0f}", f"{z.mean_ms():.3f}", f"{z.percentile_ms(0.50):.3f}",
               f"{z.percentile_ms(0.99):.3f}"]
        errors, misses = [str(z.errors)], [str(z.misses)]
        if redis_results:
            r = redis_results[key]
            row += [redis_names[key], f"{r.ops_per_s:,.0f}", f"{r.percentile_ms(0.50):.3f}",
                    f"{r.percentile_ms(0.99):.3f}", _ratio(z.ops_per_s, r.ops_per_s),
                    _ratio(z.percentile_ms(0.50), r.percentile_ms(0.50))]
            errors.append(str(r.errors))
            misses.append(str(r.misses))
        row += ["/".join(errors), "/".join(misses)]
        rows.append(row)
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in
                                              zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _ratio(a: float, b: float) -> str:
    if not b or a != a or b != b:  # zero or NaN
        return "-"
    return f"{a / b:.2f}x"


# ---------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default=None,
                        help=f"zring seed endpoints (default: {DEFAULT_SEEDS}, the "
                             "supervisord cluster)")
    parser.add_argument("--start-cluster", action="store_true",
                        help="start a temporary 3-node cluster on free loopback ports and "
                             "stop it afterwards")
    parser.add_argument("--keep-cluster-files", action="store_true",
                        help="with --start-cluster: keep its data and logs")
    parser.add_argument("--redis-port", type=int, default=None,
                        help="use a redis-server already listening on 127.0.0.1:PORT "
                             "(default: start one on a free port)")
    parser.add_argument("--no-redis", action="store_true", help="benchmark zring alone")
    parser.add_argument("--ops", type=int, default=20000, help="operations per workload")
    parser.add_argument("--value-size", type=int, default=100, help="value size in bytes")
    parser.add_argument("--timeout", type=float, default=5.0, help="zring client timeout (s)")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="stop any one workload after this long")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.ops < 1 or args.value_size < 0:
        print("bench.py: error: --ops must be >= 1 and --value-size >= 0", file=sys.stderr)
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

    use_redis = not args.no_redis
    redis_binary = None
    if use_redis:
        try:
            import redis  # noqa: F401
        except ImportError:
            print("note: redis-py is not installed (pip install redis); "
                  "benchmarking zring alone")
            use_redis = False
    if use_redis and args.redis_port is None:
        redis_binary = shutil.which("redis-server")
        if redis_binary is None:
            print("note: redis-server not found (apt-get install -y redis-server); "
                  "benchmarking zring alone")
            use_redis = False

    value = os.urandom(args.value_size)
    prefix = f"bench:{os.getpid()}:{int(time.time())}"
    cluster: LocalCluster | None = None
    temp_redis: TempRedis | None = None
    try:
        seeds = args.seeds or DEFAULT_SEEDS
        if args.start_cluster:
            cluster = temp_cluster()
            start_temp_cluster(cluster)
            seeds = ",".join(cluster.seeds)
        redis_port = args.redis_port
        if use_redis and redis_port is None:
            temp_redis = TempRedis(redis_binary)
            temp_redis.start()
            redis_port = temp_redis.port

        print(f"zring at {seeds}; {args.ops} ops per workload, {args.value_size}-byte values, "
              "one synchronous client", flush=True)
        zring_results, quorums = bench_zring(seeds, args.ops, value, args.timeout,
                                             args.max_seconds, prefix)
        print(f"zring: {quorums['nodes']} nodes in the ring, N={quorums['n']}, "
              f"W={quorums['w']}, R={quorums['r']}", flush=True)
        redis_results = None
        if use_redis:
            import redis
            version = redis.Redis(host=LOOPBACK, port=redis_port).info("server")["redis_version"]
            started = ", started here without persistence" if temp_redis else ""
            print(f"redis {version} at {LOOPBACK}:{redis_port} "
                  f"(redis-py {redis.__version__}{started})", flush=True)
            redis_results = bench_redis(redis_port, args.ops, value, args.max_seconds, prefix)
        print()
        print(format_table(zring_results, redis_results, quorums))
        for result in [*zring_results.values(), *(redis_results or {}).values()]:
            if result.first_error:
                print(f"first error in {result.name}: {result.first_error}")
        print("\nz/r: zring divided by redis (ops/s: below 1 is slower; p50: above 1 is slower)."
              " errors/misses: zring/redis.")
        return 0
    except (RuntimeError, OSError) as exc:
        print(f"bench.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench.py: interrupted", file=sys.stderr)
        return 130
    finally:
        if temp_redis is not None:
            temp_redis.stop()
        if cluster is not None:
            stop_temp_cluster(cluster, args.keep_cluster_files)


if __name__ == "__main__":
    sys.exit(main())
