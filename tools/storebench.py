#!/usr/bin/env python3
"""Store write cost, SQLite against RocksDB, side by side in one run.

    python tools/storebench.py [--keys 300000] [--batch 100] [--batches 40] [--rounds 5]
                               [--value-size 100] [--dir DIR]

Each store is filled with ``--keys`` keys first (not timed). Then, round after round, every
configuration in turn writes ``--batches`` batches of ``--batch`` random keys of that key
space (each key a newer version, so every write is taken), one batch per group commit as a
node's loop cycle commits them. Configurations: SQLite and RocksDB, each with --fsync always
(a synced commit per batch) and periodic (no sync per batch; one ``sync()`` at the end of the
round's batches, counted), each through ``put_wire`` (a peer's records: the upsert) and
``write_if_newer`` (a coordinator's client writes: refusals answered). A raw rocksdict
WriteBatch of the same puts (no read, no last writer wins, no figures) is the floor.
Figures: microseconds per key, the median over the rounds (and the range).
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zring.hashing import key_position  # noqa: E402
from zring.storage import RocksStore, SQLiteStore, Store  # noqa: E402

FILL_BATCH = 10_000


def open_store(kind: str, fsync: str, directory: Path) -> Store:
    if kind == "sqlite":
        return SQLiteStore(directory / f"sqlite-{fsync}.db",
                           synchronous="FULL" if fsync == "always" else "NORMAL")
    return RocksStore(directory / f"rocks-{fsync}", sync=fsync == "always")


class RawRocks:
    """The floor: rocksdict's own WriteBatch of the puts, keyed as the store keys them."""

    def __init__(self, path: Path, fsync: str) -> None:
        from rocksdict import Options, Rdict, WriteBatch, WriteOptions
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self.db = Rdict(str(path), options)
        self.write_options = WriteOptions()
        self.write_options.sync = fsync == "always"
        self.batch_type = WriteBatch

    def write(self, items: list) -> None:
        batch = self.batch_type(raw_mode=True)
        for key, value, timestamp, writer in items:
            batch.put(key_position(key).to_bytes(8, "big") + key.encode(),
                      timestamp.to_bytes(8, "big") + writer.encode() + value)
        self.db.write(batch, self.write_options)

    def sync(self) -> None:
        self.db.flush_wal(True)

    def close(self) -> None:
        self.db.close()


def fill(write: Callable[[list], None], keys: int, value: bytes) -> None:
    for start in range(0, keys, FILL_BATCH):
        write([[f"key{i}", value, 1, "fill"] for i in range(start, min(keys, start + FILL_BATCH))])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--batches", type=int, default=40, help="per configuration and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--dir", help="where the stores go (default: a temporary directory "
                                      "on the disk under the current one; not a tmpfs)")
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="storebench-", dir=args.dir or "."))
    value = bytes(random.Random(1).randrange(256) for _ in range(args.value_size))
    rng = random.Random(2)
    clock = [1 << 20]

    def items() -> list:
        clock[0] += 1
        return [[f"key{rng.randrange(args.keys)}", value, clock[0], "bench"]
                for _ in range(args.batch)]

    targets: dict[str, tuple] = {}
    try:
        for kind in ("sqlite", "rocksdb"):
            for fsync in ("always", "periodic"):
                started = time.perf_counter()
                store = open_store(kind, fsync, directory)

                def put(batch: list, store: Store = store) -> None:
                    with store.group_commit():
                        store.put_wire(batch)
                fill(put, args.keys, value)
                store.sync()
                print(f"filled {kind} ({fsync}) with {args.keys} keys in "
                      f"{time.perf_counter() - started:.1f} s", flush=True)
                for mode in ("put_wire", "write_if_newer"):
                    def write(batch: list, store: Store = store, mode: str = mode) -> None:
                        with store.group_commit():
                            getattr(store, mode)(batch)
                    targets[f"{kind:8} {fsync:9} {mode}"] = (write, store.sync, store)
            raw = RawRocks(directory / f"raw-{kind}", "always") if kind == "rocksdb" else None
            if raw is not None:
                fill(raw.write, args.keys, value)
                raw_periodic = RawRocks(directory / "raw-periodic", "periodic")
                fill(raw_periodic.write, args.keys, value)
                targets["rocksdict always    raw WriteBatch"] = (raw.write, raw.sync, raw)
                targets["rocksdict periodic  raw WriteBatch"] = (
                    raw_periodic.write, raw_periodic.sync, raw_periodic)
        figures: dict[str, list[float]] = {name: [] for name in targets}
        names = list(targets)
        for round_number in range(args.rounds):
            order = names[round_number % len(names):] + names[:round_number % len(names)]
            for name in order:
                write, sync, _ = targets[name]
                batches = [items() for _ in range(args.batches)]
                started = time.perf_counter()
                for batch in batches:
                    write(batch)
                if "periodic" in name:
                    sync()
                elapsed = time.perf_counter() - started
                figures[name].append(elapsed / (args.batches * args.batch) * 1e6)
            print(f"round {round_number + 1}/{args.rounds} done", flush=True)
        print(f"\n{args.keys} keys, batches of {args.batch} random upserts of "
              f"{args.value_size}-byte values, {args.batches} batches x {args.rounds} rounds:")
        print(f"{'store    fsync     path':40} {'us/key':>8}  {'range':>15}")
        for name in names:
            runs = figures[name]
            print(f"{name:40} {statistics.median(runs):8.1f}  "
                  f"{min(runs):6.1f} - {max(runs):6.1f}")
    finally:
        for _, _, store in targets.values():
            store.close()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
