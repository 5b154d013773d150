#!/usr/bin/env python3
"""How fast zring moves data when a node joins and leaves under load, next to the raw
pipelined ZeroMQ rate of the same machine, in one run.

    python tools/rebalbench.py --keys 100000               # ~1.5 minutes
    python tools/rebalbench.py                             # 1,000,000 keys, ~6 minutes
    python tools/rebalbench.py --clients 4 --json out.json --skip-leave
    python tools/rebalbench.py --store sqlite              # the nodes on SQLite

What it measures, in this order:

1. Raw pipelined ZeroMQ rate (the baseline). A separate process binds a ROUTER on a free
   loopback port; this process's DEALER keeps ``--raw-inflight`` small requests in flight,
   and each is answered with one pre-packed msgpack "page" of 2,000 records
   ``[key str, 100-byte value, int timestamp, writer str]`` shaped like zring's RANGE_PULL
   replies. Three receivers, ~3 s each: one that only counts the bytes, one that
   msgpack-unpacks each page (the least a node must do), and one that also turns each item
   into a record with zring's own ``record_from_wire`` (which hashes the key). It runs once
   before the cluster starts and once after it stopped: the two show how noisy the
   machine is. Ratios use the better of the two runs (the machine's rate when least
   disturbed by whatever else runs on it).
2. Join. A LocalCluster of 3 seeds and 1 spare (node4), preloaded with ``--keys`` keys
   (``key00000000``.., 100-byte values, every key on its N=3 replicas), under load from
   ``--clients`` processes (70% put, 30% get, random preloaded keys; processes, not threads,
   so the load does not share this process's GIL). After ~5 s of load, node4 is started
   through supervisord (it joins by itself); the join lasts until node1..node4 all report
   node4 as normal. Reported: duration (and when node4 was first seen joining, and when it
   logged the start and end of its streaming), the placements node4 received
   (``local_keys``) against the ideal 3K/4 and the exact count this ring gives it, keys/s
   and MB/s (keys x (100 + key length) / duration), client ops/s and errors before and
   during. Then, with a deadline, how long until the old replicas dropped what they handed
   over (each holds what the 4-node ring gives it), and the keys an old node holds now that
   it did not hold before (should be 0). Each node's and load process's CPU time and VmRSS
   are sampled throughout: the table shows the cores each used while node4 streamed, and
   each node's VmRSS per million keys held once the old replicas dropped what they handed
   over (node4 then holds what it took in by writes alone).
3. Leave (unless ``--skip-leave``). ``remove_node("node4")``, timed until node1..node3 all
   report node4 as left; keys/s and MB/s over the placements node4 held, client ops/s and
   errors during it, and whether node1..node3 hold every key again.

The table at the end puts these side by side with the ratios join keys/s / raw records/s;
``--json PATH`` writes every figure. Progress goes to stderr, the table to stdout.

Every wait has a deadline (``--join-timeout``, ``--leave-timeout``, ``--trim-timeout``);
the load processes and the cluster (under its own supervisord) are stopped in a ``finally``,
also on ^C and SIGTERM. The cluster lives in a temporary directory, removed afterwards unless
``--keep``, or in ``--root`` (a new or empty directory, kept: node logs are in log/).
Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np
import zmq

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402 - tools/harness.py, found through the line above
from harness import rate, ratio  # noqa: E402

from zring import Client  # noqa: E402
from zring.localcluster import LocalCluster, wait_for  # noqa: E402

VALUE_SIZE = 100
KEY_PREFIX = "key"
KEY_LEN = len(f"{KEY_PREFIX}{0:08d}")
RECORD_BYTES = VALUE_SIZE + KEY_LEN          # what "MB/s" counts per key moved
PAGE_RECORDS = 2000                          # zring's stream_batch_records
OLD = ["node1", "node2", "node3"]
NEW = "node4"
ALL = [*OLD, NEW]
POLL_S = 0.2
SAMPLE_S = 0.25                              # load counters sampled this often
MB = 1e6


def progress(text: str) -> None:
    harness.progress(text, timestamped=True, stream=sys.stderr)


# ---------------------------------------------------------------------- 1. raw ZeroMQ

def make_page(records: int = PAGE_RECORDS) -> bytes:
    """One RANGE_PULL-like OK reply of ``records`` records, msgpack-packed."""
    rng = random.Random(1)
    timestamp = int(time.time() * 1000) << 16   # an HLC timestamp's magnitude
    items = [[f"{KEY_PREFIX}{i:08d}", rng.randbytes(VALUE_SIZE), timestamp + i, "node1"]
             for i in range(records)]
    return msgpack.packb([1, 0, {"records": items, "more": True}], use_bin_type=True)


def raw_server(ready, stop, page_records: int) -> None:
    """The answering side: a ROUTER that replies to every request with the same page."""
    page = make_page(page_records)
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        ready.put((port, len(page)))
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        while not stop.is_set():
            if not poller.poll(100):        # wake up now and then to see ``stop``
                continue
            while True:
                try:
                    identity, _request = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                sock.send_multipart([identity, page], copy=False)  # no per-reply copy
    finally:
        sock.close(linger=0)
        context.term()


def raw_receive(port: int, mode: str, seconds: float, inflight: int) -> dict:
    """Keep ``inflight`` requests outstanding for ``seconds``; pages, records and bytes/s."""
    from zring.protocol import decode, record_from_wire

    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    pages = records = received = 0
    try:
        for _ in range(inflight):
            sock.send(b"pull")
        # a short warm-up fills the pipeline before the clock starts
        warm_until = time.monotonic() + 0.2
        while time.monotonic() < warm_until:
            if sock.poll(1000):
                sock.recv(copy=False)
                sock.send(b"pull")
        started = time.monotonic()
        deadline = started + seconds
        while (now := time.monotonic()) < deadline:
            if not sock.poll(max(1, int((deadline - now) * 1000))):
                continue
            frame = sock.recv(copy=False)
            sock.send(b"pull")            # refill first: the server works while we decode
            data = frame.buffer
            received += len(data)
            pages += 1
            if mode == "count":
                records += PAGE_RECORDS
            elif mode == "unpack":
                records += len(msgpack.unpackb(data, raw=False)[2]["records"])
            else:  # "decode": what a node does before storing: validate, hash each key
                body = decode(bytes(data)).body
                records += len([record_from_wire(item) for item in body["records"]])
        elapsed = time.monotonic() - started
    finally:
        sock.close(linger=0)
    return {"mode": mode, "seconds": elapsed, "pages": pages, "records": records,
            "pages_per_s": pages / elapsed, "records_per_s": records / elapsed,
            "mb_per_s": received / elapsed / MB,
            "record_mb_per_s": records * RECORD_BYTES / elapsed / MB}


RAW_MODES = {"count": "recv only", "unpack": "recv + msgpack unpack",
             "decode": "recv + decode + record_from_wire"}


def measure_raw(seconds: float, inflight: int) -> dict:
    """All receiver modes against one server process, stopped in ``finally``."""
    ready, stop = harness.MP.Queue(), harness.MP.Event()
    server = harness.MP.Process(target=raw_server, args=(ready, stop, PAGE_RECORDS), daemon=True)
    server.start()
    try:
        port, page_bytes = ready.get(timeout=30)
        runs = {mode: raw_receive(port, mode, seconds, inflight) for mode in RAW_MODES}
    finally:
        stop.set()
        server.join(timeout=5)
        if server.is_alive():
            server.kill()
            server.join(timeout=5)
    return {"page_bytes": page_bytes, "page_records": PAGE_RECORDS, "inflight": inflight,
            "runs": runs}


# ---------------------------------------------------------------------- client load

@dataclass(frozen=True)
class LoadSpec:
    seeds: list[str]
    keys: int


def load_worker(spec: LoadSpec, control: harness.LoadControl) -> None:
    """One load process: put (70%) / get (30%) on random preloaded keys until told to stop,
    counting successes and errors in the shared counters."""
    rng = random.Random(control.index)
    errors: Counter = Counter()
    first_error = ""
    client = Client(spec.seeds, timeout=5)
    control.ready()
    try:
        while control.running():
            key = f"{KEY_PREFIX}{rng.randrange(spec.keys):08d}"
            try:
                if rng.random() < 0.7:
                    client.put(key, rng.randbytes(VALUE_SIZE))
                else:
                    client.get(key)
                control.count(ok=True)
            except Exception as exc:  # a benchmark counts failures instead of stopping
                control.count(ok=False)
                errors[type(exc).__name__] += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
        control.done((dict(errors), first_error))


class Load(harness.LoadProcesses):
    """``clients`` load processes, their counters sampled every SAMPLE_S; ``stop`` adds up
    their errors by type."""

    def __init__(self, seeds: list[str], clients: int, keys: int, max_seconds: float):
        super().__init__(load_worker, [LoadSpec(seeds, keys)] * clients, max_seconds,
                         sample_every_s=SAMPLE_S)
        self.errors: Counter = Counter()
        self.first_errors: list[str] = []

    def stop(self, timeout_s: float = 30) -> tuple[float, list]:
        elapsed, reports = super().stop(timeout_s)
        for errors, first in reports:
            self.errors.update(errors)
            if first:
                self.first_errors.append(first)
        return elapsed, reports


# ---------------------------------------------------------------------- watching status

class Watcher:
    """One thread per observer node polling its cluster_status: when it first saw node4 in
    each status ("absent" when not listed), and the observer's own keys_count over time."""

    def __init__(self, cluster: LocalCluster, subject: str, observers: list[str],
                 active: list[str]):
        self.cluster, self.subject = cluster, subject
        self.active = set(active)   # observers polled now (node4 only once it is started)
        self.lock = threading.Lock()
        self.seen: dict[tuple[str, str], float] = {}
        self.own_keys: dict[str, list[tuple[float, int]]] = {o: [] for o in observers}
        self.failures: Counter = Counter()
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._watch, args=(o,), daemon=True)
                        for o in observers]
        for thread in self.threads:
            thread.start()

    def _watch(self, observer: str) -> None:
        while not self._stop.is_set():
            if observer not in self.active:
                self._stop.wait(POLL_S)
                continue
            try:
                status = self.cluster.status_from(observer, timeout=2.0)
            except Exception:  # busy or not started yet: try again
                self.failures[observer] += 1
                self._stop.wait(POLL_S)
                continue
            now = time.monotonic()
            member = status.member(self.subject)
            state = member.status if member else "absent"
            own = status.member(observer)
            with self.lock:
                self.seen.setdefault((observer, state), now)
                if own is not None:
                    self.own_keys[observer].append((now, own.keys_count))
            self._stop.wait(POLL_S)

    def reset(self) -> None:
        with self.lock:
            self.seen.clear()

    def first(self, observers: list[str], state: str | tuple[str, ...]) -> float | None:
        """When the last of ``observers`` first saw the subject in ``state`` (None if not
        all have yet)."""
        states = (state,) if isinstance(state, str) else state
        with self.lock:
            times = [min((self.seen[(o, s)] for s in states if (o, s) in self.seen),
                         default=None) for o in observers]
        return None if any(t is None for t in times) else max(times)

    def earliest(self, observers: list[str], state: str) -> float | None:
        with self.lock:
            times = [self.seen[(o, state)] for o in observers if (o, state) in self.seen]
        return min(times, default=None)

    def keys_count(self, observer: str) -> int | None:
        with self.lock:
            history = self.own_keys[observer]
            return history[-1][1] if history else None

    def first_count(self, observer: str, test, since: float) -> float | None:
        with self.lock:
            return next((t for t, c in self.own_keys[observer] if t >= since and test(c)),
                        None)

    def close(self) -> None:
        self._stop.set()
        for thread in self.threads:
            thread.join(timeout=10)


# ---------------------------------------------------------------------- CPU and memory

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


THREAD_KINDS = ("python", "rocksdb", "zmq", "other")


def process_figures(pid: int) -> tuple[tuple[float, ...], int] | None:
    """(CPU seconds used by its threads of each THREAD_KINDS: the main (Python) thread,
    RocksDB's background threads, ZeroMQ's I/O threads, the rest; VmRSS bytes) of ``pid``
    from /proc; None once it is gone."""
    used = dict.fromkeys(THREAD_KINDS, 0.0)
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                text = stat.read()
            name = text[text.index("(") + 1:text.rindex(")")]
            fields = text.rsplit(")", 1)[1].split()
            kind = ("python" if tid == str(pid) else "rocksdb" if name.startswith("rocksdb")
                    else "zmq" if name.startswith("ZMQbg") else "other")
            used[kind] += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        with open(f"/proc/{pid}/status") as status:
            rss = next(int(line.split()[1]) * 1024 for line in status
                       if line.startswith("VmRSS:"))
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    return tuple(used.values()), rss


class Sampler:
    """CPU time and VmRSS of the nodes and the load processes every SAMPLE_S, so any window
    (the streaming phase, known from node4's log afterwards) can be read: where the CPU went
    on a machine whose cores the nodes and the clients share."""

    def __init__(self, cluster: LocalCluster, load: Load) -> None:
        self.cluster, self.load = cluster, load
        self.pids: dict[str, int] = {}
        self.samples: list[tuple[float, dict[str, tuple]]] = []  # (Unix time, figures)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _pid(self, name: str) -> int | None:
        if name not in self.pids:
            try:
                pid = int(self.cluster.supervisor().getProcessInfo(name)["pid"])
            except Exception:  # supervisord busy or gone: ask again next time
                return None
            if not pid:
                return None   # not started yet
            self.pids[name] = pid
        return self.pids[name]

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            now = time.time()
            sample = {}
            for name in ALL:
                pid = self._pid(name)
                figures = pid and process_figures(pid)
                if figures:
                    sample[name] = figures
            for index, process in enumerate(self.load.processes):
                figures = process.pid and process_figures(process.pid)
                if figures:
                    sample[f"client{index + 1}"] = figures
            self.samples.append((now, sample))

    def rss(self) -> dict[str, int]:
        """The last VmRSS of each process."""
        return {name: figures[1] for name, figures in (self.samples[-1][1] if self.samples
                                                       else {}).items()}

    def cpu(self, since: float, until: float) -> dict:
        """CPU seconds each process used between two Unix times (the samples nearest them;
        a process started after ``since`` counts from its start), in all and by thread kind,
        and the window's length."""
        if not self.samples:
            return {}
        first = min(self.samples, key=lambda sample: abs(sample[0] - since))
        last = min(self.samples, key=lambda sample: abs(sample[0] - until))
        span = last[0] - first[0]
        zero = (0.0,) * len(THREAD_KINDS)
        kinds = {name: {kind: now - then for kind, now, then in zip(
                    THREAD_KINDS, figures[0], first[1].get(name, (zero, 0))[0])}
                 for name, figures in last[1].items()}
        return {"window_s": span, "cpu_s": {name: sum(by.values()) for name, by in kinds.items()},
                "cpu_s_by_thread": kinds}

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)


# ---------------------------------------------------------------------- key sets

def key_bitmap(keys: list[str], total: int) -> tuple[np.ndarray, int]:
    """The preloaded keys among ``keys`` as a bitmap over 0..total-1 (cheap for 1M keys),
    and how many keys were not preloaded ones (there should be none)."""
    bitmap = np.zeros(total, dtype=bool)
    foreign = 0
    indices = []
    for key in keys:
        digits = key[len(KEY_PREFIX):]
        if key.startswith(KEY_PREFIX) and len(key) == KEY_LEN and digits.isdigit():
            index = int(digits)
            if index < total:
                indices.append(index)
                continue
        foreign += 1
    bitmap[np.array(indices, dtype=np.int64)] = True
    return bitmap, foreign


def holdings(admin: Client, names: list[str], total: int) -> dict[str, tuple[np.ndarray, int]]:
    return {name: key_bitmap(admin.local_keys(name), total) for name in names}


def expected_placements(admin: Client, total: int, with_node: str) -> dict[str, np.ndarray]:
    """Which preloaded keys each node should hold once ``with_node`` joined (weight 1), on
    the ring the cluster reports (its vnodes and N)."""
    from zring.hashing import key_position
    from zring.ring import HashRing

    state = admin.ring_state()
    weights = {n.node_id: n.weight for n in state.nodes}
    weights.setdefault(with_node, 1.0)
    ring = HashRing(weights, vnodes=state.vnodes)
    placed = {name: np.zeros(total, dtype=bool) for name in weights}
    for i in range(total):
        for name in ring.get_nodes_at(key_position(f"{KEY_PREFIX}{i:08d}"), state.replicas):
            placed[name][i] = True
    return placed


# ---------------------------------------------------------------------- the benchmark

@dataclass
class Report:
    figures: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    phases: list[tuple[str, float]] = field(default_factory=list)  # (name, Unix start time)

    def problem(self, text: str) -> None:
        progress(f"PROBLEM: {text}")
        self.problems.append(text)


def run_join(cluster: LocalCluster, admin: Client, load: Load, watcher: Watcher,
             expected: dict[str, np.ndarray], args: argparse.Namespace,
             report: Report, sampler: Sampler | None = None) -> bool:
    keys = args.keys
    before_held = holdings(admin, OLD, keys)
    for name, (bitmap, foreign) in before_held.items():
        if foreign or bitmap.sum() != keys:
            report.problem(f"{name} held {int(bitmap.sum()):,} of the {keys:,} preloaded keys "
                           f"(+{foreign} others) before the join")

    progress(f"load for {args.before_s:g}s before the join")
    warm = load.totals()
    report.phases.append(("before", time.time()))
    time.sleep(args.before_s)  # the measurement window itself, not a wait for a condition
    t0 = load.totals()
    before = load.window(warm, t0)
    progress(f"  {before['ops_per_s']:,.0f} ops/s, {before['errors']} errors; starting {NEW}")

    watcher.reset()
    started, started_wall = time.monotonic(), time.time()
    report.phases.append(("join", started_wall))
    cluster.chaos("start", NEW)
    start_returned = time.monotonic()
    watcher.active.add(NEW)
    try:
        wait_for(lambda: watcher.first(ALL, "normal"), args.join_timeout,
                 f"{NEW} normal on {ALL}", interval_s=0.05)
        joined_ok = True
    except TimeoutError as exc:
        report.problem(str(exc))
        joined_ok = False
    t1 = load.totals()
    ended = watcher.first(ALL, "normal") or t1[0]
    duration = ended - started
    during = load.window(t0, t1)

    held = holdings(admin, [NEW], keys)[NEW]
    received = int(held[0].sum())
    wanted = expected[NEW]
    ideal = 3 * keys / 4
    join = {
        "ok": joined_ok, "duration_s": duration,
        "chaos_start_s": start_returned - started,
        "first_seen_joining_s": _since(watcher.earliest(ALL, "joining"), started),
        "node4_log": log_events(cluster, NEW, ("join_streaming", "member_joined"),
                                started_wall),
        "normal_on_node4_s": _since(watcher.first([NEW], "normal"), started),
        "normal_everywhere_s": _since(watcher.first(ALL, "normal"), started),
        "placements_received": received, "ideal_3k_over_4": ideal,
        "exact_expected": int(wanted.sum()),
        "movement_ratio": received / ideal,
        "missing_vs_ring": int((wanted & ~held[0]).sum()),
        "extra_vs_ring": int((held[0] & ~wanted).sum()) + held[1],
        "keys_per_s": rate(received, duration),
        "mb_per_s": rate(received * RECORD_BYTES, duration) / MB,
        "load_before": before, "load_during": during,
    }
    streamed, joined = join["node4_log"].get("join_streaming"), \
        join["node4_log"].get("member_joined")
    if streamed and joined and isinstance(joined.get("records"), int):
        # the streaming phase alone, as node4 logged it (its records count every copy pulled)
        seconds = joined["at_s"] - streamed["at_s"]
        join["stream_phase_s"] = seconds
        join["stream_wire_records_per_s"] = rate(joined["records"], seconds)
        if sampler is not None:
            join["stream_cpu"] = sampler.cpu(started_wall + streamed["at_s"],
                                             started_wall + joined["at_s"])
    report.figures["join"] = join
    progress(f"join: {duration:.1f}s, {received:,} placements on {NEW} "
             f"({join['keys_per_s']:,.0f} keys/s), clients {during['ops_per_s']:,.0f} ops/s")
    if join["missing_vs_ring"] or join["extra_vs_ring"]:
        report.problem(f"{NEW} misses {join['missing_vs_ring']:,} keys the ring gives it and "
                       f"holds {join['extra_vs_ring']:,} it should not")
    if not joined_ok:
        return False

    # The old replicas drop what node4 took over: watch their own keys_count (cheap, refreshed
    # by each node every ~2 s), then confirm with the full key lists.
    progress("waiting for the old replicas to drop what they handed over")
    report.phases.append(("trim", time.time()))
    tolerance = max(1, int(keys * args.trim_tolerance))

    def trimmed() -> bool:
        return all(abs((watcher.keys_count(o) or 0) - int(expected[o].sum())) <= tolerance
                   and watcher.first_count(o, lambda c: True, ended) is not None for o in OLD)
    try:
        wait_for(trimmed, args.trim_timeout, "old replicas to drop the keys node4 took",
                 interval_s=0.1)
        trim_ok = True
    except TimeoutError as exc:
        report.problem(str(exc))
        trim_ok = False
    trim_done = load.totals()
    after_held = holdings(admin, OLD, keys)
    old = {}
    for name in OLD:
        bitmap, foreign = after_held[name]
        first_at = watcher.first_count(
            name, lambda c, n=name: abs(c - int(expected[n].sum())) <= tolerance, ended)
        old[name] = {
            "held_before": int(before_held[name][0].sum()),
            "held_after": int(bitmap.sum()), "expected_after": int(expected[name].sum()),
            "still_holding_given_away": int((bitmap & ~expected[name]).sum()),
            "missing_vs_ring": int((expected[name] & ~bitmap).sum()),
            "moved_between_old_nodes": int((bitmap & ~before_held[name][0]).sum()) + foreign,
            "trimmed_after_join_s": _since(first_at, ended),
        }
        if (old[name]["moved_between_old_nodes"] or old[name]["missing_vs_ring"]
                or old[name]["still_holding_given_away"]):
            report.problem(f"{name} after the join: {old[name]}")
    if sampler is not None:
        rss = sampler.rss()
        held_now = {**{name: v["held_after"] for name, v in old.items()},
                    NEW: report.figures["join"]["placements_received"]}
        report.figures["rss_after_join"] = {name: {"rss": rss[name], "keys": held_now[name]}
                                            for name in ALL if name in rss}
    report.figures["trim"] = {
        "ok": trim_ok, "waited_s": trim_done[0] - ended, "tolerance_keys": tolerance,
        "nodes": old, "load_during": load.window(t1, trim_done),
        "note": "times from each node's own keys_count, refreshed by the node every ~2 s"}
    counts = ", ".join(f"{n} {v['held_after']:,}" for n, v in old.items())
    progress(f"old replicas now hold: {counts}")
    return trim_ok or all(v["still_holding_given_away"] <= tolerance for v in old.values())


def run_leave(cluster: LocalCluster, admin: Client, load: Load, watcher: Watcher,
              args: argparse.Namespace, report: Report) -> None:
    keys = args.keys
    held = report.figures["join"]["placements_received"]
    progress(f"removing {NEW}")
    watcher.reset()
    t0 = load.totals()
    started, started_wall = time.monotonic(), time.time()
    report.phases.append(("leave", started_wall))
    ok = True
    try:
        admin.remove_node(NEW, wait=True, timeout=args.leave_timeout)
        returned = time.monotonic()
        remaining = max(1.0, args.leave_timeout - (returned - started))
        wait_for(lambda: watcher.first(OLD, ("left", "absent")), remaining,
                 f"{NEW} left on {OLD}", interval_s=0.05)
    except Exception as exc:  # a timeout or an error reply: report it, keep the figures
        report.problem(f"remove_node({NEW}): {type(exc).__name__}: {exc}")
        ok = False
        returned = time.monotonic()
    t1 = load.totals()
    report.phases.append(("after-leave", time.time()))
    watcher.active.discard(NEW)   # it exits once it has left
    ended = watcher.first(OLD, ("left", "absent")) or t1[0]
    duration = ended - started
    leave = {"ok": ok, "duration_s": duration, "remove_node_returned_s": returned - started,
             "first_seen_leaving_s": _since(watcher.earliest(OLD, "leaving"), started),
             "placements_held": held, "keys_per_s": rate(held, duration),
             "mb_per_s": rate(held * RECORD_BYTES, duration) / MB,
             "load_during": load.window(t0, t1),
             "node4_log": log_events(cluster, NEW, ("leave_streaming", "member_left"),
                                     started_wall)}
    report.figures["leave"] = leave
    progress(f"leave: {duration:.1f}s ({leave['keys_per_s']:,.0f} keys/s)")

    # node1..3 should be back to every key each (their counts first, then the key lists)
    try:
        wait_for(lambda: all((watcher.keys_count(o) or 0) >= keys
                             and watcher.first_count(o, lambda c: True, ended) is not None
                             for o in OLD),
                 args.trim_timeout, "node1..3 to hold every key again", interval_s=0.1)
    except TimeoutError as exc:
        report.problem(str(exc))
    after = holdings(admin, OLD, keys)
    leave["old_nodes_after"] = {n: {"held": int(b.sum()), "missing": keys - int(b.sum()),
                                    "foreign": f} for n, (b, f) in after.items()}
    for name, figures in leave["old_nodes_after"].items():
        if figures["missing"]:
            report.problem(f"{name} misses {figures['missing']:,} keys after the leave")


def _since(moment: float | None, origin: float) -> float | None:
    return None if moment is None else moment - origin


def log_events(cluster: LocalCluster, name: str, events: tuple[str, ...],
               since_wall: float) -> dict:
    """The first of each of ``events`` in ``name``'s JSON log at/after ``since_wall`` (Unix
    time): its fields plus ``at_s``, seconds after ``since_wall``. Informational only: the
    event names are the node's, and may change."""
    found: dict = {}
    try:
        entries = list(harness.node_log_entries(cluster, name))
    except OSError:
        return found
    for entry, wall in entries:
        event = entry.get("event")
        at = wall - since_wall
        if event in events and event not in found and at >= -0.5:  # clock granularity
            found[event] = {k: v for k, v in entry.items()
                            if k not in ("event", "level", "timestamp", "sources")}
            found[event]["at_s"] = at
    return found


def node_log_problems(cluster: LocalCluster, phases: list[tuple[str, float]]) -> dict:
    """Warnings and errors in each node's JSON log, counted as "level:event@phase" (the phase
    of this benchmark it was logged in: ``phases`` is (name, Unix start time), in order),
    plus the first few lines themselves."""
    found: dict = {}
    examples: list[dict] = []
    for name in cluster.names:
        events: Counter = Counter()

        def count_traceback(line: str, events: Counter = events) -> None:
            if "Traceback" in line:
                events["<traceback>"] += 1
        for entry, wall in harness.node_log_entries(cluster, name, count_traceback):
            if entry.get("level") not in ("warning", "error", "critical", "exception"):
                continue
            phase = "setup"
            for phase_name, started in phases:
                if wall >= started:
                    phase = phase_name
            events[f"{entry.get('level')}:{entry.get('event')}@{phase}"] += 1
            if len(examples) < 5:
                examples.append(entry)
        if events:
            found[name] = dict(events.most_common(8))
    if examples:
        found["examples"] = examples
    return found


# ---------------------------------------------------------------------- output

def table(report: Report, args: argparse.Namespace) -> str:
    f = report.figures
    rows: list[tuple[str, str]] = []

    def section(title: str) -> None:
        rows.append((title, ""))

    def row(name: str, value: str) -> None:
        rows.append(("  " + name, value))

    num = harness.number_text

    def timeline(phase: dict, duration_label: str, failed_mark: str, moments_label: str,
                 moments: tuple[str, str], stream_events: tuple[str, str]) -> dict | None:
        """A join's or a leave's rows of when things happened; its end event from the log."""
        row(duration_label, num(phase["duration_s"], 1, " s")
            + ("" if phase["ok"] else failed_mark))
        row(moments_label, " / ".join(num(phase[key], 1, " s") for key in moments))
        began, ended = (phase["node4_log"].get(event) for event in stream_events)
        row("  streaming began / ended (node4's log)",
            f"{num(began and began['at_s'], 1, ' s')} / "
            f"{num(ended and ended['at_s'], 1, ' s')}")
        return ended

    raw = f["raw_before"]
    section(f"raw pipelined ZeroMQ (DEALER->ROUTER, {raw['inflight']} in flight, "
            f"pages of {raw['page_records']:,} records = {raw['page_bytes'] / 1e3:,.0f} KB)")
    for mode, label in RAW_MODES.items():
        run = raw["runs"][mode]
        again = f.get("raw_after", {}).get("runs", {}).get(mode)
        row(label, f"{num(run['pages_per_s'])} pages/s  {num(run['records_per_s'])} rec/s  "
            f"{num(run['mb_per_s'], 1)} MB/s"
            + (f"  | after the cluster: {num(again['records_per_s'])} rec/s  "
               f"{num(again['mb_per_s'], 1)} MB/s" if again else ""))
    join = f.get("join")
    if join:
        before, during = join["load_before"], join["load_during"]
        section(f"join {NEW} ({args.keys:,} keys, N=3, {args.clients} client processes)")
        joined = timeline(join, "duration (start -> normal on node1..4)", "  (TIMED OUT)",
                          "  chaos start returned / first seen joining",
                          ("chaos_start_s", "first_seen_joining_s"),
                          ("join_streaming", "member_joined"))
        row("  normal on node4 (its own status)", num(join["normal_on_node4_s"], 1, " s"))
        if joined and "records" in joined:
            row("  records node4 pulled over the wire (log)", f"{joined['records']:,} = "
                f"{num(ratio(joined['records'], join['placements_received']), 2)} x placements,"
                f" {num(joined.get('bytes', 0) / MB, 1)} MB")
        if "stream_wire_records_per_s" in join:
            row("  wire records/s while streaming (log)",
                num(join["stream_wire_records_per_s"]))
        cpu = join.get("stream_cpu")
        if cpu and cpu["window_s"] > 0:
            used, window = cpu["cpu_s"], cpu["window_s"]
            row("  CPU while streaming (cores)", ", ".join(
                f"{name} {seconds / window:.2f}" for name, seconds in sorted(used.items()))
                + f"; all {sum(used.values()) / window:.2f} of {os.cpu_count()}")
            records = (joined or {}).get("records")
            for name in ALL:
                by = cpu["cpu_s_by_thread"].get(name)
                if by and records:
                    row(f"    {name} CPU us per record streamed", " ".join(
                        f"{kind} {seconds / records * 1e6:.2f}" for kind, seconds in by.items()))
        row("placements node4 received", f"{num(join['placements_received'])}  (ideal 3K/4 = "
            f"{num(join['ideal_3k_over_4'])}, this ring: {num(join['exact_expected'])})")
        row("movement ratio (received / 3K/4)", num(join["movement_ratio"], 3))
        row("missing / extra vs the ring", f"{join['missing_vs_ring']:,} / "
            f"{join['extra_vs_ring']:,}")
        row("keys/s | MB/s", f"{num(join['keys_per_s'])} | {num(join['mb_per_s'], 2)}")
        row("client ops/s before -> during (ratio)",
            f"{num(before['ops_per_s'])} -> {num(during['ops_per_s'])} "
            f"({num(ratio(during['ops_per_s'], before['ops_per_s']), 2)})")
        row("client errors before | during", f"{before['errors']:,} | {during['errors']:,}")
        row("worst 1 s ops/s before | during", f"{num(before['worst_1s_ops_per_s'])} | "
            f"{num(during['worst_1s_ops_per_s'])}")
    rss = f.get("rss_after_join")
    if rss:
        row("VmRSS after the join, MiB (keys held)", ", ".join(
            f"{name} {v['rss'] / 2**20:,.0f} ({v['keys'] / 1e6:.2f}M)" for name, v in rss.items()))
    trim = f.get("trim")
    if trim:
        section("old replicas after the join" + ("" if trim["ok"] else " (TIMED OUT)"))
        for name, v in trim["nodes"].items():
            row(name, f"held {v['held_before']:,} -> {v['held_after']:,} (ring: "
                f"{v['expected_after']:,}); left over {v['still_holding_given_away']:,}, "
                f"moved between old nodes {v['moved_between_old_nodes']:,}; trimmed "
                f"+{num(v['trimmed_after_join_s'], 1, ' s')}")
        row("client ops/s | errors while trimming",
            f"{num(trim['load_during']['ops_per_s'])} | {trim['load_during']['errors']:,}")
    leave = f.get("leave")
    if leave:
        during = leave["load_during"]
        before = join["load_before"]
        section(f"leave {NEW}")
        left = timeline(leave, "duration (remove_node -> left on node1..3)", "  (FAILED)",
                        "  first seen leaving / remove_node returned",
                        ("first_seen_leaving_s", "remove_node_returned_s"),
                        ("leave_streaming", "member_left"))
        row("placements handed over", num(leave["placements_held"])
            + (f"  (log: {left['records_sent']:,} records sent)"
               if left and "records_sent" in left else ""))
        row("keys/s | MB/s", f"{num(leave['keys_per_s'])} | {num(leave['mb_per_s'], 2)}")
        change = ratio(during["ops_per_s"], before["ops_per_s"])
        row("client ops/s during (ratio to before join)",
            f"{num(during['ops_per_s'])} ({num(change, 2)})")
        row("client errors | worst 1 s ops/s",
            f"{during['errors']:,} | {num(during['worst_1s_ops_per_s'])}")
        after = leave.get("old_nodes_after", {})
        row("node1..3 hold every key again", ", ".join(
            f"{n} {v['held']:,}" + (f" (missing {v['missing']:,})" if v["missing"] else "")
            for n, v in after.items()))
    ratios = f.get("ratios", {})
    if ratios:
        section("ratios (rebalance / raw ZeroMQ, the better of the two raw runs)")
        for name, value in ratios.items():
            row(name, num(value, 4))
    if f.get("client_errors") or f.get("status_poll_failures"):
        section("errors")
        row("client errors by type", json.dumps(f.get("client_errors", {})))
        for first in f.get("client_first_errors", [])[:2]:
            row("  e.g.", first)
        # a node that does not answer cluster_status within 2 s, twice: its loop stalled
        row("status polls unanswered (2 x 2 s)", json.dumps(f.get("status_poll_failures", {})))
    if report.problems:
        section("problems")
        for problem in report.problems:
            row("-", problem)
    width = max(len(name) for name, value in rows if value) + 2  # titles may be wider
    return "\n".join(f"{name:<{width}}{value}" if value else name for name, value in rows)


def compute_ratios(figures: dict) -> dict:
    # the better of the two runs, mode by mode: noise only ever slows a run down
    runs = [figures[k]["runs"] for k in ("raw_before", "raw_after") if k in figures]
    raw = {mode: max((r[mode] for r in runs), key=lambda r: r["records_per_s"])
           for mode in RAW_MODES}
    figures["raw_best"] = raw
    out = {}
    for phase in ("join", "leave"):
        data = figures.get(phase)
        if not data:
            continue
        out[f"{phase} keys/s / raw records/s (recv only)"] = ratio(
            data["keys_per_s"], raw["count"]["records_per_s"])
        out[f"{phase} keys/s / raw records/s (msgpack unpack)"] = ratio(
            data["keys_per_s"], raw["unpack"]["records_per_s"])
        out[f"{phase} keys/s / raw records/s (decode)"] = ratio(
            data["keys_per_s"], raw["decode"]["records_per_s"])
        out[f"{phase} MB/s / raw MB/s (recv only)"] = ratio(
            data["mb_per_s"], raw["count"]["mb_per_s"])
        if "stream_wire_records_per_s" in data:
            out[f"{phase} wire records/s while streaming / raw (decode)"] = ratio(
                data["stream_wire_records_per_s"], raw["decode"]["records_per_s"])
    return out


# ---------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="cluster directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the cluster's files")
    parser.add_argument("--skip-leave", action="store_true", help="measure the join only")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    parser.add_argument("--store", choices=("rocksdb", "sqlite"),
                        help="the nodes' store (default: the node's default, rocksdb)")
    harness.add_numbers(parser, [
        ("--keys", int, 1_000_000, "preloaded keys (K)"),
        ("--clients", int, 2, "load processes"),
        ("--before-s", float, 5.0, "load measured before the join (s)"),
        ("--raw-seconds", float, 3.0, "each raw ZeroMQ measurement (s)"),
        ("--raw-inflight", int, 4, "requests in flight in the raw measurement"),
        ("--join-timeout", float, None, "default: 120 s + 0.6 ms per key"),
        ("--leave-timeout", float, None, "default: 120 s + 0.6 ms per key"),
        ("--trim-timeout", float, None,
         "wait for the old replicas to drop keys (default 60 s + 0.2 ms per key)"),
        ("--trim-tolerance", float, 0.001,
         "fraction of K an old node's count may differ from the ring's")])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    harness.exit_on_sigterm()
    if args.keys < 1 or args.clients < 0:
        raise SystemExit("--keys must be >= 1 and --clients >= 0")
    args.join_timeout = args.join_timeout or 120 + 0.6e-3 * args.keys
    args.leave_timeout = args.leave_timeout or 120 + 0.6e-3 * args.keys
    args.trim_timeout = args.trim_timeout or 60 + 0.2e-3 * args.keys
    report = Report()
    report.figures["setup"] = {
        "keys": args.keys, "clients": args.clients, "value_size": VALUE_SIZE,
        "store": args.store or "default",
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "zmq": zmq.zmq_version(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    progress("raw pipelined ZeroMQ rate")
    report.figures["raw_before"] = measure_raw(args.raw_seconds, args.raw_inflight)

    temporary = args.root is None
    if args.root and os.path.isdir(args.root) and os.listdir(args.root):
        raise SystemExit(f"--root {args.root} is not empty (preload needs fresh stores)")
    root = args.root or tempfile.mkdtemp(prefix="rebalbench-")
    cluster = LocalCluster(root, nodes=3, spares=1, log_level="info", store=args.store)
    load = None
    watcher = None
    sampler = None
    failed = False
    try:
        progress(f"preloading {args.keys:,} keys into {root}")
        began = time.monotonic()
        cluster.preload(args.keys, value_size=VALUE_SIZE)
        report.figures["setup"]["preload_s"] = time.monotonic() - began
        began = time.monotonic()
        cluster.start(timeout_s=120)
        report.figures["setup"]["cluster_start_s"] = time.monotonic() - began
        progress(f"cluster up in {report.figures['setup']['cluster_start_s']:.1f}s")
        admin = cluster.client(timeout=60)  # local_keys of a million keys takes a while
        progress("computing where every key belongs on the 4-node ring (~40 s for 1M keys)")
        expected = expected_placements(admin, args.keys, NEW)
        watcher = Watcher(cluster, NEW, ALL, active=OLD)
        lifetime = args.before_s + args.join_timeout + args.leave_timeout + \
            2 * args.trim_timeout + 600
        load = Load(cluster.seeds, args.clients, args.keys, lifetime)
        load.start()
        sampler = Sampler(cluster, load)
        if run_join(cluster, admin, load, watcher, expected, args, report, sampler) \
                and not args.skip_leave:
            run_leave(cluster, admin, load, watcher, args, report)
        failed = bool(report.problems)
    except Exception as exc:
        report.problem(f"benchmark aborted: {type(exc).__name__}: {exc}")
        failed = True
    except BaseException:  # ^C or SIGTERM: no table, but nothing left running
        progress("interrupted: stopping the load and the cluster")
        raise
    finally:
        if load is not None:
            load.stop()
            report.figures["client_errors"] = dict(load.errors)
            report.figures["client_first_errors"] = load.first_errors[:4]
        if sampler is not None:
            sampler.close()
        if watcher is not None:
            watcher.close()
            report.figures["status_poll_failures"] = dict(watcher.failures)
        cluster.stop()
        try:
            report.figures["node_log_warnings"] = node_log_problems(cluster, report.phases)
        except OSError:
            pass
        if temporary and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        elif temporary:
            progress(f"cluster files kept in {root}")

    progress("raw pipelined ZeroMQ rate again (machine noise)")
    report.figures["raw_after"] = measure_raw(args.raw_seconds, args.raw_inflight)
    report.figures["ratios"] = compute_ratios(report.figures)
    print(table(report, args))
    counts = {k: v for k, v in report.figures.get("node_log_warnings", {}).items()
              if k != "examples"}
    if counts:
        print("node log warnings/errors: " + json.dumps(counts))
    if args.json:
        with open(args.json, "w") as out:
            everything = report.figures | {"problems": report.problems,
                                           "phases": report.phases}
            json.dump(everything, out, indent=2, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
