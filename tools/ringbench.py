"""Ring benchmark: zring's HashRing against the seed design and uhashring, side by side.

    python tools/ringbench.py [--keys 2000000] [--quick]

Every table has one column per implementation, the target from the ring issue, and a
PASS/FAIL verdict for zring. Nodes are ``node1..nodeN`` and keys ``key_0, key_1, ...``; all
placement numbers come from each implementation's own ``get_node``/``get_nodes`` calls.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import platform
import tracemalloc
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from time import perf_counter
from typing import Protocol

import uhashring
from sortedcontainers import SortedDict

from zring.ring import DEFAULT_VNODES, HashRing

DEFAULT_KEYS = 2_000_000
QUICK_KEYS = 200_000
SPEED_KEYS = 200_000   # distinct keys per timing round
SPEED_ROUNDS = 3       # best of, interleaved so drift hits every implementation alike
REPLICAS = 3
SEED_VNODES = 150
UHASHRING_VNODES = 160  # uhashring's default, stated here only for the report header


class Ring(Protocol):
    def add_node(self, node: str, weight: int = 1) -> None: ...
    def remove_node(self, node: str) -> None: ...
    def get_node(self, key: str) -> str | None: ...
    def get_nodes(self, key: str, count: int) -> list[str]: ...


# ------------------------------------------------------------------ the two other rings


class SeedRing:
    """The seed design: 150 md5 vnodes per unit of weight in a SortedDict position -> node."""

    def __init__(self, weights: Mapping[str, int] | None = None) -> None:
        self._ring: SortedDict = SortedDict()
        self._positions: dict[str, list[int]] = {}  # a node's vnodes, so it can be removed
        for node, weight in (weights or {}).items():
            self.add_node(node, weight)

    @staticmethod
    def position(text: str) -> int:
        return int.from_bytes(hashlib.md5(text.encode("utf-8")).digest()[:8], "big")

    def add_node(self, node: str, weight: int = 1) -> None:
        if node in self._positions:
            self.remove_node(node)
        positions = [self.position(f"{node}-{i}") for i in range(round(SEED_VNODES * weight))]
        for position in positions:
            self._ring[position] = node
        self._positions[node] = positions

    def remove_node(self, node: str) -> None:
        for position in self._positions.pop(node):
            if self._ring.get(position) == node:  # a colliding vnode may belong to another node
                del self._ring[position]

    def get_node(self, key: str) -> str | None:
        ring = self._ring
        if not ring:
            return None
        index = ring.bisect_left(self.position(key))
        return ring.peekitem(index if index < len(ring) else 0)[1]

    def get_nodes(self, key: str, count: int) -> list[str]:
        ring = self._ring
        size = len(ring)
        wanted = min(count, len(self._positions))
        index = ring.bisect_left(self.position(key))
        values = ring.values()
        found: list[str] = []
        for step in range(size):  # bounded: one lap, even if collisions hid a whole node
            node = values[(index + step) % size]
            if node not in found:
                found.append(node)
                if len(found) == wanted:
                    break
        return found


class UhashringRing:
    """uhashring.HashRing with its defaults; weights go through its node-config dicts and
    preference lists through its public ``range()`` walk (distinct nodes, clockwise)."""

    def __init__(self, weights: Mapping[str, int] | None = None) -> None:
        self._ring = uhashring.HashRing(
            nodes={node: {"weight": weight} for node, weight in (weights or {}).items()})
        self.get_node = self._ring.get_node  # bound directly: time uhashring, not a wrapper

    def add_node(self, node: str, weight: int = 1) -> None:
        self._ring.add_node(node, {"weight": weight})

    def remove_node(self, node: str) -> None:
        self._ring.remove_node(node)

    def get_nodes(self, key: str, count: int) -> list[str]:
        return [conf["nodename"] for conf in self._ring.range(key, count)]


IMPLEMENTATIONS: dict[str, Callable[[Mapping[str, int]], Ring]] = {
    "zring": HashRing,
    "seed design": SeedRing,
    "uhashring": UhashringRing,
}
ZRING = "zring"


# ------------------------------------------------------------------ report tables


@dataclass(frozen=True)
class Target:
    text: str
    met: Callable[[float], bool]


@dataclass(frozen=True)
class Row:
    label: str
    results: dict[str, float | None]  # implementation -> value; None: not applicable
    fmt: str
    target: Target | None = None


def print_table(title: str, rows: list[Row]) -> None:
    headers = ["", *IMPLEMENTATIONS, "target", "zring"]
    lines = [headers]
    for row in rows:
        values = [("-" if row.results.get(name) is None else format(row.results[name], row.fmt))
                  for name in IMPLEMENTATIONS]
        lines.append([row.label, *values, *verdict(row)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    print(f"\n{title}")
    for line in lines:
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]
        print("  ".join(cells).rstrip())


def verdict(row: Row) -> tuple[str, str]:
    value = row.results.get(ZRING)
    if row.target is None or value is None:
        return "", ""
    return row.target.text, "PASS" if row.target.met(value) else "FAIL"


def at_most(limit: float) -> Target:
    return Target(f"<= {limit:g}", lambda value: value <= limit)


def at_least(limit: float) -> Target:
    return Target(f">= {limit:g}", lambda value: value >= limit)


def below(limit: float, text: str) -> Target:
    return Target(text, lambda value: value < limit)


# ------------------------------------------------------------------ placement


def node_names(count: int) -> list[str]:
    return [f"node{i}" for i in range(1, count + 1)]


def unit_weights(count: int) -> dict[str, int]:
    return dict.fromkeys(node_names(count), 1)


def owners(ring: Ring, keys: list[str]) -> list[str]:
    return list(map(ring.get_node, keys))


def peak_to_mean(load: Counter, node_count: int) -> float:
    return max(load.values()) * node_count / sum(load.values())


def moved(before: list[str], after: list[str]) -> list[tuple[str, str]]:
    """(old owner, new owner) of every key whose owner changed."""
    return [(old, new) for old, new in zip(before, after) if old != new]


def replica_walk(before: Ring, after: Ring, keys: list[str]) -> tuple[Counter, int]:
    """One pass: replica load on ``before``, and how many preference lists the change to
    ``after`` altered by more than one member (a join should swap at most one)."""
    load: Counter = Counter()
    multi_member_changes = 0
    for key in keys:
        old = before.get_nodes(key, REPLICAS)
        load.update(old)
        if len(set(after.get_nodes(key, REPLICAS)).difference(old)) > 1:
            multi_member_changes += 1
    return load, multi_member_changes


def measure_placement(make: Callable[[Mapping[str, int]], Ring], keys: list[str]) -> dict:
    """Balance, movement and weight results of one implementation."""
    results = {}
    ring10 = make(unit_weights(10))
    owners10 = owners(ring10, keys)
    results["balance10"] = peak_to_mean(Counter(owners10), 10)
    results["balance50"] = peak_to_mean(Counter(owners(make(unit_weights(50)), keys)), 50)

    joined = make(unit_weights(10))
    joined.add_node("node11")
    join_moves = moved(owners10, owners(joined, keys))
    results["join_moved"] = len(join_moves) / (len(keys) / 11)
    results["join_strays"] = sum(new != "node11" for _, new in join_moves)

    left = make(unit_weights(10))
    left.remove_node("node3")
    results["leave_strays"] = sum(old != "node3" for old, _ in moved(owners10, owners(left, keys)))
    del owners10, join_moves

    replica_load, results["pref_multi"] = replica_walk(ring10, joined, keys)
    results["replica10"] = peak_to_mean(replica_load, 10)

    weighted = make({**unit_weights(10), "node1": 2})
    weighted_load = Counter(owners(weighted, keys))
    others = [weighted_load[node] for node in node_names(10)[1:]]
    results["weight_ratio"] = weighted_load["node1"] / (sum(others) / len(others))
    return results


# ------------------------------------------------------------------ speed and memory


def ns_per_lookup(lookup: Callable[[str], object], keys: list[str]) -> float:
    start = perf_counter()
    for key in keys:
        lookup(key)
    return (perf_counter() - start) * 1e9 / len(keys)


def ns_per_walk(walk: Callable[[str, int], object], keys: list[str]) -> float:
    start = perf_counter()
    for key in keys:
        walk(key, REPLICAS)
    return (perf_counter() - start) * 1e9 / len(keys)


def best_interleaved(timer: Callable[[Ring], float], rings: dict[str, Ring]) -> dict[str, float]:
    best = dict.fromkeys(rings, float("inf"))
    for _ in range(SPEED_ROUNDS):
        for name, ring in rings.items():
            best[name] = min(best[name], timer(ring))
    return best


def build_seconds(make: Callable[[Mapping[str, int]], Ring], node_count: int) -> float:
    """A ring built from scratch one node at a time, then one lookup (best of a few)."""
    best = float("inf")
    for _ in range(SPEED_ROUNDS):
        start = perf_counter()
        ring = make({})
        for node in node_names(node_count):
            ring.add_node(node)
        ring.get_node("key_0")
        best = min(best, perf_counter() - start)
    return best


def traced_bytes(make: Callable[[Mapping[str, int]], Ring], node_count: int) -> int:
    """Python-heap bytes still held after construction and a first lookup."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        ring = make(unit_weights(node_count))
        ring.get_node("key_0")
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def measure_speed(keys: list[str]) -> dict[str, dict[str, float | None]]:
    rings = {name: make(unit_weights(10)) for name, make in IMPLEMENTATIONS.items()}
    for ring in rings.values():
        ring.get_node(keys[0])  # build lazily-built layouts outside the timed loops
    lookup_ns = best_interleaved(lambda ring: ns_per_lookup(ring.get_node, keys), rings)
    walk_ns = best_interleaved(lambda ring: ns_per_walk(ring.get_nodes, keys), rings)
    names = IMPLEMENTATIONS.keys()
    return {
        "lookup_ns": lookup_ns,
        "speedup": {name: lookup_ns["uhashring"] / lookup_ns[name] for name in names},
        "walk_ns": walk_ns,
        "build_s": {name: build_seconds(make, 50) for name, make in IMPLEMENTATIONS.items()},
        "layout10": {ZRING: HashRing(unit_weights(10)).memory_bytes() / 2**20},
        "layout50": {ZRING: HashRing(unit_weights(50)).memory_bytes() / 2**20},
        "traced10": {name: traced_bytes(make, 10) / 2**20
                     for name, make in IMPLEMENTATIONS.items()},
        "traced50": {name: traced_bytes(make, 50) / 2**20
                     for name, make in IMPLEMENTATIONS.items()},
    }


# ------------------------------------------------------------------ report


def by_metric(per_implementation: dict[str, dict], metric: str) -> dict[str, float]:
    return {name: results[metric] for name, results in per_implementation.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=DEFAULT_KEYS,
                        help=f"keys placed per ring (default {DEFAULT_KEYS:,})")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run with {QUICK_KEYS:,} keys")
    args = parser.parse_args()
    key_count = QUICK_KEYS if args.quick else args.keys
    keys = [f"key_{i}" for i in range(key_count)]  # built once, shared by every measurement
    speed_keys = keys[:SPEED_KEYS]

    print(f"ringbench: {key_count:,} keys, Python {platform.python_version()}; vnodes per node: "
          f"zring {DEFAULT_VNODES}, seed design {SEED_VNODES}, uhashring {UHASHRING_VNODES}",
          flush=True)

    placement = {name: measure_placement(make, keys) for name, make in IMPLEMENTATIONS.items()}
    print_table("Balance (peak / mean keys per node)", [
        Row("10 nodes", by_metric(placement, "balance10"), ".4f", at_most(1.03)),
        Row("50 nodes", by_metric(placement, "balance50"), ".4f", at_most(1.05)),
        Row(f"10 nodes, replicas (get_nodes {REPLICAS})", by_metric(placement, "replica10"),
            ".4f", at_most(1.05)),
    ])
    print_table("Minimal movement", [
        Row("join node11: moved / (K/11)", by_metric(placement, "join_moved"), ".4f",
            at_most(1.05)),
        Row("join node11: moved, not to node11", by_metric(placement, "join_strays"), "d",
            at_most(0)),
        Row("leave node3: moved, not from node3", by_metric(placement, "leave_strays"), "d",
            at_most(0)),
        Row(f"join node11: pref lists ({REPLICAS}) with >1 member changed",
            by_metric(placement, "pref_multi"), "d", at_most(0)),
    ])

    speed = measure_speed(speed_keys)
    print_table(f"Speed and memory (10 nodes, {len(speed_keys):,} distinct keys, "
                f"best of {SPEED_ROUNDS} interleaved rounds)", [
        Row("get_node ns/key", speed["lookup_ns"], ".0f"),
        Row("get_node speedup (uhashring ns / ns)", speed["speedup"], ".2f", at_least(3)),
        Row(f"get_nodes(key, {REPLICAS}) ns/key", speed["walk_ns"], ".0f",
            below(5000, "< 5000")),
        Row("build 50 nodes one by one + lookup, s", speed["build_s"], ".3f", below(1, "< 1")),
        Row("memory_bytes(), 10 nodes, MiB", speed["layout10"], ".2f"),
        Row("memory_bytes(), 50 nodes, MiB", speed["layout50"], ".2f"),
        Row("tracemalloc build+lookup, 10 nodes, MiB", speed["traced10"], ".2f"),
        Row("tracemalloc build+lookup, 50 nodes, MiB", speed["traced50"], ".2f"),
    ])

    print_table("Weights (10 nodes, node1 weight 2)", [
        Row("keys(node1) / mean keys(weight-1 node)", by_metric(placement, "weight_ratio"),
            ".4f", Target("2.0 +-5%", lambda ratio: 1.9 <= ratio <= 2.1)),
    ])


if __name__ == "__main__":
    main()
