"""Hybrid logical clock and last-writer-wins versions (pure: time comes in as ``now_ms``).

A version is ``(timestamp, node_id)``. The timestamp packs milliseconds since the epoch
(48 bits) and a logical counter (16 bits), as in Kulkarni et al.'s HLC: it never goes
backwards on a node, it moves past every timestamp the node has seen, and it stays close to
wall time. Two writes are ordered by timestamp, then node id; the greater one wins everywhere.
A delete is a write of a tombstone (value ``None``) with its own version.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["HybridClock", "Version", "LOGICAL_BITS", "ZERO_VERSION", "seconds_ahead",
           "timestamp_bound"]

LOGICAL_BITS = 16
_LOGICAL_MASK = (1 << LOGICAL_BITS) - 1


class Version(NamedTuple):
    """Orders writes to one key: the greater version wins (tuple ordering)."""

    timestamp: int   # HLC: physical ms << 16 | logical counter
    node_id: str     # the coordinator that issued it; breaks timestamp ties

    @property
    def physical_ms(self) -> int:
        return self.timestamp >> LOGICAL_BITS


ZERO_VERSION = Version(0, "")


class HybridClock:
    """A node's HLC. ``now(now_ms)`` issues a timestamp; ``observe`` merges a remote one."""

    __slots__ = ("_last",)

    def __init__(self, last_timestamp: int = 0) -> None:
        self._last = last_timestamp  # greatest timestamp issued or observed

    @property
    def last(self) -> int:
        return self._last

    def now(self, now_ms: int) -> int:
        physical = int(now_ms) << LOGICAL_BITS
        if physical > self._last:
            self._last = physical
        else:
            # wall clock stalled or went back: count on the logical part (carries into ms)
            self._last += 1
        return self._last

    def observe(self, remote_timestamp: int) -> None:
        if remote_timestamp > self._last:
            self._last = remote_timestamp

    def version(self, now_ms: int, node_id: str) -> Version:
        return Version(self.now(now_ms), node_id)


def timestamp_bound(now_s: float, max_offset_s: float) -> int:
    """The greatest timestamp a node whose wall clock reads ``now_s`` accepts: anything later
    comes from a clock more than ``max_offset_s`` ahead of its own."""
    return (int((now_s + max_offset_s) * 1000) << LOGICAL_BITS) | _LOGICAL_MASK


def seconds_ahead(timestamp: int, now_s: float) -> float:
    """How far ``timestamp`` is ahead of a wall clock reading ``now_s`` (negative: behind)."""
    return (timestamp >> LOGICAL_BITS) / 1000 - now_s
