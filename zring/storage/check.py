"""Offline check and rebuild of a stopped node's store (``zring check [--rebuild]``).

``check_store`` opens the store in a node's data directory (its SQLite file, or its RocksDB
directory) and reads all of it (``Store.check``: damaged records, figures recounted);
``move_store_aside`` renames a damaged store (and a SQLite store's companions) out of the way,
so the node starts empty and ``zring repair`` refills it from its replicas. Nothing here
deletes a file or prints: the CLI says what was found and what to do next.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from zring.errors import StorageError, ZringError
from zring.storage import ROCKS_DIR, STORE_FILE
from zring.storage.base import Store
from zring.storage.sqlite import SQLiteStore

__all__ = ["DAMAGE_REASONS", "STORE_COMPANIONS", "StoreCheck", "check_store", "is_damage",
           "move_store_aside"]

STORE_COMPANIONS = ("-wal", "-shm")  # SQLite's files beside the store: they belong to it
DAMAGE_REASONS = ("damaged", "foreign")  # StorageError reasons that a rebuild may cure


@dataclass
class StoreCheck:
    """What ``check_store`` found: problems (empty: healthy) and, when healthy, a summary."""

    path: str
    problems: list[str] = field(default_factory=list)
    summary: str = ""

    @property
    def healthy(self) -> bool:
        return not self.problems


def is_damage(exc: StorageError) -> bool:
    """A failure a rebuild may cure (not a lock held by another process, not a newer
    format, not an I/O error)."""
    return exc.details.get("reason") in DAMAGE_REASONS


def check_store(data_dir: str) -> StoreCheck:
    """Check the store in ``data_dir`` (the node must be stopped). ZringError if there is no
    store at all; the StorageError itself when the store cannot be checked for a reason
    other than damage (locked, another format)."""
    rocks = os.path.join(data_dir, ROCKS_DIR)
    if os.path.lexists(rocks):
        return _check_rocks(rocks)
    path = os.path.join(data_dir, STORE_FILE)
    companions = [path + suffix for suffix in STORE_COMPANIONS if os.path.lexists(path + suffix)]
    if not os.path.isfile(path) and not companions:
        raise ZringError(f"no store at {path}: is --data-dir right? (a node creates its store "
                         "when it first starts)")
    if not os.path.isfile(path):
        return StoreCheck(path, [f"the database file is missing but {', '.join(companions)} "
                                 "remain"])
    return _open_and_check(SQLiteStore, path)


def _check_rocks(path: str) -> StoreCheck:
    """Check the RocksDB store (a directory) at ``path``."""
    from zring.storage.rocks import RocksStore
    if not os.path.isdir(path):
        return StoreCheck(path, [f"{path} is not a directory (a RocksDB store is one)"])
    return _open_and_check(RocksStore, path)


def _open_and_check(open_store: Callable[[str], Store], path: str) -> StoreCheck:
    """Open the store at ``path`` and check it (a store too damaged to open: that)."""
    try:
        store = open_store(path)
    except StorageError as exc:
        if not is_damage(exc):
            raise
        return StoreCheck(path, [exc.message])
    return _check_open_store(store, path)


def _check_open_store(store: Store, path: str) -> StoreCheck:
    """Check an open store; closes it."""
    found = StoreCheck(path)
    try:
        found.problems = store.check()
        if not found.problems:
            keys = store.count()
            tombstones = store.count(include_tombstones=True) - keys
            stored_format = store.get_meta("format") or b"?"
            found.summary = (f"ok: {path}, {keys} keys, {tombstones} tombstones, "
                             f"format {stored_format.decode(errors='replace')}")
    except StorageError as exc:
        if not is_damage(exc):
            raise
        found.problems = [exc.message]
    finally:
        try:
            store.close()
        except StorageError as exc:  # a damaged file can fail its last checkpoint too
            found.problems.append(exc.message)
    return found


def free_name(prefix: str) -> str:
    """``PREFIX<UTC time>`` (with ``-2``, ``-3``... if taken), free for a store and each of
    its companions: where a store is moved aside, never over anything."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = f"{prefix}{stamp}"
    attempt = 1
    while any(os.path.lexists(base + suffix) for suffix in ("", *STORE_COMPANIONS)):
        attempt += 1
        base = f"{prefix}{stamp}-{attempt}"
    return base


def move_store_aside(path: str) -> list[tuple[str, str]]:
    """Rename the store at ``path`` (a SQLite file, or a RocksDB directory) and its -wal/-shm
    files to ``PATH.damaged-<UTC time>`` (never deleting anything); returns the (from, to)
    pairs. The companions go first: a
    write-ahead log left beside the new, empty store could be replayed into it."""
    base = free_name(f"{path}.damaged-")
    moved: list[tuple[str, str]] = []
    for suffix in (*STORE_COMPANIONS, ""):
        source, target = path + suffix, base + suffix
        if not os.path.lexists(source):
            continue
        try:
            os.rename(source, target)
        except OSError as exc:
            done = "; ".join(f"{a} -> {b}" for a, b in moved) or "nothing"
            raise ZringError(f"cannot move {source} aside: {exc} (moved so far: {done})"
                             ) from None
        moved.append((source, target))
    _fsync_directory(os.path.dirname(os.path.abspath(path)))
    return moved


def _fsync_directory(directory: str) -> None:
    """Make renames in ``directory`` durable (best effort: not every platform can)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
