"""What a SQLite store file holds: its tables, indexes and triggers, the format they make,
and the migration of an older format (zring.storage.sqlite opens files through here).

Records are clustered by ring position: the table's primary key is ``(pos, key)``, so the
rows a range stream delivers (in position order) land next to each other instead of all over
a key-ordered table. Ring positions are unsigned 64-bit but SQLite integers are signed, so a
position is stored shifted down by 2**63 (``POSITION_SHIFT``), which keeps their order.

Tables and indexes added after a format was first written (``SCHEMA_ADDITIONS``) are created
with IF NOT EXISTS on every open, so an existing file gains them (no released data predates
them). Format "1" (the same columns and encodings in a table clustered by key, with a
``(pos, key)`` index) is migrated on open: in the open's transaction the rows are copied in
position order into a new table that then replaces the old one. An interrupted migration
rolls back and is redone on the next open. The old table's pages go to the file's free list,
reused by later writes; the file does not shrink by itself.

Functions here run statements on the cursor they are given, inside the caller's transaction;
they raise sqlite3 errors (the store turns them into StorageError) or StorageError.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from zring.errors import StorageError

__all__ = ["FORMAT_VERSION", "GET_META", "HINT_COUNTS", "POSITION_SHIFT", "RECORD_COUNTS",
           "REQUIRED_OBJECTS", "SET_META", "TIMESTAMP_LIMIT", "create_or_open", "migrate",
           "recount"]

FORMAT_VERSION = b"2"  # bump with any change to the schema or to how a column is encoded
MIGRATED_FORMATS = frozenset({b"1"})  # older formats rebuilt into this one on open
# what a store file must hold (format "2" with its additions); ``check`` reports any missing
REQUIRED_OBJECTS = frozenset({"records", "meta", "hints",
                              "hints_by_target", "hints_by_created",
                              "records_tombstones_by_ts", "record_counts", "hint_counts",
                              "records_counted_insert", "records_counted_update",
                              "records_counted_delete", "hints_counted_insert",
                              "hints_counted_delete"})
POSITION_SHIFT = 1 << 63  # stored pos = position - 2**63: signed, same order
TIMESTAMP_LIMIT = 1 << 63  # timestamps and created_ms are signed 64-bit columns

# The primary key's columns are declared first, in its order (as they are stored anyway):
# SQLite 3.40.0 to 3.41.0 ``integrity_check`` reports false "NULL value" errors in a WITHOUT
# ROWID table whose primary key columns are declared in another order.
RECORDS_TABLE = """
    CREATE TABLE {name} (
        pos    INTEGER NOT NULL, -- ring position - 2**63
        key    TEXT NOT NULL,
        value,                   -- untyped: TEXT stays str, BLOB stays bytes; NULL: tombstone
        ts     INTEGER NOT NULL, -- version timestamp (HLC)
        writer TEXT NOT NULL,    -- version node id
        PRIMARY KEY (pos, key)   -- clustered by position: streamed ranges append
    ) WITHOUT ROWID
    """
SCHEMA = (
    RECORDS_TABLE.format(name="records"),
    "CREATE TABLE meta (name TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID",
)
# Format "1" -> "2", inside the open's transaction. The old table is renamed first so the new
# one is created with the same statement as in a new file; dropping the old table drops its
# indexes. Reads only the columns, so it does not depend on the old table's indexes.
MIGRATE_RECORDS = (
    "ALTER TABLE records RENAME TO records_old",
    RECORDS_TABLE.format(name="records"),
    """
    INSERT INTO records (key, value, ts, writer, pos)
    SELECT key, value, ts, writer, pos FROM records_old ORDER BY pos, key
    """,
    "DROP TABLE records_old",
)
# Run on every open, after the format check (and any migration): a file written before these
# existed gains them. Anything that changes an existing table or column needs a format bump.
SCHEMA_ADDITIONS = (
    """
    CREATE TABLE IF NOT EXISTS hints (
        id         INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused: ids only grow
        target     TEXT NOT NULL,    -- the node id the write belongs to
        key        TEXT NOT NULL,
        value,                       -- as in records; NULL: tombstone
        ts         INTEGER NOT NULL,
        writer     TEXT NOT NULL,
        pos        INTEGER NOT NULL, -- ring position - 2**63, as in records
        created_ms INTEGER NOT NULL  -- wall-clock ms when the hint was stored
    )
    """,
    "CREATE INDEX IF NOT EXISTS hints_by_target ON hints (target, id)",
    "CREATE INDEX IF NOT EXISTS hints_by_created ON hints (created_ms)",
    # for tombstone garbage collection (oldest tombstones first); partial, so live writes
    # never touch it
    "CREATE INDEX IF NOT EXISTS records_tombstones_by_ts ON records (ts) WHERE value IS NULL",
    # Exact figures for status, kept by triggers in every write's own transaction (so they
    # commit, roll back and survive a crash with it): the records and bytes a node holds and
    # its hints per target, without a COUNT or GROUP BY on the node's loop. Recounted once
    # on every open.
    """
    CREATE TABLE IF NOT EXISTS record_counts (
        id         INTEGER PRIMARY KEY CHECK (id = 0),
        live       INTEGER NOT NULL,
        tombstones INTEGER NOT NULL,
        bytes      INTEGER NOT NULL  -- keys (UTF-8) and values, tombstones' keys included
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS hint_counts (
        target TEXT PRIMARY KEY NOT NULL,
        count  INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    """
    CREATE TRIGGER IF NOT EXISTS records_counted_insert AFTER INSERT ON records BEGIN
        UPDATE record_counts SET live = live + (NEW.value IS NOT NULL),
            tombstones = tombstones + (NEW.value IS NULL),
            bytes = bytes + length(CAST(NEW.key AS BLOB)) + coalesce(length(NEW.value), 0)
        WHERE id = 0;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS records_counted_update AFTER UPDATE ON records BEGIN
        UPDATE record_counts
        SET live = live + (NEW.value IS NOT NULL) - (OLD.value IS NOT NULL),
            tombstones = tombstones + (NEW.value IS NULL) - (OLD.value IS NULL),
            bytes = bytes + length(CAST(NEW.key AS BLOB)) + coalesce(length(NEW.value), 0)
                          - length(CAST(OLD.key AS BLOB)) - coalesce(length(OLD.value), 0)
        WHERE id = 0;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS records_counted_delete AFTER DELETE ON records BEGIN
        UPDATE record_counts SET live = live - (OLD.value IS NOT NULL),
            tombstones = tombstones - (OLD.value IS NULL),
            bytes = bytes - length(CAST(OLD.key AS BLOB)) - coalesce(length(OLD.value), 0)
        WHERE id = 0;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS hints_counted_insert AFTER INSERT ON hints BEGIN
        INSERT INTO hint_counts (target, count) VALUES (NEW.target, 1)
        ON CONFLICT (target) DO UPDATE SET count = count + 1;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS hints_counted_delete AFTER DELETE ON hints BEGIN
        UPDATE hint_counts SET count = count - 1 WHERE target = OLD.target;
        DELETE FROM hint_counts WHERE target = OLD.target AND count <= 0;
    END
    """,
)
# what the triggers keep, counted from the tables themselves (on open, and by ``check``)
RECOUNT_RECORDS = """
SELECT count(value), count(*) - count(value),
       coalesce(sum(length(CAST(key AS BLOB)) + coalesce(length(value), 0)), 0)
FROM records
"""
RECOUNT_HINTS = "SELECT target, count(*) FROM hints GROUP BY target"
SET_RECORD_COUNTS = """
INSERT INTO record_counts (id, live, tombstones, bytes) VALUES (0, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    live = excluded.live, tombstones = excluded.tombstones, bytes = excluded.bytes
"""
RECORD_COUNTS = "SELECT live, tombstones, bytes FROM record_counts WHERE id = 0"
HINT_COUNTS = "SELECT target, count FROM hint_counts"

GET_META = "SELECT value FROM meta WHERE name = ?"
SET_META = """
INSERT INTO meta (name, value) VALUES (?, ?)
ON CONFLICT (name) DO UPDATE SET value = excluded.value
"""


def create_or_open(cursor: sqlite3.Cursor, path: Path) -> None:
    """Create the tables in an empty file, or check that the file is a store this version
    reads (migrating an older format); then add what later versions added."""
    tables = {name for (name,) in cursor.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}
    if not tables:
        for statement in SCHEMA + SCHEMA_ADDITIONS:
            cursor.execute(statement)
        cursor.execute(SET_META, ("format", FORMAT_VERSION))
        return
    if not {"records", "meta"} <= tables:
        raise StorageError(f"{path} is a SQLite database but not a zring store "
                           f"(it has tables {sorted(tables)})", path=str(path),
                           reason="foreign")
    rows = cursor.execute(GET_META, ("format",)).fetchall()
    found = rows[0][0] if rows else None
    if found in MIGRATED_FORMATS:
        migrate(cursor)
    elif found != FORMAT_VERSION:
        raise StorageError(f"{path} has storage format {found!r}; this version of "
                           f"zring reads format {FORMAT_VERSION!r} only",
                           path=str(path), reason="format")
    for statement in SCHEMA_ADDITIONS:
        cursor.execute(statement)


def migrate(cursor: sqlite3.Cursor) -> None:
    """Rebuild an older format's records table as this format's (inside the open's
    transaction: all or nothing), then record the new format."""
    for statement in MIGRATE_RECORDS:
        cursor.execute(statement)
    cursor.execute(SET_META, ("format", FORMAT_VERSION))


def recount(cursor: sqlite3.Cursor) -> None:
    """Set the triggers' figures from the tables (one pass; on every open)."""
    cursor.execute(SET_RECORD_COUNTS, cursor.execute(RECOUNT_RECORDS).fetchall()[0])
    cursor.execute("DELETE FROM hint_counts")
    cursor.executemany("INSERT INTO hint_counts (target, count) VALUES (?, ?)",
                       cursor.execute(RECOUNT_HINTS).fetchall())
