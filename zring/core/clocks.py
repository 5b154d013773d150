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

from zring.core.context import NodeContext, Part
from zring.core.effects import Effect, ok
from zring.errors import ClockSkew
from zring.protocol import Message, MsgType
from zring.versions import LOGICAL_BITS, HybridClock, seconds_ahead, timestamp_bound

__all__ = ["ClockOffsets", "ClockVerdict", "NodeClock", "OffsetSample"]

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


class NodeClock(Part):
    """The node's hybrid clock: its ceiling kept on disk so a restart never goes back, its
    offset from the peers' clocks measured, and the checks that keep clocks that are off
    from stamping or coordinating writes."""

    def __init__(self, ctx: NodeContext, now: float) -> None:
        self.ctx = ctx
        config = ctx.config
        # never behind what the last run issued or saw (its ceiling is saved ahead of use)
        self._saved_until = self._saved_clock_ceiling()
        self.hlc = HybridClock(self._saved_until)
        self._stamped = 0   # the greatest timestamp of a record we stored or stamped
        # how far ahead of it the saved ceiling is kept: half the maximum offset
        self._lease = int(config.max_clock_offset_s * 500) << LOGICAL_BITS
        # the ceiling saved in the current cycle: (ticks finished then, the one before it)
        self._saving: tuple[int, int] | None = None
        self.offsets = ClockOffsets(config.max_clock_offset_s)
        self.ok = True                          # our clock's last verdict, as logged
        self._cached_verdict: ClockVerdict | None = None  # kept for writes until samples change
        self._next_check_at = now
        self.handlers = {MsgType.CLOCK: self._answer_clock}

    def tick(self, now: float) -> list[Effect]:
        effects = self._measure(now) if now >= self._next_check_at else []
        self.save_ceiling(now)
        return effects

    def next_deadline(self, now: float) -> float | None:
        return self._next_check_at

    def shift_timers(self, step: float) -> None:
        self._next_check_at -= step

    def commit_failed(self, cycle: int, now: float) -> None:
        if self._saving is not None and self._saving[0] >= cycle:
            self._saved_until = self._saving[1]   # that ceiling is not on disk
            # nor is what this cycle stamped: no ceiling is owed for it
            self._stamped = min(self._stamped, max(0, self._saved_until - self._lease))
        self._saving = None

    def read_bound(self, now: float) -> int:
        """The greatest timestamp a replica's answer may carry (ours off: it cannot tell)."""
        return timestamp_bound(now, self.ctx.config.max_clock_offset_s) if self.ok \
            else 1 << 64

    def _saved_clock_ceiling(self) -> int:
        saved = self.ctx.store.get_meta("clock")
        return int.from_bytes(saved, "big") if saved and len(saved) == 8 else 0

    def note_stamp(self, timestamp: int) -> None:
        """A record with this timestamp is written in this cycle (see ``save_ceiling``)."""
        if timestamp > self._stamped:
            self._stamped = timestamp

    def save_ceiling(self, now: float) -> None:
        """Keep a ceiling on disk a little ahead of every timestamp we stamped or stored, so
        a restarted node's hybrid clock starts above them (it never goes back); saved by the
        cycle that wrote them, in one commit with them (a cycle that only read writes
        nothing, so it never fails on a full disk). The lease is half the maximum offset: a
        restart's first timestamps are never refused as being from the future. (From the
        records, not the wall clock: a wall clock that ran ahead and was fixed leaves no
        ceiling in the future.)"""
        lease = self._lease
        if self._stamped + lease // 2 < self._saved_until:
            return
        ceiling = max(self._stamped, self.hlc.last) + lease
        self._saving = (self.ctx.ticks, self._saved_until)
        self.ctx.store.set_meta("clock", ceiling.to_bytes(8, "big"))
        self._saved_until = ceiling

    def verdict(self, now: float) -> ClockVerdict:
        return self.offsets.verdict(self.ctx.up_peers(now), now)

    def clock_checked(self, now: float) -> bool:
        """Our clock is measured against every live peer's and within the maximum offset."""
        verdict = self.verdict(now)
        return verdict.ok and verdict.measured == len(self.ctx.up_peers(now))

    def _measure(self, now: float) -> list[Effect]:
        """Ask every live peer for its clock (CockroachDB measures offsets on its RPC
        heartbeats the same way), and say so when ours is off, or fixed."""
        self._next_check_at = now + self.ctx.config.clock_check_interval_s
        self._cached_verdict = None   # liveness and sample ages moved on
        effects: list[Effect] = []
        for peer in self.ctx.up_peers(now):
            effects += self.ctx.calls.call(peer, MsgType.CLOCK, {},
                                           lambda node, reply, t, sent=now: self._clock_answered(
                                               node, reply, sent, t), now)
        verdict = self.verdict(now)
        if verdict.ok != self.ok:
            self.ok = verdict.ok
            if verdict.ok:
                self.ctx.log.info("clock_offset_ok", offset_s=round(verdict.offset_s, 3),
                                  peers_measured=verdict.measured)
            else:
                self.ctx.log.error("clock_offset_exceeded", offset_s=round(verdict.offset_s, 3),
                                   max_clock_offset_s=self.ctx.config.max_clock_offset_s,
                                   peers_measured=verdict.measured, peers_far=verdict.far,
                                   action="not coordinating writes until the clock is fixed")
        return effects

    def _clock_answered(self, node_id: str, reply: Message | None, sent: float,
                        now: float) -> list[Effect]:
        peer_clock = reply.body.get("now") if reply is not None and \
            reply.type == MsgType.OK else None
        if type(peer_clock) in (int, float) and peer_clock == peer_clock:  # not NaN
            self.offsets.record(node_id, sent, now, float(peer_clock))
            self._cached_verdict = None
        return []

    def _answer_clock(self, route, message: Message, now: float) -> list[Effect]:
        return [ok(route, message.request_id, {"now": now}, only_reads=True)]

    def check_for_writes(self, now: float, legacy: bool) -> int:
        """Refuse to coordinate writes while our clock is off (measured against our
        peers'); returns the greatest timestamp a write may carry. ``legacy``: the write
        has no client timestamp, so ours stamps it: only with a clock checked already."""
        verdict = self._cached_verdict
        if verdict is None:   # new samples or a clock check since: judged again
            verdict = self._cached_verdict = self.verdict(now)
        if not verdict.ok:
            self.ctx.stats["writes_refused_clock"] += 1
            raise ClockSkew(verdict.describe(self.ctx.config.node_id,
                                             self.ctx.config.max_clock_offset_s),
                            offset_s=round(verdict.offset_s, 3),
                            node=self.ctx.config.node_id)   # ask another coordinator
        if legacy and verdict.measured == 0 and self.ctx.up_peers(now):
            raise ClockSkew(f"{self.ctx.config.node_id} has not measured its clock against its "
                            "peers' yet; retry in a moment", node=self.ctx.config.node_id)
        return timestamp_bound(now, self.ctx.config.max_clock_offset_s)

    def check_peer_timestamp(self, timestamp: int, now: float) -> None:
        """A timestamp beyond our clock plus the maximum offset comes from a clock that is
        off (the sender's, or ours): refused and counted, never stored or observed (it would
        carry our hybrid clock, and every write after it, into the future)."""
        if timestamp > timestamp_bound(now, self.ctx.config.max_clock_offset_s):
            self.ctx.stats["future_timestamps_refused"] += 1
            ahead = seconds_ahead(timestamp, now)
            self.ctx.log.warning("future_timestamp_refused", seconds_ahead=round(ahead, 3))
            raise ClockSkew(f"a record's timestamp is {ahead:.3f} s ahead of "
                            f"{self.ctx.config.node_id}'s clock (max_clock_offset_s "
                            f"{self.ctx.config.max_clock_offset_s:g})", offset_s=round(ahead, 3))

