"""Opening a RocksStore's database: refusing what is not a zring store, and the options
each column family is opened with."""

from __future__ import annotations

import ctypes
from pathlib import Path

from rocksdict import AccessType, BlockBasedOptions, Cache, Options, Rdict

from zring.errors import StorageError
from zring.storage.rocks_batch import Families
from zring.storage.rocks_format import CF_RECORDS, COLUMN_FAMILIES, rocks_error

__all__ = ["open_database", "open_read_only"]


def open_database(path: Path) -> tuple[Rdict, Families]:
    """The RocksDB database of a store at ``path`` (created if missing) and its column
    families; StorageError if it cannot be opened or is not a zring store."""
    if path.exists() and not path.is_dir():
        raise StorageError(f"{path} is not a zring store (not a RocksDB directory)",
                           path=str(path), reason="damaged")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create the directory for {path}: {exc}",
                           path=str(path), reason="error") from exc
    if (path / "CURRENT").exists():
        try:
            found = Rdict.list_cf(str(path), Options(raw_mode=True))
        except Exception as exc:
            raise rocks_error(path, exc, opening=True) from exc
        if not set(COLUMN_FAMILIES) <= set(found) and not _interrupted_creation(path, found):
            raise StorageError(f"{path} is a RocksDB database but not a zring store "
                               f"(it has column families {sorted(found)})",
                               path=str(path), reason="foreign")
    elif path.is_dir() and not all(_made_by_rocksdb(entry.name) for entry in path.iterdir()):
        raise StorageError(f"{path} is not a zring store (a directory without a RocksDB "
                           f"database in it)", path=str(path), reason="foreign")
    return _open(path)


def open_read_only(path: Path) -> tuple[Rdict, Families]:
    """The database of the zring store at ``path``, read-only: it takes no lock and writes
    nothing (a store whose writes fail keeps reading through one while it cannot reopen
    its database to write: it opens beside the failed handle, which still holds the
    lock). StorageError if it cannot be opened."""
    return _open(path, access_type=AccessType.read_only())


def _open(path: Path, **options) -> tuple[Rdict, Families]:
    """The database at ``path`` with every column family (``options``: Rdict's, e.g. its
    access type); StorageError if it cannot be opened."""
    families = {name: _family_options(name) for name in COLUMN_FAMILIES}
    try:
        db = Rdict(str(path), _db_options(), column_families=families, **options)
    except Exception as exc:
        raise rocks_error(path, exc, opening=True) from exc
    try:
        return db, Families(db, COLUMN_FAMILIES)
    except Exception as exc:
        db.close()
        raise rocks_error(path, exc, opening=True) from exc


def _made_by_rocksdb(name: str) -> bool:
    """A file RocksDB (or rocksdict) makes while it creates a database: a directory with
    only these and no CURRENT is a creation cut short before it finished (nothing was ever
    written to it), which opening it completes."""
    return (name in ("LOCK", "IDENTITY", "LOG", "rocksdict-config.json")
            or name.startswith(("LOG.old.", "MANIFEST-", "OPTIONS-"))
            or name.endswith((".dbtmp", ".log", ".sst")))


def _interrupted_creation(path: Path, found: list[str]) -> bool:
    """A store whose creation was cut short (a crash, a power loss): RocksDB creates the
    column families one MANIFEST write at a time, so a new store can hold some of them and
    nothing else (no data: the storage format is written once all exist). Opening it
    creates the rest. Only "default" is either that or another program's database: it is
    taken only if it holds nothing."""
    if not set(found) <= {"default", *COLUMN_FAMILIES}:
        return False
    if set(found) != {"default"}:
        return True
    try:
        db = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
    except Exception:
        return False
    try:
        return not any(True for _ in db.keys())
    finally:
        db.close()


# Memory, for a node holding a few million keys: RocksDB's defaults (64 MiB write buffers
# per column family, a 32 MiB block cache per family) left a node holding 1M keys at 166-173
# MiB resident after 500,000 overwrites; these settings at 90-91 MiB (tools/bench.py
# --workloads memory; the SQLite store's node was at 123 MiB). A read costs a node ~100 us
# of Python, so a block missing from the cache (read again from the OS page cache, a few us)
# matters little: one small cache shared by the families, small write buffers bounded
# together. Filters and indexes stay out of the cache (~2 MiB per million keys, always
# resident): in a small cache a 600 KB filter evicted would be read again on a miss.
BLOCK_CACHE_BYTES = 16 << 20
WRITE_BUFFER_BYTES = 16 << 20        # records' memtable: ~110,000 records of 100 bytes
ALL_WRITE_BUFFERS_BYTES = 32 << 20   # every family's memtables, mutable and flushing
MEMTABLE_BLOOM_RATIO = 0.02          # of the write buffer: ~20 bits a record
_M_MMAP_THRESHOLD = -3               # glibc's mallopt parameter
_cache: Cache | None = None


def _db_options() -> Options:
    _fixed_mmap_threshold()
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.create_missing_column_families(True)
    options.set_max_background_jobs(2)
    options.set_keep_log_file_num(2)
    # the small families (meta, progress) would otherwise pin old WAL files for long
    options.set_max_total_wal_size(64 * 1024 * 1024)
    options.set_db_write_buffer_size(ALL_WRITE_BUFFERS_BYTES)
    return options


def _family_options(name: str) -> Options:
    options = Options(raw_mode=True)
    table = BlockBasedOptions()
    table.set_block_cache(_block_cache())
    if name == CF_RECORDS:
        table.set_bloom_filter(10, False)   # last writer wins reads a key before each write
        options.set_write_buffer_size(WRITE_BUFFER_BYTES)
        # a joiner's reads before writes miss: a memtable bloom answers them without a
        # search of the skip list (7x cheaper measured)
        options.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO)
        options.set_memtable_whole_key_filtering(True)
    else:   # small families: their memtables stay small (they share ALL_WRITE_BUFFERS_BYTES)
        options.set_write_buffer_size(4 << 20)
    options.set_block_based_table_factory(table)
    return options


def _block_cache() -> Cache:
    """One block cache for every family of every store this process opens."""
    global _cache
    if _cache is None:
        _cache = Cache(BLOCK_CACHE_BYTES)
    return _cache


def _fixed_mmap_threshold() -> None:
    """glibc raises its mmap threshold to the largest block freed (RocksDB frees its 2 MiB
    memtable arena blocks at each flush); blocks below it then come from the heap, which
    stays resident: after 500,000 overwrites a node was at 102-111 MiB without this, 90-91
    MiB with the threshold fixed at its default. Not glibc: nothing to do."""
    try:
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        pass
