"""Rebalancing on a real cluster: joins and leaves under load, their data movement, two
joins at once, and a join whose node is killed mid-stream ("safe joins and leaves").

Every test starts its own node processes (preloaded with enough keys that a join or a leave
streams for a second or more) and stops them in a fixture's ``finally``. Every wait has a
deadline; nothing sleeps hoping the cluster caught up.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import pytest
from cluster import TestCluster, wait_for

from zring import Client, Timeout, Unavailable
from zring.ring import HashRing

pytestmark = pytest.mark.integration

OLD = ["node1", "node2", "node3"]
ALL4 = OLD + ["node4"]
MOVE_TOLERANCE = 1.05   # moved / optimum must lie within [1/1.05, 1.05]
SLOW_STREAMS = ("--stream-batch-records", "5", "--stream-pulls-in-flight", "1")


@pytest.fixture
def make_cluster(tmp_path):
    """Start clusters on demand (preloaded before start); all stopped in ``finally``."""
    started: list[TestCluster] = []

    def make(preload: int = 0, spares: int = 1, extra_args: tuple = ()) -> TestCluster:
        # info, not debug: a debug line per request slows the nodes under load on 2 cores
        cluster = TestCluster(tmp_path / f"cluster{len(started)}", nodes=3, spares=spares,
                              log_level="info", extra_args=extra_args)
        started.append(cluster)
        if preload:
            cluster.preload(preload)
        return cluster.start()

    try:
        yield make
    finally:
        for cluster in started:
            cluster.stop()


# ------------------------------------------------------------------ helpers


def placements(cluster: TestCluster, names) -> dict[str, set[str]]:
    client = cluster.client()
    return {name: set(client.local_keys(name)) for name in names}


def log_events(cluster: TestCluster, name: str) -> list[dict]:
    """``name``'s JSON log lines, parsed (supervisord may interleave a non-JSON line)."""
    events = []
    for line in cluster.log_text(name).splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def event_names(cluster: TestCluster, name: str) -> list[str]:
    return [e.get("event", "") for e in log_events(cluster, name)]


def span_s(cluster: TestCluster, name: str, start: str, end: str) -> float | None:
    """Seconds from ``name``'s last ``start`` event to the ``end`` event after it."""
    began = None
    for event in log_events(cluster, name):
        stamp = datetime.fromisoformat(event.get("timestamp", "").replace("Z", "+00:00")
                                       or "1970-01-01T00:00:00+00:00")
        if event.get("event") == start:
            began = stamp
        elif event.get("event") == end and began is not None:
            return (stamp - began).total_seconds()
    return None


def misplaced_copies(cluster: TestCluster, names, keys) -> int:
    """Copies of ``keys`` on nodes outside the key's preference list."""
    ring = current_ring(cluster)
    held = placements(cluster, names)
    return sum(1 for key in keys for name in names
               if key in held[name] and name not in ring.get_nodes(key, 3))


def current_ring(cluster: TestCluster, via: str = "node1") -> HashRing:
    """The cluster's ring as ``via`` sees it, rebuilt here so placements are computed
    without one RING_STATE request per key."""
    state = cluster.client(via).ring_state()
    return HashRing({n.node_id: n.weight for n in state.nodes}, vnodes=state.vnodes)


def assert_placed_on_preference_lists(cluster: TestCluster, names, keys, n: int = 3,
                                     context: str = "") -> None:
    """Every key is on exactly its N preference-list nodes, and nowhere else."""
    ring = current_ring(cluster)
    held = placements(cluster, names)
    extra, missing, examples = Counter(), Counter(), []
    for key in keys:
        wanted = set(ring.get_nodes(key, n))
        holders = {name for name in names if key in held[name]}
        extra.update(holders - wanted)
        missing.update(wanted - holders)
        if holders != wanted and len(examples) < 3:
            examples.append((key, sorted(holders), sorted(wanted)))
    assert not extra and not missing, (
        f"copies off the preference lists: extra per node {dict(extra)}, missing per node "
        f"{dict(missing)}; e.g. (key, holders, preference list) {examples}{context}")


def membership_story(cluster: TestCluster, names) -> str:
    """The join and leave events of ``names``, in order: what a failure message needs."""
    wanted = {"node_started", "join_streaming", "join_restarted", "join_resumed",
              "join_refused", "join_source_down", "member_joined", "ranges_to_drop",
              "drop_narrowed", "ranges_dropped", "leave_streaming", "leave_resumed",
              "leave_restarted", "member_left"}
    lines = []
    for name in names:
        for event in log_events(cluster, name):
            if event.get("event") in wanted:
                extra = {k: v for k, v in event.items()
                         if k not in ("event", "node_id", "level", "timestamp")}
                lines.append(f"{event.get('timestamp', '')} {name} {event['event']} {extra}")
    return "\n" + "\n".join(sorted(lines))


def wait_status_everywhere(cluster: TestCluster, observers, node: str, wanted: set[str],
                           timeout_s: float) -> None:
    """Every observer reports ``node`` with a status in ``wanted`` (or absent if "absent")."""
    def seen() -> bool:
        for observer in observers:
            member = cluster.status_from(observer).member(node)
            status = member.status if member else "absent"
            if status not in wanted:
                return False
        return True
    wait_for(seen, timeout_s, f"{node} {sorted(wanted)} on {list(observers)}")


def read_all(cluster: TestCluster, keys: list[str], r: int, threads: int = 3) -> dict:
    """key -> value (None if not found), read with quorum ``r`` by ``threads`` clients in
    parallel (one Client each: a Client is not thread-safe)."""
    clients = [cluster.client(*OLD, timeout=5.0) for _ in range(threads)]
    results: dict = {}
    errors: list[BaseException] = []

    def read(client: Client, part: list[str]) -> None:
        try:
            for key in part:
                got = client.get(key, r=r)
                results[key] = got.value if got.found else None
        except BaseException as exc:
            errors.append(exc)
    workers = [threading.Thread(target=read, args=(c, keys[i::threads]))
               for i, c in enumerate(clients)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not errors and len(results) == len(keys), (errors[:3], len(results))
    return results


def ratio_ok(moved: int, optimum: float) -> bool:
    return 1 / MOVE_TOLERANCE <= moved / optimum <= MOVE_TOLERANCE


# ------------------------------------------------------------------ load with a checker


@dataclass
class PhaseStats:
    ops: int = 0
    puts_acked: int = 0
    puts_failed: int = 0
    gets_ok: int = 0
    gets_failed: int = 0
    stale: list = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    error_examples: list = field(default_factory=list)   # the first few, for the summary

    def failed(self, what: str, exc: Exception) -> None:
        self.errors[f"{what} {type(exc).__name__}"] += 1
        if len(self.error_examples) < 3:
            self.error_examples.append(f"{what}: {exc}")


class Load:
    """Worker threads, each owning disjoint keys: put(key, counter) then get(key) and check
    the read is not older than the last write acknowledged before it started.

    Values are increasing integers per key, so "newer" is comparable without versions: a
    read may return an unacknowledged (errored, indeterminate) newer value, never an older
    value than the last acknowledged one. Each thread has its own Client (not thread-safe).
    """

    def __init__(self, cluster: TestCluster, workers: int = 3, keys_per_worker: int = 40):
        self.cluster = cluster
        self.phase = "warmup"
        self.stop = threading.Event()
        self.acked: dict[str, int] = {}     # key -> last acknowledged counter
        self.written: dict[str, int] = {}   # key -> last counter sent (acked or not)
        self.stats: dict[str, PhaseStats] = {}
        self.lock = threading.Lock()
        self.crashed: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(w, keys_per_worker),
                                         daemon=True, name=f"load{w}")
                        for w in range(workers)]
        # clients made here (main thread): cluster.client() keeps them for stop()
        self.clients = [cluster.client(*OLD, timeout=5.0) for _ in range(workers)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        assert not any(t.is_alive() for t in self.threads), "a load thread did not stop"

    def _stats(self, phase: str) -> PhaseStats:
        with self.lock:
            return self.stats.setdefault(phase, PhaseStats())

    def _run(self, worker: int, count: int) -> None:
        client = self.clients[worker]
        keys = [f"load{worker}-{i}" for i in range(count)]
        counters = dict.fromkeys(keys, 0)
        i = 0
        try:
            while not self.stop.is_set():
                key = keys[i % count]
                i += 1
                # the phase an operation counts in is the one current when it started
                stats = self._stats(self.phase)
                counters[key] += 1
                value = counters[key]
                self.written[key] = value
                stats.ops += 1
                try:
                    client.put(key, str(value))
                    self.acked[key] = value
                    stats.puts_acked += 1
                except (Unavailable, Timeout) as exc:
                    stats.puts_failed += 1    # indeterminate: may or may not be stored
                    stats.failed("put", exc)
                floor = self.acked.get(key, 0)
                stats = self._stats(self.phase)
                stats.ops += 1
                try:
                    got = client.get(key)
                except (Unavailable, Timeout) as exc:
                    stats.gets_failed += 1
                    stats.failed("get", exc)
                    continue
                stats.gets_ok += 1
                seen = int(got.value) if got.found else 0
                if seen < floor:
                    stats.stale.append((key, floor, seen, got.served_by, time.time()))
        except BaseException as exc:  # an unexpected error ends the test, not just a thread
            self.crashed.append(exc)
            raise

    def wait_ops(self, phase: str, ops: int, timeout_s: float) -> None:
        wait_for(lambda: self.stats.get(phase, PhaseStats()).ops >= ops or self.crashed,
                 timeout_s, f"{ops} operations in phase {phase}")
        assert not self.crashed, self.crashed

    def hold(self, seconds: float) -> None:
        """Keep the load running for ``seconds`` (a deadline, failing early on a crash)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.crashed:
            time.sleep(0.1)
        assert not self.crashed, self.crashed


def summary(stats: dict[str, PhaseStats]) -> str:
    lines = []
    for phase, s in stats.items():
        lines.append(f"  {phase:>7}: {s.ops} ops, {s.puts_acked} puts acked, "
                     f"{s.puts_failed} puts failed, {s.gets_ok} gets, {s.gets_failed} gets "
                     f"failed, {len(s.stale)} stale; errors {dict(s.errors)}")
        lines += [f"           {example}" for example in s.error_examples]
    return "\n".join(lines)


# ------------------------------------------------------------------ tests


def test_no_acknowledged_write_lost_nor_stale_read_during_join_and_leave(make_cluster):
    # enough data that each change streams for a while under the load
    cluster = make_cluster(preload=30_000)
    with Load(cluster) as load:
        load.wait_ops("warmup", 200, 30)

        load.phase = "join"
        joined_at = time.monotonic()
        cluster.chaos("start", "node4")
        cluster.wait_converged(ALL4, timeout_s=90)
        join_s = time.monotonic() - joined_at
        load.hold(2)  # the old replicas drop their ranges just after the join: keep loading
        # informational: writes coordinated on a stale ring view can leave stray copies
        strays = misplaced_copies(cluster, ALL4, sorted(load.acked))

        load.phase = "leave"
        left_at = time.monotonic()
        cluster.client("node1").remove_node("node4", wait=True, timeout=90)
        wait_status_everywhere(cluster, OLD, "node4", {"left", "absent"}, 30)
        leave_s = time.monotonic() - left_at
        load.hold(2)
        load.phase = "after"
        load.hold(0.5)

    cluster.wait_converged(OLD, timeout_s=30)
    # Final read with R=3 (all replicas): the newest copy must be >= the last acknowledged.
    final = cluster.client(*OLD, timeout=5.0)
    lost = []
    for key, acked in sorted(load.acked.items()):
        got = final.get(key, r=3)
        seen = int(got.value) if got.found else 0
        if seen < acked:
            lost.append((key, acked, seen, load.written[key]))
    streamed = (span_s(cluster, "node4", "join_streaming", "member_joined"),
                span_s(cluster, "node4", "leave_streaming", "member_left"))
    print(f"\njoin took {join_s:.1f} s (streaming {streamed[0]} s), leave {leave_s:.1f} s "
          f"(streaming {streamed[1]} s); {strays} load-key copies off their preference list "
          f"after the join; {len(load.acked)} keys checked, {len(lost)} lost\n"
          f"{summary(load.stats)}")
    stale = [s for phase in load.stats.values() for s in phase.stale]
    assert not lost, f"acknowledged writes lost (key, acked, final, last written): {lost[:10]}"
    assert not stale, f"stale reads (key, acked, read, served_by, time): {stale[:10]}"
    for phase in ("join", "leave"):
        assert load.stats[phase].ops > 100, f"too little load during the {phase}"


def test_join_and_leave_move_the_ring_optimum(make_cluster):
    keys_count = 40_000
    cluster = make_cluster(preload=keys_count)
    before = placements(cluster, OLD)
    assert all(len(before[n]) == keys_count for n in OLD)  # N=3 of 3: everyone holds all

    cluster.chaos("start", "node4")
    cluster.wait_converged(ALL4, timeout_s=90)
    # "no extra copies remain": the old replicas dropped what node4 took over
    wait_for(lambda: sum(map(len, placements(cluster, ALL4).values())) == 3 * keys_count,
             60, "old replicas to drop what node4 took over")
    after = placements(cluster, ALL4)
    moved = len(after["node4"])
    optimum = 3 * keys_count / 4
    print(f"\njoin moved {moved} placements, {moved / optimum:.3f}x the optimum {optimum:.0f}")
    assert ratio_ok(moved, optimum), (moved, optimum)
    for name in OLD:
        assert after[name] <= before[name], f"{name} gained keys on a join"
    assert_placed_on_preference_lists(cluster, ALL4, before["node1"])

    # Leave: node4 hands its placements back to the nodes that gain them, nothing else moves.
    cluster.client("node1").remove_node("node4", wait=True, timeout=90)
    wait_status_everywhere(cluster, OLD, "node4", {"left", "absent"}, 30)
    wait_for(lambda: sum(map(len, placements(cluster, OLD).values())) == 3 * keys_count,
             60, "every key back on all three nodes")
    final = placements(cluster, OLD)
    gained = {name: final[name] - after[name] for name in OLD}
    for name in OLD:
        assert after[name] <= final[name], f"{name} lost keys when node4 left"
        assert gained[name] <= after["node4"], f"{name} gained keys node4 did not hold"
    total_gained = sum(map(len, gained.values()))
    print(f"leave moved {total_gained} placements; node4 held {len(after['node4'])}")
    assert total_gained == len(after["node4"])
    assert all(final[name] == before[name] for name in OLD)


def test_two_nodes_joining_at_once_end_in_one_agreed_ring(make_cluster):
    # enough that the two joins usually stream at the same time (how much they overlap
    # depends on the nodes' start-up times), few enough to read every key back quickly
    keys_count = 10_000
    cluster = make_cluster(preload=keys_count, spares=2)
    spares = ["node4", "node5"]
    keys = [f"key{i:08d}" for i in range(keys_count)]
    with Load(cluster, workers=1, keys_per_worker=20) as load:
        load.wait_ops("warmup", 50, 30)
        load.phase = "joins"
        began = time.monotonic()
        # Both starts leave the barrier together: the joins overlap as much as they can.
        barrier = threading.Barrier(2)
        failures: list[BaseException] = []

        def start(name: str) -> None:
            try:
                barrier.wait(timeout=10)
                cluster.chaos("start", name)
            except BaseException as exc:
                failures.append(exc)
        starters = [threading.Thread(target=start, args=(n,)) for n in spares]
        for thread in starters:
            thread.start()
        for thread in starters:
            thread.join(timeout=60)
        assert not failures, failures
        everyone = OLD + spares

        def settled():
            """Both normal everywhere, or one refused (out everywhere) and the other in."""
            statuses = {name: {m.node_id: m.status for m in cluster.status_from(name).members}
                        for name in everyone}
            normal = [s for s in spares
                      if all(statuses[v].get(s) == "normal" for v in everyone)]
            if len(normal) == 2:
                return normal
            refused = [s for s in spares if s not in normal and refusal(s)]
            if len(normal) == 1 and refused and all(
                    statuses[v].get(refused[0]) in (None, "left") for v in OLD + normal):
                return normal
            return None

        def refusal(name: str) -> bool:
            """``name`` logged a join refused as a membership conflict."""
            for event in log_events(cluster, name):
                if event.get("event") == "join_refused":
                    text = json.dumps(event).lower()
                    if "conflict" in text or "in progress" in text:
                        return True
            return False

        normal = wait_for(settled, 120, "both joins to settle")
        settled_s = time.monotonic() - began
        load.hold(1)
    print(f"\nnormal after two simultaneous joins: {normal}, settled in {settled_s:.1f} s\n"
          f"{summary(load.stats)}")
    members = OLD + normal
    # One ring: every member reports the same members with the same statuses and fingerprint.
    rings = {}
    for name in members:
        with Client([cluster.addresses[name]], timeout=5.0) as client:
            state = client.ring_state()
        rings[name] = (state.fingerprint,
                       sorted((m.node_id, m.status) for m in state.members
                              if m.status != "left"))
    assert len(set(map(repr, rings.values()))) == 1, rings
    cluster.wait_converged(members, timeout_s=30)
    read_at = time.monotonic()
    values = read_all(cluster, keys + sorted(load.acked), r=2)
    print(f"read back {len(values)} keys in {time.monotonic() - read_at:.1f} s")
    unreadable = [k for k in keys if values[k] is None]
    assert not unreadable, f"{len(unreadable)} preloaded keys unreadable: {unreadable[:5]}"
    lost = [(k, v) for k, v in load.acked.items() if int(values[k] or 0) < v]
    assert not lost, f"acknowledged writes lost (key, acked): {lost}"
    stale = [s for phase in load.stats.values() for s in phase.stale]
    assert not stale, stale
    # Once both are in, no copy may remain off the preference lists (the old replicas drop
    # what the joiners took over right after each join).
    preloaded = set(keys)
    try:
        wait_for(lambda: sum(len(held & preloaded) for held in
                             placements(cluster, members).values()) == 3 * keys_count,
                 30, "no extra copies left after the joins", interval_s=0.5)
    except TimeoutError:
        pass  # the check below says which copies are off, with the joins' log events
    assert_placed_on_preference_lists(cluster, members, keys,
                                      context=membership_story(cluster, spares))


def test_a_join_interrupted_by_kill_minus_nine_completes(make_cluster):
    keys_count = 60_000
    # tiny pages, one in flight: the stream lasts seconds, so it is still under way when
    # `chaos start` returns (a second after the process started) and the kill lands in it
    cluster = make_cluster(preload=keys_count, extra_args=SLOW_STREAMS)
    client = cluster.client(*OLD, timeout=5.0)
    sample = [f"key{i:08d}" for i in range(0, keys_count, 150)]
    expected = {key: client.get(key).value for key in sample}

    cluster.chaos("start", "node4")

    def streamed_some() -> bool:  # node4's own row carries its transfer, live
        row = cluster.status_from("node4", timeout=1.0).member("node4")
        return row is not None and row.transfer is not None and row.transfer.keys_done >= 2000
    # kill once part of its ranges arrived, so there is something to resume from
    wait_for(streamed_some, 60, "node4 to receive its first records", interval_s=0.01)
    cluster.chaos("kill", "node4", in_process=True)
    events = event_names(cluster, "node4")
    # the kill must have landed mid-stream, or this test tests nothing
    assert "member_joined" not in events, "node4 finished streaming before it was killed"
    killed_after = len(events)

    cluster.wait_converged(ALL4, timeout_s=120)   # supervisord restarted it; it joined
    wait_for(lambda: sum(map(len, placements(cluster, ALL4).values())) == 3 * keys_count,
             60, "old replicas to drop what node4 took over")
    held = placements(cluster, ALL4)
    optimum = 3 * keys_count / 4
    print(f"\nnode4 holds {len(held['node4'])} keys, {len(held['node4']) / optimum:.3f}x "
          f"the optimum; events after restart: "
          f"{[e for e in event_names(cluster, 'node4')[killed_after:] if 'join' in e]}")
    assert ratio_ok(len(held["node4"]), optimum)
    assert_placed_on_preference_lists(cluster, ALL4, [f"key{i:08d}" for i in range(keys_count)])
    after = {key: client.get(key).value for key in sample}
    assert after == expected
    restarted = event_names(cluster, "node4")[killed_after:]
    assert "node_started" in restarted and "member_joined" in restarted
    # it resumed from what it had saved rather than starting over
    assert "join_resumed" in restarted, restarted
    assert restarted.index("join_resumed") < restarted.index("member_joined")
    resumed = next(e for e in log_events(cluster, "node4") if e.get("event") == "join_resumed")
    assert resumed["records_done"] >= 2000 and resumed["chunks_done"] >= 0



def test_cli_plans_then_shows_progress_of_a_join_and_a_leave(make_cluster):
    """`zring plan` predicts the join exactly before anything moves; `zring add-node` and
    `zring remove-node` draw their progress bar while node4 streams; `zring status` lists
    the transfer while it is in flight."""
    import re
    import subprocess
    import sys
    keys = 60_000
    # streams for seconds: still under way when the CLI (a new Python) starts watching it
    cluster = make_cluster(preload=keys, extra_args=SLOW_STREAMS)
    seeds = ["--seeds", ",".join(cluster.seeds)]

    def zring(*args, timeout=120):
        return subprocess.run([sys.executable, "-m", "zring.cli", *seeds, *args],
                              capture_output=True, text=True, timeout=timeout)

    plan = zring("plan", "add", "node4")
    assert plan.returncode == 0, plan.stderr
    assert "nothing has moved" in plan.stdout
    moved = int(re.search(r"moves ([\d,]+) records", plan.stdout).group(1).replace(",", ""))
    assert ratio_ok(moved, 3 * keys / 4)
    assert "balance (peak/mean records per node): 1.000 now" in plan.stdout
    assert placements(cluster, OLD)["node1"] == set(f"key{i:08d}" for i in range(keys))

    cluster.chaos("start", "node4")   # it joins by itself; add-node waits on it
    seen_in_status: list = []

    def watch_status():  # what `zring status` prints comes from these rows
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not seen_in_status:
            try:
                row = cluster.status_from("node4").member("node4")
            except Exception:  # noqa: BLE001 - not up yet: poll again until the deadline
                row = None
            if row is not None and row.transfer is not None:
                seen_in_status.append(row.transfer)
            elif row is not None and row.status == "normal":
                return
            time.sleep(0.02)
    watcher = threading.Thread(target=watch_status)
    watcher.start()
    added = zring("add-node", "node4", cluster.addresses["node4"], "--wait-timeout", "120")
    watcher.join()
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == "node4: normal"
    assert "node4 join" in added.stderr and "keys" in added.stderr  # the bar (tqdm)
    assert seen_in_status and seen_in_status[0].kind == "join"
    assert 0 <= seen_in_status[0].keys_done <= seen_in_status[0].keys_total or \
        seen_in_status[0].keys_total == -1
    assert len(placements(cluster, ["node4"])["node4"]) == moved  # exactly as planned

    removed = zring("remove-node", "node4", "--wait-timeout", "120")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.strip() == "node4: left"
    assert "node4 leave" in removed.stderr
