"""Whether a SQLite store file is sound (``SQLiteStore.check``, run by ``zring check``).

``PRAGMA integrity_check`` reads every page and index entry; then come the tables, indexes,
format and records layout a store needs, the figures the triggers keep, and every record and
hint row: column types, UTF-8 text, and a position that matches the key's hash (which catches
a damaged key). SQLite keeps no checksums, so junk inside a value's bytes goes unnoticed; junk
in the file's structure does not.
"""

from __future__ import annotations

import sqlite3

from zring.hashing import key_position
from zring.storage.sqlite_errors import SQLITE_ERRORS
from zring.storage.sqlite_schema import (
    FORMAT_VERSION,
    GET_META,
    HINT_COUNTS,
    POSITION_SHIFT,
    RECORD_COUNTS,
    RECOUNT_HINTS,
    RECOUNT_RECORDS,
    REQUIRED_OBJECTS,
)

__all__ = ["CHECK_ROWS", "file_problems"]

# each row's columns read as blobs (text that is not UTF-8 must not fail to decode)
CHECK_ROWS = """
SELECT CAST(key AS BLOB), typeof(key), typeof(value),
       CASE typeof(value) WHEN 'text' THEN CAST(value AS BLOB) END,
       CASE typeof(ts) WHEN 'integer' THEN ts END,
       typeof(writer), CAST(writer AS BLOB),
       CASE typeof(pos) WHEN 'integer' THEN pos END
FROM {table}
"""
_MAX_ROW_PROBLEMS = 20  # listed per table (and of the integrity check); the rest are counted


def file_problems(cursor: sqlite3.Cursor) -> list[str]:
    """What is wrong with the store file ``cursor`` reads, for a person; empty when it is
    sound. A file too damaged to answer is reported as a problem, not raised."""
    try:
        rows = cursor.execute("PRAGMA integrity_check").fetchall()
    except SQLITE_ERRORS as exc:
        return [f"integrity check failed: {exc}"]
    problems = _integrity_problems(rows)
    try:
        names = {name for (name,) in cursor.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'index', 'trigger')")}
        missing = sorted(REQUIRED_OBJECTS - names)
        if missing:
            problems.append(f"missing tables, indexes or triggers: {', '.join(missing)}")
        problems += _layout_problems(cursor, names)
        if "meta" in names:
            rows = cursor.execute(GET_META, ("format",)).fetchall()
            found = bytes(rows[0][0]) if rows else None
            if found != FORMAT_VERSION:
                problems.append(f"format is {found!r}, expected {FORMAT_VERSION!r}")
        for table in ("records", "hints"):
            if table in names:
                problems += _damaged_rows(cursor, table)
        if {"records", "record_counts", "hints", "hint_counts"} <= names:
            problems += _count_problems(cursor)
    except SQLITE_ERRORS as exc:
        problems.append(f"cannot read the store: {exc}")
    return problems


def _integrity_problems(rows: list[tuple[str]]) -> list[str]:
    """``PRAGMA integrity_check`` rows (one may hold several lines) as at most
    ``_MAX_ROW_PROBLEMS`` problems plus a count of the rest."""
    lines = [line.strip() for (message,) in rows for line in str(message).splitlines()]
    lines = [line for line in lines if line and line != "ok" and not line.startswith("***")]
    problems = [f"integrity: {line}" for line in lines[:_MAX_ROW_PROBLEMS]]
    if len(lines) > len(problems):
        problems.append(f"integrity: {len(lines) - len(problems)} more problems")
    return problems


def _layout_problems(cursor: sqlite3.Cursor, names: set[str]) -> list[str]:
    """How the records table differs from this format's layout: gets, upserts, scans and
    drops all search its primary key, (pos, key)."""
    problems = []
    if "records" in names:
        primary = [name for (name,) in cursor.execute(
            "SELECT name FROM pragma_table_info('records') WHERE pk > 0 ORDER BY pk")]
        if primary != ["pos", "key"]:
            problems.append(f"records table has primary key ({', '.join(primary)}), "
                            f"expected (pos, key)")
    return problems


def _count_problems(cursor: sqlite3.Cursor) -> list[str]:
    """Where the triggers' figures differ from the tables' (they never should)."""
    problems = []
    kept = cursor.execute(RECORD_COUNTS).fetchall()
    counted = cursor.execute(RECOUNT_RECORDS).fetchall()[0]
    if not kept or tuple(kept[0]) != tuple(counted):
        problems.append(f"record counts {tuple(kept[0]) if kept else None} differ from the "
                        f"records (live, tombstones, bytes) {tuple(counted)}")
    hints = dict(cursor.execute(HINT_COUNTS).fetchall())
    if hints != dict(cursor.execute(RECOUNT_HINTS).fetchall()):
        problems.append("hint counts differ from the hints held")
    return problems


def _damaged_rows(cursor: sqlite3.Cursor, table: str) -> list[str]:
    """Problems with the rows of ``table`` ("records" or "hints"), at most
    ``_MAX_ROW_PROBLEMS`` of them plus a count of the rest. Columns are read as blobs so
    that damaged text is reported instead of failing to decode."""
    problems: list[str] = []
    damaged = 0
    for row in cursor.execute(CHECK_ROWS.format(table=table)):
        found = _row_problems(*row)
        if found:
            damaged += 1
            if len(problems) < _MAX_ROW_PROBLEMS:
                key = row[0].decode("utf-8", "replace") if row[0] is not None else None
                problems.append(f"{table} row {key!r}: {'; '.join(found)}")
    if damaged > len(problems):
        problems.append(f"{table}: {damaged - len(problems)} more damaged rows")
    return problems


def _row_problems(raw_key: bytes | None, key_type: str, value_type: str,
                  text_value: bytes | None, timestamp: int | None, writer_type: str,
                  raw_writer: bytes | None, pos: int | None) -> list[str]:
    found = []
    if key_type != "text" or not _is_utf8(raw_key):
        found.append(f"key is not UTF-8 text ({key_type})")
    if value_type not in ("text", "blob", "null"):
        found.append(f"value is {value_type}, not text, blob or null")
    elif value_type == "text" and not _is_utf8(text_value):
        found.append("text value is not UTF-8")
    if timestamp is None or timestamp < 0:
        found.append("timestamp is not a non-negative integer")
    if writer_type != "text" or not _is_utf8(raw_writer):
        found.append(f"writer is not UTF-8 text ({writer_type})")
    if pos is None:
        found.append("position is not an integer")
    elif raw_key is not None and pos + POSITION_SHIFT != key_position(raw_key):
        found.append("position does not match the key's hash")
    return found


def _is_utf8(raw: bytes | None) -> bool:
    if raw is None:
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
