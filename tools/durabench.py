#!/usr/bin/env python3
"""Durability and repair figures, each side by side in one run on throwaway local clusters.

    python tools/durabench.py throughput [--seconds 10] [--clients 8]
    python tools/durabench.py repair [--keys 100000] [--divergence 0.01]
    python tools/durabench.py all

throughput: put ops/s with --fsync always (fsync per group commit) and --fsync periodic,
one synchronous client and ``--clients`` concurrent client processes, and the ratio.
repair: a replica loses a share of its records (deleted from its store while it is stopped);
`zring repair` then runs; its time and bytes are set against a full copy: the same replica
wiped entirely and repaired, which streams everything it holds.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402 - tools/harness.py, found through the line above

from zring import Client  # noqa: E402
from zring.localcluster import LocalCluster, wait_for  # noqa: E402
from zring.storage import DEFAULT_STORE, open_store  # noqa: E402

VALUE = b"v" * 100
NODES = ["node1", "node2", "node3"]


@dataclass(frozen=True)
class PutSpec:
    seeds: list[str]


def put_worker(spec: PutSpec, control: harness.LoadControl) -> None:
    """Fresh keys, one put after another, each counted, until told to stop."""
    done = 0
    try:
        with Client(spec.seeds, timeout=5.0) as client:
            control.ready()
            while control.running():
                client.put(f"w{control.index}-{done}", VALUE)
                control.count(ok=True)
                done += 1
    finally:
        control.done(done)


def put_rate(cluster: LocalCluster, clients: int, seconds: float) -> float:
    """Acknowledged puts per second of ``clients`` processes over ``seconds``."""
    with harness.LoadProcesses(put_worker, [PutSpec(cluster.seeds)] * clients,
                               max_seconds=seconds + 60) as load:
        load.start()
        time.sleep(seconds)  # the measurement window itself
        now, acknowledged, _ = load.totals()
        load.stop()
    return acknowledged / (now - load.started_at)


def throughput(args: argparse.Namespace) -> None:
    rows = []
    for policy in ("always", "periodic"):
        with tempfile.TemporaryDirectory(prefix=f"zring-{policy}-") as root, \
                LocalCluster(root, extra_args=("--fsync", policy), log_level="info") as cluster:
            rows.append((policy, put_rate(cluster, 1, args.seconds),
                         put_rate(cluster, args.clients, args.seconds)))
    print(f"\nput throughput, 3 nodes, N=3 W=2, 100-byte values, {args.seconds:g} s each")
    print(f"{'fsync':10} {'1 client ops/s':>15} {f'{args.clients} clients ops/s':>17}")
    for policy, single, many in rows:
        print(f"{policy:10} {single:15,.0f} {many:17,.0f}")
    (_, a1, am), (_, p1, pm) = rows
    print(f"{'always/periodic':10} {a1 / p1:14.2f}x {am / pm:16.2f}x")


def damage_replica(cluster: LocalCluster, keys: list[str], share: float | None) -> int:
    """Stop node3 and drop ``share`` of its records (None: its whole store); restart it."""
    cluster.chaos("stop", "node3")
    data = cluster.root / "data" / "node3"
    if share is None:
        shutil.rmtree(data)
        lost = len(keys)
    else:
        doomed = random.Random(7).sample(keys, int(len(keys) * share))
        # the store kind the cluster's nodes run (their default unless it says one)
        with open_store(str(data), cluster.store or DEFAULT_STORE) as store:
            lost = store.delete_keys(doomed)
    cluster.chaos("start", "node3")
    cluster.wait_converged(NODES, timeout_s=120)
    return lost


def repair(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="zring-repair-") as root, \
            LocalCluster(root, log_level="info") as cluster:
        keys = [f"key_{i}" for i in range(args.keys)]
        load_s, _ = harness.timed(lambda: harness.put_keys(
            cluster.seeds, keys, VALUE, processes=4, timeout_s=10.0, deadline_s=3600))
        client = cluster.client("node1", timeout=30.0)
        wait_for(lambda: len(client.local_keys("node3")) == len(keys), 120, "all replicas")
        record_bytes = sum(len(k) + len(VALUE) for k in keys)
        lost = damage_replica(cluster, keys, args.divergence)
        partial_s, partial = harness.timed(lambda: client.repair(timeout=1800))
        assert set(keys) <= set(client.local_keys("node3")), "repair left keys missing"
        damage_replica(cluster, keys, None)
        full_s, full = harness.timed(lambda: client.repair(timeout=1800))
        assert set(keys) <= set(client.local_keys("node3")), "full repair left keys missing"
    print(f"\nrepair, 3 nodes, N=3, {len(keys):,} keys of {len(VALUE)} bytes "
          f"(loaded in {load_s:.1f} s); node3 lost {lost:,} records "
          f"({args.divergence:.1%})")
    print(f"{'':28} {'seconds':>8} {'records moved':>14} {'bytes exchanged':>16}")
    for name, seconds, result in (("repair after divergence", partial_s, partial),
                                  ("full copy (node3 wiped)", full_s, full)):
        moved = result.get("records_pulled", 0) + result.get("records_pushed", 0)
        print(f"{name:28} {seconds:8.2f} {moved:14,} {result.get('bytes_exchanged', 0):16,}")
    print(f"repair / full copy: {partial_s / full_s:.3f}x time, "
          f"{partial.get('bytes_exchanged', 0) / max(1, full.get('bytes_exchanged', 1)):.3f}x "
          f"bytes; one replica's data is {record_bytes:,} bytes of keys and values")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=("throughput", "repair", "all"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--divergence", type=float, default=0.01)
    args = parser.parse_args(argv)
    harness.exit_on_sigterm()
    if args.part in ("throughput", "all"):
        throughput(args)
    if args.part in ("repair", "all"):
        repair(args)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
