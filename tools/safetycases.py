#!/usr/bin/env python3
"""The real-time safety failures of issue 17, each reproduced on real node processes.

    python tools/safetycases.py                              # every case, ~2 minutes
    python tools/safetycases.py --cases late-retry,status    # some of them
    python tools/safetycases.py --json results.json          # the outcomes as JSON too

Each case starts a fresh zring.localcluster.LocalCluster (node processes under a private
supervisord, faults through tools/chaos.py with real signals) in a temporary directory that
is removed afterwards (``--keep`` keeps it, with the node logs), does what a new user did when
the failure was seen, and prints one line: what it counted, then the outcome:

    lost     acknowledged data was overwritten by an older value or cannot be read
    wrong    the cluster answered wrongly (a read went back in time, a node stopped serving,
             status figures off)
    refused  the cluster refused the request instead of answering wrongly (a node whose
             clock is off refuses writes, a forming seed holds requests)
    held     the property held
    skipped  the case needs something this machine lacks (root for tmpfs, libfaketime)
    error    the case could not be carried out (the line says why)

It runs against any checkout of zring, the one before the fixes too (whose LocalCluster has no
``set_clock``): this tool starts each node itself, under libfaketime when its clock is set,
through a launcher that can lower the node's ``max_pending_requests`` (no version has a
command-line option for it); errors are caught generically (old nodes lack the new types):

    cd /tmp/base && PYTHONPATH=/tmp/base .venv/bin/python /work/main/tools/safetycases.py

Needs root for the cases that mount a small tmpfs (disk-full) and Debian's faketime for the
clock cases. Every wait has a deadline. Loopback only.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import say  # noqa: E402 - tools/harness.py, found through the line above

from zring.client import Client
from zring.localcluster import LocalCluster, wait_for

FAKETIME_GLOB = "/usr/lib/*/faketime/libfaketimeMT.so.1"
YEAR_S = 365 * 86400

# The node's entry point, run by the launcher below: ``max_pending_requests`` has no
# command-line option, so the launcher lowers it (from the environment) before the node's
# own main() builds its config.
LAUNCHER = """\
import os, runpy, sys
limit = os.environ.get("SAFETYCASES_MAX_PENDING")
if limit:
    from zring import config
    init = config.NodeConfig.__init__
    def lowered(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.max_pending_requests = int(limit)
    config.NodeConfig.__init__ = lowered
sys.argv[0] = "zring"
runpy.run_module("zring.cli", run_name="__main__", alter_sys=True)
"""


def faketime_library() -> str | None:
    found = sorted(glob.glob(FAKETIME_GLOB))
    return found[0] if found else None


# ---------------------------------------------------------------------- the cluster

class SafetyCluster(LocalCluster):
    """LocalCluster whose nodes this tool starts itself: under libfaketime when a clock
    offset is set (``set_offset``, from the node's next start), through a launcher that can
    lower ``max_pending_requests``; works with the LocalCluster of any zring version."""

    def __init__(self, root: Path, *, max_pending: int | None = None, **options) -> None:
        options.setdefault("log_level", "info")
        super().__init__(root, **options)
        self.max_pending = max_pending
        self.launcher = self.root / "launch_node.py"
        self.direct_clients: list[Client] = []

    def write_conf(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.launcher.write_text(LAUNCHER)
        super().write_conf()

    def _node_command(self, name: str) -> str:
        """The node command of this checkout's LocalCluster, whatever its version, started
        through the launcher and, when an offset is set, under libfaketime."""
        argv = shlex.split(super()._node_command(name))
        script = argv[2] if argv[:2] == ["/bin/sh", "-c"] else f"exec {shlex.join(argv)}"
        script = script.replace(shlex.join([sys.executable, "-m", "zring.cli"]),
                                shlex.join([sys.executable, str(self.launcher)]), 1)
        clock = shlex.quote(str(self.offset_file(name)))
        prefix = (f"if [ -s {clock} ]; then export LD_PRELOAD=\"$(sed -n 1p {clock})\" "
                  f"FAKETIME=\"$(sed -n 2p {clock})\"; fi; ")
        if self.max_pending is not None:
            prefix += f"export SAFETYCASES_MAX_PENDING={int(self.max_pending)}; "
        # the script still ends in exec: supervisord's pid (and chaos's signals) stay the node's
        return shlex.join(["/bin/sh", "-c", prefix + script])

    def offset_file(self, name: str) -> Path:
        return self.root / "data" / f"{name}.faketime"

    def set_offset(self, name: str, offset_s: float) -> None:
        """``name``'s wall clock runs ``offset_s`` off from its next start (0: right)."""
        path = self.offset_file(name)
        if not offset_s:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{faketime_library()}\n{offset_s:+.3f}\n")

    def direct(self, name: str, timeout: float = 2.0, retries: int = 0) -> Client:
        """A client whose requests ``name`` coordinates (no token-aware routing)."""
        client = Client([self.addresses[name]], timeout=timeout, retries=retries,
                        token_aware=False)
        self.direct_clients.append(client)
        return client

    def pid(self, name: str) -> int:
        return self.supervisor().getProcessInfo(name)["pid"]

    def restart_node(self, name: str) -> None:
        self.chaos("restart", name, in_process=True)
        self.wait_running([name])
        self.wait_converged(sorted(self.autostart), timeout_s=60)

    def events(self, name: str, event: str) -> int:
        return self.log_text(name).count(f'"event": "{event}"')

    def stop(self) -> None:
        for client in self.direct_clients:
            client.close()
        self.direct_clients.clear()
        super().stop()


@dataclasses.dataclass
class Outcome:
    case: str
    verdict: str            # lost / wrong / refused / held / skipped / error
    count: int              # what went wrong, out of ...
    total: int
    line: str               # what was counted, in words
    details: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0


def attempt(call: Callable[[], object]) -> tuple[str, object]:
    """("ok", result) or (the error's class name, the error): old nodes lack new types."""
    try:
        return "ok", call()
    except Exception as exc:  # any zring error, whatever its version's types
        return type(exc).__name__, exc


def value_of(client: Client, key: str, r: int | None = None) -> bytes | str | None:
    outcome, result = attempt(lambda: client.get(key, r=r))
    if outcome != "ok":
        return f"<{outcome}>"
    return result.value if result.found else None


def keys_owned_by(client: Client, owner: str, count: int, prefix: str) -> list[str]:
    keys = [k for k in (f"{prefix}{i}" for i in range(10 * count + 100))
            if client.get_node(k) == owner]
    if len(keys) < count:
        raise RuntimeError(f"{owner} owns too few of the keys {prefix}N")
    return keys[:count]


def wait_up(cluster: SafetyCluster, observer: str, node: str, timeout_s: float = 20) -> None:
    wait_for(lambda: cluster.status_from(observer).member(node).liveness == "up", timeout_s,
             f"{observer} to see {node} up")


# ---------------------------------------------------------------------- the cases

def case_late_retry(root: Path) -> Outcome:
    """A put meets a paused owner, times out, is resent by the default Client and
    acknowledged by the other replicas; the next put of the key is acknowledged too. Then
    the owner resumes and coordinates the first copy it had queued."""
    with SafetyCluster(root, nodes=3) as cluster:
        keys = keys_owned_by(cluster.client(), "node3", 3, "late")
        warm, keys = keys[0], keys[1:]
        # clients in use for a while: each has its connection to the owner already (a
        # request to a node that never completed the handshake is dropped with the socket)
        clients = {key: Client(cluster.seeds) for key in keys}   # timeout 5 s, retries 3
        for client in clients.values():
            client.put(warm, b"warm")
        cluster.chaos("pause", "node3", in_process=True)
        acked: dict[str, list[str]] = {}

        def write(key: str) -> None:
            with clients[key] as client:
                acked[key] = [attempt(lambda v=v: client.put(key, v))[0]
                              for v in (b"first", b"second")]
        threads = [threading.Thread(target=write, args=(key,)) for key in keys]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        cluster.chaos("resume", "node3", in_process=True)
        wait_up(cluster, "node1", "node3")
        time.sleep(2.0)   # what the resumed owner had queued is applied by now
        reader = cluster.client()
        both = [k for k in keys if acked.get(k) == ["ok", "ok"]]
        seen = {k: value_of(reader, k, r=3) for k in keys}
    older = sum(1 for k in both if seen[k] == b"first")
    return Outcome("late-retry", "lost" if older else "held", older, len(both),
                   f"{older} of {len(both)} keys read the older value after the owner resumed",
                   {"puts": acked, "read_r3": {k: repr(v) for k, v in seen.items()}})


def _puts(client: Client, keys: list[str], value: bytes) -> dict[str, tuple[str, object]]:
    return {k: attempt(lambda k=k: client.put(k, value)) for k in keys}


def _errors(results: dict[str, tuple[str, object]]) -> list[str]:
    return sorted({str(e)[:200] for o, e in results.values() if o != "ok"})


def _skew_outcome(case: str, keys: list[str], first: dict, second: dict, seen: dict,
                  newer: bytes, what: str, extra: dict | None = None) -> Outcome:
    """``second`` holds the puts that came later: each acknowledged one must be read."""
    acked = [k for k in keys if second[k][0] == "ok"]
    stale = sum(1 for k in acked if seen[k] != newer)
    refused = sum(1 for k in keys if first[k][0] != "ok" or second[k][0] != "ok")
    verdict = "lost" if stale else "refused" if refused else "held"
    line = f"{stale} of {len(acked)} keys {what}"
    if refused:
        kinds = Counter(o for o, _ in [*first.values(), *second.values()] if o != "ok")
        line += f" ({_counts(kinds)} refusals of {2 * len(keys)} puts)"
    return Outcome(case, verdict, stale, len(acked), line, {
        "first": {k: o for k, (o, _) in first.items()}, "first_errors": _errors(first),
        "second": {k: o for k, (o, _) in second.items()}, "second_errors": _errors(second),
        "seen": {k: repr(v) for k, v in seen.items()}, **(extra or {})})


def case_clock_skew(root: Path) -> Outcome:
    """Five nodes, node3's clock 300 s ahead: for each of 5 keys a put through node3, then
    1 s later an acknowledged put through node1."""
    return _put_then_put_case(root, "clock-skew", "skew", 300, "node3", "node1",
                              "kept the earlier value over a put acknowledged 1 s later")


def case_clock_behind(root: Path) -> Outcome:
    """Five nodes, node3 restarted with its clock 300 s behind: for each of 5 keys a put
    through node1, then 1 s later an acknowledged put through node3."""
    return _put_then_put_case(root, "clock-behind", "behind", -300, "node1", "node3",
                              "kept the earlier value over a put acknowledged 1 s later by "
                              "the node behind")


def _put_then_put_case(root: Path, name: str, prefix: str, offset_s: float, first_node: str,
                       second_node: str, what: str) -> Outcome:
    """node3 restarted with its clock ``offset_s`` off; for each of 5 keys a put through
    ``first_node``, then 1 s later one through ``second_node``; read at r=3 through node1."""
    with SafetyCluster(root, nodes=5) as cluster:
        cluster.set_offset("node3", offset_s)
        cluster.restart_node("node3")
        time.sleep(2.0)   # it has run a moment with its clock off
        through_first, through_second = cluster.direct(first_node), cluster.direct(second_node)
        reader = cluster.direct("node1")
        first, second = {}, {}
        for key in (f"{prefix}{i}" for i in range(5)):
            first.update(_puts(through_first, [key], b"earlier"))
            time.sleep(1.0)
            second.update(_puts(through_second, [key], b"later"))
        seen = {k: value_of(reader, k, r=3) for k in first}
        logged = cluster.events("node3", "clock_offset_exceeded")
    return _skew_outcome(name, list(first), first, second, seen, b"later", what,
                         {"clock_offset_exceeded_logged": logged})


def case_year_ahead(root: Path) -> Outcome:
    """Five nodes, node3 a year ahead writes 5 keys; its clock is fixed and it restarts;
    then new acknowledged writes of those keys, through node3 and through node1."""
    with SafetyCluster(root, nodes=5) as cluster:
        cluster.set_offset("node3", YEAR_S)
        cluster.restart_node("node3")
        time.sleep(2.0)
        keys = [f"year{i}" for i in range(5)]
        first = _puts(cluster.direct("node3"), keys, b"from a year ahead")
        cluster.set_offset("node3", 0)
        cluster.restart_node("node3")
        time.sleep(2.0)
        half = len(keys) // 2
        second = {**_puts(cluster.direct("node3"), keys[:half], b"now"),
                  **_puts(cluster.direct("node1"), keys[half:], b"now")}
        seen = {k: value_of(cluster.direct("node1"), k, r=3) for k in keys}
    return _skew_outcome("year-ahead", keys, first, second, seen, b"now",
                         "written a year ahead ignored a new acknowledged write after the "
                         "clock was fixed and the node restarted (first half through it, the "
                         "rest through node1)")


def case_forming(root: Path, gap_s: float = 0.5) -> Outcome:
    """Five seeds, each listing all five, started ``gap_s`` apart while a client writes;
    every acknowledged write is read back at R=2 once the seeds have met."""
    names = [f"node{i}" for i in range(1, 6)]
    cluster = SafetyCluster(root, nodes=5)
    cluster.autostart = set()   # started one by one below
    acked: dict[str, bytes] = {}
    failures: Counter = Counter()
    waits: list[float] = []   # of the acknowledged puts, in seconds (retries included)
    stop = threading.Event()

    def write() -> None:
        with Client(cluster.seeds, timeout=0.5) as client:
            index = 0
            while not stop.is_set():
                key, value = f"form{index}", f"v{index}".encode()
                started = time.monotonic()
                outcome, _ = attempt(lambda k=key, v=value: client.put(k, v))
                if outcome == "ok":
                    acked[key] = value
                    waits.append(time.monotonic() - started)
                else:
                    failures[outcome] += 1
                    time.sleep(0.01)
                index += 1
    writer = threading.Thread(target=write)
    try:
        cluster.start()
        cluster.supervisor().startProcess(names[0], False)
        wait_for(lambda: cluster.status_from(names[0]), 10, f"{names[0]} to answer")
        writer.start()   # writing from the first seed's start
        for name in names[1:]:
            cluster.supervisor().startProcess(name, False)
            time.sleep(gap_s)
        cluster.wait_converged(names, timeout_s=60)
        time.sleep(2.0)
        stop.set()
        writer.join(30)
        reader = Client(cluster.seeds, timeout=2.0)
        cluster.direct_clients.append(reader)
        unreadable = {k: repr(value_of(reader, k)) for k, v in acked.items()
                      if value_of(reader, k) != v}
    finally:
        stop.set()
        cluster.stop()
    held = sum(1 for w in waits if w > 1.0)   # waited for the cluster to form
    verdict = "lost" if unreadable else "refused" if failures or held else "held"
    line = (f"{len(unreadable)} of {len(acked)} acknowledged writes unreadable at R=2 once "
            f"the seeds had met ({sum(failures.values())} puts failed, {held} acknowledged "
            f"only after over 1 s, longest {max(waits, default=0):.1f} s)")
    return Outcome("forming", verdict, len(unreadable), len(acked), line,
                   {"failures": dict(failures), "held_puts": held,
                    "longest_put_s": max(waits, default=0),
                    "unreadable_sample": dict(list(unreadable.items())[:10])})


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True, capture_output=True)


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(directory: Path) -> Path:
    """Fill the file system mounted at ``directory`` with one file (unbuffered: nothing is
    left to flush on close); returns it. Only a mount point (a small tmpfs) is ever filled:
    a directory whose mount went away would fill the machine's own disk."""
    if not os.path.ismount(directory):
        raise RuntimeError(f"{directory} is not a mount point: refusing to fill its disk")
    path = directory / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return path


def case_disk_full(root: Path, max_pending: int = 8) -> Outcome:
    """node2's data directory on a small tmpfs, filled: writes through it, writes through
    another node (node2 is a replica of every key), reads through it; then the space is
    freed: does node2 serve again? Its max_pending_requests is lowered to ``max_pending``,
    so requests it failed on and never let go of would leave it refusing everything."""
    if os.geteuid() != 0:
        return Outcome("disk-full", "skipped", 0, 0, "needs root to mount a tmpfs")
    data = root / "data" / "node2"
    _mount_tmpfs(data, "16m")
    try:
        with SafetyCluster(root, nodes=3, max_pending=max_pending) as cluster:
            through_full = cluster.direct("node2", timeout=1.0)
            for i in range(50):
                through_full.put(f"stored{i}", b"x" * 100)
            pid = cluster.pid("node2")
            filler = fill(data)
            started = time.monotonic()
            writes_full = Counter(attempt(lambda i=i: through_full.put(f"full{i}", b"y"))[0]
                                  for i in range(5))
            write_s = (time.monotonic() - started) / 5
            through_other = cluster.direct("node1")
            writes_other = Counter(attempt(lambda i=i: through_other.put(f"other{i}", b"z"))[0]
                                   for i in range(20))
            reads_full = Counter(attempt(lambda i=i: through_full.get(f"stored{i}"))[0]
                                 for i in range(10))
            restarts = cluster.pid("node2") != pid or cluster.events("node2", "node_started") > 1
            filler.unlink()
            freed = time.monotonic()
            recovered = None
            try:
                wait_for(lambda: attempt(lambda: through_full.put("recovered", b"r"))[0] == "ok",
                         20, "node2 to take writes again")
                recovered = time.monotonic() - freed
            except TimeoutError:
                pass
            tries = [attempt(lambda i=i: through_full.put(f"after{i}", b"a")) for i in range(10)]
            tries += [attempt(lambda i=i: through_full.get(f"stored{i}")) for i in range(10)]
            after = Counter(kind for kind, _ in tries)
            after_errors = sorted({str(e)[:200] for kind, e in tries if kind != "ok"})
            commits_failed = cluster.events("node2", "commit_failed")
    finally:
        _umount(data)
    bad_reads = sum(n for k, n in reads_full.items() if k != "ok")
    bad_other = sum(n for k, n in writes_other.items() if k != "ok")
    bad_after = sum(n for k, n in after.items() if k != "ok")
    held = not (bad_reads or bad_other or bad_after or restarts or recovered is None
                or writes_full.get("Timeout"))
    line = (f"writes through the full node: {_counts(writes_full)} ({write_s:.2f} s each); "
            f"{bad_other} of 20 writes through another node failed; {bad_reads} of 10 reads "
            f"through the full node failed; restarted: {'yes' if restarts else 'no'}; "
            + (f"serving again {recovered:.1f} s after space was freed ({bad_after} of 20 "
               "failed then)" if recovered is not None else "not serving 20 s after space "
               "was freed"))
    return Outcome("disk-full", "held" if held else "wrong", bad_reads + bad_other + bad_after,
                   50, line, {"writes_full": dict(writes_full), "writes_other": dict(
                       writes_other), "reads_full": dict(reads_full), "after": dict(after),
                       "after_errors": after_errors,
                       "restarted": restarts, "recovered_after_s": recovered,
                       "commit_failed_logged": commits_failed})


def _counts(counter: Counter) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in counter.most_common())


def case_read_back(root: Path, count: int = 20) -> Outcome:
    """A put with w=3 while two replicas are paused (and already marked down, so nothing of
    it waits in their sockets) lands on its coordinator only and fails; the two resume;
    then, key by key, a quorum read through the coordinator and right after it one through
    another replica. A read that saw the new value must not be followed by one that misses
    it. The keys' preference list is [x, a, c] (a coordinates): a reads {a, x}, c reads
    {c, x}, so only x's copy, repaired or not, stands between the two reads."""
    with SafetyCluster(root, nodes=3) as cluster:
        router = cluster.client()
        orders = {k: router.get_nodes(k) for k in (f"back{i}" for i in range(20 * count))}
        pattern = orders["back0"]
        keys = [k for k, order in orders.items() if order == pattern][:count]
        x, a, c = pattern
        through_a, through_c = cluster.direct(a), cluster.direct(c)
        for key in keys:
            through_a.put(key, b"old", w=3)
        for name in (x, c):
            cluster.chaos("pause", name, in_process=True)
        wait_for(lambda: all(cluster.status_from(a).member(n).liveness == "down"
                             for n in (x, c)), 15, f"{a} to see {x} and {c} down")
        put_new = Counter(attempt(lambda k=k: through_a.put(k, b"new", w=3))[0] for k in keys)
        for name in (x, c):
            cluster.chaos("resume", name, in_process=True)
        wait_for(lambda: all(cluster.status_from(o).member(n).liveness == "up"
                             for o, n in ((a, x), (a, c), (c, x))), 15, "the replicas up")
        repairs_before = attempt(lambda: router.node_stats(a).get("read_repairs", 0))[1]
        pairs = {k: (value_of(through_a, k), value_of(through_c, k)) for k in keys}
        repairs = attempt(lambda: router.node_stats(a).get("read_repairs", 0))[1]
    back = sum(1 for first, second in pairs.values() if first == b"new" and second == b"old")
    seen_new = sum(1 for first, _ in pairs.values() if first == b"new")
    line = (f"{back} of {seen_new} keys read new through the coordinator, then old through "
            f"another replica (the put of new: {_counts(put_new)}; reads, first/second: "
            f"{_counts(Counter(f'{_kind(p)}/{_kind(q)}' for p, q in pairs.values()))}; "
            f"read repairs by the coordinator meanwhile: {_difference(repairs_before, repairs)})")
    return Outcome("read-back", "wrong" if back else "held", back, seen_new, line, {
        "preference": pattern, "put_new": dict(put_new),
        "read_repairs_by_coordinator": [repairs_before, repairs],
        "reads": {k: [repr(v) for v in pair] for k, pair in pairs.items()}})


def _difference(before: object, after: object) -> object:
    return after - before if isinstance(before, int) and isinstance(after, int) else "?"


def _kind(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def case_status(root: Path, count: int = 10_000) -> Outcome:
    """cluster_status() right after 10,000 puts: every node holds every key (N=3)."""
    with SafetyCluster(root, nodes=3) as cluster:
        client = cluster.client()
        for start in range(0, count, 1000):
            client.mput({f"status{i:05d}": b"v" * 10 for i in range(start, start + 1000)})
        status = client.cluster_status()
        figures = {m.node_id: m.keys_count for m in status.members}
        kinds = {m.node_id: getattr(m, "figures", "n/a") for m in status.members}
    off = sum(1 for n in figures.values() if n != count)
    return Outcome("status", "wrong" if off else "held", off, len(figures),
                   f"{off} of {len(figures)} nodes showed a keys_count other than {count} "
                   f"right after {count} puts ({', '.join(str(n) for n in figures.values())})",
                   {"keys_count": figures, "figures": kinds})


CASES: dict[str, Callable[[Path], Outcome]] = {
    "late-retry": case_late_retry,
    "clock-skew": case_clock_skew,
    "clock-behind": case_clock_behind,
    "year-ahead": case_year_ahead,
    "forming": case_forming,
    "disk-full": case_disk_full,
    "read-back": case_read_back,
    "status": case_status,
}
CLOCK_CASES = {"clock-skew", "clock-behind", "year-ahead"}


def run_case(name: str, workdir: Path, keep: bool) -> Outcome:
    if name in CLOCK_CASES and faketime_library() is None:
        return Outcome(name, "skipped", 0, 0, "needs libfaketime (apt-get install faketime)")
    root = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
    started = time.monotonic()
    try:
        outcome = CASES[name](root)
    except Exception as exc:  # a case that could not run says why; the others still run
        outcome = Outcome(name, "error", 0, 0, f"{type(exc).__name__}: {exc}")
    outcome.seconds = round(time.monotonic() - started, 1)
    outcome.details["root"] = str(root)
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated, of: {', '.join(CASES)} (default: all)")
    parser.add_argument("--json", metavar="FILE", help="also write the outcomes here")
    parser.add_argument("--keep", action="store_true",
                        help="keep each case's cluster directory (node logs) under --root")
    parser.add_argument("--root", metavar="DIR", help="where the clusters go (default: temp)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown cases: {', '.join(unknown)} (known: {', '.join(CASES)})")
    workdir = Path(args.root or tempfile.mkdtemp(prefix="safetycases-"))
    workdir.mkdir(parents=True, exist_ok=True)
    import zring
    say(f"# zring {getattr(zring, '__version__', '?')} from {Path(zring.__file__).parent}")
    outcomes = []
    for name in names:
        outcome = run_case(name, workdir, args.keep)
        outcomes.append(outcome)
        say(f"{name}: {outcome.line} -> {outcome.verdict} ({outcome.seconds:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps([dataclasses.asdict(o) for o in outcomes],
                                              indent=2, default=repr) + "\n")
    if not args.keep and not args.root:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
