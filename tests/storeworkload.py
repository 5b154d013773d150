"""The power-loss tests' workload (tests/unit/test_power_loss.py for SQLite,
tests/unit/test_rocks_power_loss.py for RocksDB, whose writer runs in a child process): group
commits of random writes, given as data so that a store and its model (a MemoryStore) apply
the same, and a store's whole contents in a form comparable across stores."""

from __future__ import annotations

import random
from collections import Counter

from zring.hashing import RING_SIZE, key_position
from zring.storage.base import Hint, Record, Store, StoreStats
from zring.versions import Version

__all__ = ["KEYS", "TARGETS", "apply_ops", "assert_figures", "commit_ops", "contents"]

KEYS = [f"key-{n:03d}" for n in range(150)]
TARGETS = ("n2", "n3")


def commit_ops(rng: random.Random, number: int) -> list[tuple]:
    """One group commit's writes, as data so the store and the model get the same."""
    base = (number + 2) * 1000  # jitter below stays positive
    ops: list[tuple] = []
    for _ in range(rng.randint(1, 3)):
        items = []
        for key in rng.sample(KEYS, rng.randint(1, 12)):
            # some versions are older than the one held: refused
            items.append([key, _value(rng), base + rng.randint(-1500, 999),
                          rng.choice(("client-a", "client-b"))])
        ops.append(("write_if_newer", items))
    if rng.random() < 0.3:
        ops.append(("put_many", [Record(key, _value(rng), Version(base + 500, "n1"),
                                        key_position(key))
                                 for key in rng.sample(KEYS, rng.randint(1, 8))]))
    if rng.random() < 0.4:
        ops.append(("add_hints", [
            Hint(0, rng.choice(TARGETS), Record(key, _value(rng), Version(base, "n1"),
                                                key_position(key)), base)
            for key in rng.sample(KEYS, rng.randint(1, 6))]))
    if rng.random() < 0.2:
        ops.append(("delete_hints", rng.choice(TARGETS), rng.randint(1, 4)))
    if rng.random() < 0.1:
        ops.append(("delete_keys", rng.sample(KEYS, rng.randint(1, 5))))
    ops.append(("set_meta", "commit", str(number).encode()))
    return ops


def _value(rng: random.Random) -> bytes | str | None:
    draw = rng.random()
    if draw < 0.15:
        return None  # a tombstone
    if draw < 0.3:
        return "".join(rng.choices("abcdefgh", k=rng.randint(0, 40)))  # ASCII: chars = bytes
    return rng.randbytes(rng.choice((rng.randint(0, 200), rng.randint(1000, 6000))))


def apply_ops(store: Store, ops: list[tuple]) -> None:
    for name, *args in ops:
        if name == "delete_hints":
            target, first = args
            store.delete_hints([hint.hint_id for hint in store.hints_for(target, limit=first)])
        else:
            getattr(store, name)(*args)


def contents(store: Store) -> tuple:
    """Everything a store holds, comparable across stores (hint ids aside)."""
    records = tuple(store.scan_range(0, RING_SIZE - 1, limit=10 * len(KEYS)))
    hints = tuple((target, hint.record, hint.created_ms) for target in sorted(store.hint_counts())
                  for hint in store.hints_for(target, limit=10_000))
    return records, hints, store.get_meta("commit")


def assert_figures(store: Store, held: tuple) -> None:
    """The store's kept figures equal a full count of what it holds (``held``: its
    ``contents``)."""
    records, hints, _ = held
    live = sum(record.value is not None for record in records)
    size = sum(len(record.key.encode()) + len(record.value or b"") for record in records)
    assert store.stats() == StoreStats(live, len(records) - live, size, len(hints))
    assert store.count() == live
    assert store.count(include_tombstones=True) == len(records)
    assert store.hint_counts() == dict(Counter(target for target, _, _ in hints))
