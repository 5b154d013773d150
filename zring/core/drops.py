"""Ranges this node handed over, deleted a slice at a time once every member routes by
the ring that took them away (a member still on the old ring may read them until then)."""

from __future__ import annotations

from dataclasses import dataclass

from zring.core.context import NodeContext, Part
from zring.core.effects import Effect
from zring.core.streaming import Interval, subtract_intervals
from zring.core.topology import Topology
from zring.ring import HashRing, ring_changes

__all__ = ["Drops", "merge_intervals"]


@dataclass(slots=True)
class _Drop:
    """Ranges this node no longer replicates since ``ring``: deleted
    page by page once every member routes by that ring (a read by a member still on the old
    ring may come here until then)."""

    ring: HashRing
    intervals: list[tuple[int, int]]
    settled_at: float | None = None
    records: int = 0


class Drops(Part):
    def __init__(self, ctx: NodeContext, topology: Topology) -> None:
        self.ctx = ctx
        self.topology = topology
        self._queue: list[_Drop] = []
        self.handlers = {}

    def tick(self, now: float) -> list[Effect]:
        return self._run(now)

    def next_deadline(self, now: float) -> float | None:
        if not self._queue or self.topology.settled_at is None or \
                self.topology.change_under_way(now):
            return None
        settled_at = self._queue[0].settled_at
        return now if settled_at is None else max(
            now, settled_at + self.ctx.config.request_timeout_s)

    def add(self, ring: HashRing, intervals: list[Interval]) -> None:
        """Queue ranges to drop once every member routes by ``ring``. A drop still queued is
        narrowed to what ``ring`` leaves us and joins this one: one ring is held, however
        often membership changes before the cluster settles."""
        records = 0
        for older in self._queue:
            intervals = intervals + self._not_regained(older.intervals, older.ring, ring)[0]
            records += older.records
        self._queue = [_Drop(ring, merge_intervals(intervals), records=records)]

    def _not_regained(self, intervals: list[Interval], since: HashRing,
                      ring: HashRing) -> tuple[list[Interval], list[Interval]]:
        """``intervals`` (ours to drop since ``since``) less what ``ring`` gives us back, and
        what it gives back."""
        if since.fingerprint() == ring.fingerprint():
            return intervals, []
        regained = [i for change in ring_changes(since, ring, self.ctx.config.replicas,
                                                 gained_by=self.ctx.node_id)
                    for i in change.intervals()]
        return subtract_intervals(intervals, regained), regained

    def _run(self, now: float) -> list[Effect]:
        """Delete handed-over ranges a slice at a time (a delete of 250k rows in one go would
        stall the loop past the failure detector's patience)."""
        topology = self.topology
        if not self._queue or topology.settled_at is None or topology.change_under_way(now):
            return []  # while a join or leave streams, what we gain back must stay
        drop = self._queue[0]
        if drop.ring.fingerprint() != topology.ring.fingerprint():
            # The ring moved on before we dropped: keep whatever it gave back to us.
            drop.intervals, regained = self._not_regained(drop.intervals, drop.ring,
                                                          topology.ring)
            drop.ring = topology.ring
            drop.settled_at = None
            self.ctx.log.info("drop_narrowed", ranges_regained=len(regained))
        if drop.settled_at is None:
            drop.settled_at = now
        if now - drop.settled_at < self.ctx.config.request_timeout_s:
            return []  # requests sent by a member just before it switched rings: let them end
        deleted = 0
        while drop.intervals and deleted < self.ctx.config.drop_slice_records:
            low, high = drop.intervals.pop()
            deleted += self.ctx.store.delete_range(low, high)
        drop.records += deleted
        if not drop.intervals:
            self._queue.pop(0)
            self.ctx.log.info("ranges_dropped", records=drop.records)
        return []


def merge_intervals(intervals: list[Interval]) -> list[Interval]:
    """Sorted, with overlapping or touching inclusive intervals joined."""
    merged: list[Interval] = []
    for low, high in sorted(intervals):
        if merged and low <= merged[-1][1] + 1:
            if high > merged[-1][1]:
                merged[-1] = (merged[-1][0], high)
        else:
            merged.append((low, high))
    return merged

