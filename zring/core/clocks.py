"""How far each peer's clock is from ours, measured from clock pings (pure: times come in).

A node pings each live peer every ``clock_check_interval_s``; the peer answers with its
wall clock. With ``sent`` and ``received`` our clock's readings around the exchange, the
peer's clock was ``peer - (sent + received) / 2`` ahead of ours, give or take half the round
trip (CockroachDB measures offsets the same way on its RPC heartbeats).

A node whose clock is more than ``max_clock_offset_s`` away from more than half of the peers
it measured lately is the one that is off (the others each see one peer off): it must not
coordinate writes until it is fixed. With one peer measured, neither can tell whose clock
is off, and both stop. A peer whose sample is too noisy to tell (half its round trip above a
quarter of the maximum, or a round trip that went backwards: a clock stepped meanwhile) does
not count.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ClockOffsets", "OffsetSample", "ClockVerdict"]

SAMPLE_TTL_S = 10.0          # a measurement older than this no longer counts
FAR_SHARE = 1.0              # of the maximum: beyond it a peer's clock counts as far off


@dataclass(frozen=True, slots=True)
class OffsetSample:
    offset_s: float      # the peer's clock minus ours
    error_s: float       # half the round trip: the offset is within +- this
    at: float            # our clock when it was taken


@dataclass(frozen=True, slots=True)
class ClockVerdict:
    ok: bool
    measured: int        # peers with a recent, precise enough sample
    far: int             # of them, those whose clock is far from ours
    offset_s: float      # the median offset to the measured peers (0.0: none)

    def describe(self, node_id: str, max_offset_s: float) -> str:
        return (f"{node_id}'s clock is {self.offset_s:+.3f} s from its peers' (median over "
                f"{self.measured}; {self.far} further off than max_clock_offset_s "
                f"{max_offset_s:g}): it does not coordinate writes until its clock is fixed "
                "(run NTP)")


class ClockOffsets:
    """The latest good offset sample per peer, and the verdict on our own clock."""

    def __init__(self, max_offset_s: float) -> None:
        self.max_offset_s = max_offset_s
        self._samples: dict[str, OffsetSample] = {}

    def record(self, peer: str, sent: float, received: float, peer_clock: float) -> None:
        error = (received - sent) / 2
        if not 0 <= error <= self.max_offset_s / 4:
            return  # too slow an exchange to tell (a paused peer), or our clock stepped
        self._samples[peer] = OffsetSample(peer_clock - (sent + received) / 2, error, received)

    def sample(self, peer: str, now: float) -> OffsetSample | None:
        sample = self._samples.get(peer)
        if sample is None or not 0 <= now - sample.at <= SAMPLE_TTL_S:
            return None
        return sample

    def verdict(self, peers: list[str], now: float) -> ClockVerdict:
        offsets = [s.offset_s for p in peers if (s := self.sample(p, now)) is not None]
        if not offsets:
            return ClockVerdict(True, 0, 0, 0.0)
        limit = FAR_SHARE * self.max_offset_s
        far = sum(1 for o in offsets if abs(o) > limit)
        ordered = sorted(offsets)
        median = ordered[len(ordered) // 2]
        # we are the one off if most of the peers we measured are far from us (median is
        # their side: negated, it is how far we are from them)
        return ClockVerdict(far * 2 <= len(offsets), len(offsets), far, -median)
