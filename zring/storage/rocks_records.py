"""Records and hints of a RocksStore as stored bytes, and back (the layout is described in
``rocks_format``). Writes are checked here, before the store changes anything: positions and
timestamps within the SQLite store's ranges, wire records field by field."""

from __future__ import annotations

from collections.abc import Iterable

import msgpack

from zring.errors import ProtocolError
from zring.hashing import RING_SIZE, key_position
from zring.storage.base import Hint, Record, checked_wire
from zring.storage.rocks_format import (
    KIND_BYTES,
    KIND_STR,
    KIND_TOMBSTONE,
    MAX_WRITER_BYTES,
    TIMESTAMP_LIMIT,
    VALUE_HEADER,
    DamagedEntry,
)
from zring.versions import Version

__all__ = ["DamagedEntry", "counted", "decode_hint", "decode_record", "decode_records",
           "encode_hint", "range_figures", "record_row", "wire_rows"]

_HEADER = VALUE_HEADER.size
_pack_header = VALUE_HEADER.pack
_unpack_header = VALUE_HEADER.unpack_from
_new_tuple = tuple.__new__
_from_bytes = int.from_bytes


def _stored(timestamp: int, writer: bytes, value: bytes | str | None) -> tuple[bytes, int]:
    """The stored value and the value's counted size (bytes, or a str's characters)."""
    if value is None:
        return _pack_header(timestamp, KIND_TOMBSTONE, len(writer)) + writer, 0
    if value.__class__ is str:
        return (_pack_header(timestamp, KIND_STR, len(writer)) + writer
                + value.encode("utf-8"), len(value))
    return _pack_header(timestamp, KIND_BYTES, len(writer)) + writer + value, len(value)


def record_row(record: Record) -> tuple[bytes, int, bytes, bytes, int]:
    """``record`` as (row key, timestamp, writer bytes, stored value, counted size), checked
    against the ranges the SQLite store's columns hold."""
    key, value, (timestamp, writer), position = record
    if not 0 <= position < RING_SIZE:
        raise ValueError(f"position {position} of {key!r} is outside [0, 2**64)")
    if not 0 <= timestamp < TIMESTAMP_LIMIT:
        raise ValueError(f"timestamp {timestamp} of {key!r} is outside [0, 2**63)")
    raw_key = key.encode("utf-8")
    raw_writer = writer.encode("utf-8")
    if len(raw_writer) > MAX_WRITER_BYTES:
        raise ValueError(f"writer of {key!r} is over {MAX_WRITER_BYTES} bytes")
    stored, size = _stored(timestamp, raw_writer, value if value is None or isinstance(
        value, str) else bytes(value))
    return position.to_bytes(8, "big") + raw_key, timestamp, raw_writer, stored, \
        len(raw_key) + size


def wire_rows(items: list) -> tuple[list[tuple], int]:
    """``record_row`` tuples of wire records from a peer or a coordinator, each checked (a
    bad one raises the precise ProtocolError), and the bytes of their keys and values as
    ``record_size`` counts them. A stream lands thousands a page: ``_stored`` is inlined
    and each key is encoded once."""
    rows = []
    append = rows.append
    size = 0
    for item in items:
        key, value, timestamp, writer = checked_wire(item)
        raw_key = key.encode("utf-8")
        raw_writer = writer.encode("utf-8")
        length = len(raw_writer)
        if length > MAX_WRITER_BYTES:
            raise ProtocolError(f"record writer is over {MAX_WRITER_BYTES} bytes")
        if value is None:
            stored = _pack_header(timestamp, KIND_TOMBSTONE, length) + raw_writer
            counted_size = 0
        elif value.__class__ is str:
            stored = _pack_header(timestamp, KIND_STR, length) + raw_writer \
                + value.encode("utf-8")
            counted_size = len(value)
        else:
            stored = _pack_header(timestamp, KIND_BYTES, length) + raw_writer + value
            counted_size = len(value)
        append((key_position(raw_key).to_bytes(8, "big") + raw_key, timestamp, raw_writer,
                stored, len(raw_key) + counted_size))
        size += len(key) + counted_size
    return rows, size


def decode_record(row_key: bytes, raw: bytes) -> Record:
    """The record stored as ``raw`` under ``row_key``; struct.error, UnicodeDecodeError or
    DamagedEntry if it is damaged."""
    return decode_records([(row_key, raw)])[0]


def decode_records(items: list[tuple[bytes, bytes]]) -> list[Record]:
    """``decode_record`` of each (row key, stored value), in a loop of its own: a page of a
    stream decodes thousands (the named tuples are built without their ``__new__``)."""
    records = []
    append = records.append
    for row_key, raw in items:
        timestamp, kind, length = _unpack_header(raw)
        start = _HEADER + length
        if kind == KIND_BYTES:
            value: bytes | str | None = raw[start:]
        elif kind == KIND_STR:
            value = raw[start:].decode("utf-8")
        elif kind == KIND_TOMBSTONE:
            value = None
        else:
            raise DamagedEntry(f"unknown value kind {kind}")
        append(_new_tuple(Record, (
            row_key[8:].decode("utf-8"), value,
            _new_tuple(Version, (timestamp, raw[_HEADER:start].decode("utf-8"))),
            _from_bytes(row_key[:8], "big"))))
    return records


def range_figures(items: Iterable[tuple[bytes, bytes]], index: list[bytes] | None = None
                  ) -> tuple[int, int, int, int]:
    """(records, live records, size as ``counted`` sums it, size as ``record_size`` sums it:
    a key's characters) of stored records, read from their headers without decoding them
    (``counted`` and ``decode_record`` record by record cost twice as much); ``index``, if
    given, receives the tombstones' index entries."""
    records = live = size = chars = 0
    for row_key, raw in items:
        records += 1
        key = row_key[8:]
        key_bytes = len(key)
        key_chars = key_bytes if key.isascii() else len(key.decode("utf-8"))
        _, kind, length = _unpack_header(raw)
        if kind == KIND_TOMBSTONE:
            size += key_bytes
            chars += key_chars
            if index is not None:
                index.append(raw[:8] + row_key)
            continue
        value = len(raw) - _HEADER - length
        if kind != KIND_BYTES and kind != KIND_STR or value < 0:
            raise DamagedEntry(f"value kind {kind}, writer of {length} bytes in "
                               f"{len(raw)} bytes")
        if kind == KIND_STR and value:
            payload = raw[-value:]
            if not payload.isascii():
                value = len(payload.decode("utf-8"))
        live += 1
        size += key_bytes + value
        chars += key_chars + value
    return records, live, size, chars


def counted(row_key: bytes, raw: bytes) -> tuple[bool, int]:
    """(is a tombstone, size as the figures count it: the key's UTF-8 bytes and the value's
    bytes, or its characters if a str) of a stored record."""
    _, kind, length = _unpack_header(raw)
    start = _HEADER + length
    size = len(raw) - start
    if kind == KIND_STR and size:
        payload = raw[start:]
        if not payload.isascii():
            size = len(payload.decode("utf-8"))
    return kind == KIND_TOMBSTONE, len(row_key) - 8 + size


def encode_hint(hint: Hint) -> bytes:
    record = hint.record
    return msgpack.packb([hint.target, hint.created_ms, record.key, record.value,
                          record.version.timestamp, record.version.node_id, record.position],
                         use_bin_type=True)


def decode_hint(hint_id: int, raw: bytes) -> Hint:
    """The hint stored as ``raw``; DamagedEntry if it is damaged."""
    try:
        target, created_ms, key, value, timestamp, writer, position = msgpack.unpackb(
            raw, raw=False)
    except Exception as exc:  # msgpack raises several types
        raise DamagedEntry(f"hint {hint_id} does not decode: {exc}") from None
    return Hint(hint_id, target, Record(key, value, Version(timestamp, writer), position),
                created_ms)
