"""Stores: ``RocksStore`` (durable, RocksDB: the default), ``SQLiteStore`` (durable:
``--store sqlite``) and ``MemoryStore`` (tests, simulation). ``open_store`` opens a node's."""

from __future__ import annotations

import os

from zring.errors import StorageError
from zring.storage.base import Hint, Record, Store, Value
from zring.storage.memory import MemoryStore
from zring.storage.sqlite import SQLiteStore

STORE_FILE = "zring.db"       # a node's SQLite store, in its data directory
ROCKS_DIR = "zring.rocks"     # a node's RocksDB store (a directory), in its data directory
STORE_KINDS = ("sqlite", "rocksdb")
DEFAULT_STORE = "rocksdb"

__all__ = ["DEFAULT_STORE", "ROCKS_DIR", "STORE_FILE", "STORE_KINDS", "Hint", "MemoryStore",
           "Record", "RocksStore", "SQLiteStore", "Store", "Value", "open_store",
           "store_path"]


def __getattr__(name: str):
    if name == "RocksStore":   # imported on first use: rocksdict loads a large library
        from zring.storage.rocks import RocksStore
        return RocksStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def store_path(data_dir: str, kind: str) -> str:
    """Where a store of ``kind`` lives in ``data_dir``."""
    return os.path.join(data_dir, ROCKS_DIR if kind == "rocksdb" else STORE_FILE)


def open_store(data_dir: str, kind: str = DEFAULT_STORE, *, fsync: str = "periodic") -> Store:
    """The node store of ``kind`` ("sqlite" or "rocksdb") in ``data_dir``, as durable as the
    ``fsync`` policy says ("always": every commit synced; "periodic": ``sync()`` syncs).
    A data directory that holds only the other kind of store is refused (StorageError,
    reason "format"): starting empty beside it would make the node a new, empty member; so is
    one that holds both (an interrupted ``zring migrate``: running it again finishes it)."""
    if kind not in STORE_KINDS:
        raise ValueError(f"store must be one of {', '.join(STORE_KINDS)}, not {kind!r}")
    path = store_path(data_dir, kind)
    other_kind = "sqlite" if kind == "rocksdb" else "rocksdb"
    other = store_path(data_dir, other_kind)
    if os.path.lexists(path) and os.path.lexists(other):
        sqlite, rocks = store_path(data_dir, "sqlite"), store_path(data_dir, "rocksdb")
        raise StorageError(f"{data_dir} holds both a sqlite store ({sqlite}) and a rocksdb "
                           f"store ({rocks}): if "
                           f"`zring migrate` was interrupted, run it again to finish; else "
                           f"move aside the one the node should not use", path=path,
                           reason="format")
    if not os.path.lexists(path) and os.path.lexists(other):
        convert = (f", or convert it to RocksDB once: zring migrate --data-dir {data_dir}"
                   if other_kind == "sqlite" else "")
        raise StorageError(f"{data_dir} holds a {other_kind} store ({other}), not a {kind} "
                           f"one: start the node with --store {other_kind}{convert}",
                           path=path, reason="format")
    if kind == "rocksdb":
        from zring.storage.rocks import RocksStore
        return RocksStore(path, sync=fsync == "always")
    return SQLiteStore(path, synchronous="FULL" if fsync == "always" else "NORMAL")
