"""What the measuring tools share: throwaway clusters, load processes, timing, progress
lines and tables. Used by bench, failbench, durabench, rebalbench, jepsen and safetycases.

    import harness                       # tools/ is on sys.path when a tool runs

    with harness.running_cluster(root, log_level="info") as cluster:
        with harness.LoadProcesses(my_worker, specs) as load:
            load.start()                 # every worker ready, then all go at once
            time.sleep(10)
            results = load.stop()        # what each worker reported, stragglers killed
    print(harness.layout([["what", "ops/s"], ["put", "1,234"]], left={0}))

Load workers are module-level functions ``worker(spec, control)`` run in processes started
with "spawn" (the parent holds ZeroMQ sockets, which must not be forked): ``control`` says
when to begin and end and carries the shared counters. Every wait here has a deadline and
every process started here is stopped in a ``finally``.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from zring.localcluster import LocalCluster

MP = multiprocessing.get_context("spawn")  # no fork: the parent holds ZeroMQ sockets
T = TypeVar("T")


# ---------------------------------------------------------------------- output

def say(text: str = "", stream: Any = None) -> None:
    print(text, file=stream or sys.stdout, flush=True)


def progress(text: str, *, timestamped: bool = False, stream: Any = None) -> None:
    """A progress line: ``  .. text``, or ``[HH:MM:SS] text`` when ``timestamped``."""
    say(f"[{time.strftime('%H:%M:%S')}] {text}" if timestamped else f"  .. {text}", stream)


def layout(table: Sequence[Sequence[str] | None], left: set[int]) -> str:
    """Columns padded to their widest cell (``left`` ones left-aligned), a rule under the
    header and wherever ``table`` holds None."""
    rows = [row for row in table if row is not None]
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    rule = "  ".join("-" * w for w in widths)
    lines = []
    for n, row in enumerate(table):
        if row is None:
            lines.append(rule)
            continue
        cells = [cell.ljust(w) if c in left else cell.rjust(w)
                 for c, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append(rule)
    return "\n".join(lines)


def ratio_text(a: float, b: float) -> str:
    """``a / b`` as ``1.23x``; "-" when either is missing (zero or NaN below)."""
    if not b or a != a or b != b:
        return "-"
    return f"{a / b:.2f}x"


def number_text(value: float | None, digits: int = 0, unit: str = "") -> str:
    """``1,234.5 unit``; "-" for None or NaN."""
    if value is None or value != value:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def seconds_text(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.2f}s"


def add_numbers(parser: Any, rows: Sequence[tuple[str, type, float | None, str | None]]
                ) -> None:
    """Numeric options on ``parser`` (or an argument group), a row each:
    (flag, int or float, default, help)."""
    for flag, kind, default, text in rows:
        parser.add_argument(flag, type=kind, default=default, help=text)


def run_facts() -> dict[str, Any]:
    """What a result depends on besides the code: commit, Python, CPUs, when."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return {"commit": commit or "?", "python": platform.python_version(),
            "cpus": os.cpu_count(), "started": datetime.now().isoformat(timespec="seconds")}


# ---------------------------------------------------------------------- timing

def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1]


def rate(count: float, seconds: float | None) -> float:
    return count / seconds if seconds else float("nan")


def ratio(a: float | None, b: float | None) -> float:
    return a / b if a is not None and b else float("nan")


def timed(call: Callable[[], T]) -> tuple[float, T]:
    """(seconds ``call`` took, what it returned)."""
    started = time.monotonic()
    result = call()
    return time.monotonic() - started, result


@dataclass
class Result:
    """One workload on one system. ``ops`` counts completed calls, each of ``batch`` keys;
    ``misses`` counts keys (a get that found nothing, a put not acknowledged)."""

    name: str
    ops: int = 0
    errors: int = 0
    misses: int = 0
    elapsed_s: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    first_error: str = ""
    batch: int = 1

    @property
    def ops_per_s(self) -> float:
        """Keys per second (calls per second times keys per call)."""
        return self.ops * self.batch / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def mean_ms(self) -> float:
        if not self.latencies_ns:
            return float("nan")
        return sum(self.latencies_ns) / len(self.latencies_ns) / 1e6

    def percentile_ms(self, q: float) -> float:
        """Nearest-rank percentile of the successful calls' latencies."""
        return percentile(self.latencies_ns, q) / 1e6

    def fail(self, exc: BaseException | str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"

    def count_hits(self, hits: int | bool | None) -> None:
        """``hits``: how many of the call's ``batch`` keys were found / acknowledged."""
        self.misses += self.batch - min(self.batch, int(hits or 0))


def run_workload(name: str, op: Callable[[int], int | bool], count: int, max_seconds: float,
                 batch: int = 1) -> Result:
    """Call ``op(i)`` for i in 0..count-1, one at a time, timing each call.

    ``op`` returns how many of its ``batch`` keys it found (a bool for one key: False is a
    miss); an exception is an error. Stops early (and says so) if ``max_seconds`` pass.
    """
    result = Result(name, batch=batch)
    latencies = result.latencies_ns
    clock = time.perf_counter_ns
    start = clock()
    deadline = start + int(max_seconds * 1e9)
    for i in range(count):
        t0 = clock()
        try:
            hits = op(i)
        except Exception as exc:  # a benchmark counts failures instead of stopping on them
            result.fail(exc)
        else:
            latencies.append(clock() - t0)
            result.count_hits(hits)
        result.ops = i + 1
        if clock() > deadline:
            say(f"  {name}: stopped after {result.ops} calls (--max-seconds {max_seconds})")
            break
    result.elapsed_s = (clock() - start) / 1e9
    result.ops -= result.errors  # throughput counts completed calls only
    return result


async def run_async_workload(name: str, op: Callable[[int], Awaitable[int | bool]], count: int,
                             concurrency: int, max_seconds: float, grace_s: float = 30.0,
                             batch: int = 1) -> Result:
    """Await ``op(i)`` for i in 0..count-1 with ``concurrency`` calls in flight at once (that
    many workers, each taking the next index as soon as its call returns), timing each call.

    Workers take no new index once ``max_seconds`` have passed; calls still unfinished
    ``grace_s`` after that are cancelled and counted as errors, so a hung client cannot hang
    the benchmark.
    """
    result = Result(name, batch=batch)
    latencies = result.latencies_ns
    clock = time.perf_counter_ns
    state = {"next": 0, "in_flight": 0, "stopped": False}
    start = clock()
    deadline = start + int(max_seconds * 1e9)

    async def worker() -> None:
        while not state["stopped"] and state["next"] < count:
            i = state["next"]
            state["next"] += 1
            state["in_flight"] += 1
            t0 = clock()
            try:
                hits = await op(i)
            except Exception as exc:  # counted, as in run_workload
                result.fail(exc)
            else:
                latencies.append(clock() - t0)
                result.count_hits(hits)
            finally:
                state["in_flight"] -= 1
            result.ops += 1
            if clock() > deadline and not state["stopped"]:
                state["stopped"] = True
                say(f"  {name}: stopped after {state['next']} calls started "
                    f"(--max-seconds {max_seconds})")

    tasks = [asyncio.ensure_future(worker()) for _ in range(max(1, min(concurrency, count)))]
    _, pending = await asyncio.wait(tasks, timeout=max_seconds + grace_s)
    if pending:
        hung = state["in_flight"]
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=5)
        for _ in range(hung):
            result.fail(f"{hung} calls still unfinished {grace_s:g}s after --max-seconds: "
                        "cancelled")
        result.ops += hung
    result.elapsed_s = (clock() - start) / 1e9
    result.ops -= result.errors
    return result


# ---------------------------------------------------------------------- processes

def exit_on_sigterm() -> None:
    """Make SIGTERM raise SystemExit, so the ``finally`` clauses stop what a run started
    (a cluster's supervisord runs in its own session: nothing else would stop it)."""
    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, terminated)


def stop_processes(procs: Sequence[subprocess.Popen], term_wait_s: float = 10.0,
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
                say(f"warning: pid {proc.pid} survived SIGKILL", sys.stderr)


class LoadControl:
    """A load worker's side of ``LoadProcesses``: when to begin and end, a phase number the
    parent may bump, and two shared counters per worker (successes, errors)."""

    def __init__(self, index: int, go: Any, stop: Any, phase: Any, counters: Any,
                 results: Any, max_seconds: float) -> None:
        self.index = index
        self._go, self._stop, self._phase = go, stop, phase
        self._counters, self._results = counters, results
        self._max_seconds = max_seconds
        self._deadline = 0.0
        self._parent = os.getppid()

    def ready(self, timeout_s: float = 60) -> None:
        """Say this worker is set up (its client made), then wait for the common start."""
        self._results.put(("ready", self.index))
        self._go.wait(timeout_s)
        self._deadline = time.monotonic() + self._max_seconds

    def running(self) -> bool:
        """Until the parent says stop, ``max_seconds`` pass or the parent is gone: a worker
        never outlives its benchmark by much."""
        return (not self._stop.is_set() and time.monotonic() < self._deadline
                and os.getppid() == self._parent)

    @property
    def phase(self) -> int:
        return self._phase.value

    def count(self, ok: bool) -> None:
        self._counters[2 * self.index + (0 if ok else 1)] += 1

    def done(self, payload: object) -> None:
        """What this worker reports to ``LoadProcesses.stop``."""
        self._results.put(("done", payload))


class LoadProcesses:
    """One process per spec running ``worker(spec, control)`` (a module-level function);
    ``start`` waits until every worker is ready and lets all go at once, so ops/s is
    honest; ``stop`` collects what they report. ``sample_every_s``: record the summed
    counters that often (``samples``), for ``window``'s worst second."""

    def __init__(self, worker: Callable[[Any, LoadControl], None], specs: Sequence[Any],
                 max_seconds: float, sample_every_s: float | None = None) -> None:
        self.go, self.stop_event = MP.Event(), MP.Event()
        self.phase = MP.RawValue("i", 0)
        self.counters = MP.RawArray("q", 2 * len(specs))
        self.results = MP.Queue()
        self.processes = [
            MP.Process(target=_run_worker, daemon=True, args=(
                worker, spec, (i, self.go, self.stop_event, self.phase, self.counters,
                               self.results, max_seconds)))
            for i, spec in enumerate(specs)]
        self.started_at = 0.0
        self.samples: list[tuple[float, int, int]] = []
        self._sample_every_s = sample_every_s
        self._sampling = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def start(self, timeout_s: float = 60) -> None:
        for process in self.processes:
            process.start()
        for _ in self.processes:
            self.results.get(timeout=timeout_s)
        self.started_at = time.monotonic()
        self.go.set()
        if self._sample_every_s:
            self._sampler.start()

    def set_phase(self, phase: int) -> None:
        self.phase.value = phase

    def totals(self) -> tuple[float, int, int]:
        """(now, successes, errors) summed over the workers."""
        values = list(self.counters)
        return time.monotonic(), sum(values[0::2]), sum(values[1::2])

    def window(self, start: tuple, end: tuple) -> dict:
        """ops/s and errors between two ``totals()``, and the worst 1-second ops/s in it."""
        seconds = end[0] - start[0]
        inside = [start, *[s for s in self.samples if start[0] < s[0] < end[0]], end]
        worst = None
        for i, first in enumerate(inside):
            later = next((s for s in inside[i + 1:] if s[0] - first[0] >= 1.0), None)
            if later is not None:
                ops = (later[1] - first[1]) / (later[0] - first[0])
                worst = ops if worst is None else min(worst, ops)
        return {"seconds": seconds, "ops": end[1] - start[1], "errors": end[2] - start[2],
                "ops_per_s": rate(end[1] - start[1], seconds),
                "errors_per_s": rate(end[2] - start[2], seconds), "worst_1s_ops_per_s": worst}

    def stop(self, timeout_s: float = 60) -> tuple[float, list]:
        """(seconds since the start, each worker's report); a worker that reports nothing
        within ``timeout_s`` (or dies) is missing from the list."""
        self.stop_event.set()
        self.go.set()  # a worker still waiting to start must not wait out its timeout
        elapsed = time.monotonic() - self.started_at
        self._sampling.set()
        reports: list = []
        deadline = time.monotonic() + timeout_s
        while len(reports) < len(self.processes) and time.monotonic() < deadline:
            try:
                kind, payload = self.results.get(timeout=0.5)
            except queue.Empty:
                if not any(p.is_alive() for p in self.processes if p.pid is not None):
                    break  # nobody left to report
                continue
            if kind == "done":
                reports.append(payload)
        self.kill_stragglers()
        return elapsed, reports

    def kill_stragglers(self) -> None:
        for process in self.processes:
            if process.pid is None:
                continue  # never started
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)

    def _sample(self) -> None:
        while not self._sampling.wait(self._sample_every_s):
            self.samples.append(self.totals())

    def __enter__(self) -> LoadProcesses:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_event.set()
        self.go.set()  # a worker still waiting to start must not wait out its timeout
        self._sampling.set()
        self.kill_stragglers()


def _run_worker(worker: Callable[[Any, LoadControl], None], spec: Any, control: tuple) -> None:
    worker(spec, LoadControl(*control))


def put_keys(seeds: list[str], keys: Sequence[str], value: bytes, processes: int,
             timeout_s: float, deadline_s: float, attempts: int = 1) -> tuple[int, int]:
    """Put every key (``value`` each) through ``processes`` processes, each with its own
    client, retrying a failed put up to ``attempts`` times in all; (written, failed)."""
    with MP.Pool(processes) as pool:
        shares = pool.starmap_async(_put_share, [
            (seeds, list(keys[p::processes]), value, timeout_s, attempts)
            for p in range(processes)])
        results = shares.get(timeout=deadline_s)
    return sum(w for w, _ in results), sum(f for _, f in results)


def _put_share(seeds: list[str], keys: list[str], value: bytes, timeout_s: float,
               attempts: int) -> tuple[int, int]:
    from zring import Client

    written = failed = 0
    with Client(seeds, timeout=timeout_s) as client:
        for key in keys:
            for attempt in range(attempts):
                try:
                    client.put(key, value)
                    written += 1
                    break
                except Exception:  # counted below if every attempt fails
                    if attempt == attempts - 1:
                        failed += 1
    return written, failed


# ---------------------------------------------------------------------- clusters

def temp_cluster(prefix: str = "zring-bench-", **options: Any) -> LocalCluster:
    """A LocalCluster (not started) in a new temporary directory."""
    from zring.localcluster import LocalCluster

    return LocalCluster(Path(tempfile.mkdtemp(prefix=prefix)), **options)


def start_cluster(cluster: LocalCluster, timeout_s: float = 60,
                  announce: Callable[[str], None] = say) -> None:
    """Start ``cluster``, saying where; a failure names the node logs (LocalCluster.start has
    already stopped whatever it started)."""
    announce(f"starting a temporary {len(cluster.autostart)}-node cluster in {cluster.root} ...")
    try:
        cluster.start(timeout_s)
    except Exception as exc:
        raise RuntimeError(f"{exc}; node logs: {cluster.log_dir}") from None


def stop_cluster(cluster: LocalCluster, keep_files: bool) -> None:
    cluster.stop()
    if not keep_files:
        shutil.rmtree(cluster.root, ignore_errors=True)


@contextmanager
def running_cluster(root: Path | str, *, keep_files: bool = True,
                    announce: Callable[[str], None] = progress,
                    start_timeout_s: float = 60, **options: Any) -> Iterator[LocalCluster]:
    """A started LocalCluster in ``root``, stopped on the way out whatever happens (its files
    removed unless ``keep_files``)."""
    from zring.localcluster import LocalCluster

    cluster = LocalCluster(root, **options)
    announce(f"starting a cluster in {cluster.root}")
    try:
        cluster.start(start_timeout_s)
        yield cluster
    finally:
        stop_cluster(cluster, keep_files)


def node_log_entries(cluster: LocalCluster, name: str,
                     on_other_line: Callable[[str], None] | None = None
                     ) -> Iterator[tuple[dict, float]]:
    """Each JSON log event of node ``name`` with its time (Unix seconds), oldest first;
    ``on_other_line`` sees the lines that are no log event (a traceback, a CLI error)."""
    for line in cluster.log_text(name).splitlines():
        if not line.startswith("{"):
            if on_other_line is not None:
                on_other_line(line)
            continue
        try:
            entry = json.loads(line)
            stamp = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))
        except (ValueError, KeyError, AttributeError):
            continue
        yield entry, stamp.timestamp()
