"""Ring positions: the one hash zring uses everywhere.

This module is a wire and disk contract: every node, every client and every store must map a
key to the same position, so nothing here may change without a storage-format bump.

- A key's position is XXH3-64 (seed 0) of the key's bytes; a ``str`` key is encoded as UTF-8
  first, so ``"k"`` and ``b"k"`` share a position. Positions are unsigned 64-bit integers.
- A node's tokens are the SHAKE-128 stream of ``b"zring-token:" + node_id (UTF-8)`` read as
  consecutive little-endian unsigned 64-bit integers; token ``i`` is bytes ``8*i .. 8*i+8``.
  An extendable-output function gives any number of tokens in one call, and a node's first
  ``n`` tokens never change when it is given more (a weight increase only adds tokens).
"""

from __future__ import annotations

import hashlib
from array import array

import xxhash

__all__ = ["POSITION_BITS", "RING_SIZE", "key_position", "node_tokens"]

POSITION_BITS = 64
RING_SIZE = 1 << POSITION_BITS

_xxh3_64 = xxhash.xxh3_64_intdigest
_TOKEN_DOMAIN = b"zring-token:"


def key_position(key: str | bytes) -> int:
    """Position of ``key`` on the ring, in ``[0, 2**64)``."""
    if isinstance(key, str):
        key = key.encode("utf-8")
    return _xxh3_64(key)


def node_tokens(node_id: str, count: int) -> array:
    """The first ``count`` tokens of ``node_id`` (unsorted), as an ``array('Q')``."""
    if count < 0:
        raise ValueError("token count must be >= 0")
    stream = hashlib.shake_128(_TOKEN_DOMAIN + node_id.encode("utf-8")).digest(8 * count)
    tokens = array("Q")
    tokens.frombytes(stream)
    if tokens.itemsize != 8:  # pragma: no cover - every CPython platform we support has 8-byte Q
        raise RuntimeError("array('Q') is not 64-bit on this platform")
    if array("H", [1]).tobytes() != b"\x01\x00":
        tokens.byteswap()  # the contract is little-endian
    return tokens
