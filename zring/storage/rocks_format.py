"""How a RocksDB store lays its data out: column families, key and value encodings, the kept
figures, and RocksDB's failures as StorageErrors (zring.storage.rocks reads and writes
through here; rocks_check verifies it).

Column families:

- ``records``: key = ring position (8 bytes, big-endian) + the key in UTF-8, so records sort
  by position then key (UTF-8 byte order is code point order, as SQLite's BINARY collation
  and Python's str order). A range of positions is one contiguous key range: it streams in
  order and drops with one DeleteRange. Value = ``VALUE_HEADER`` (timestamp, kind, writer
  length) + writer + payload (the value's bytes, or its str in UTF-8; empty for a tombstone).
- ``tombstones``: key = timestamp (8 bytes) + the record's key, value empty: the tombstones
  oldest first, for their collection (as SQLite's partial index).
- ``hints``: ``b"i" + id`` -> the hint (msgpack); ``b"t" + target + id`` (target length
  prefixed) and ``b"c" + created_ms + id`` -> empty: per target in id order, and by age.
- ``meta``: the node's named blobs (``get_meta``/``set_meta``), its storage format, and the
  kept figures (``COUNTS``: records, tombstones, bytes, hints per target, next hint id).
- ``progress``: the transfer progress blobs (meta names ending in ``_progress``), written in
  the same batch as the records they count.

UTF-8 never holds a 0xFF byte, so ``position + b"\\xff"`` sorts after every key at that
position: the exclusive end of a range.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import msgpack

from zring.errors import StorageError

__all__ = ["CF_HINTS", "CF_META", "CF_PROGRESS", "CF_RECORDS", "CF_TOMBSTONES",
           "COLUMN_FAMILIES", "COUNTS", "FORMAT_VERSION", "KIND_BYTES", "KIND_STR",
           "KIND_TOMBSTONE", "MAX_WRITER_BYTES", "TIMESTAMP_LIMIT", "VALUE_HEADER",
           "DamagedEntry", "decode_counts", "encode_counts", "hint_created_key", "hint_id_key",
           "hint_target_prefix", "meta_family", "position_end", "position_start",
           "rocks_error", "translating_errors"]

FORMAT_VERSION = b"rocks-1"  # bump with any change to a key or value encoding
CF_RECORDS, CF_TOMBSTONES, CF_HINTS, CF_META, CF_PROGRESS = (
    "records", "tombstones", "hints", "meta", "progress")
COLUMN_FAMILIES = (CF_RECORDS, CF_TOMBSTONES, CF_HINTS, CF_META, CF_PROGRESS)
COUNTS = b"\x00counts"   # in ``meta``: a name no caller uses (names are printable)
TIMESTAMP_LIMIT = 1 << 63  # as the SQLite store: timestamps and created_ms are < 2**63

VALUE_HEADER = struct.Struct(">QBH")  # timestamp, kind, writer length
KIND_TOMBSTONE, KIND_BYTES, KIND_STR = 0, 1, 2
MAX_WRITER_BYTES = 0xFFFF


def position_start(position: int) -> bytes:
    """The first key a record at ``position`` can have."""
    return position.to_bytes(8, "big")


def position_end(position: int) -> bytes:
    """A key after every record at ``position`` (and before the next position's)."""
    return position.to_bytes(8, "big") + b"\xff"


def meta_family(name: str) -> str:
    return CF_PROGRESS if name.endswith("_progress") else CF_META


def hint_id_key(hint_id: int) -> bytes:
    return b"i" + hint_id.to_bytes(8, "big")


def hint_target_prefix(target: str) -> bytes:
    raw = target.encode("utf-8")
    return b"t" + len(raw).to_bytes(4, "big") + raw


def hint_created_key(created_ms: int, hint_id: int) -> bytes:
    return b"c" + created_ms.to_bytes(8, "big") + hint_id.to_bytes(8, "big")


def encode_counts(live: int, tombstones: int, size: int, next_hint_id: int,
                  hints: dict[str, int]) -> bytes:
    return msgpack.packb([live, tombstones, size, next_hint_id, hints], use_bin_type=True)


def decode_counts(raw: bytes) -> tuple[int, int, int, int, dict[str, int]]:
    """The kept figures; ValueError if they do not parse."""
    try:
        live, tombstones, size, next_hint_id, hints = msgpack.unpackb(raw, raw=False)
    except Exception as exc:  # msgpack raises several types
        raise ValueError(f"unreadable figures: {exc}") from None
    if not all(type(n) is int and n >= 0 for n in (live, tombstones, size, next_hint_id)) \
            or not isinstance(hints, dict):
        raise ValueError("malformed figures")
    return live, tombstones, size, next_hint_id, hints


_LOCKED_MARKS = ("lock hold by current process", "While lock file", "LOCK:")
_DAMAGE_MARKS = ("Corruption:", "Not a directory", "not a directory")


def rocks_error(path: Path, exc: BaseException, *, closed: bool = False,
                opening: bool = False) -> StorageError:
    """A RocksDB failure (rocksdict raises plain ``Exception``s carrying RocksDB's status
    text) as a StorageError naming the store, with the SQLite store's ``reason`` details:
    "closed", "locked" (another process, or another store object, holds it), "damaged" (a
    checksum or a structure is wrong, or a file of an existing store is missing) or
    "error" (anything else: I/O, permissions, a full disk)."""
    name = str(path)
    text = str(exc)
    if closed or type(exc).__name__ == "DbClosedError":
        return StorageError(f"store {name} is closed", path=name, reason="closed")
    if any(mark in text for mark in _LOCKED_MARKS):
        return StorageError(f"store {name} is locked: is another node or process using "
                            f"it? ({text})", path=name, reason="locked")
    if any(mark in text for mark in _DAMAGE_MARKS) or (
            opening and "No such file or directory" in text):
        return StorageError(f"store {name} is damaged: {text}", path=name, reason="damaged")
    if "No space left" in text:
        return StorageError(f"store {name}: the disk is full ({text})", path=name,
                            reason="error")
    return StorageError(f"store {name}: {text}", path=name, reason="error")


class DamagedEntry(ValueError):
    """A stored record or hint that does not decode."""


_Method = TypeVar("_Method", bound=Callable)


def translating_errors(method: _Method) -> _Method:
    """A store method that refuses a closed store (its ``_closed``) and re-raises rocksdict's
    failures (plain ``Exception``s) and stored bytes that do not decode as a StorageError
    naming the store (its ``path``)."""

    @functools.wraps(method)
    def translated(self, *args, **kwargs):
        if self._closed:
            raise rocks_error(self.path, RuntimeError(), closed=True)
        try:
            return method(self, *args, **kwargs)
        except (struct.error, UnicodeDecodeError, DamagedEntry) as exc:
            raise StorageError(f"store {self.path} is damaged: a stored entry does not "
                               f"decode ({exc})", path=str(self.path),
                               reason="damaged") from exc
        except Exception as exc:
            if type(exc) is Exception or type(exc).__name__ == "DbClosedError":
                raise rocks_error(self.path, exc) from exc
            raise

    return translated  # type: ignore[return-value]
