"""``zring migrate``: convert a stopped node's SQLite store to a RocksDB store, in place.

The SQLite store (``DIR/zring.db``) is opened first and stays open to the end: its exclusive
lock makes a node that holds it a refusal ("locked": stop the node first), and keeps a node
from starting on it while the copy runs. Then, in order:

1. copy: every record (in position order), hint (in id order: ids are given again, the
   order per target is kept) and named blob but the storage format goes into a new
   RocksDB store beside it, ``DIR/zring.rocks.migrating`` (a leftover of an interrupted run
   is removed first: it is only ever written here);
2. make it durable: the WAL synced, the store closed, every file and the directory fsynced;
3. verify: the new store reopened from disk must hold exactly what the SQLite store holds
   (the same records, hints and blobs, compared one by one, and the same kept figures:
   keys, tombstones, bytes, hints per target), and ``check()`` must find nothing;
4. switch: ``zring.rocks.migrating`` is renamed to ``zring.rocks``, the SQLite store is
   closed and renamed, with any -wal/-shm file, to ``zring.db.migrated-<UTC time>``: a
   backup, never deleted here (the user deletes it once the node runs well on RocksDB).

A data directory that holds both ``zring.db`` and ``zring.rocks`` is refused by every node
(``open_store``), so the short moment between the two renames (or a crash in it) starts no
node on the wrong store; running ``zring migrate`` again then verifies the RocksDB store
against the SQLite one once more (it carries ``MIGRATED_FROM``) and finishes the switch.
A failure before the switch leaves the SQLite store as it was, and no ``zring.rocks``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import zip_longest

from zring.errors import StorageError, ZringError
from zring.hashing import RING_SIZE
from zring.storage import ROCKS_DIR, STORE_FILE
from zring.storage.base import Store, StoreStats, record_to_wire
from zring.storage.check import STORE_COMPANIONS, free_name
from zring.storage.sqlite import SQLiteStore

__all__ = ["BACKUP_MARK", "MIGRATED_FROM", "MIGRATING_SUFFIX", "Migration", "MigrationError",
           "migrate_to_rocksdb"]

MIGRATING_SUFFIX = ".migrating"      # zring.rocks.migrating: the store being written
BACKUP_MARK = ".migrated-"           # zring.db.migrated-<UTC time>: the SQLite store kept
MIGRATED_FROM = "migrated_from"      # meta blob of the new store: what it was copied from
_PAGE = 5000                         # records or hints per read and per write batch
_FOREIGN_META = ("format", MIGRATED_FROM)   # blobs each store keeps for itself


class MigrationError(ZringError):
    """The migration did not happen (the message says why and what was left where)."""


@dataclass
class Migration:
    """What ``migrate_to_rocksdb`` did."""

    source: str                 # the SQLite store (its path before the switch)
    target: str                 # the RocksDB store now in use
    backup: str                 # where the SQLite store is kept
    stats: StoreStats           # what both held (verified equal)
    meta: list[str] = field(default_factory=list)   # the named blobs copied
    seconds: float = 0.0
    finished_earlier_run: bool = False   # the copy was made by an interrupted earlier run


def migrate_to_rocksdb(data_dir: str, *, progress: Callable[[str], None] | None = None
                       ) -> Migration:
    """Convert the SQLite store in ``data_dir`` to a RocksDB store (see the module
    docstring). MigrationError (or the StorageError of a store that cannot be opened) if it
    cannot; the SQLite store is then left where it was."""
    say = progress or (lambda _text: None)
    started = time.monotonic()
    source = os.path.join(data_dir, STORE_FILE)
    target = os.path.join(data_dir, ROCKS_DIR)
    scratch = target + MIGRATING_SUFFIX
    if not os.path.isdir(data_dir):
        raise MigrationError(f"no data directory {data_dir}: is --data-dir right?")
    if not os.path.lexists(source):
        if os.path.lexists(target):
            raise MigrationError(f"{data_dir} holds a RocksDB store ({target}) and no SQLite "
                                 f"store: nothing to migrate")
        raise MigrationError(f"no SQLite store at {source}: is --data-dir right?")
    sqlite = _open_source(source)
    try:
        resumed = os.path.lexists(target)
        if resumed:
            _check_resumable(target, source)
            say(f"{target} exists: an earlier run copied the store; verifying it again")
        else:
            _check_free_space(source, data_dir)
            if os.path.lexists(scratch):
                say(f"removing {scratch}, left by an interrupted run")
                shutil.rmtree(scratch)
            say(f"copying {source} to {scratch}")
            try:
                _copy(sqlite, scratch, source)
                _fsync_tree(scratch)
            except BaseException:
                shutil.rmtree(scratch, ignore_errors=True)
                raise
        checked = target if resumed else scratch
        say(f"verifying {checked} against {source}")
        try:
            meta = _verify(sqlite, checked)
        except BaseException:
            if not resumed:
                shutil.rmtree(scratch, ignore_errors=True)
            raise
        stats = sqlite.stats()
        if not resumed:
            os.rename(scratch, target)
            _fsync_directory(data_dir)
    finally:
        sqlite.close()   # before its file moves: closing checkpoints its WAL into it
    backup = _move_aside(source)
    return Migration(source, target, backup, stats, meta, time.monotonic() - started, resumed)


# ---------------------------------------------------------------------- steps

def _open_source(source: str) -> SQLiteStore:
    try:
        return SQLiteStore(source)
    except StorageError as exc:
        reason = exc.details.get("reason")
        if reason == "locked":
            raise MigrationError(f"{source} is in use (locked): stop the node that runs on "
                                 f"it first, then run zring migrate again") from None
        if reason in ("damaged", "foreign"):
            raise MigrationError(f"cannot migrate {source}: {exc.message}; run `zring check` "
                                 f"on it first") from None
        raise MigrationError(f"cannot migrate {source}: {exc.message}") from None


def _check_resumable(target: str, source: str) -> None:
    """``target`` beside the SQLite store may only be this tool's finished copy of it."""
    from zring.storage.rocks import RocksStore
    try:
        with RocksStore(target) as store:
            marker = store.get_meta(MIGRATED_FROM)
    except StorageError as exc:
        raise MigrationError(f"{os.path.dirname(source)} holds both a SQLite store and a "
                             f"RocksDB store ({target}), which cannot be opened: "
                             f"{exc.message}") from None
    if marker is None:
        raise MigrationError(f"{os.path.dirname(source)} holds both a SQLite store ({source}) "
                             f"and a RocksDB store ({target}) that zring migrate did not "
                             f"write: move the one the node should not use aside")


def _check_free_space(source: str, data_dir: str) -> None:
    """The copy needs about as much room as the SQLite file (RocksDB compresses, but its
    log holds everything once before it is flushed)."""
    needed = sum(os.path.getsize(source + suffix) for suffix in ("", *STORE_COMPANIONS)
                 if os.path.isfile(source + suffix))
    free = shutil.disk_usage(data_dir).free
    if free < needed:
        raise MigrationError(f"not enough free space in {data_dir} to migrate: the copy needs "
                             f"about {needed:,} bytes, {free:,} are free")


def _copy(sqlite: SQLiteStore, scratch: str, source: str) -> None:
    from zring.storage.rocks import RocksStore
    with RocksStore(scratch) as rocks:
        after = None
        while page := sqlite.scan_range(0, RING_SIZE - 1, after=after, limit=_PAGE):
            with rocks.group_commit():
                rocks.put_wire([record_to_wire(record) for record in page])
            after = page[-1].position
        after_id = 0
        while hints := sqlite.hints_after(after_id, limit=_PAGE):
            rocks.add_hints(hints)
            after_id = hints[-1].hint_id
        with rocks.group_commit():
            for name, value in sqlite.meta_items():
                if name not in _FOREIGN_META:
                    rocks.set_meta(name, value)
            stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            rocks.set_meta(MIGRATED_FROM, f"{source} at {stamp}".encode())
        rocks.sync()


def _verify(sqlite: SQLiteStore, path: str) -> list[str]:
    """The RocksDB store at ``path``, opened afresh, holds what ``sqlite`` holds; the names
    of the blobs compared."""
    from zring.storage.rocks import RocksStore
    with RocksStore(path) as rocks:
        problems = rocks.check()
        if problems:
            raise MigrationError(f"the new store {path} fails its check: "
                                 + "; ".join(problems))
        expected, found = sqlite.stats(), rocks.stats()
        if expected != found or sqlite.hint_counts() != rocks.hint_counts():
            raise MigrationError(f"the new store {path} does not hold what {sqlite.path} holds: "
                                 f"{_figures(found)} against {_figures(expected)}")
        _same_records(sqlite, rocks, path)
        _same_hints(sqlite, rocks, path)
        names = [name for name, _ in sqlite.meta_items() if name not in _FOREIGN_META]
        for name, value in sqlite.meta_items():
            if name not in _FOREIGN_META and rocks.get_meta(name) != value:
                raise MigrationError(f"the new store {path} holds another {name!r} than "
                                     f"{sqlite.path}")
        return names


def _same_records(sqlite: SQLiteStore, rocks: Store, path: str) -> None:
    after = None
    while True:
        ours = sqlite.scan_range(0, RING_SIZE - 1, after=after, limit=_PAGE)
        theirs = rocks.scan_range(0, RING_SIZE - 1, after=after, limit=_PAGE)
        for old, new in zip_longest(ours, theirs):
            if old != new:
                raise MigrationError(f"the new store {path} differs from {sqlite.path} at "
                                     f"{(old or new).key!r}")
        if not ours:
            return
        after = ours[-1].position


def _same_hints(sqlite: SQLiteStore, rocks: Store, path: str) -> None:
    """The same hints per target, in the same order (ids aside: they are given again)."""
    ours: dict[str, list] = {}
    after_id = 0
    while hints := sqlite.hints_after(after_id, limit=_PAGE):
        for hint in hints:
            ours.setdefault(hint.target, []).append(hint[1:])
        after_id = hints[-1].hint_id
    for target, held in ours.items():
        theirs = [hint[1:] for hint in rocks.hints_for(target, limit=len(held) + 1)]
        if held != theirs:
            raise MigrationError(f"the new store {path} holds other hints for {target!r} "
                                 f"than {sqlite.path}")


def _move_aside(source: str) -> str:
    """Rename the closed SQLite store (and any companion) to its backup name."""
    base = free_name(f"{source}{BACKUP_MARK}")
    # the companions first: a WAL left behind without its database would be nothing, but
    # the database without its WAL would lose what the WAL holds
    for suffix in (*STORE_COMPANIONS, ""):
        if os.path.lexists(source + suffix):
            try:
                os.rename(source + suffix, base + suffix)
            except OSError as exc:
                raise MigrationError(
                    f"the RocksDB store is in place and verified, but {source + suffix} could "
                    f"not be moved aside: {exc}; move it (with any -wal/-shm file) away "
                    f"yourself before starting the node") from None
    _fsync_directory(os.path.dirname(os.path.abspath(source)))
    return base


def _figures(stats: StoreStats) -> str:
    return (f"{stats.keys} keys, {stats.tombstones} tombstones, {stats.bytes} bytes, "
            f"{stats.hints} hints")


def _fsync_tree(directory: str) -> None:
    """Every file in ``directory`` and the directory itself on stable storage."""
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False):
            fd = os.open(entry.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_directory(directory)
    _fsync_directory(os.path.dirname(os.path.abspath(directory)))


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
