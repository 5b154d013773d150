"""A client's write stamps, and when a refused write may be stamped again."""

from __future__ import annotations

import secrets

from zring.errors import VersionConflict
from zring.versions import HybridClock

__all__ = ["CONFLICT_RETRIES", "WriteStamps", "restampable"]

CONFLICT_RETRIES = 5      # a write refused for a newer version: resent with a later stamp


class WriteStamps:
    """A client's write versions (Cassandra's client-side timestamps): a hybrid clock on
    the client's wall clock, kept ahead of every version the client saw, and a writer id
    unique to the client. A write is stamped once and resent with the same stamp whatever
    the retries, so a copy of it applied late can never win over a later write.

    A write refused for a newer version held is stamped again above it and resent only if
    it is sure to have been applied nowhere: every replica refused it, and no copy of it
    went unanswered. Otherwise it may have taken effect (and been superseded), and a second
    effect later would be seen as the value coming back: the caller gets VersionConflict."""

    def __init__(self, writer: str | None = None) -> None:
        self.clock = HybridClock()
        self.writer = writer or f"client-{secrets.token_hex(6)}"

    def next(self, wall_ms: int) -> int:
        """A new stamp, from the wall clock now (``wall_ms``, milliseconds)."""
        return self.clock.now(wall_ms)

    def observe(self, timestamp: object) -> None:
        if type(timestamp) is int and 0 <= timestamp < 1 << 63:
            self.clock.observe(timestamp)

    def observe_body(self, body: object) -> None:
        """A reply body's version (a read's or a write's)."""
        version = body.get("version") if isinstance(body, dict) else None
        if isinstance(version, list) and version:
            self.observe(version[0])

    def observe_conflict(self, held: object) -> None:
        if isinstance(held, list) and held:
            self.observe(held[0])

    def stamp_again(self, conflict: VersionConflict, attempt: int, unanswered: bool) -> bool:
        """A write refused for a newer version (``attempt`` counts its stamps from 0):
        stamp it again above that version and resend it? Only if it was applied nowhere
        (every replica refused it, no copy of it went unanswered) and tries remain."""
        self.observe_conflict(conflict.details.get("held"))
        return (attempt < CONFLICT_RETRIES and not unanswered
                and bool(conflict.details.get("all_refused")))


def restampable(results: list, uncertain: set[int]) -> list[int]:
    """Indexes of batch results refused by every replica for a newer version held, whose
    writes never went unanswered (``uncertain``): safe to stamp again and resend."""
    return [index for index, result in enumerate(results)
            if isinstance(result, dict) and result.get("error") == VersionConflict.code
            and result.get("all_refused") and index not in uncertain]
