"""Counting what ranges hold, a slice per loop cycle: ``zring plan`` (what a join or leave
would move), RANGE_STATS for peers, and the totals of a transfer's progress."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from zring.core.context import NodeContext, Part
from zring.core.effects import Effect, Reply, error, ok
from zring.core.streaming import Interval
from zring.core.topology import Topology
from zring.errors import InvalidRequest, NotMember, Unavailable
from zring.membership import MAX_WEIGHT, MIN_WEIGHT
from zring.protocol import Message, MsgType
from zring.ring import ring_changes

__all__ = ["Plan", "ring_slices", "stats_figures"]

# a plan counts every range a change moves: up to one per ring token (MAX_RING_TOKENS)
MAX_COUNT_INTERVALS = 1_000_000
_SLICE_INTERVALS = 2000   # intervals counted per loop cycle, at most


@dataclass(slots=True)
class _CountJob:
    """Counting the records and bytes in a list of intervals, a slice per loop cycle."""

    intervals: list[tuple[int, int]]
    on_done: Callable[[int, int, float], list]
    index: int = 0
    records: int = 0
    size: int = 0


class Plan(Part):
    def __init__(self, ctx: NodeContext, topology: Topology) -> None:
        self.ctx = ctx
        self.topology = topology
        self._jobs: list[_CountJob] = []
        self.handlers = {MsgType.PLAN: self._on_plan, MsgType.RANGE_STATS: self._on_range_stats}

    def tick(self, now: float) -> list[Effect]:
        return self._step(now)

    def next_deadline(self, now: float) -> float | None:
        return now if self._jobs else None   # keep counting: the next slice at once

    def count(self, intervals: list[Interval],
              on_done: Callable[[int, int, float], list[Effect]]) -> None:
        """Count the records and bytes we hold in ``intervals``; then ``on_done(records,
        bytes, now)``."""
        self._jobs.append(_CountJob(list(intervals), on_done))

    def _on_plan(self, route, message: Message, now: float) -> list[Effect]:
        """``zring plan add|remove NODE``: what the change would move, computed from the
        ring and exact per-range counts asked of the nodes; nothing moves."""
        body = message.body
        action, node_id = body["action"], body["node_id"]
        n = self.ctx.config.replicas
        current = self.topology.ring
        future = current.copy()
        member = self.ctx.members.get(node_id)
        if action == "add":
            if node_id in current:
                raise InvalidRequest(f"{node_id} is already in the ring")
            weight = body.get("weight") or (member.weight if member else 1.0)
            if not MIN_WEIGHT <= weight <= MAX_WEIGHT:
                raise InvalidRequest(f"weight must be between {MIN_WEIGHT} and {MAX_WEIGHT}")
            future.add_node(node_id, float(weight))
        elif action == "remove":
            if node_id not in current:
                raise NotMember(f"{node_id} is not in the ring")
            if len(current) <= 1:
                raise InvalidRequest("the last node of a cluster cannot leave it")
            future.remove_node(node_id)
        else:
            raise InvalidRequest(f"plan action must be add or remove, not {action!r}")
        # (sender, receiver) -> intervals, exactly as the join or leave would stream them
        flows: dict[tuple[str, str], list[Interval]] = defaultdict(list)
        for change in ring_changes(current, future, n):
            if action == "add" and node_id in change.gained:
                displaced = [x for x in change.lost if x != node_id]
                for source in displaced[:1] or change.old_nodes:
                    flows[(source, node_id)] += change.intervals()
            elif action == "remove" and node_id in change.lost:
                for gainer in change.gained:
                    flows[(node_id, gainer)] += change.intervals()
        holders = sorted(set(current.nodes))
        if not holders:
            raise Unavailable("the ring is empty: nothing to plan")
        counts: dict = {}
        asked = len(flows) + len(holders)
        effects: list[Effect] = []

        def on_stats(key, reply: Message | None, t: float) -> list[Effect]:
            if key in counts:
                return []
            counts[key] = stats_figures(reply)
            if len(counts) < asked:
                return []
            missing = sorted({k[1] if k[0] == "held" else k[1][0]
                              for k, v in counts.items() if v is None})
            if missing:
                return [Reply(route, error(message.request_id, Unavailable(
                    f"no range counts from {', '.join(missing)}; plan again when they are up")))]
            return [Reply(route, Message(MsgType.OK, message.request_id, _plan_body(
                action, node_id, n, holders, future.nodes, counts, flows)))]

        whole = ring_slices(64)
        for holder in holders:
            effects += self._stats_call(holder, whole, ("held", holder), on_stats, now)
        for flow, intervals in flows.items():
            effects += self._stats_call(flow[0], [list(i) for i in sorted(intervals)],
                                        ("flow", flow), on_stats, now)
        return effects

    def _stats_call(self, node_id: str, intervals: list, key, on_stats, now: float):
        if node_id == self.ctx.node_id:
            self.count([tuple(i) for i in intervals],
                       lambda records, size, t: on_stats(key, Message(
                           MsgType.OK, 0, {"records": records, "bytes": size}), t))
            return []
        return self.ctx.calls.call(node_id, MsgType.RANGE_STATS, {"intervals": intervals},
                                   lambda node, reply, t: on_stats(key, reply, t), now,
                                   timeout_s=self.ctx.config.repair_timeout_s)

    def _on_range_stats(self, route, message: Message, now: float) -> list[Effect]:
        """How many records and bytes we hold in the intervals: counted a slice per loop
        cycle, answered when done (a plan or a transfer's totals)."""
        intervals = message.body["intervals"]
        if len(intervals) > MAX_COUNT_INTERVALS or not all(
                isinstance(i, list) and len(i) == 2
                and all(type(v) is int and 0 <= v < 1 << 64 for v in i) for i in intervals):
            raise InvalidRequest("intervals must be at most 1,000,000 [low, high] pairs")

        def on_done(records: int, size: int, t: float) -> list[Effect]:
            return [ok(route, message.request_id, {"records": records, "bytes": size})]
        self.count([tuple(i) for i in intervals], on_done)
        return []

    def _step(self, now: float) -> list[Effect]:
        """Count a slice of the oldest stats job."""
        if not self._jobs:
            return []
        job = self._jobs[0]
        counted = 0
        end = min(job.index + _SLICE_INTERVALS, len(job.intervals))
        while job.index < end and counted < self.ctx.config.slice_records:
            records, size = self.ctx.store.range_stats(*job.intervals[job.index])
            job.records += records
            job.size += size
            counted += records
            job.index += 1
        if job.index < len(job.intervals):
            return []
        self._jobs.pop(0)
        return job.on_done(job.records, job.size, now)


def ring_slices(count: int) -> list[Interval]:
    """The whole ring as ``count`` (a power of two) equal position intervals, for work done
    a slice per loop cycle."""
    width = (1 << 64) // count
    return [(i * width, (i + 1) * width - 1) for i in range(count)]


def _plan_body(action: str, node_id: str, n: int, holders: list[str], after: list[str],
               counts: dict, flows: dict) -> dict:
    """The figures of ``zring plan``: per node what it holds, sends and receives, and the
    balance (peak/mean records per node) before and after."""
    nodes = sorted(set(holders) | set(after))
    rows = {x: {"node_id": x, "records_before": 0, "bytes_before": 0, "send_records": 0,
                "send_bytes": 0, "receive_records": 0, "receive_bytes": 0} for x in nodes}
    for holder in holders:
        records, size = counts[("held", holder)]
        rows[holder]["records_before"] = records
        rows[holder]["bytes_before"] = size
    for (sender, receiver) in flows:
        records, size = counts[("flow", (sender, receiver))]
        rows[sender]["send_records"] += records
        rows[sender]["send_bytes"] += size
        rows[receiver]["receive_records"] += records
        rows[receiver]["receive_bytes"] += size
    for row in rows.values():
        # a sender drops what it hands over (a leaving node, everything)
        gone = row["node_id"] not in after
        row["records_after"] = 0 if gone else (row["records_before"] - row["send_records"]
                                               + row["receive_records"])
        row["bytes_after"] = 0 if gone else (row["bytes_before"] - row["send_bytes"]
                                             + row["receive_bytes"])
    moved = sum(r["receive_records"] for r in rows.values())
    total = sum(rows[x]["records_before"] for x in holders)
    optimal = total / len(after) if action == "add" else rows[node_id]["records_before"]
    return {"action": action, "node_id": node_id, "replicas": n,
            "nodes": [rows[x] for x in nodes],
            "balance_before": _peak_to_mean([rows[x]["records_before"] for x in holders]),
            "balance_after": _peak_to_mean([rows[x]["records_after"] for x in after]),
            "moved_records": moved,
            "moved_bytes": sum(r["receive_bytes"] for r in rows.values()),
            "optimal_records": round(optimal)}


def stats_figures(reply: Message | None) -> tuple[int, int] | None:
    """(records, bytes) from a RANGE_STATS answer; None unless both are sane ints."""
    if reply is None or reply.type != MsgType.OK:
        return None
    records, size = reply.body.get("records"), reply.body.get("bytes")
    if type(records) is not int or type(size) is not int or not (
            0 <= records < 1 << 62 and 0 <= size < 1 << 62):
        return None
    return records, size


def _peak_to_mean(values: list[int]) -> float:
    mean = sum(values) / len(values) if values else 0
    return round(max(values) / mean, 4) if mean else 1.0

