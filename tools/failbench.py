#!/usr/bin/env python3
"""How zring handles failures, measured on throwaway local clusters (zring.localcluster).

    python tools/failbench.py all                        # every part below, ~15 minutes
    python tools/failbench.py detection --kills 20       # (a) kill -9 -> all peers say down
    python tools/failbench.py false-downs --duration 300 # (b) full load: any member_down?
    python tools/failbench.py kill-under-load            # (c) kill -9 under load: lost writes?
    python tools/failbench.py hints --pause 6            # (d) SIGSTOP under load: hint handoff
    python tools/failbench.py restore --keys 100000      # (e) remove a dead node: re-replication

Each part starts its own cluster (nodes under a private supervisord, faults injected through
tools/chaos.py with real signals) in a temporary directory that is removed afterwards, also on
errors and ^C; ``--root DIR`` puts the clusters in DIR instead and keeps them (with
``--keep-files`` the temporary directory is kept). Node logs are ``<part>/log/nodeN.log``.

Load: ``--workers`` processes, each with its own zring Client, put and get 100-byte values
(half and half) over ``--keyspace`` keys as fast as they can; each worker owns its share of
the keys, so it knows every key's last acknowledged value.

Every wait has a deadline: a part that times out says so in its report and the run goes on.
Needs a source checkout (tools/chaos.py) and loopback only.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from statistics import NormalDist

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402 - tools/harness.py, found through the line above
from harness import percentile, progress, say  # noqa: E402
from harness import seconds_text as seconds  # noqa: E402

from zring import Client  # noqa: E402
from zring.config import NodeConfig  # noqa: E402
from zring.localcluster import LocalCluster, wait_for  # noqa: E402

NODES = ["node1", "node2", "node3"]
POLL_S = 0.02               # detection: how often every observer is asked


# ---------------------------------------------------------------------- small helpers

def wall_time(timestamp: str) -> float:
    """A node log's ISO timestamp (UTC, ``...Z``) as Unix time."""
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def log_events(cluster: LocalCluster, names: list[str], events: set[str],
               since: float = 0.0) -> list[dict]:
    """The JSON log lines of ``names`` whose event is in ``events``, logged at/after
    ``since`` (Unix time), oldest first; each keeps its ``node_id`` (the node that logged)."""
    found = [entry for name in names for entry, at in harness.node_log_entries(cluster, name)
             if entry.get("event") in events and at >= since]
    return sorted(found, key=lambda e: e["timestamp"])


def own_hints(cluster: LocalCluster, name: str) -> int:
    """The hints ``name`` holds, as it reports itself."""
    return cluster.status_from(name).member(name).hints


def running_cluster(workdir: Path, part: str,
                    **options) -> AbstractContextManager[LocalCluster]:
    """A fresh LocalCluster in ``workdir/part`` (info logs: the events counted here), stopped
    on the way out whatever happens (its files stay: ``main`` removes ``workdir``)."""
    return harness.running_cluster(workdir / part, log_level="info", **options)


# ---------------------------------------------------------------------- load workers

@dataclass(frozen=True)
class LoadSpec:
    seeds: list[str]
    worker: int
    workers: int
    keyspace: int
    value_size: int
    timeout_s: float
    tag: str


@dataclass
class WorkerResult:
    worker: int
    puts: int = 0
    gets: int = 0
    put_errors: int = 0
    get_errors: int = 0
    stale_reads: int = 0    # a get older than this worker's own acknowledged write
    errors: Counter = field(default_factory=Counter)
    first_error: str = ""
    acked: dict[str, int] = field(default_factory=dict)   # key -> last acknowledged seq


def encode_value(worker: int, seq: int, size: int) -> bytes:
    return f"{worker}:{seq}:".encode().ljust(size, b"x")


def decode_seq(value: bytes | str | None) -> int:
    if value is None:
        return -1
    raw = value.encode() if isinstance(value, str) else value
    return int(raw.split(b":", 2)[1])


def load_worker(spec: LoadSpec, control: harness.LoadControl) -> None:
    """One load process: puts and gets on its own keys until told to stop.

    Keys are ``<tag><phase>:<i>``: the parent bumps the phase to make the workers write fresh
    keys from then on (so "written during the pause" is a key set, not a time window)."""
    result = WorkerResult(spec.worker)
    rng = random.Random(spec.worker)
    own = range(spec.worker, spec.keyspace, spec.workers)
    seq = 0
    client = Client(spec.seeds, timeout=spec.timeout_s)
    control.ready()
    try:
        while control.running():
            key = f"{spec.tag}{control.phase}:{rng.choice(own)}"
            writing = rng.random() < 0.5
            try:
                if writing:
                    seq += 1
                    client.put(key, encode_value(spec.worker, seq, spec.value_size))
                    result.acked[key] = seq
                    result.puts += 1
                else:
                    got = client.get(key)
                    result.gets += 1
                    if decode_seq(got.value) < result.acked.get(key, -1):
                        result.stale_reads += 1
            except Exception as exc:  # a benchmark counts failures instead of stopping
                if writing:
                    result.put_errors += 1
                else:
                    result.get_errors += 1
                result.errors[type(exc).__name__] += 1
                result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
        control.done(result)


@dataclass
class LoadTotals:
    elapsed_s: float
    results: list[WorkerResult]
    missing_workers: int

    @property
    def ops(self) -> int:
        return sum(r.puts + r.gets + r.put_errors + r.get_errors for r in self.results)

    @property
    def failed(self) -> int:
        return sum(r.put_errors + r.get_errors for r in self.results)

    @property
    def acked(self) -> dict[str, int]:
        return {k: v for r in self.results for k, v in r.acked.items()}  # keys are disjoint

    def summary(self) -> list[str]:
        errors = sum((r.errors for r in self.results), Counter())
        lines = [f"ops {self.ops:,} in {self.elapsed_s:.1f}s = {self.ops / self.elapsed_s:,.0f}"
                 f" ops/s ({sum(r.puts for r in self.results):,} puts and "
                 f"{sum(r.gets for r in self.results):,} gets acknowledged)",
                 f"failed ops {self.failed:,} ({self.failed / max(1, self.ops):.3%}): "
                 f"{sum(r.put_errors for r in self.results)} puts, "
                 f"{sum(r.get_errors for r in self.results)} gets"
                 + (f"; {dict(errors)}" if errors else ""),
                 f"stale reads (older than the worker's own acknowledged write): "
                 f"{sum(r.stale_reads for r in self.results)}"]
        lines += [f"first error (worker {r.worker}): {r.first_error}"
                  for r in self.results if r.first_error][:2]
        if self.missing_workers:
            lines.append(f"WARNING: {self.missing_workers} worker(s) reported nothing")
        return lines


def new_load(cluster: LocalCluster, args: argparse.Namespace, tag: str,
             max_seconds: float) -> harness.LoadProcesses:
    """``args.workers`` load processes against ``cluster`` (not started)."""
    return harness.LoadProcesses(load_worker, [
        LoadSpec(cluster.seeds, w, args.workers, args.keyspace, args.value_size,
                 args.client_timeout, tag) for w in range(args.workers)], max_seconds)


def stop_load(load: harness.LoadProcesses) -> LoadTotals:
    elapsed, reports = load.stop()
    return LoadTotals(elapsed, reports, len(load.processes) - len(reports))


def load_for(cluster: LocalCluster, args: argparse.Namespace, tag: str, duration_s: float,
             actions: list[tuple[float, Callable]]) -> LoadTotals:
    """Load for ``duration_s``, calling each action at its offset (seconds) meanwhile."""
    with new_load(cluster, args, tag, duration_s + 60) as load:
        load.start()
        run_timeline(load, duration_s, actions)
        return stop_load(load)


def run_timeline(load: harness.LoadProcesses, duration_s: float,
                 actions: list[tuple[float, Callable]]) -> None:
    """Let ``load`` run for ``duration_s``, calling each action at its offset (seconds)."""
    for at_s, action in sorted(actions, key=lambda a: a[0]):
        time.sleep(max(0.0, load.started_at + at_s - time.monotonic()))
        action()
    time.sleep(max(0.0, load.started_at + duration_s - time.monotonic()))


def lost_writes(client: Client, acked: dict[str, int], timeout_s: float) -> tuple[int, list]:
    """Read back every acknowledged key: lost if it is missing or older than the last
    acknowledged write (a newer value is fine: a failed put may still have been applied)."""
    lost, examples = 0, []
    deadline = time.monotonic() + timeout_s
    for key, seq in acked.items():
        if time.monotonic() > deadline:
            raise TimeoutError(f"verification took over {timeout_s:.0f}s")
        got = client.get(key)
        if decode_seq(got.value) < seq:
            lost += 1
            if len(examples) < 5:
                examples.append((key, seq, decode_seq(got.value), got.served_by))
    return lost, examples


# ---------------------------------------------------------------------- (a) detection

def detector_settings() -> dict[str, float]:
    defaults = {f.name: f.default for f in dataclasses.fields(NodeConfig)}
    return {name: defaults[name] for name in
            ("gossip_interval_s", "phi_suspect", "phi_down", "fd_acceptable_pause_s",
             "fd_min_std_s")}


def expected_silence_to_down_s(settings: dict[str, float]) -> float:
    """The silence after the last heartbeat at which a perfectly regular member is declared
    down: mean interval + acceptable pause + z(phi_down) * min std (see zring/failure.py)."""
    z = NormalDist().inv_cdf(1 - 10 ** -min(settings["phi_down"], 15.0))
    return settings["gossip_interval_s"] + settings["fd_acceptable_pause_s"] + \
        z * settings["fd_min_std_s"]


@dataclass
class KillSample:
    victim: str
    all_down_s: float | None = None             # kill -> every other node says "down"
    first_down_s: float | None = None           # kill -> the first one says so
    all_suspect_s: float | None = None
    back_up_s: float | None = None              # kill -> converged again (all "up")


def measure_kill(cluster: LocalCluster, victim: str, args: argparse.Namespace) -> KillSample:
    observers = [n for n in NODES if n != victim]
    clients = {n: Client([cluster.addresses[n]], timeout=args.poll_timeout, retries=0)
               for n in observers}
    sample = KillSample(victim)
    seen_down: set[str] = set()
    seen_suspect: set[str] = set()
    try:
        cluster.chaos("kill", victim, in_process=True)  # returns right after the SIGKILL
        killed_at = time.monotonic()
        while time.monotonic() - killed_at < args.down_deadline:
            for name, client in clients.items():
                try:
                    liveness = client.cluster_status().member(victim).liveness
                except Exception:  # a busy observer: ask again next round
                    continue
                if liveness in ("suspect", "down"):
                    seen_suspect.add(name)
                if liveness == "down":
                    seen_down.add(name)
                    if sample.first_down_s is None:
                        sample.first_down_s = time.monotonic() - killed_at
            if sample.all_suspect_s is None and len(seen_suspect) == len(observers):
                sample.all_suspect_s = time.monotonic() - killed_at
            if len(seen_down) == len(observers):
                sample.all_down_s = time.monotonic() - killed_at
                break
            time.sleep(POLL_S)
    finally:
        for client in clients.values():
            client.close()
    try:
        cluster.wait_running([victim], timeout_s=args.up_deadline)
        cluster.wait_converged(NODES, timeout_s=args.up_deadline)
        sample.back_up_s = time.monotonic() - killed_at
    except TimeoutError as exc:
        say(f"  !! {victim} did not come back: {exc}")
    return sample


def part_detection(args: argparse.Namespace, workdir: Path) -> list[str]:
    say("== (a) failure detection: kill -9 -> every other node reports it down")
    settings = detector_settings()
    say("detector (zring.config.NodeConfig defaults): "
        + ", ".join(f"{k}={v:g}" for k, v in settings.items()))
    say(f"a perfectly regular member is declared down {expected_silence_to_down_s(settings):.2f}"
        f"s after its last heartbeat; heartbeats come every {settings['gossip_interval_s']:g}s")
    say(f"supervisord restarts a killed node after --restart-delay {args.restart_delay:g}s "
        f"(0: at once, usually back before anyone calls it down); observers polled every "
        f"{POLL_S * 1000:.0f} ms with a {args.poll_timeout:g}s client timeout")
    samples: list[KillSample] = []
    with running_cluster(workdir, "detection", nodes=3,
                         restart_delay_s=args.restart_delay) as cluster:
        for i in range(args.kills):
            sample = measure_kill(cluster, NODES[i % len(NODES)], args)
            samples.append(sample)
            say(f"  kill {i + 1:2d} {sample.victim}: all down {seconds(sample.all_down_s)} "
                f"(first {seconds(sample.first_down_s)}, all suspect "
                f"{seconds(sample.all_suspect_s)}), back up {seconds(sample.back_up_s)}")
            if sample.back_up_s is None:
                say("  !! stopping: the cluster did not recover from this kill")
                break
            time.sleep(args.settle)  # a few steady heartbeats before the next kill
        downs = log_events(cluster, NODES, {"member_down"})
    detected = [s.all_down_s for s in samples if s.all_down_s is not None]
    summary = [f"detected {len(detected)} of {len(samples)} kills within {args.down_deadline:g}s"
               f"; kill -> all down p50 {seconds(percentile(detected, 0.5))}, p99 "
               f"{seconds(percentile(detected, 0.99))}, max {seconds(max(detected, default=None))}"]
    phis = [e.get("phi") for e in downs]
    if phis:
        summary.append(f"phi logged with member_down: min {min(phis)}, max {max(phis)} "
                       f"({len(phis)} events)")
    return report("(a) detection", summary)


# ---------------------------------------------------------------------- (b) false downs

def part_false_downs(args: argparse.Namespace, workdir: Path) -> list[str]:
    say(f"== (b) false downs: 3 nodes under full load ({args.workers} workers) for "
        f"{args.duration:g}s, no faults")
    with running_cluster(workdir, "false-downs", nodes=3) as cluster:
        since = time.time()
        totals = load_for(cluster, args, "fd", args.duration, [])
        events = log_events(cluster, NODES, {"member_down", "member_suspected"}, since)
    counts = Counter(e["event"] for e in events)
    summary = [f"member_down {counts['member_down']}, member_suspected "
               f"{counts['member_suspected']} (expected 0)", *totals.summary()]
    summary += [f"  {e['timestamp']} {e['node_id']}: {e['event']} {e.get('member')} "
                f"phi={e.get('phi')}" for e in events[:10]]
    return report("(b) false downs", summary)


# ---------------------------------------------------------------------- (c) kill under load

def part_kill_under_load(args: argparse.Namespace, workdir: Path) -> list[str]:
    victim = "node2"
    say(f"== (c) kill -9 under load: {args.load_duration:g}s of load, {victim} killed at "
        f"{args.kill_after:g}s (supervisord restarts it at once)")
    with running_cluster(workdir, "kill-under-load", nodes=3) as cluster:
        since = time.time()
        totals = load_for(cluster, args, "kl", args.load_duration,
                          [(args.kill_after, lambda: cluster.chaos("kill", victim))])
        progress("waiting for the cluster to converge, then reading back every "
                 f"acknowledged write ({len(totals.acked):,} keys)")
        cluster.wait_converged(NODES, timeout_s=60)
        lost, examples = lost_writes(cluster.client(*NODES), totals.acked, timeout_s=300)
        events = Counter(e["event"] for e in log_events(
            cluster, NODES, {"member_down", "member_suspected"}, since))
    summary = [*totals.summary(),
               f"lost acknowledged writes: {lost} of {len(totals.acked):,} keys (expected 0)",
               f"{victim} was reported suspect {events['member_suspected']} and down "
               f"{events['member_down']} times by its peers"]
    summary += [f"  lost {key}: acknowledged seq {seq}, read {got} from {served}"
                for key, seq, got, served in examples]
    return report("(c) kill under load", summary)


# ---------------------------------------------------------------------- (d) hints

def part_hints(args: argparse.Namespace, workdir: Path) -> list[str]:
    victim = "node3"
    say(f"== (d) hinted handoff: {victim} paused (SIGSTOP) for {args.pause:g}s under load, "
        "then resumed")
    with running_cluster(workdir, "hints", nodes=3) as cluster:
        since = time.time()
        held_max = 0
        with new_load(cluster, args, "h", args.warmup + args.pause + 60) as load:
            load.start()
            run_timeline(load, args.warmup, [])
            load.set_phase(1)  # from here on, fresh keys: the ones written during the pause
            cluster.chaos("pause", victim, in_process=True)
            pause_end = time.monotonic() + args.pause
            while time.monotonic() < pause_end:
                held_max = max(held_max, sum(own_hints(cluster, n) for n in NODES[:2]))
                time.sleep(min(0.5, max(0.0, pause_end - time.monotonic())))
            cluster.chaos("resume", victim, in_process=True)
            resumed_at, resumed_wall = time.monotonic(), time.time()
            load.set_phase(2)
            totals = stop_load(load)
        progress("waiting until no node holds hints")
        drained_s = None
        try:
            wait_for(lambda: all(own_hints(cluster, n) == 0 for n in NODES), args.hint_deadline,
                     "every node to report 0 hints")
            drained_s = time.monotonic() - resumed_at
        except TimeoutError as exc:
            say(f"  !! {exc}")
        deliveries = log_events(cluster, NODES, {"hints_delivered"}, since)
        missing, checked = missing_on(cluster, victim, keys_of_phase(totals.acked, "h", 1))
    to_victim = [e for e in deliveries if e.get("target") == victim]
    last_delivery = max((wall_time(e["timestamp"]) for e in to_victim), default=None)
    last_delivery_s = None if last_delivery is None else last_delivery - resumed_wall
    summary = [
        f"hints held at most {held_max:,} (node1+node2, sampled every 0.5s during the pause)",
        f"hints delivered to {victim}: {sum(e.get('count', 0) for e in to_victim):,} in "
        f"{len(to_victim)} batches (all targets: {sum(e.get('count', 0) for e in deliveries):,})",
        f"resume -> every node reports 0 hints: {seconds(drained_s)}; resume -> last "
        f"hints_delivered logged: {seconds(last_delivery_s)}",
        f"keys written during the pause with {victim} in their preference list: {checked:,}; "
        f"missing on {victim}: {len(missing)} (expected 0)",
        *totals.summary()]
    summary += [f"  missing: {key}" for key in missing[:5]]
    return report("(d) hints", summary)


def keys_of_phase(acked: dict[str, int], tag: str, phase: int) -> list[str]:
    return [key for key in acked if key.startswith(f"{tag}{phase}:")]


def missing_on(cluster: LocalCluster, node: str, keys: list[str]) -> tuple[list[str], int]:
    """Keys whose preference list includes ``node`` but that ``node`` does not hold."""
    client = cluster.client(*NODES)
    held = set(client.local_keys(node))
    placed_there = [key for key in keys if node in client.get_nodes(key, 3)]
    return [key for key in placed_there if key not in held], len(placed_there)


# ---------------------------------------------------------------------- (e) restore

def replica_total(client: Client, names: list[str]) -> int:
    return sum(len(client.local_keys(n)) for n in names)


def part_restore(args: argparse.Namespace, workdir: Path) -> list[str]:
    say(f"== (e) restore: 4 nodes, {args.keys:,} keys (N=3), node4 stopped and removed "
        "(graceful=False); time until every key is on 3 of node1..node3 again")
    everyone = [*NODES, "node4"]
    with running_cluster(workdir, "restore", nodes=3, spares=1) as cluster:
        cluster.chaos("start", "node4")
        cluster.wait_converged(everyone, timeout_s=120)
        client = cluster.client(*NODES, timeout=10.0)

        progress(f"loading {args.keys:,} keys with {args.loaders} processes")
        load_s, (_, failed) = harness.timed(lambda: harness.put_keys(
            cluster.seeds, [f"r{i}" for i in range(args.keys)], b"x" * args.value_size,
            args.loaders, args.client_timeout, args.load_deadline, attempts=3))
        wait_for(lambda: replica_total(client, everyone) >= 3 * args.keys, 120,
                 "every write's third replica", interval_s=0.5)

        cluster.chaos("stop", "node4")
        wait_for(lambda: all(cluster.status_from(n).member("node4").liveness == "down"
                             for n in NODES), 30, "node1..node3 to see node4 down")
        before = replica_total(client, NODES)
        progress(f"node4 down; {3 * args.keys - before:,} replicas to rebuild; removing it")
        removed_at = time.monotonic()
        client.remove_node("node4", graceful=False, wait=True, timeout=120)
        restore_s = None
        try:
            wait_for(lambda: replica_total(client, NODES) >= 3 * args.keys,
                     args.restore_deadline, "3 replicas of every key", interval_s=0.5)
            restore_s = time.monotonic() - removed_at
        except TimeoutError as exc:
            say(f"  !! {exc}")
        under, over = replica_counts(client, args.keys)
    rebuilt = 3 * args.keys - before
    summary = [f"load {args.keys:,} keys in {load_s:.1f}s = {args.keys / load_s:,.0f} keys/s "
               f"({args.loaders} processes; {failed} puts failed after 3 attempts)"]
    if restore_s is not None:
        summary.append(f"restore: {restore_s:.1f}s from remove_node to 3 replicas of every key"
                       f" = {args.keys / restore_s:,.0f} keys/s ({rebuilt:,} replicas rebuilt, "
                       f"{rebuilt / restore_s:,.0f}/s)")
    else:
        summary.append(f"restore: NOT complete within {args.restore_deadline:g}s")
    summary.append(f"per-key check: {under} keys on fewer than 3 nodes, {over} on more "
                   "(expected 0 and 0)")
    return report("(e) restore", summary)


def replica_counts(client: Client, keys: int) -> tuple[int, int]:
    """How many of the keys r0..r{keys-1} are on fewer / more than 3 of node1..node3."""
    holders = Counter(key for n in NODES for key in client.local_keys(n))
    counts = [holders.get(f"r{i}", 0) for i in range(keys)]
    return sum(c < 3 for c in counts), sum(c > 3 for c in counts)


# ---------------------------------------------------------------------- report

def report(title: str, lines: list[str]) -> list[str]:
    say(f"-- {title}")
    for line in lines:
        say(f"   {line}")
    say()
    return [f"{title}: {lines[0]}", *(f"    {line}" for line in lines[1:])]


def header() -> None:
    facts = harness.run_facts()
    say(f"zring failbench, {facts['started']}, commit {facts['commit']}, Python "
        f"{facts['python']}, {facts['cpus']} CPUs (nodes, load workers and this process "
        "share them)")
    say()


PARTS: dict[str, Callable[[argparse.Namespace, Path], list[str]]] = {
    "detection": part_detection,
    "false-downs": part_false_downs,
    "kill-under-load": part_kill_under_load,
    "hints": part_hints,
    "restore": part_restore,
}


# ---------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="failbench.py", description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=[*PARTS, "all"])
    parser.add_argument("--root", type=Path,
                        help="put the clusters here and keep them (default: a temporary "
                             "directory, removed afterwards)")
    parser.add_argument("--keep-files", action="store_true",
                        help="keep the temporary directory (data and node logs)")
    harness.add_numbers(parser.add_argument_group("load (b, c, d)"), [
        ("--workers", int, 2, "load processes"),
        ("--keyspace", int, 10_000, "distinct keys"),
        ("--value-size", int, 100, "value bytes"),
        ("--client-timeout", float, 2.0, "load clients' reply timeout (s)")])
    harness.add_numbers(parser.add_argument_group("(a) detection"), [
        ("--kills", int, 20, None),
        ("--restart-delay", float, 5.0,
         "seconds a killed node stays dead before supervisord's restart runs"),
        ("--poll-timeout", float, 0.25, "observers' cluster_status timeout (s)"),
        ("--down-deadline", float, 15.0, "give up waiting for 'down' after this (s)"),
        ("--up-deadline", float, 60.0,
         "give up waiting for the node to be back after this (s)"),
        ("--settle", float, 1.0, "pause between kills (s)")])
    harness.add_numbers(parser.add_argument_group("(b) false downs"), [
        ("--duration", float, 300.0, "seconds of load")])
    harness.add_numbers(parser.add_argument_group("(c) kill under load"), [
        ("--load-duration", float, 20.0, "seconds of load"),
        ("--kill-after", float, 5.0, "kill -9 node2 at (s)")])
    harness.add_numbers(parser.add_argument_group("(d) hints"), [
        ("--pause", float, 6.0, "seconds node3 stays SIGSTOPped"),
        ("--warmup", float, 3.0, "seconds of load before"),
        ("--hint-deadline", float, 120.0,
         "give up waiting for the hints to drain after this (s)")])
    harness.add_numbers(parser.add_argument_group("(e) restore"), [
        ("--keys", int, 100_000, None),
        ("--loaders", int, 4, "processes loading the keys"),
        ("--load-deadline", float, 900.0, "(s)"),
        ("--restore-deadline", float, 600.0, "(s)")])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.workers, args.keyspace, args.kills, args.keys, args.loaders) < 1:
        print("failbench.py: error: counts must be >= 1", file=sys.stderr)
        return 2
    workdir = args.root or Path(tempfile.mkdtemp(prefix="zring-failbench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    parts = list(PARTS) if args.part == "all" else [args.part]
    header()
    summaries: list[str] = []
    failed = False
    try:
        for name in parts:
            started = time.monotonic()
            try:
                summaries += PARTS[name](args, workdir)
            except Exception as exc:  # one broken part must not hide the others' figures
                failed = True
                say(f"!! {name} failed: {type(exc).__name__}: {exc}")
                summaries.append(f"({name}) FAILED: {type(exc).__name__}: {exc}")
            say(f"   ({name} took {time.monotonic() - started:.0f}s)")
            say()
    except KeyboardInterrupt:
        print("failbench.py: interrupted", file=sys.stderr)
        return 130
    finally:
        if args.root or args.keep_files:
            say(f"cluster files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if len(parts) > 1:
        say("== summary")
        for line in summaries:
            say(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
