"""Phi accrual failure detection (Hayashibara et al.; as in Cassandra and Akka). Pure.

Each node records when it hears a member's heartbeat advance (directly or relayed in gossip)
and keeps a window of the intervals. ``phi`` is how unlikely the current silence is, given
those intervals modelled as a normal distribution: ``phi = -log10(P(interval > silence))``.
The floor on the standard deviation and the acceptable pause keep a burst of very regular
heartbeats from making the detector jumpy: a member is only declared down once its silence
exceeds ``mean + acceptable_pause`` by several deviations.

Liveness changes routing, never ownership: a down member keeps its ranges.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from statistics import NormalDist

__all__ = ["Liveness", "PhiAccrualDetector"]

_STANDARD_NORMAL = NormalDist()


class Liveness(str, Enum):
    UP = "up"
    SUSPECT = "suspect"
    DOWN = "down"


@dataclass
class _History:
    last_at: float
    intervals: deque[float] = field(default_factory=deque)
    total: float = 0.0
    total_squares: float = 0.0
    # when silence since last_at makes the member suspect / down (kept current on every
    # heartbeat: liveness is asked for every replica of every request)
    suspect_at: float = math.inf
    down_at: float = math.inf


class PhiAccrualDetector:
    def __init__(self, *, expected_interval_s: float, suspect_phi: float = 3.0,
                 down_phi: float = 8.0, min_std_s: float = 0.1,
                 acceptable_pause_s: float = 1.0, window: int = 200) -> None:
        if not 0 < suspect_phi <= down_phi:
            raise ValueError("need 0 < suspect_phi <= down_phi")
        self.expected_interval_s = expected_interval_s
        self.suspect_phi = suspect_phi
        self.down_phi = down_phi
        self.min_std_s = min_std_s
        self.acceptable_pause_s = acceptable_pause_s
        self.window = window
        self._histories: dict[str, _History] = {}
        # silence (in deviations past mean + pause) at which each threshold is crossed
        self._suspect_z = _STANDARD_NORMAL.inv_cdf(1 - 10 ** -suspect_phi)
        self._down_z = _STANDARD_NORMAL.inv_cdf(1 - 10 ** -min(down_phi, 15.0))

    def heartbeat(self, node_id: str, now: float) -> None:
        history = self._histories.get(node_id)
        if history is None:
            # Seed with the expected interval so a new member is judged sanely at once.
            history = self._histories[node_id] = _History(now)
            self._add(history, self.expected_interval_s)
            self._schedule(history)
            return
        interval = now - history.last_at
        history.last_at = now
        # A silence far past the usual interval was an outage (or a restart), not a sample
        # of the heartbeat rhythm: keeping it would blunt the detector for the next outage.
        if 0 < interval <= self.expected_interval_s * 3:
            self._add(history, interval)
        self._schedule(history)

    def _schedule(self, history: _History) -> None:
        mean, std = self._mean_std(history)
        history.suspect_at = history.last_at + mean + self._suspect_z * std
        history.down_at = history.last_at + mean + self._down_z * std

    def _add(self, history: _History, interval: float) -> None:
        history.intervals.append(interval)
        history.total += interval
        history.total_squares += interval * interval
        if len(history.intervals) > self.window:
            old = history.intervals.popleft()
            history.total -= old
            history.total_squares -= old * old

    def forget(self, node_id: str) -> None:
        self._histories.pop(node_id, None)

    def known(self, node_id: str) -> bool:
        return node_id in self._histories

    def last_heard(self, node_id: str) -> float | None:
        history = self._histories.get(node_id)
        return None if history is None else history.last_at

    def _mean_std(self, history: _History) -> tuple[float, float]:
        count = len(history.intervals)
        mean = history.total / count
        variance = max(0.0, history.total_squares / count - mean * mean)
        return mean + self.acceptable_pause_s, max(math.sqrt(variance), self.min_std_s)

    def phi(self, node_id: str, now: float) -> float:
        history = self._histories.get(node_id)
        if history is None:
            return math.inf
        mean, std = self._mean_std(history)
        silence = now - history.last_at
        p_later = 1.0 - _STANDARD_NORMAL.cdf((silence - mean) / std)
        return math.inf if p_later <= 0 else -math.log10(p_later)

    def liveness(self, node_id: str, now: float) -> Liveness:
        history = self._histories.get(node_id)
        if history is None or now >= history.down_at:
            return Liveness.DOWN
        if now >= history.suspect_at:
            return Liveness.SUSPECT
        return Liveness.UP

    def next_change_at(self, node_id: str, now: float) -> float | None:
        """When this member's liveness would next worsen if nothing is heard from it."""
        history = self._histories.get(node_id)
        if history is None:
            return None
        for at in (history.suspect_at, history.down_at):
            if at > now:
                return at
        return None
