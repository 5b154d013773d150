"""Batches: an MGET or MPUT cut into frames, and its per-key results put back in key order.

Each frame carries at most BATCH_MAX_KEYS keys and about BATCH_MAX_BYTES of them, measured
by one rule (:func:`entry_bytes`) for both clients. ``cut`` (in zring.protocol) cuts the
node's BATCH frames between peers too.
"""

from __future__ import annotations

from zring.errors import ProtocolError
from zring.protocol import cut

__all__ = ["BATCH_MAX_BYTES", "BATCH_MAX_KEYS", "ENTRY_OVERHEAD", "cut", "cut_indexes",
           "entry_bytes", "merge"]

BATCH_MAX_KEYS = 1000                 # keys (or items) in one MGET / MPUT frame
BATCH_MAX_BYTES = 8 * 1024 * 1024     # and about this much of them (one big item alone)
ENTRY_OVERHEAD = 16                   # an item's framing and write stamp, about


def entry_bytes(key: str, value: bytes | str | None = None) -> int:
    """What a key (and its value) adds to a frame: their UTF-8 bytes and the overhead."""
    size = len(key.encode()) + ENTRY_OVERHEAD
    if value is not None:
        size += len(value.encode()) if isinstance(value, str) else len(value)
    return size


def cut_indexes(indexes: list[int], sizes: list[int]) -> list[list[int]]:
    """``indexes`` (into ``sizes``) in runs of at most BATCH_MAX_KEYS and BATCH_MAX_BYTES."""
    if len(indexes) <= BATCH_MAX_KEYS and sum(sizes[i] for i in indexes) <= BATCH_MAX_BYTES:
        return [indexes] if indexes else []   # the usual batch: one run, no cutting
    return cut(indexes, sizes.__getitem__, BATCH_MAX_KEYS, BATCH_MAX_BYTES)


def merge(count: int, chunks: list[list[int]], bodies: list[dict], msg_name: str,
          field: str) -> list:
    """The per-key ``results`` of each chunk's reply body, put back in key order."""
    placed: list = [None] * count
    for indexes, body in zip(chunks, bodies, strict=True):
        results = body.get("results")
        if not isinstance(results, list) or len(results) != len(indexes):
            got = len(results) if isinstance(results, list) else "no"
            raise ProtocolError(f"{msg_name} reply has {got} results for "
                                f"{len(indexes)} {field}")
        for index, result in zip(indexes, results):
            placed[index] = result
    return placed
