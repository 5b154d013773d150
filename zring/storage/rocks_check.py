"""Whether a RocksDB store is sound (``RocksStore.check``, run by ``zring check``), and the
figures counted again from its data.

Reading every entry of every column family makes RocksDB verify each block's checksum, so
damaged bytes in its files surface as a Corruption (reported, not raised). Then each record
must decode, sit at its key's ring position and, if a tombstone, be in the tombstone index
(whose every entry must name a tombstone); each hint must decode and be in both hint
indexes; and the figures the store keeps must match what is counted.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from rocksdict import Rdict

from zring.hashing import key_position
from zring.storage.rocks_batch import items
from zring.storage.rocks_format import (
    CF_HINTS,
    CF_META,
    CF_RECORDS,
    CF_TOMBSTONES,
    COUNTS,
    FORMAT_VERSION,
    decode_counts,
    hint_created_key,
    hint_target_prefix,
)
from zring.storage.rocks_records import counted, decode_hint, decode_record

__all__ = ["recount", "store_problems"]

_MAX_ROW_PROBLEMS = 20  # listed per family; the rest are counted
_DECODE_ERRORS = (ValueError, UnicodeDecodeError, IndexError, TypeError, struct.error)


class _Problems:
    """At most ``_MAX_ROW_PROBLEMS`` listed per family, the rest counted."""

    def __init__(self) -> None:
        self.listed: list[str] = []
        self.more: dict[str, int] = {}
        self.per_family: dict[str, int] = {}

    def add(self, family: str, text: str) -> None:
        seen = self.per_family.get(family, 0)
        self.per_family[family] = seen + 1
        if seen < _MAX_ROW_PROBLEMS:
            self.listed.append(text)
        else:
            self.more[family] = self.more.get(family, 0) + 1

    def all(self) -> list[str]:
        return self.listed + [f"{family}: {count} more damaged entries"
                              for family, count in self.more.items()]


def store_problems(tables: dict[str, Rdict], kept: tuple) -> list[str]:
    """What is wrong with the store whose column families are ``tables`` (and whose figures
    in memory are ``kept``), for a person; empty when it is sound."""
    problems = _Problems()
    try:
        stored_format = tables[CF_META].get(b"format")
        if stored_format != FORMAT_VERSION:
            problems.add("meta", f"format is {stored_format!r}, expected {FORMAT_VERSION!r}")
        counted_figures = _check_records(tables, problems)
        counted_figures += _check_hints(tables, problems)
        _check_figures(tables, kept, counted_figures, problems)
    except Exception as exc:   # rocksdict raises plain Exceptions: Corruption, I/O
        if type(exc) is not Exception:
            raise
        problems.listed.append(f"cannot read the store: {exc}")
    return problems.all()


def recount(tables: dict[str, Rdict]) -> tuple[int, int, int, int, dict[str, int]]:
    """(live, tombstones, bytes, next hint id, hints per target) counted from the data;
    damaged entries are skipped."""
    figures = _check_records(tables, _Problems())
    figures += _check_hints(tables, _Problems())
    return figures   # type: ignore[return-value]


def _check_records(tables: dict[str, Rdict], problems: _Problems) -> tuple[int, int, int]:
    live = tombstones = size = 0
    index: set[bytes] = set()
    for row_key, raw in _all(tables[CF_RECORDS]):
        try:
            record = decode_record(row_key, raw)
            is_tombstone, counted_size = counted(row_key, raw)
        except _DECODE_ERRORS as exc:
            key = row_key[8:].decode("utf-8", "replace")
            problems.add(CF_RECORDS, f"records entry {key!r}: does not decode ({exc})")
            continue
        if len(row_key) < 8 or record.position != key_position(row_key[8:]):
            problems.add(CF_RECORDS, f"records entry {record.key!r}: position does not "
                                     f"match the key's hash")
        size += counted_size
        if is_tombstone:
            tombstones += 1
            index.add(raw[:8] + row_key)
        else:
            live += 1
    for entry, _ in _all(tables[CF_TOMBSTONES]):
        if entry in index:
            index.discard(entry)
        else:
            problems.add(CF_TOMBSTONES, f"tombstone index entry {entry[8:]!r} names no "
                                        f"tombstone")
    if index:
        problems.add(CF_TOMBSTONES, f"{len(index)} tombstones are missing from the "
                                    f"tombstone index")
    return live, tombstones, size


def _check_hints(tables: dict[str, Rdict], problems: _Problems
                 ) -> tuple[int, dict[str, int]]:
    table = tables[CF_HINTS]
    counts: dict[str, int] = {}
    indexed: set[bytes] = set()
    last_id = 0
    for key, raw in _all(table, b"i", b"j"):
        hint_id = int.from_bytes(key[1:], "big")
        last_id = max(last_id, hint_id)
        try:
            hint = decode_hint(hint_id, raw)
            indexed.add(hint_target_prefix(hint.target) + key[1:])
            indexed.add(hint_created_key(hint.created_ms, hint_id))
        except _DECODE_ERRORS + (OverflowError,) as exc:
            problems.add(CF_HINTS, f"hint {hint_id}: does not decode ({exc})")
            continue
        counts[hint.target] = counts.get(hint.target, 0) + 1
    for begin, end in ((b"c", b"d"), (b"t", b"u")):
        for key, _ in _all(table, begin, end):
            if key in indexed:
                indexed.discard(key)
            else:
                problems.add(CF_HINTS, f"hint index entry {key!r} names no hint")
    if indexed:
        problems.add(CF_HINTS, f"{len(indexed)} hint index entries are missing")
    return last_id + 1, counts


def _check_figures(tables: dict[str, Rdict], kept: tuple, found: tuple,
                   problems: _Problems) -> None:
    live, tombstones, size, next_id, hints = found
    try:
        stored = decode_counts(tables[CF_META].get(COUNTS) or b"")
    except ValueError as exc:
        problems.add("meta", f"the kept figures do not decode ({exc})")
        stored = None
    for name, figures in (("stored", stored), ("in use", kept)):
        if figures is None:
            continue
        if tuple(figures[:3]) != (live, tombstones, size):
            problems.add("meta", f"record counts {name} {tuple(figures[:3])} differ from the "
                                 f"records (live, tombstones, bytes) {(live, tombstones, size)}")
        if dict(figures[4]) != hints:
            problems.add("meta", f"hint counts {name} differ from the hints held")
        if figures[3] < next_id:
            problems.add("meta", f"next hint id {name} {figures[3]} is not above the ids used")


def _all(table: Rdict, begin: bytes = b"", end: bytes | None = None
         ) -> Iterator[tuple[bytes, bytes]]:
    return items(table, begin, end, verify=True)
